"""Our trainer against diffusers' reference DreamBooth-LoRA (or full DreamBooth) script, side by side.

Both train the same random-weight model (SD1.5's architecture, built locally and saved
as a diffusers folder; no download) on the same four 256 px images with LoRA rank 4,
alpha 4, batch 1, the same mixed precision (fp32 or bf16), no prior preservation, no text-encoder training, no validation
and no intermediate checkpoints, with the same number of threads, each run in its own
fresh process, alternating reference / ours at N and then 2N steps.

Differences that remain by design: we train kohya's LoRA targets (attention q/k/v/out plus
proj_in/proj_out and the feed-forward linears: 192 modules, 1.7 M parameters) where the
reference trains attention q/k/v/out only (128 modules, 0.8 M); we encode the images and
the prompt once before training, the reference runs the VAE encoder and the text encoder
at every step; our frozen convolutions run on weights packed once for oneDNN (our default,
`pack_frozen_convolutions`), the reference's are reordered at every call, as plain PyTorch
does. `--no-pack` turns that off for ours, to see what it buys.

The reference script is not part of this repository (never commit it): take
`examples/dreambooth/train_dreambooth_lora.py` from a diffusers source checkout at the
tag matching the installed diffusers (or the closest one), e.g.

    git clone https://github.com/huggingface/diffusers /tmp/diffusers
    git -C /tmp/diffusers show v0.40.0:examples/dreambooth/train_dreambooth_lora.py > /tmp/train_dreambooth_lora.py

It imports torchvision for four image transforms; torchvision cannot be installed beside
our torch build, so the reference runs with a small PIL/torch stand-in for
`torchvision.transforms`, written to a temporary folder. A launcher first lets transformers
record that torchvision is absent (else it would import torchvision's image functions for
its own image utilities), then puts the stand-in on sys.path and runs the script as
__main__. It needs no `datasets` or `wandb`; tensorboard is used by both trainers only if
installed.

    python benchmarks/bench_reference.py --reference /tmp/train_dreambooth_lora.py
    python benchmarks/bench_reference.py --reference /tmp/train_dreambooth_lora.py --size tiny   # smoke test

`--method dreambooth` compares full DreamBooth instead (issue 14's CPU target: our peak RSS
<= 0.6x the reference's): the reference is `examples/dreambooth/train_dreambooth.py` (full
UNet, AdamW, prior preservation with four ready class images, no text-encoder training) at
diffusers' defaults (fp32, torch's AdamW, no gradient checkpointing, the VAE and text encoder
run at every step); ours is method="dreambooth" with the same prior preservation and
memory="auto" given `memory_limit_gb` = 0.6x the peak RSS the reference just measured at the
same step count (the issue's 15.8 GiB if it did not finish), so ours takes the savings that
target calls for, in its documented order (the run's memory_plan.json and choices are printed):

    git -C /tmp/diffusers show v0.40.0:examples/dreambooth/train_dreambooth.py > /tmp/train_dreambooth.py
    python benchmarks/bench_reference.py --method dreambooth --reference /tmp/train_dreambooth.py --threads 1 --steps 2 4

What is measured, from outside each process:
- s/step: the mean time between consecutive completed steps 2..N (step 1 carries the
  warm-up), taken from the progress lines as they arrive (the reference's tqdm bar, our
  Progress events); plus, per trainer, (t_last(2N) - t_last(N)) / N as a cross-check.
- CPU s/step: the process's user+system CPU time over the same steps (from /proc). Near
  `threads` x s/step when the process had the cores to itself; near s/step alone when it
  shared them (CPU time also grows under contention, so it does not remove that noise).
- RSS in training: the process's VmHWM (kernel high-water mark) read the moment the last
  step is reported, i.e. the peak of loading plus training. After training the reference
  also reloads the whole pipeline for a final-inference stage, so its whole-process peak
  (wait4 ru_maxrss, also printed) can be larger than its training peak.

On a shared machine wall-time figures swing with other load: alternate runs (as this
does), repeat, and read the per-step durations, not only the means.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from statistics import mean

from bench_train import SIZES, sd15_random_model, write_instance_images

REPO = Path(__file__).resolve().parents[1]
# ours/reference; full DreamBooth has no time target (issue 14's is its peak RSS, through its memory savings)
TARGET_TIME, TARGET_RSS = {"lora": 0.6, "dreambooth": None}, {"lora": 0.8, "dreambooth": 0.6}
REFERENCE_STEP = re.compile(r"Steps:\s*\d+%\|[^|]*\|\s*(\d+)/(\d+)")
OURS_STEP = re.compile(r"^@@step (\d+)/(\d+)")
LR, RANK, SEED, PROMPT = 1e-4, 4, 0, "a photo of sks dog"
REFERENCE_RSS_ISSUE_MB = 15.8 * 1024  # issue 14's measurement of train_dreambooth.py here (used when the reference does not finish)
SAVING_KEYS = ("mixed_precision", "optimizer", "fused_optimizer_step", "full_bf16", "gradient_checkpointing", "cache_latents",
               "pack_frozen_convolutions")  # ours, from its memory_plan.json
REFERENCE_SAVINGS = {"lora": "as ours: LoRA rank 4, the same mixed precision",
                     "dreambooth": "diffusers' defaults: fp32 weights and gradients, torch AdamW, no gradient checkpointing, "
                                   "VAE and text encoder run every step"}
CLASS_PROMPT, CLASS_IMAGES = "a photo of dog", 4

TORCHVISION_STUB = '''"""Stand-in for the few torchvision.transforms the diffusers example uses (PIL + torch)."""
import enum
import random

import numpy as np
import torch
from PIL import Image


class InterpolationMode(enum.Enum):
    NEAREST = "nearest"
    NEAREST_EXACT = "nearest-exact"
    BILINEAR = "bilinear"
    BICUBIC = "bicubic"
    BOX = "box"
    HAMMING = "hamming"
    LANCZOS = "lanczos"


_PIL = {"nearest": Image.NEAREST, "nearest-exact": Image.NEAREST, "bilinear": Image.BILINEAR,
        "bicubic": Image.BICUBIC, "box": Image.BOX, "hamming": Image.HAMMING, "lanczos": Image.LANCZOS}


class Compose:
    def __init__(self, transforms):
        self.transforms = list(transforms)

    def __call__(self, x):
        for t in self.transforms:
            x = t(x)
        return x


class Resize:
    """An int size scales the shorter edge to it, keeping the aspect ratio."""

    def __init__(self, size, interpolation=InterpolationMode.BILINEAR):
        self.size, self.resample = size, _PIL[InterpolationMode(interpolation).value]

    def __call__(self, img):
        w, h = img.size
        if isinstance(self.size, int):
            short, long = (w, h) if w <= h else (h, w)
            new_short, new_long = self.size, int(self.size * long / short)
            size = (new_short, new_long) if w <= h else (new_long, new_short)
        else:
            size = (self.size[1], self.size[0])
        return img if size == (w, h) else img.resize(size, self.resample)


def _pair(size):
    return (size, size) if isinstance(size, int) else tuple(size)


class CenterCrop:
    def __init__(self, size):
        self.h, self.w = _pair(size)

    def __call__(self, img):
        w, h = img.size
        left, top = int(round((w - self.w) / 2)), int(round((h - self.h) / 2))
        return img.crop((left, top, left + self.w, top + self.h))


class RandomCrop(CenterCrop):
    def __call__(self, img):
        w, h = img.size
        left, top = random.randint(0, w - self.w), random.randint(0, h - self.h)
        return img.crop((left, top, left + self.w, top + self.h))


class ToTensor:
    def __call__(self, img):
        return torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1).contiguous()


class Normalize:
    def __init__(self, mean, std):
        self.mean, self.std = torch.tensor(mean), torch.tensor(std)

    def __call__(self, t):
        return (t - self.mean[:, None, None]) / self.std[:, None, None]
'''


LAUNCHER = '''"""Run diffusers' script with the torchvision stand-in: launcher.py STUB_DIR SCRIPT ARGS..."""
import runpy
import sys

