"""`dreambooth-core train [CONFIG] [--preset NAME] [--set key=value ...] [--worker]`.

The config is fully validated before any model loads, so a typo fails in a second with
one line. Progress is drawn as one bar per phase; Ctrl-C once cancels gracefully (the
run saves a resumable state), twice stops at once.
Exit status: 0 completed, 130 cancelled, 1 a config or user error, 2 an internal error.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading
import warnings
from typing import Any, Callable, Iterator, TextIO

from ..config import PRESETS, TrainConfig, load_config, parse_set
from ..events import Artifact, CancelToken, Done, Error, Event, Log, Preview, Progress, Started
from ..fileio import UNSAFE_PICKLE_ENV
from ..jobs import RunState, WorkerJob, run_in_process

PHASES = {"class_images": ("class images", "img"), "caching": ("caching", "img"), "train": ("training", "step"),
          "validation": ("previews", "img"), "saving": ("saving", "file")}


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train DreamBooth, LoRA, Textual Inversion or a Hypernetwork from a config",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", nargs="?", help="a .toml, .json or .yaml config (optional when --preset and --set say everything)")
    p.add_argument("--preset", metavar="NAME",
                   help=f"start from these defaults ({', '.join(PRESETS)}); the config file and --set override them")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one setting, e.g. --set max_train_steps=400 (repeatable)")
    p.add_argument("--worker", action="store_true", help="train in a separate worker process (as the host adapters do)")
    p.add_argument("--unsafe-pickle", action="store_true",
                   help="allow a pickled .ckpt/.bin base model that needs full unpickling or a torch before 2.6 "
                        "(unpickling runs code: trusted files only)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    config = load_config(args.config, preset=args.preset, overrides=parse_set(args.overrides))
    printer = ProgressPrinter()
    if args.unsafe_pickle:   # this process is the CLI's own; a worker inherits its environment
        os.environ[UNSAFE_PICKLE_ENV] = "1"
    with printer.redirect_warnings():
        if args.worker:
            job = WorkerJob(config, on_event=printer)
            with graceful_interrupt(lambda: (printer.cancelling(), job.cancel())):
                job.start()
                while not job.wait(0.25):
                    pass
            state = job.result
        else:
            cancel = CancelToken()
            with graceful_interrupt(lambda: (printer.cancelling(), cancel.cancel())):
                state = run_in_process(config, on_event=printer, cancel=cancel)
    printer.close()
    print(summary(state, config))
    if state.status == "completed":
        return 0
    if state.status == "cancelled":
        return 130
    return 1 if state.error is None or state.error.user_error else 2


@contextlib.contextmanager
def graceful_interrupt(on_first: Callable[[], Any]) -> Iterator[None]:
    """First Ctrl-C calls `on_first` (cancel: the run saves its state); the second raises
    KeyboardInterrupt as usual. Only the main thread can own signals; elsewhere a no-op."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def first(signum: int, frame: Any) -> None:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        on_first()

    previous = signal.signal(signal.SIGINT, first)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


class ProgressPrinter:
    """Draws a run's events on a terminal: a tqdm bar per phase, messages above it."""

    def __init__(self, file: TextIO | None = None) -> None:
        self.file = file or sys.stderr
        self.bar: Any = None
        self.phase = ""
        self._lock = threading.RLock()  # worker runs report from two reader threads

    def __call__(self, event: Event) -> None:
        with self._lock:
            if isinstance(event, Progress):
                self._progress(event)
            elif isinstance(event, Started):
                resume = f", resuming at step {event.start_step}" if event.start_step else ""
                self.write(f"{event.method}: {event.total_steps} steps{resume}; run folder {event.run_dir}")
            elif isinstance(event, Log):
                self.write(event.message if event.level == "info" else f"{event.level}: {event.message}")
            elif isinstance(event, Preview):
                self.write(f"preview at step {event.step}: {event.path}")
            elif isinstance(event, Artifact) and not event.final:
                self.write(f"saved {event.kind}: {event.path}")
            elif isinstance(event, Error):
                self.write(f"error: {event.message}" + (f"\n{event.traceback.rstrip()}" if event.traceback else ""))
            elif isinstance(event, Done):
                self.close()

    def _progress(self, event: Progress) -> None:
        from tqdm import tqdm

        if self.bar is None or event.phase != self.phase:
            self.close()
            label, unit = PHASES.get(event.phase, (event.phase, "it"))
            self.phase = event.phase
            self.bar = tqdm(total=event.total, initial=event.step, desc=label, unit=unit, file=self.file,
                            dynamic_ncols=True, leave=True)
        else:
            self.bar.total = event.total
            self.bar.update(event.step - self.bar.n)
        postfix = {}
        if event.loss is not None:
            postfix["loss"] = f"{event.loss:.4f}"
        if event.lr is not None:
            postfix["lr"] = f"{event.lr:.2e}"
        if postfix:
            self.bar.set_postfix(postfix, refresh=False)

    def write(self, message: str) -> None:
        from tqdm import tqdm

        with self._lock:
            tqdm.write(message, file=self.file)

    def cancelling(self) -> None:
        self.write("cancelling: saving a resumable state (press Ctrl-C again to stop at once)")

    def close(self) -> None:
        with self._lock:
            if self.bar is not None:
                self.bar.close()
                self.bar = None

    @contextlib.contextmanager
    def redirect_warnings(self) -> Iterator[None]:
        """Python warnings raised during an in-process run are printed above the bar, not through it."""
        original = warnings.showwarning

        def show(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001
            self.write(f"warning: {category.__name__}: {message}")

        warnings.showwarning = show
        try:
            yield
        finally:
            warnings.showwarning = original


def summary(state: RunState, config: TrainConfig | None = None) -> str:
    """What the user needs at the end: where the files are, what to type in a prompt, and
    which host computes something else with them (a DoRA file in A1111, an OFT file in Forge)."""
    lines = [f"{state.status}" + (f" at step {state.step}" if state.step else "") +
             (f"; run folder {state.run_dir}" if state.run_dir else "")]
    for artifact in state.artifacts:
        if artifact.final:
            hint = f"   use in a prompt: {artifact.prompt_hint}" if artifact.prompt_hint else ""
            lines.append(f"  {artifact.kind}: {artifact.path}{hint}")
    if config is not None and any(a.final and a.kind == "lora" for a in state.artifacts):
        from ..lifecycle.handoff import host_note

        lines += [f"  note for A1111/Forge: {note}" for note in [host_note(config, "a1111")] if note]
    if state.status == "cancelled":
        states = [a for a in state.artifacts if a.kind == "state"]
        if states:
            lines.append(f"  resumable state: {states[-1].path}\n  resume with the same settings and --set resume_from=latest")
    return "\n".join(lines)
