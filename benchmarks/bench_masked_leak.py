"""Does a mask keep the photos' background out of what a LoRA learns? On the bundled toy
subject (six photos, mostly on a gray ground): LoRA trained as the demo trains it, once
without masks and once with each photo's mask (the subject, found against its flat ground),
then scored by the toy evaluator. Prompt fidelity is how often "... on a blue background"
really gets a blue ground: the lower the leak of the photos' gray, the higher.

    PYTHONPATH=. python benchmarks/bench_masked_leak.py [--out DIR] [--floor 0.1]
"""
from __future__ import annotations

import argparse
import dataclasses
import shutil
import tempfile
import time
from pathlib import Path


def masked_copy(dest: Path) -> Path:
    """The toy photos with `name.mask.png` beside each: white where a pixel differs from the corner's ground."""
    import numpy as np
    from PIL import Image

    from dreambooth_core.toy.model import TOY_INSTANCE_DIR

    dest.mkdir(parents=True, exist_ok=True)
    for photo in sorted(TOY_INSTANCE_DIR.glob("*.png")):
        shutil.copy(photo, dest / photo.name)
        a = np.asarray(Image.open(photo).convert("RGB")).astype(int)
        subject = np.abs(a - a[0, 0]).sum(-1) > 40
        Image.fromarray((subject * 255).astype(np.uint8)).save(dest / f"{photo.stem}.mask.png")
    return dest


def train_and_score(out: Path, instance_dir: Path, floor: float, label: str) -> dict[str, float]:
    from dreambooth_core import demo
    from dreambooth_core.apply import apply_artifact
    from dreambooth_core.events import CancelToken
    from dreambooth_core.toy.model import load_toy_model
    from dreambooth_core.train import run_training

    method = dataclasses.replace(demo.DEMO_METHODS["lora"], label=label)
    cfg = dataclasses.replace(demo.demo_config(method, out), instance_data_dir=str(instance_dir), masked_loss_floor=floor)
    started = time.monotonic()
    result = run_training(cfg, lambda e: None, CancelToken())
    artifact = result.outputs[0]
    model = apply_artifact(load_toy_model(), artifact.kind, artifact.path, token=demo.TOKEN)
    scores = demo.evaluate(model).scores
    print(f"{label}: trained in {time.monotonic() - started:.0f} s; " + ", ".join(f"{k} {v:.3f}" for k, v in scores.items()), flush=True)
    return scores


def main() -> None:
    from dreambooth_core.toy.model import TOY_INSTANCE_DIR

    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--floor", type=float, default=0.1)
    a = ap.parse_args()
    out = a.out or Path(tempfile.mkdtemp(prefix="masked_leak_"))
    train_and_score(out, TOY_INSTANCE_DIR, 1.0, "lora_without_masks")
    train_and_score(out, masked_copy(out / "masked_photos"), a.floor, f"lora_with_masks_floor_{a.floor}")


if __name__ == "__main__":
    main()