from transformers.utils import import_utils

import_utils.is_torchvision_available()  # cached while torchvision is truly absent
stub, script = sys.argv[1], sys.argv[2]
sys.argv = [script, *sys.argv[3:]]
sys.path[0:1] = [str(__import__("pathlib").Path(script).resolve().parent), stub]
runpy.run_path(script, run_name="__main__")
'''


def write_launcher(work: Path) -> Path:
    """The launcher and the torchvision stand-in under `work`; the launcher's path (its
    command line: launcher STUB_DIR SCRIPT ARGS..., STUB_DIR being the launcher's folder / "stub")."""
    launcher = work / "reference_launcher" / "launcher.py"
    stub = launcher.parent / "stub" / "torchvision"
    stub.mkdir(parents=True, exist_ok=True)
    (stub / "__init__.py").write_text('"""Stand-in: only transforms."""\n__version__ = "0.0.0+stub"\n')
    (stub / "transforms.py").write_text(TORCHVISION_STUB)
    launcher.write_text(LAUNCHER)
    return launcher


@dataclass
class Run:
    """One training process as seen from outside."""
    who: str
    steps: int
    stamps: dict[int, float] = field(default_factory=dict)  # step -> seconds since spawn
    cpu: dict[int, float] = field(default_factory=dict)     # step -> CPU seconds used so far
    rss_training_mb: float = float("nan")                   # VmHWM when the last step was reported
    peak_rss_mb: float = float("nan")                       # whole process (wait4 ru_maxrss)
    wall_s: float = float("nan")
    returncode: int | None = None
    tail: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return self.steps in self.stamps

    @property
    def intervals(self) -> list[float]:
        """Durations of steps 2..N."""
        return _step_deltas(self.stamps, self.steps)

    @property
    def s_per_step(self) -> float:
        return mean(self.intervals) if self.intervals else float("nan")

    @property
    def cpu_intervals(self) -> list[float]:
        """CPU seconds of steps 2..N."""
        return _step_deltas(self.cpu, self.steps)

    @property
    def cpu_per_step(self) -> float:
        return mean(self.cpu_intervals) if self.cpu_intervals else float("nan")


def _step_deltas(at_step: dict[int, float], steps: int) -> list[float]:
    """What a per-step reading (time or CPU time at each completed step) grew by in steps 2..N."""
    return [at_step[k] - at_step[k - 1] for k in range(2, steps + 1) if k in at_step and k - 1 in at_step]


def vm_hwm_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of `pid` so far (all its threads)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return float("nan")


def watch(cmd: list[str], env: dict[str, str], run: Run, pattern: re.Pattern, log: Path) -> Run:
    """Run `cmd`, timestamping each step line as it arrives; reap it with wait4 for its peak RSS."""
    start = time.monotonic()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=log.parent)
    lock = threading.Lock()

    def pump(stream, sink) -> None:
        buf = b""
        while chunk := os.read(stream.fileno(), 1 << 16):
            sink.write(chunk)
            buf += chunk
            *lines, buf = re.split(rb"[\r\n]", buf)
            for raw in lines:
                line = raw.decode(errors="replace").strip()
                m = pattern.search(line)
                if m:
                    k = int(m.group(1))
                    with lock:
                        if k not in run.stamps:
                            run.stamps[k] = time.monotonic() - start
                            run.cpu[k] = cpu_seconds(proc.pid)
                            if k == run.steps:
                                run.rss_training_mb = vm_hwm_mb(proc.pid)
                elif line:
                    with lock:
                        run.tail = (run.tail + [line])[-15:]

    with open(log, "wb") as sink:
        threads = [threading.Thread(target=pump, args=(s, sink), daemon=True) for s in (proc.stdout, proc.stderr)]
        for t in threads:
            t.start()
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        for t in threads:
            t.join()
    run.wall_s = time.monotonic() - start
    run.returncode = proc.returncode
    run.peak_rss_mb = usage.ru_maxrss / 1024
    return run


def child_env(threads: int, pythonpath: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": pythonpath, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
            "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1", "PYTHONUNBUFFERED": "1"}


def reference_cmd(launcher: Path, script: Path, model: Path, images: Path, out: Path, res: int, steps: int, precision: str,
                  method: str, classes: Path) -> list[str]:
    method_args = ["--rank", str(RANK)] if method == "lora" else [
        "--with_prior_preservation", "--class_data_dir", str(classes), "--class_prompt", CLASS_PROMPT,
        "--num_class_images", str(CLASS_IMAGES), "--prior_loss_weight", "1.0"]
    return [
        sys.executable, str(launcher), str(launcher.parent / "stub"), str(script),
        "--pretrained_model_name_or_path", str(model), "--instance_data_dir", str(images),
        "--instance_prompt", PROMPT, "--output_dir", str(out), "--resolution", str(res),
        "--train_batch_size", "1", "--max_train_steps", str(steps), "--learning_rate", str(LR),
        "--lr_scheduler", "constant", "--lr_warmup_steps", "0", *method_args,
        "--mixed_precision", precision, "--checkpointing_steps", "100000000", "--seed", str(SEED),
        "--report_to", "tensorboard",  # accelerate skips it when tensorboard is not installed (as here)
    ]


def ours_cmd(model: Path, images: Path, out: Path, res: int, steps: int, threads: int, precision: str, pack: bool,
             method: str, classes: Path, limit_gb: float | None) -> list[str]:
    return [sys.executable, __file__, "--ours-child", str(model), str(images), str(out), str(res), str(steps), str(threads), precision,
            str(int(pack)), method, str(classes), "" if limit_gb is None else f"{limit_gb:.3f}"]


def ours_child(model: str, images: str, out: str, res: int, steps: int, threads: int, precision: str, pack: bool,
               method: str, classes: str, limit_gb: float | None) -> None:
    """Train ours at the reference's settings, printing one line per completed step. Full
    DreamBooth runs with memory="auto", its mixed precision unpinned and `limit_gb` as its
    memory_limit_gb: the savings that fit it are ours to choose."""
    import torch

    from dreambooth_core.config import TrainConfig
    from dreambooth_core.events import CancelToken
    from dreambooth_core.train import run_training

    torch.set_num_threads(threads)
    method_settings = dict(rank=RANK, alpha=float(RANK), mixed_precision=precision, pack_frozen_convolutions=pack) if method == "lora" else dict(
        with_prior_preservation=True, class_data_dir=classes, num_class_images=CLASS_IMAGES, prior_loss_weight=1.0, memory="auto",
        memory_limit_gb=limit_gb)
    cfg = TrainConfig(
        method=method, base_model=model, instance_data_dir=images, token="sks", class_noun="dog",
        resolution=res, max_train_steps=steps, train_batch_size=1,
        learning_rate=LR, lr_scheduler="constant", seed=SEED,
        num_validation_images=0, checkpointing_steps=0, output_dir=out, overwrite=True, **method_settings,
    )

    def emit(event) -> None:
        if event.type == "progress" and event.phase == "train":
            print(f"@@step {event.step}/{event.total}", flush=True)

    result = run_training(cfg, emit, CancelToken())
    if result.status != "completed":
        raise SystemExit(f"run ended {result.status}")


def wait_for_memory(gib: float, who: str, patience_s: float = 1800) -> None:
    """On a shared machine: wait until `gib` GiB are available before a run starts (a run that
    meets less is killed by the kernel part-way and measures nothing)."""
    import psutil

    start = time.monotonic()
    while (free := psutil.virtual_memory().available / 2**30) < gib and time.monotonic() - start < patience_s:
        time.sleep(10)
    waited = time.monotonic() - start
    if waited >= 10 or free < gib:
        print(f"    waited {waited:.0f} s for memory before {who}: {free:.1f} GiB available (asked {gib} GiB)", flush=True)


def drop_weights(out: Path) -> None:
    """Delete what a run saved (a full model is GBs; the next runs need the disk), keeping its logs."""
    for f in out.rglob("*"):
        if f.is_file() and f.suffix in (".safetensors", ".bin", ".pt", ".ckpt"):
            f.unlink()


def build_model(size: str, folder: str) -> None:
    """The benchmark model as a diffusers folder in fp32 (what both trainers load)."""
    from dreambooth_core.models.save import save_diffusers
    from dreambooth_core.models.tiny import tiny_base_model

    model = sd15_random_model() if size == "sd15" else tiny_base_model("sd1")
    save_diffusers(model, folder, dtype="fp32")


def fmt(x: float, spec: str) -> str:
    return format(x, spec) if x == x else "n/a".rjust(len(format(0.0, spec)))


def print_table(runs: list[Run]) -> None:
    print(f"\n{'trainer':10s} {'N':>3s} {'s/step (2..N)':>14s} {'CPU s/step':>11s} {'to step 1 s':>12s} {'wall s':>8s} "
          f"{'RSS training MB':>16s} {'RSS process MB':>15s}  step durations s")
    for r in runs:
        times = " ".join(f"{t:.2f}" for t in r.intervals)
        status = "" if r.returncode == 0 else f"  [exit {r.returncode}]"
        print(f"{r.who:10s} {r.steps:3d} {fmt(r.s_per_step, '14.2f')} {fmt(r.cpu_per_step, '11.2f')} {fmt(r.stamps.get(1, float('nan')), '12.1f')} "
              f"{r.wall_s:8.1f} {fmt(r.rss_training_mb, '16.0f')} {fmt(r.peak_rss_mb, '15.0f')}  {times}{status}")


def summarize(runs: list[Run], steps: list[int], rss_target: float, time_target: float | None, whole_process: bool) -> None:
    """The ours/reference table; `whole_process`: the RSS target holds for the whole process too
    (loading and the final save included), not only up to the last step."""
    stats: dict[str, dict[str, float]] = {}
    for who in ("reference", "ours"):
        mine = [r for r in runs if r.who == who and r.complete]
        pooled = [t for r in mine for t in r.intervals]
        pooled_cpu = [t for r in mine for t in r.cpu_intervals]
        by_n = {r.steps: r.stamps[r.steps] for r in mine}
        diff = float("nan")
        if len(steps) >= 2 and steps[0] in by_n and steps[-1] in by_n:
            diff = (by_n[steps[-1]] - by_n[steps[0]]) / (steps[-1] - steps[0])
        stats[who] = {
            "s_step": mean(pooled) if pooled else float("nan"),
            "s_step_min": min(pooled) if pooled else float("nan"),
            "diff": diff,
            "cpu": mean(pooled_cpu) if pooled_cpu else float("nan"),
            "rss": max((r.rss_training_mb for r in mine), default=float("nan")),
            "peak": max((r.peak_rss_mb for r in mine), default=float("nan")),
        }
    ref, ours = stats["reference"], stats["ours"]
    print(f"\n{'':34s} {'reference':>10s} {'ours':>10s} {'ours/ref':>9s} {'target':>7s}")
    rows = [
        ("s/step, mean of steps 2..N", "s_step", "8.2f", time_target),
        ("s/step, fastest step", "s_step_min", "8.2f", None),
        (f"s/step, (t_last({steps[-1]})-t_last({steps[0]}))/{steps[-1] - steps[0]}", "diff", "8.2f", None),
        ("CPU s/step (user+sys), steps 2..N", "cpu", "8.2f", time_target),
        ("peak RSS in training MB", "rss", "8.0f", rss_target),
        ("peak RSS whole process MB", "peak", "8.0f", rss_target if whole_process else None),
    ]
    for label, key, spec, target in rows:
        ratio = ours[key] / ref[key] if ref[key] == ref[key] and ref[key] else float("nan")
        verdict = "" if target is None or ratio != ratio else (f"<={target} {'ok' if ratio <= target else 'MISSED'}")
        print(f"{label:34s} {fmt(ref[key], '10' + spec[1:])} {fmt(ours[key], '10' + spec[1:])} {fmt(ratio, '9.2f')} {verdict}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reference", type=Path, help="path to a local copy of diffusers' train_dreambooth_lora.py")
    parser.add_argument("--size", choices=list(SIZES), default="sd15", help="sd15: SD1.5 architecture at 256 px; tiny: the tiny test model at 64 px")
    parser.add_argument("--steps", type=int, nargs="+", default=[3, 6], help="step counts; each is run reference, then ours")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--mixed-precision", choices=["no", "bf16"], default="no",
                        help="both trainers' --mixed_precision: bf16 keeps the frozen weights in bf16 (default %(default)s)")
    parser.add_argument("--work", type=Path, help="keep the model, images and logs here (a model already there is reused)")
    parser.add_argument("--no-pack", action="store_true", help="ours with pack_frozen_convolutions=false")
    parser.add_argument("--method", choices=["lora", "dreambooth"], default="lora",
                        help="lora: against train_dreambooth_lora.py; dreambooth: full UNet with prior preservation against train_dreambooth.py")
    parser.add_argument("--wait-free", type=float, metavar="GIB",
                        help="before each reference run (the larger), wait up to 30 min until this much memory is available (a shared machine)")
    parser.add_argument("--ours-child", nargs=11, help=argparse.SUPPRESS)
    parser.add_argument("--build-child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.ours_child:
        model, images, out, res, steps, threads, precision, pack, method, classes, limit = args.ours_child
        ours_child(model, images, out, int(res), int(steps), int(threads), precision, pack == "1", method, classes,
                   float(limit) if limit else None)
        return
    if args.build_child:
        build_model(*args.build_child)
        return
    if args.reference is None or not args.reference.is_file():
        parser.error("--reference must name a local copy of diffusers' examples/dreambooth/train_dreambooth_lora.py "
                     "(train_dreambooth.py with --method dreambooth; see the top of this file)")

    work = args.work or Path(tempfile.mkdtemp(prefix="bench_reference."))
    work.mkdir(parents=True, exist_ok=True)
    res = SIZES[args.size]
    try:
        model = work / f"model-{args.size}"
        if not (model / "model_index.json").exists():
            t0 = time.monotonic()
            subprocess.run([sys.executable, __file__, "--build-child", args.size, str(model)], check=True,
                           env={**os.environ, "PYTHONPATH": str(REPO)})
            print(f"built the random {args.size} model in {time.monotonic() - t0:.0f} s: {model}", flush=True)
        images = write_instance_images(work / f"images-{res}", res)
        classes = write_instance_images(work / f"class-images-{res}", res, count=CLASS_IMAGES)
        launcher = write_launcher(work)

        what = f"LoRA rank {RANK}" if args.method == "lora" else f"full DreamBooth with prior preservation ({CLASS_IMAGES} class images)"
        print(f"size {args.size} ({res} px), {what}, batch 1, mixed precision {args.mixed_precision}, {args.threads} thread(s), "
              f"ours {'without' if args.no_pack else 'with'} packed convolutions, "
              f"steps {args.steps}; reference {args.reference}", flush=True)
        runs: list[Run] = []
        for n in args.steps:
            for who in ("reference", "ours"):
                out = work / f"out-{who}-{n}"
                shutil.rmtree(out, ignore_errors=True)
                out.mkdir()
                if args.wait_free and who == "reference":
                    wait_for_memory(args.wait_free, f"{who} N={n}")
                if who == "reference":
                    cmd = reference_cmd(launcher, args.reference.resolve(), model, images, out, res, n, args.mixed_precision, args.method, classes)
                    env, pattern = child_env(args.threads, ""), REFERENCE_STEP
                else:
                    limit = None
                    if args.method == "dreambooth":
                        ref = runs[-1].peak_rss_mb if runs and runs[-1].who == "reference" and runs[-1].complete else REFERENCE_RSS_ISSUE_MB
                        limit = TARGET_RSS[args.method] * ref / 1024
                        print(f"    ours: memory='auto' with memory_limit_gb={limit:.2f} ({TARGET_RSS[args.method]} x the reference's "
                              f"{'peak RSS just measured' if ref != REFERENCE_RSS_ISSUE_MB else 'peak RSS in issue 14'})", flush=True)
                    cmd = ours_cmd(model, images, out / "runs", res, n, args.threads, args.mixed_precision, not args.no_pack, args.method,
                                   classes, limit)
                    env, pattern = child_env(args.threads, str(REPO)), OURS_STEP
                run = watch(cmd, env, Run(who, n), pattern, out / "log.txt")
                runs.append(run)
                if who == "reference":
                    print(f"    reference savings: {REFERENCE_SAVINGS[args.method]}", flush=True)
                print(f"  {who:9s} N={n}: {run.s_per_step:.2f} s/step ({run.cpu_per_step:.2f} CPU s), training RSS {run.rss_training_mb:.0f} MB, "
                      f"process RSS {run.peak_rss_mb:.0f} MB, {run.wall_s:.0f} s wall, exit {run.returncode}", flush=True)
                for plan in out.rglob("memory_plan.json"):
                    chosen = json.loads(plan.read_text())
                    used = ", ".join(f"{k}={chosen['settings'][k]}" for k in SAVING_KEYS)
                    print(f"    memory plan {chosen['total_bytes'] / 2**30:.2f} GiB; memory=auto chose: {'; '.join(chosen['choices']) or 'nothing'}"
                          f"\n    ours used: {used}", flush=True)
                if not run.complete:
                    print("    did not finish training; last lines:\n      " + "\n      ".join(run.tail), flush=True)
                drop_weights(out)
        print_table(runs)
        summarize(runs, args.steps, TARGET_RSS[args.method], TARGET_TIME[args.method], whole_process=args.method == "dreambooth")
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
