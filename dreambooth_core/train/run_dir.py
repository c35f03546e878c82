"""The folder of one training run, `<output_dir>/<name>/`:

    config.json    the resolved config (every key, defaults filled in)
    final.json     the step and file names of the last final artifacts (a resumed run may replace them)
    log.txt        warnings and milestones, one line each
    loss.csv       step, loss, instance_loss, prior_loss, lr
    loss.png       the loss curve (drawn with Pillow: no plotting library needed)
    samples/       validation images and grids
    state/step-N/  resumable training states
    outputs/       the artifacts: LoRA, embedding, hypernetwork or checkpoint

The folder is named after the run (not a timestamp), so `resume_from="latest"` finds it
and a host can show it; a fresh run refuses to mix into an earlier run's folder.
"""
from __future__ import annotations

import csv
import datetime
import io
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import OutputExistsError, UserError
from ..fileio import clean_stale_temps, write_bytes_atomic, write_text_atomic
from ..paths import PathRefused, is_owned, make_owned_folder
from .state import DamagedState, damage, state_dirs

LOSS_COLUMNS = ("step", "loss", "instance_loss", "prior_loss", "lr")


@dataclass
class RunDir:
    root: Path
    skipped_states: list[str] = field(default_factory=list)   # damaged states `latest` passed over

    @property
    def outputs(self) -> Path:
        return self.root / "outputs"

    @property
    def samples(self) -> Path:
        return self.root / "samples"

    @property
    def state(self) -> Path:
        return self.root / "state"

    @property
    def loss_csv(self) -> Path:
        return self.root / "loss.csv"

    @property
    def loss_png(self) -> Path:
        return self.root / "loss.png"

    @property
    def log_file(self) -> Path:
        return self.root / "log.txt"

    @classmethod
    def for_config(cls, config) -> "RunDir":
        return cls(Path(config.output_dir) / config.name)

    def resume_folder(self, resume_from: str | None) -> Path | None:
        """The state folder to resume from: None for a fresh run."""
        if not resume_from:
            return None
        if resume_from == "latest":
            found = state_dirs(self.state)
            for folder in reversed(found):   # newest first; a damaged one gives way to the one before
                problem = damage(folder)
                if problem is None:
                    return folder
                self.skipped_states.append(problem)
            if found:
                raise DamagedState(f"no saved state can be resumed: {self.skipped_states[0]}; start a new run with overwrite")
            return None
        p = Path(resume_from)
        if (p / "state.json").is_file():
            return p
        found = state_dirs(p / "state") or state_dirs(p)
        if not found:
            raise UserError(f"no training state in {p}: give a state/step-N folder, a run folder, or 'latest'")
        return found[-1]

    def check_fresh(self, overwrite: bool) -> None:
        """A fresh run refuses a folder that holds another run's states or outputs unless `overwrite`."""
        earlier = state_dirs(self.state) or [p for p in self.outputs.glob("*") if not p.name.startswith(".")]
        if earlier and not overwrite:
            raise OutputExistsError(
                f"{self.root} already holds a run: continue it with resume_from='latest', "
                "choose another output_name, or set overwrite to start over"
            )

    @property
    def final_record(self) -> Path:
        return self.root / "final.json"

    def record_final(self, step: int, paths: list[str]) -> None:
        """Remember which final artifacts this run wrote at `step`."""
        names = sorted({Path(p).relative_to(self.outputs).parts[0] for p in paths})
        write_text_atomic(self.final_record, json.dumps({"step": step, "outputs": names}) + "\n", overwrite=True)

    def own_final_outputs(self, step: int) -> set[str]:
        """Names in outputs/ that this run wrote as its final artifacts when it ended at `step`
        (a finished run continued from that state replaces them, and nothing else)."""
        try:
            record = json.loads(self.final_record.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return set()
        return set(record.get("outputs", [])) if record.get("step") == step else set()

    def check_no_final_output(self, name: str, own: set[str] = frozenset()) -> None:
        """A resumed run must be able to write its final artifact: say so now, not after training.
        `own` names the run's own earlier final outputs, which it replaces."""
        found = [p for p in self.outputs.glob("*") if (name in (p.stem, p.name) or p.name == f"{name}-peft") and p.name not in own]
        if found:
            raise OutputExistsError(f"{found[0]} already exists: set overwrite to replace it when the resumed run ends, "
                                    "or move it away first")

    def create(self, clear: bool) -> None:
        """Make the folders; `clear` removes an earlier run's states, samples, log and loss history
        (its outputs are only replaced when new ones of the same name are written)."""
        if clear and self.root.exists():
            if not is_owned(self.root):  # only a run folder this project made is ever cleared
                raise PathRefused(f"{self.root} was not made by dreambooth_core, so its state/ and samples/ are not "
                                  "deleted: choose another output_name")
            for sub in (self.state, self.samples):
                shutil.rmtree(sub, ignore_errors=True)
            for f in (self.loss_csv, self.loss_png, self.log_file):
                f.unlink(missing_ok=True)
        make_owned_folder(self.root)
        for sub in (self.outputs, self.samples, self.state):
            sub.mkdir(parents=True, exist_ok=True)
            clean_stale_temps(sub)   # what a killed save left behind

    def write_config(self, values: dict) -> None:
        write_text_atomic(self.root / "config.json", json.dumps(values, indent=2, default=str) + "\n")

    def log(self, level: str, message: str) -> None:
        stamp = datetime.datetime.now().isoformat(timespec="seconds")
        with open(self.log_file, "a", encoding="utf-8") as f:
            f.write(f"{stamp} {level.upper():7s} {message}\n")

    # ---- loss history ----------------------------------------------------------------
    def read_loss(self) -> list[dict[str, str]]:
        if not self.loss_csv.is_file():
            return []
        with open(self.loss_csv, newline="", encoding="utf-8") as f:
            return list(csv.DictReader(f))

    def truncate_loss(self, last_step: int) -> None:
        """Drop rows after `last_step` (a resumed run rewrites what followed its state)."""
        rows = [r for r in self.read_loss() if int(r["step"]) <= last_step]
        buf = io.StringIO()
        writer = csv.DictWriter(buf, LOSS_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
        write_text_atomic(self.loss_csv, buf.getvalue())

    def append_loss(self, row: dict[str, float | int | None]) -> None:
        new = not self.loss_csv.is_file()
        with open(self.loss_csv, "a", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, LOSS_COLUMNS)
            if new:
                writer.writeheader()
            writer.writerow({k: ("" if row.get(k) is None else row[k]) for k in LOSS_COLUMNS})

    def write_loss_plot(self) -> Path | None:
        rows = [r for r in self.read_loss() if r["loss"]]
        if not rows:
            return None
        png = loss_plot_png([int(r["step"]) for r in rows], [float(r["loss"]) for r in rows])
        return write_bytes_atomic(self.loss_png, png, overwrite=True)


def smooth(values: list[float], weight: float = 0.9) -> list[float]:
    """Bias-corrected exponential moving average (what TensorBoard's smoothing shows)."""
    out, avg = [], 0.0
    for i, v in enumerate(values):
        avg = weight * avg + (1 - weight) * v
        out.append(avg / (1 - weight ** (i + 1)))
    return out


def loss_plot_png(steps: list[int], losses: list[float], size: tuple[int, int] = (800, 400)) -> bytes:
    """The loss per step (light) and its moving average (dark) on labelled axes, as PNG bytes."""
    return line_plot_png(steps, [("", losses, (170, 190, 230)), ("", smooth(losses), (20, 60, 160))], "loss", size)


def line_plot_png(steps: list[int], series: list[tuple[str, list[float], tuple[int, int, int]]], title: str,
                  size: tuple[int, int] = (800, 400)) -> bytes:
    """Lines (label, values per step, colour) on shared labelled axes, as PNG bytes (Pillow only:
    no plotting library needed). Labelled lines get a legend and a dot per value."""
    from PIL import Image, ImageDraw

    w, h = size
    left, right, top, bottom = 70, 20, 20, 40
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    every = [v for _, values, _ in series for v in values]
    lo, hi = min(every), max(every)
    if hi - lo < 1e-12:
        lo, hi = lo - 0.5, hi + 0.5
    s0, s1 = min(steps), max(steps)
    span = max(1, s1 - s0)

    def xy(step: int, value: float) -> tuple[float, float]:
        return (left + (step - s0) / span * (w - left - right), top + (hi - value) / (hi - lo) * (h - top - bottom))

    draw.rectangle((left, top, w - right, h - bottom), outline="black")
    for i in range(5):
        value = lo + (hi - lo) * i / 4
        y = xy(s0, value)[1]
        draw.line((left - 4, y, left, y), fill="black")
        draw.text((4, y - 6), f"{value:.4g}", fill="black")
        step = s0 + span * i // 4
        x = xy(step, lo)[0]
        draw.line((x, h - bottom, x, h - bottom + 4), fill="black")
        draw.text((x - 10, h - bottom + 8), str(step), fill="black")
    draw.text((w // 2 - 20, h - 16), "step", fill="black")
    draw.text((left + 6, top + 4), title, fill="black")
    legend_y = top + 4
    for label, values, colour in series:
        points = [xy(s, v) for s, v in zip(steps, values)]
        if len(points) > 1:
            draw.line(points, fill=colour, width=2)
        for x, y in points if label or len(points) == 1 else ():
            draw.ellipse((x - 3, y - 3, x + 3, y + 3), fill=colour)
        if label:
            draw.text((w - right - 150, legend_y), label, fill=colour)
            legend_y += 14
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()
