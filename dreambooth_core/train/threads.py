"""How many CPU threads a run trains with: the cores that are free when it starts.

torch uses every core by default, and its OpenMP threads spin while they wait for each
other. On a machine that is doing something else, a thread whose core is busy holds up
every parallel region while the others spin against the busy cores, so a shared 2-core
machine trained the demo 16x slower instead of the ~3x that sharing costs. A run
therefore takes only the cores that were idle over a short look at the whole machine
(`psutil.cpu_percent`) before it starts; `DREAMBOOTH_CORE_THREADS` (or OMP_NUM_THREADS)
pins the count instead. Only CPU training is affected: on a GPU, threads feed the device.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Iterator, Mapping

THREADS_ENV = "DREAMBOOTH_CORE_THREADS"
SAMPLE_SECONDS = 0.5


@dataclass(frozen=True)
class ThreadChoice:
    count: int
    cores: int
    reason: str

    def describe(self) -> str:
        return f"training on {self.count} of {self.cores} CPU threads: {self.reason}"


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def busy_cores(cores: int, seconds: float = SAMPLE_SECONDS) -> float:
    """How many cores other work keeps busy now (this process is idle while it looks)."""
    import psutil

    return psutil.cpu_percent(interval=seconds) / 100.0 * (psutil.cpu_count() or cores)


def choose_threads(environ: Mapping[str, str] = os.environ, cores: int | None = None,
                   busy: float | None = None) -> ThreadChoice:
    """The thread count for a CPU run, and why (`busy` is measured when not given)."""
    cores = cores or usable_cores()
    for name in (THREADS_ENV, "OMP_NUM_THREADS"):
        value = environ.get(name, "").strip()
        if value.isdigit() and int(value) > 0:
            return ThreadChoice(int(value), cores, f"set by {name}")
    busy = busy_cores(cores) if busy is None else busy
    taken = min(cores - 1, int(busy + 0.5))
    if taken <= 0:
        return ThreadChoice(cores, cores, "the machine is otherwise idle")
    return ThreadChoice(cores - taken, cores, f"other work keeps {busy:.1f} cores busy, and threads on busy cores "
                                              f"would make every step wait (set {THREADS_ENV} to choose)")


@contextlib.contextmanager
def cpu_threads(choice: ThreadChoice) -> Iterator[None]:
    """torch's intra-op thread count set to `choice` for the run, and restored after it (a
    host that trains in its own process keeps its setting)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(choice.count)
    try:
        yield
    finally:
        torch.set_num_threads(before)
