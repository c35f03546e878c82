"""A run as its host sees it: the state read from its events, and the `Job` both runners share.

Host adapters never look inside the trainer: they watch a job's events and attributes
(status, progress, artifacts, previews, error) from their UI thread while the run goes on
in a thread or a worker process. Everything here is thread-safe and import-light.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

from ..config import TrainConfig
from ..events import Artifact, CancelToken, Done, Error, Event, EventSink, Log, Preview, Progress, Started

FINAL_STATUSES = ("completed", "cancelled", "failed")
LOG_LINES = 500
STATUS_PREVIEWS = 4
STATUS_LOG_LINES = 20

log = logging.getLogger(__name__)


@dataclass
class RunState:
    """What the events of one run have said so far."""

    status: str = "queued"       # "queued" | "running" | "completed" | "cancelled" | "failed"
    run_dir: str = ""
    method: str = ""
    total_steps: int = 0
    step: int = 0                # last training step reached
    progress: Progress | None = None
    train_progress: Progress | None = None  # the last training step's: its loss and lr outlive the save phase
    artifacts: list[Artifact] = field(default_factory=list)
    previews: list[Preview] = field(default_factory=list)
    error: Error | None = None   # the first error: the cause, not its consequences

    @property
    def finished(self) -> bool:
        return self.status in FINAL_STATUSES

    def update(self, event: Event) -> None:
        if isinstance(event, Started):
            self.status, self.run_dir, self.method = "running", event.run_dir, event.method
            self.total_steps, self.step = event.total_steps, event.start_step
        elif isinstance(event, Progress):
            self.progress = event
            if event.phase == "train":
                self.step, self.train_progress = event.step, event
        elif isinstance(event, Preview):
            self.previews.append(event)
        elif isinstance(event, Artifact):
            self.artifacts.append(event)
        elif isinstance(event, Error):
            self.error = self.error or event
        elif isinstance(event, Done):
            self.status = event.status
            self.run_dir = event.run_dir or self.run_dir
            self.step = event.step or self.step


class Job:
    """One training run, queued, running or finished; subclasses say where it runs.

    `events` keeps every structured event in order (poll with `events_since`); `log`
    keeps the last LOG_LINES log messages, including a worker's raw output.
    """

    mode: ClassVar[str] = ""

    def __init__(self, config: TrainConfig, on_event: EventSink | None = None) -> None:
        self.id = uuid.uuid4().hex[:12]
        self.config = config
        self.created = time.time()
        self.cancel_token = CancelToken()
        self._state = RunState()
        self._events: list[Event] = []
        self._log: deque[str] = deque(maxlen=LOG_LINES)
        self._lock = threading.Lock()
        self._started = False
        self._ending = False
        self._finished = threading.Event()
        self._listeners: list[EventSink] = [on_event] if on_event else []
        self._done_callbacks: list[Callable[[Job], None]] = []

    # ---- what adapters read ------------------------------------------------------------
    @property
    def status(self) -> str:
        return self._state.status

    @property
    def progress(self) -> Progress | None:
        return self._state.progress

    @property
    def artifacts(self) -> list[Artifact]:
        with self._lock:
            return list(self._state.artifacts)

    @property
    def previews(self) -> list[Preview]:
        with self._lock:
            return list(self._state.previews)

    @property
    def run_dir(self) -> str:
        return self._state.run_dir

    @property
    def error(self) -> str | None:
        return self._state.error.message if self._state.error else None

    @property
    def result(self) -> RunState:
        """A snapshot of the run's state (final once `wait` has returned True)."""
        with self._lock:
            s = self._state
            return dataclasses.replace(s, artifacts=list(s.artifacts), previews=list(s.previews))

    @property
    def events(self) -> list[Event]:
        with self._lock:
            return list(self._events)

    def events_since(self, index: int) -> list[Event]:
        """Events from position `index` on: a UI keeps `index += len(new)` between polls."""
        with self._lock:
            return self._events[index:]

    @property
    def log(self) -> list[str]:
        with self._lock:
            return list(self._log)

    def status_dict(self) -> dict[str, Any]:
        """A JSON-safe summary for an HTTP API or a UI poll."""
        with self._lock:
            s = self._state
            p, t = s.progress, s.train_progress
            log_tail = list(self._log)[-STATUS_LOG_LINES:]
            return {
                "id": self.id,
                "mode": self.mode,
                "status": s.status,
                "name": self.config.name,
                "method": self.config.method,
                "phase": s.status if s.finished else (p.phase if p else None),
                "step": p.step if p else s.step,
                "total": p.total if p else s.total_steps,
                "train_step": s.step,
                "train_total": s.total_steps,
                "eta": _finite(p.eta_seconds) if p else None,
                "loss": _finite(t.loss) if t else None,
                "lr": _finite(t.lr) if t else None,
                "run_dir": s.run_dir,
                "artifacts": [a.to_dict() for a in s.artifacts],
                "previews": [v.to_dict() for v in s.previews[-STATUS_PREVIEWS:]],
                "error": s.error.message if s.error else None,
                "log": log_tail,
            }

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the run has ended (and its process has exited); True if it has."""
        return self._finished.wait(timeout)

    def add_listener(self, listener: EventSink) -> None:
        """Call `listener(event)` for every later event, in the thread that produced it."""
        self._listeners.append(listener)

    def add_done_callback(self, callback: Callable[["Job"], None]) -> None:
        """Call `callback(job)` once the run has ended (at once if it already has)."""
        with self._lock:
            if not self._ending:
                self._done_callbacks.append(callback)
                return
        _safe_call(callback, self)

    # ---- control -----------------------------------------------------------------------
    def start(self) -> None:
        with self._lock:
            if self._started:
                return
            self._started = True
            self._state.status = "running"
        self._launch()

    def cancel(self) -> None:
        """Ask the run to stop: it saves a resumable state and ends "cancelled".

        A job still waiting in a queue ends "cancelled" at once.
        """
        with self._lock:
            queued = not self._started
            self._started = True
        if queued:
            self._record(Done(status="cancelled"))
            self._finish()
            return
        if not self._ending:
            self.cancel_token.cancel()
            self._request_stop()

    # ---- for subclasses ----------------------------------------------------------------
    def _launch(self) -> None:
        raise NotImplementedError

    def _request_stop(self) -> None:
        """Runner-specific part of cancel (the token is already set)."""

    def _record(self, event: Event, keep: bool = True) -> None:
        """Take in one event; `keep=False` for raw output lines that only go to the log."""
        with self._lock:
            if self._state.finished and not isinstance(event, Log):
                return  # nothing after Done: a late event must not change a final status
            self._state.update(event)
            if keep:
                self._events.append(event)
            if isinstance(event, Log):
                self._log.append(event.message if event.level == "info" else f"{event.level}: {event.message}")
            elif isinstance(event, Error):
                self._log.append(f"error: {event.message}")
        for listener in self._listeners:
            _safe_call(listener, event)

    def _finish(self) -> None:
        """Mark the run ended (exactly once), making sure it ended with a Done event.

        Done callbacks run before `wait` returns, so a waiter sees their effects
        (e.g. a manager that has already started the next queued job).
        """
        if not self._state.finished:
            self._record(Error("the run ended without reporting a result (see the log)", user_error=False))
            self._record(Done(status="failed", run_dir=self._state.run_dir, step=self._state.step))
        with self._lock:
            if self._ending:
                return
            self._ending = True
            callbacks, self._done_callbacks = self._done_callbacks, []
        for callback in callbacks:
            _safe_call(callback, self)
        self._finished.set()


def _safe_call(fn: Callable[..., Any], *args: Any) -> None:
    """A listener's bug must not stop a training run or the bookkeeping around it."""
    try:
        fn(*args)
    except Exception:
        log.exception("job callback %r failed", fn)


def _finite(value: float | None) -> float | None:
    return value if value is None or math.isfinite(value) else None
