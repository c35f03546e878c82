"""The demo's DreamBooth step time on a machine that is doing something else.

Three runs of the demo's DreamBooth (fewer steps), each in a fresh process:
  idle                         nothing else runs; the run takes every core
  busy, chosen threads         `--busy` single-threaded busy loops run beside it; the run
                               takes the cores they leave free (train/threads.py)
  busy, every core (before)    the same loops, the run pinned to every core, as torch's
                               default did before: the reference
and prints seconds per training step side by side, and each busy figure over the idle one.

    python benchmarks/bench_shared_machine.py [--busy 2] [--steps-scale 0.1]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RUN = """
import json, sys
from pathlib import Path
from dreambooth_core.demo import DEMO_METHODS, train_and_score
from dreambooth_core.train.threads import choose_threads
choice = choose_threads()
run = train_and_score(DEMO_METHODS["dreambooth"], Path(sys.argv[1]), float(sys.argv[2]))
print(json.dumps({"per_step": run.seconds_per_step, "threads": choice.count, "why": choice.reason}))
"""


def measure(out: Path, scale: float, environ: dict[str, str]) -> dict:
    done = subprocess.run([sys.executable, "-c", RUN, str(out), str(scale)], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO), **environ}, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--busy", type=int, default=2, help="single-threaded busy loops beside the busy runs")
    parser.add_argument("--steps-scale", type=float, default=0.1, help="of the demo's 800 DreamBooth steps")
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        measure(out, 0.01, {})            # draws and caches the class images, so no run below pays for them
        rows.append(("idle", measure(out, args.steps_scale, {})))
        loops = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.busy)]
        try:
            rows.append((f"{args.busy} busy loops, chosen threads", measure(out, args.steps_scale, {})))
            rows.append((f"{args.busy} busy loops, every core (before)",
                         measure(out, args.steps_scale, {"DREAMBOOTH_CORE_THREADS": str(cores)})))
        finally:
            for loop in loops:
                loop.kill()
    idle = rows[0][1]["per_step"]
    print(f"{'run':<36} {'threads':>7} {'s/step':>8} {'x idle':>7}")
    for label, r in rows:
        print(f"{label:<36} {r['threads']:>7} {r['per_step']:>8.3f} {r['per_step'] / idle:>7.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
