"""`dreambooth-core worker`: one training run for a host, spoken over pipes.

Protocol (what `jobs.WorkerJob` speaks): the config arrives as one JSON line on stdin
(or from `--config FILE`); every event leaves as one JSON line on stdout; a `cancel`
line on stdin asks the run to stop and save a resumable state. When the config came
over stdin, end-of-file on stdin also cancels: the parent has gone, so an orphaned
worker stops instead of training on unseen (its writes to the broken pipes are
dropped, so saving the resumable state still succeeds); Ctrl-C also cancels, a second
Ctrl-C stops at once. Library chatter (prints, warnings,
progress bars, diffusers/transformers logging) is sent to stderr, so stdout carries
nothing but events.

Exit status: 0 completed or cancelled, 1 a user error (after an Error and a
Done("failed") event), 2 an internal error (the Error carries the traceback).

Test-only: `DREAMBOOTH_CORE_FAKE_RUNNER=module:function` replaces the trainer with that
function (same signature as `train.run_training`), so the protocol can be tested
without models. Nothing else reads it.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import threading
from typing import Any, BinaryIO, TextIO

from ..config import TrainConfig, config_from_dict, load_config
from ..errors import ConfigError, UserError
from ..events import CancelToken, Done, Error, Event
from ..jobs import run_in_process
from ..jobs.local import Runner
from .train import graceful_interrupt

FAKE_RUNNER_ENV = "DREAMBOOTH_CORE_FAKE_RUNNER"


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "worker",
        help="run one training for a host: config JSON on stdin, events as JSON lines on stdout",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", metavar="FILE", help="read the config from this .toml/.json/.yaml file instead of stdin")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    cancel = CancelToken()
    emit = EventWriter(take_stdout(), cancel)
    stdin = StdinLines()
    try:
        config = load_config(args.config) if args.config else read_config_line(stdin)
        runner = injected_runner()
    except UserError as exc:
        emit(Error(str(exc), user_error=True))
        emit(Done(status="failed"))
        return 1
    watch_stdin(stdin, cancel, eof_cancels=not args.config)
    with graceful_interrupt(cancel.cancel):
        state = run_in_process(config, on_event=emit, cancel=cancel, runner=runner)
    if state.status != "failed":
        return 0
    return 1 if state.error is None or state.error.user_error else 2


def take_stdout() -> BinaryIO:
    """Keep the real stdout for events and point file descriptor 1 (and sys.stdout) at stderr,
    so even a C library's printf cannot corrupt the event stream."""
    sys.stdout.flush()
    events_fd = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr = PipeSafe(sys.stderr)
    return os.fdopen(events_fd, "wb", buffering=0)


class PipeSafe:
    """A text stream whose writes cannot fail: when the parent dies, its pipes break, and a
    library's print must not crash the run while it saves its resumable state."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except (OSError, ValueError):
            return len(text)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except (OSError, ValueError):
            pass

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


class EventWriter:
    """Writes events as JSON lines from any thread; if the reader has gone, stops the run."""

    def __init__(self, stream: BinaryIO, cancel: CancelToken) -> None:
        self.stream = stream
        self.cancel = cancel
        self.broken = False
        self._lock = threading.Lock()

    def __call__(self, event: Event) -> None:
        data = (event.to_json() + "\n").encode("utf-8")
        with self._lock:
            if self.broken:
                return
            try:
                self.stream.write(data)
            except OSError:
                # Nobody is listening any more: finish quietly (the run still saves its state).
                self.broken = True
                self.cancel.cancel()


class StdinLines:
    """Lines of stdin read straight from the file descriptor.

    Not `sys.stdin`: a daemon thread blocked inside its buffered reader at interpreter
    exit makes Python abort, and its read-ahead could swallow a `cancel` line.
    """

    def __init__(self, fd: int = 0) -> None:
        self.fd = fd
        self.buffer = b""

    def readline(self) -> bytes | None:
        """The next line without its newline, or None at end of file."""
        while b"\n" not in self.buffer:
            try:
                chunk = os.read(self.fd, 65536)
            except OSError:
                chunk = b""
            if not chunk:
                rest, self.buffer = self.buffer, b""
                return rest or None
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line


def read_config_line(stdin: StdinLines) -> TrainConfig:
    line = stdin.readline()
    if not line or not line.strip():
        raise ConfigError("the worker expects the training config as one JSON line on stdin (or --config FILE)")
    try:
        data = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ConfigError(f"the config line on stdin is not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ConfigError("the config line on stdin must be a JSON object of settings")
    return config_from_dict(data).validate()


def watch_stdin(stdin: StdinLines, cancel: CancelToken, eof_cancels: bool) -> None:
    def watch() -> None:
        while True:
            line = stdin.readline()
            if line is None:
                if eof_cancels:
                    cancel.cancel()
                return
            if line.strip().lower() == b"cancel":
                cancel.cancel()

    threading.Thread(target=watch, name="dreambooth-worker-stdin", daemon=True).start()


def injected_runner() -> Runner | None:
    """The test-only replacement trainer named by DREAMBOOTH_CORE_FAKE_RUNNER, if any."""
    spec = os.environ.get(FAKE_RUNNER_ENV)
    if not spec:
        return None
    module, _, name = spec.partition(":")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise UserError(f"{FAKE_RUNNER_ENV}={spec} cannot be loaded ({exc})") from None
