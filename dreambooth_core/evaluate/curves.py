"""The measures over a run, in its folder: `eval.csv` (one row per evaluated step) and `eval.png`."""
from __future__ import annotations

import csv
import io
from pathlib import Path

from ..fileio import write_bytes_atomic, write_text_atomic

MEASURES = ("subject_fidelity", "prompt_fidelity", "prior_drift", "diversity", "prior_preservation", "prompt_control")
COLUMNS = ("step", *MEASURES)
COLOURS = {"subject_fidelity": (20, 60, 160), "prompt_fidelity": (30, 140, 60), "prior_drift": (200, 40, 40),
           "diversity": (150, 40, 190), "prior_preservation": (230, 140, 0), "prompt_control": (0, 150, 150)}


def read_rows(path: Path) -> list[dict[str, float]]:
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as f:
        return [{k: (int(v) if k == "step" else float(v)) for k, v in row.items() if v not in ("", None)}
                for row in csv.DictReader(f)]


def write_rows(path: Path, rows: list[dict[str, float]]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, COLUMNS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows({k: ("" if row.get(k) is None else row[k]) for k in COLUMNS} for row in rows)
    write_text_atomic(path, buf.getvalue(), overwrite=True)


def plot(rows: list[dict[str, float]], path: Path) -> Path | None:
    """Each measure the rows have, against the step."""
    from ..train.run_dir import line_plot_png

    if not rows:
        return None
    steps = [int(r["step"]) for r in rows]
    series = [(m.replace("_", " "), [r[m] for r in rows], COLOURS[m]) for m in MEASURES if all(m in r for r in rows)]
    return write_bytes_atomic(path, line_plot_png(steps, series, "evaluation"), overwrite=True)
