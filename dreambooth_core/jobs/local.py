"""Run training in this process: directly (`run_in_process`) or in a background thread (`LocalJob`).

In-process runs suit the CLI and hosts whose environment already has modern
diffusers/peft (ComfyUI usually does); otherwise use a `WorkerJob`.
"""
from __future__ import annotations

import contextlib
import sys
import threading
import traceback
from typing import Callable, Iterator

from ..config import TrainConfig
from ..errors import Cancelled, UserError
from ..events import CancelToken, Done, Error, Event, EventSink
from .state import Job, RunState

Runner = Callable[[TrainConfig, EventSink, CancelToken], object]


def default_runner() -> Runner:
    """The real trainer, imported only when a run starts (it pulls in torch and diffusers),
    after checking that this Python's packages are ones it works with."""
    from ..environment import check_runtime

    check_runtime()
    try:
        from ..train import run_training
    except ImportError as exc:
        raise UserError(
            f"the trainer cannot be imported in this Python ({exc}); install dreambooth_core's requirements, "
            "or train in the worker environment"
        ) from exc
    return run_training


def run_in_process(
    config: TrainConfig,
    on_event: EventSink | None = None,
    cancel: CancelToken | None = None,
    runner: Runner | None = None,
) -> RunState:
    """Run one training to its end and return its final state; never raises for a failed run.

    Whatever happens, the event stream ends with exactly one Done: a user error becomes
    Error + Done("failed"), a bug the same with its traceback, a Cancelled that escapes
    the runner Done("cancelled").
    """
    state = RunState(status="running")
    cancel = cancel or CancelToken()

    def emit(event: Event) -> None:
        if state.finished:
            return
        state.update(event)
        if on_event is not None:
            on_event(event)

    def end(status: str) -> None:
        emit(Done(status=status, run_dir=state.run_dir, step=state.step))

    try:
        with _gradients_allowed():
            (runner or default_runner())(config, emit, cancel)
    except Cancelled:
        end("cancelled")
    except UserError as exc:
        emit(Error(str(exc), user_error=True))
        end("failed")
    except Exception as exc:
        emit(Error(f"{type(exc).__name__}: {exc}", user_error=False, traceback=traceback.format_exc()))
        end("failed")
    if not state.finished:
        end("cancelled" if cancel.cancelled else "completed")
    return state


@contextlib.contextmanager
def _gradients_allowed() -> Iterator[None]:
    """ComfyUI runs nodes under torch.inference_mode() (and some hosts under no_grad).

    If torch is not imported yet, nobody can have switched gradients off in this thread.
    """
    torch = sys.modules.get("torch")
    if torch is None:
        yield
        return
    with torch.inference_mode(False), torch.enable_grad():
        yield


class LocalJob(Job):
    """`run_in_process` in a daemon thread, so a UI stays responsive while it trains."""

    mode = "in_process"

    def __init__(self, config: TrainConfig, on_event: EventSink | None = None, runner: Runner | None = None) -> None:
        super().__init__(config, on_event)
        self.runner = runner
        self._thread: threading.Thread | None = None

    def _launch(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"dreambooth-job-{self.id}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            run_in_process(self.config, self._record, self.cancel_token, self.runner)
        finally:
            self._finish()
