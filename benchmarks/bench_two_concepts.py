"""Does one run learn two subjects? On the bundled toy model: LoRA (the demo's settings)
trained once on two concepts, 8 photos of the teal ball ("sks") and 4 of the purple box
("ohwx"), with the box's repeats balancing the two (2) and, with --unbalanced, also without
(1). Each subject's prompt is scored by the toy evaluator for that subject, against the
untrained base.

    PYTHONPATH=. OMP_NUM_THREADS=1 python benchmarks/bench_two_concepts.py [--out DIR] [--steps 600] [--unbalanced]
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path


def main() -> None:
    from dreambooth_core.toy import multi_concept as M
    from dreambooth_core.toy.model import load_toy_model

    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--steps", type=int, default=M.STEPS)
    ap.add_argument("--unbalanced", action="store_true", help="also train with every concept at repeats 1")
    a = ap.parse_args()
    out = a.out or Path(tempfile.mkdtemp(prefix="two_concepts_"))

    def show(label: str, scores: dict[str, float]) -> None:
        print(f"{label}: " + ", ".join(f"{token} subject fidelity {v:.3f}" for token, v in scores.items()), flush=True)

    show("base (untrained)", M.subject_scores(load_toy_model(), M.BALANCED))
    runs = {"balanced": M.BALANCED, **({"unbalanced": M.UNBALANCED} if a.unbalanced else {})}
    for label, concepts in runs.items():
        started = time.monotonic()
        scores = M.train_and_score(concepts, out / label, a.steps)
        mix = ", ".join(f"{c.token}: {c.photos} photos x {c.repeats}" for c in concepts)
        show(f"{label} ({mix}; {a.steps} steps, {time.monotonic() - started:.0f} s)", scores)


if __name__ == "__main__":
    main()
