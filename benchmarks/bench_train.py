"""Seconds per training step and peak memory of every method.

Two sizes: the tiny sd1 test model at 64 px, and the full SD1.5 architecture (random
weights built locally from the shipped configs, no download) at 256 px with LoRA rank 4,
batch 1. Each (size, method) runs in a fresh process, so the peak RSS reported is that
run's own. The first step (warm-up, allocator growth) is excluded from s/step.

    python benchmarks/bench_train.py                 # tiny only
    python benchmarks/bench_train.py --sd15          # tiny, then SD1.5 at 256 px (slow on a CPU)
    python benchmarks/bench_train.py --sd15 --only sd15 --methods lora --steps 3
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
METHODS = ("lora", "dreambooth", "textual_inversion", "hypernetwork")
SIZES = {"tiny": 64, "sd15": 256}


def sd15_random_model():
    """SD1.5's exact architecture with random weights (about 1.1 B parameters)."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from dreambooth_core.families import get_family
    from dreambooth_core.models.base import BaseModel
    from dreambooth_core.models.configs import shipped_configs
    from dreambooth_core.models.tokenizers import family_tokenizers

    family = get_family("sd1")
    configs = shipped_configs(family)
    torch.manual_seed(0)
    unet = UNet2DConditionModel.from_config(configs["unet"])
    vae = AutoencoderKL.from_config(configs["vae"])
    text = CLIPTextModel(CLIPTextConfig(**{k: v for k, v in configs["text_encoder"].items() if not k.startswith("_")}))
    return BaseModel(family, unet.eval(), vae.eval(), [text.eval()], family_tokenizers(family), configs["scheduler"], name="sd15-random")


def write_instance_images(folder: Path, resolution: int, count: int = 4) -> Path:
    """`count` random-noise RGB images of `resolution`² (seeded: the same every run)."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        Image.fromarray(rng.integers(0, 255, (resolution, resolution, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return folder


def run_one(size: str, method: str, steps: int, work: Path) -> dict:
    """Train `steps` steps in this process; return timings and this process's peak RSS."""
    import torch

    from dreambooth_core.config import TrainConfig
    from dreambooth_core.events import CancelToken
    from dreambooth_core.models.tiny import tiny_base_model
    from dreambooth_core.train.loop import Trainer

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", os.cpu_count() or 1)))
    res = SIZES[size]
    images = write_instance_images(work / "images", res)
    cfg = TrainConfig(
        method=method, instance_data_dir=str(images), token="sks", class_noun="dog", resolution=res,
        max_train_steps=steps, rank=4, alpha=4.0, train_batch_size=1, output_dir=str(work / "runs"),
        num_validation_images=0, learning_rate=1e-5 if method == "dreambooth" else 1e-4, save_dtype="fp16",
    )
    t0 = time.monotonic()
    model = sd15_random_model() if size == "sd15" else tiny_base_model("sd1")
    build = time.monotonic() - t0
    stamps: list[float] = []

    def emit(event):
        if event.type == "progress" and event.phase == "train":
            stamps.append(time.monotonic())

    t1 = time.monotonic()
    Trainer(cfg, emit, CancelToken(), model=model).run()
    total = time.monotonic() - t1
    per_step = [b - a for a, b in zip(stamps, stamps[1:])]
    return {
        "size": size, "method": method, "steps": steps,
        "s_per_step": sum(per_step) / len(per_step) if per_step else float("nan"),
        "setup_s": stamps[0] - t1 if stamps else float("nan"),  # caching etc. and the first step
        "run_s": total, "build_s": build,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sd15", action="store_true", help="also run the SD1.5 architecture at 256 px")
    parser.add_argument("--only", choices=list(SIZES), help="run only this size")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--steps", type=int, default=0, help="steps per run (default: 6 tiny, 3 sd15)")
    parser.add_argument("--one", nargs=2, metavar=("SIZE", "METHOD"), help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.one:
        size, method = args.one
        with tempfile.TemporaryDirectory() as tmp:
            print(json.dumps(run_one(size, method, args.steps, Path(tmp))))
        return

    sizes = [args.only] if args.only else ["tiny"] + (["sd15"] if args.sd15 else [])
    print(f"{'size':6s} {'method':18s} {'s/step':>8s} {'to step 1 s':>11s} {'peak RSS MB':>12s}")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for size in sizes:
        steps = args.steps or (6 if size == "tiny" else 3)
        for method in args.methods:
            out = subprocess.run([sys.executable, __file__, "--one", size, method, "--steps", str(steps)],
                                 env=env, capture_output=True, text=True)
            if out.returncode:
                print(f"{size:6s} {method:18s} failed: {out.stderr.strip().splitlines()[-1]}")
                continue
            r = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"{size:6s} {method:18s} {r['s_per_step']:8.3f} {r['setup_s']:11.2f} {r['peak_rss_mb']:12.0f}", flush=True)


if __name__ == "__main__":
    main()
