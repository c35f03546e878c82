"""How well does each method learn the toy subject, and what does it cost the model? On the
bundled toy model, each demo method (its preset with the demo's toy settings) is trained over
several seeds with the evaluation layer measuring every few steps. For each method the table
shows the fixed-step result (the last step) and the step select_best chooses, as mean ± s.d.
over the seeds, beside the untrained base and issue #17's targets:

- subject fidelity: DreamBooth (with prior preservation) >= 0.8, LoRA >= 0.7, Textual Inversion >= 0.4;
- prior preservation: DreamBooth >= 0.8, LoRA >= 0.7;
- prompt fidelity (the subject on unseen backgrounds) and prompt control (the toy world's control
  prompts: colour, class and background all drawn): not below the base's.

Scores are the toy world's evaluator on the evaluation set (`evaluate/`; fixed seeds, --images
per prompt), measured on the model in training, the same numbers the run's eval.csv holds.

    PYTHONPATH=. OMP_NUM_THREADS=1 python benchmarks/bench_quality.py [--methods dreambooth,lora] \
        [--seeds 0,1,2] [--images 8] [--points 8] [--steps-scale 1.0] [--out DIR]
"""
from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
import time
from pathlib import Path

MEASURES = ("subject_fidelity", "prompt_fidelity", "prior_preservation", "diversity", "prompt_control")
HEADERS = ("subject fid.", "prompt fid.", "prior pres.", "diversity", "prompt control")
# issue #17's targets: method -> measure -> least value; "base" means the untrained base's figure
TARGETS: dict[str, dict[str, float | str]] = {
    "dreambooth": {"subject_fidelity": 0.8, "prior_preservation": 0.8, "prompt_fidelity": "base", "prompt_control": "base"},
    "lora": {"subject_fidelity": 0.7, "prior_preservation": 0.7, "prompt_fidelity": "base", "prompt_control": "base"},
    "textual_inversion": {"subject_fidelity": 0.4, "prompt_fidelity": "base", "prompt_control": "base"},
}


def config(label: str, seed: int, out: Path, images: int, points: int, steps_scale: float):
    """The demo method's config with evaluation every max_train_steps / points steps and select_best."""
    from dreambooth_core import demo

    base = demo.DEMO_METHODS[label]
    steps = max(1, round(base.overrides["max_train_steps"] * steps_scale))
    method = dataclasses.replace(base, overrides={**base.overrides, "seed": seed, "eval_images": images,
                                                  "eval_every_n_steps": max(1, steps // points), "select_best": True})
    return demo.demo_config(method, out, steps_scale)


def base_scores(cfg) -> dict:
    """The untrained toy model on the same evaluation set (a run's step 0 is not it for Textual
    Inversion, whose new token starts as the class word)."""
    from dreambooth_core.evaluate.evalset import draw_set
    from dreambooth_core.evaluate.scorers import ToyScorer
    from dreambooth_core.evaluate.session import evalset_for
    from dreambooth_core.toy.model import load_toy_model

    scorer = ToyScorer()
    s = evalset_for(cfg, scorer, cfg.resolution)
    images = draw_set(load_toy_model(), s)
    return {"step": 0, **scorer.score(s, images, images.plain, [])}


def train(cfg) -> tuple[list[dict], dict]:
    """One run: (curve rows, the row select_best chooses, else the last)."""
    from dreambooth_core.evaluate.select import Bounds, choose_best
    from dreambooth_core.events import CancelToken, Evaluation
    from dreambooth_core.train import run_training

    rows: list[dict] = []
    run_training(cfg, lambda e: rows.append({"step": e.step, **e.scores}) if isinstance(e, Evaluation) else None,
                 CancelToken())
    best = choose_best(rows, Bounds(cfg.select_max_prior_drift, cfg.select_max_prompt_drop)) or rows[-1]
    return rows, best


def cell(values: list[float]) -> str:
    return f"{statistics.mean(values):.3f} ± {statistics.pstdev(values):.3f}" if len(values) > 1 else f"{values[0]:.3f}"


def target_cell(label: str, measure: str, base: dict) -> str:
    want = TARGETS.get(label, {}).get(measure)
    if want is None:
        return ""
    return f">= {base[measure]:.3f} (base)" if want == "base" else f">= {want}"


def met(label: str, rows: list[dict], base: dict) -> str:
    wants = TARGETS.get(label)
    if not wants:
        return ""
    misses = [m for m, want in wants.items()   # (a tolerance: the mean of equal figures may round below them)
              if statistics.mean(r[m] for r in rows) < (base[m] if want == "base" else want) - 1e-9]
    return "yes" if not misses else "no: " + ", ".join(misses)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--methods", default="dreambooth,lora,textual_inversion,hypernetwork")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--images", type=int, default=8, help="images per evaluation prompt")
    ap.add_argument("--points", type=int, default=8, help="evaluations over a run (besides step 0)")
    ap.add_argument("--steps-scale", type=float, default=1.0)
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()
    out = a.out or Path(tempfile.mkdtemp(prefix="bench_quality_"))
    seeds = [int(s) for s in a.seeds.split(",")]
    results: dict[str, dict[str, list[dict]]] = {}
    base: dict | None = None
    for label in a.methods.split(","):
        results[label] = {"fixed": [], "selected": []}
        for seed in seeds:
            started = time.monotonic()
            cfg = config(label, seed, out / f"{label}_{seed}", a.images, a.points, a.steps_scale)
            base = base or base_scores(cfg)
            rows, best = train(cfg)
            results[label]["fixed"].append(rows[-1])
            results[label]["selected"].append(best)
            print(f"{label} seed {seed} ({time.monotonic() - started:.0f} s): fixed step {rows[-1]['step']}, "
                  f"selected step {best['step']}: " + ", ".join(f"{m} {best.get(m, float('nan')):.3f}" for m in MEASURES),
                  flush=True)
    assert base is not None
    print(f"\n{len(seeds)} seeds ({a.seeds}), {a.images} images per prompt, {a.points} evaluations per run, "
          f"steps x{a.steps_scale}; mean ± s.d.\n")
    print(table(results, base))


def table(results: dict[str, dict[str, list[dict]]], base: dict) -> str:
    """Markdown: the base, then per method its targets and its fixed and selected rows."""
    lines = ["| method | step | " + " | ".join(HEADERS) + " | targets met |", "|---|---|" + "---|" * len(HEADERS) + "---|",
             "| base (untrained) | 0 | " + " | ".join(f"{base[m]:.3f}" for m in MEASURES) + " | |"]
    for label, runs in results.items():
        if label in TARGETS:
            lines.append(f"| {label}: target | | " + " | ".join(target_cell(label, m, base) for m in MEASURES) + " | |")
        for kind, rows in runs.items():
            steps = "/".join(str(int(r["step"])) for r in rows)
            lines.append(f"| {label}: {kind} | {steps} | " + " | ".join(cell([r[m] for r in rows]) for m in MEASURES)
                         + f" | {met(label, rows, base)} |")
    return "\n".join(lines)

if __name__ == "__main__":
    main()
