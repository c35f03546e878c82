"""Time and peak memory of `dreambooth-core convert` on a full SD1.5-size model.

Writes random fp16 weights with SD1.5's exact keys and shapes (~2 GB, plus the extras real
files carry) to a temporary folder, then runs single file → diffusers and diffusers →
single file, each in a fresh process, reporting wall time and that process's peak RSS.
The target is a peak RSS of at most ~1.2x the file size. The round trip is also checked to
reproduce every tensor of the source.

    python benchmarks/bench_convert.py [--keep DIR]
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def make_sd15_file(path: Path) -> None:
    """Random fp16 tensors under SD1.5's real single-file keys (shapes from the meta-device model)."""
    import torch
    from safetensors.torch import save_file

    from dreambooth_core.formats.checkpoint import ldm_state_dict
    from dreambooth_core.models.configs import empty_base_model

    g = torch.Generator().manual_seed(0)
    tensors = {
        k: (torch.randn(v.shape, generator=g) * 0.02).to(torch.float16)
        for k, v in ldm_state_dict(empty_base_model("sd1")).items()
    }
    tensors["alphas_cumprod"] = torch.rand(1000, generator=g)
    tensors["cond_stage_model.transformer.text_model.embeddings.position_ids"] = torch.arange(77)[None]
    save_file(tensors, str(path))


# Runs a command's Python code and reports the process's own high-water RSS (VmHWM, which
# exec resets, unlike ru_maxrss, which a forked child inherits from its parent).
_MEASURE = """
import runpy, sys
code = 0
try:
    if sys.argv[1] == "-c":
        exec(sys.argv[2])
    else:
        sys.argv = sys.argv[1:]  # ["-m", COMMAND, ...]: main() reads argv[1:]
        runpy.run_module("dreambooth_core", run_name="__main__")
except SystemExit as exc:
    code = exc.code or 0
hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM:")][0].split()[1]
print("VmHWM_KB", hwm, file=sys.stderr)
sys.exit(code)
"""


def timed(args: list[str]) -> tuple[float, float]:
    """(wall seconds, peak RSS MiB) of `python -c CODE` or `dreambooth-core ARGS` in a fresh process."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", _MEASURE, *args], env=env, stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    hwm = [line for line in proc.stderr.splitlines() if line.startswith("VmHWM_KB")][-1]
    return wall, int(hwm.split()[1]) / 1024


def same_tensors(a: Path, b: Path) -> bool:
    import torch
    from safetensors import safe_open

    with safe_open(str(a), "pt") as fa, safe_open(str(b), "pt") as fb:
        if set(fa.keys()) != set(fb.keys()):
            return False
        return all(torch.equal(fa.get_tensor(k), fb.get_tensor(k)) for k in fa.keys())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", type=Path, help="work in this folder and keep the files")
    args = parser.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="bench_convert_"))
    work.mkdir(parents=True, exist_ok=True)
    src, folder, back = work / "sd15.safetensors", work / "sd15_diffusers", work / "sd15_back.safetensors"
    try:
        if not src.exists():
            print("writing random SD1.5-size weights ...", flush=True)
            make_sd15_file(src)
        size = src.stat().st_size / 2**20
        cli = ["-m", "convert"]
        rows = [("python + torch/diffusers/transformers imports", timed(["-c", "import torch, diffusers, transformers"]))]
        shutil.rmtree(folder, ignore_errors=True)
        back.unlink(missing_ok=True)
        rows.append(("convert single file -> diffusers (fp16)", timed([*cli, str(src), str(folder)])))
        rows.append(("convert diffusers -> single file (fp16)", timed([*cli, str(folder), str(back)])))
        print(f"\nsource file: {size:,.0f} MiB (SD1.5 shapes, fp16)")
        for name, (wall, rss) in rows:
            print(f"{name:48s} {wall:7.1f} s   peak RSS {rss:7,.0f} MiB = {rss / size:4.2f} x file")
        print(f"round trip reproduces every tensor: {same_tensors(src, back)}")
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    main()
