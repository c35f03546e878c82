"""The one typed event stream of a training run.

The loop emits these; the CLI draws them as a tqdm bar, the worker process writes them
as JSON lines, and the host adapters relay them to their UI. Keeping them plain
dataclasses of JSON-friendly fields is what lets one stream cross a process boundary.
"""
from __future__ import annotations

import json
import threading
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, ClassVar

from .errors import Cancelled


@dataclass
class Event:
    type: ClassVar[str] = "event"

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, **asdict(self)}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False)


@dataclass
class Started(Event):
    type: ClassVar[str] = "started"
    run_dir: str
    method: str
    total_steps: int
    start_step: int = 0


@dataclass
class Progress(Event):
    """One step (or one unit of a preparation phase) done."""

    type: ClassVar[str] = "progress"
    phase: str            # "class_images" | "caching" | "train" | "validation" | "evaluation" | "saving"
    step: int
    total: int
    eta_seconds: float | None = None
    loss: float | None = None
    lr: float | None = None
    elapsed_seconds: float | None = None


@dataclass
class Preview(Event):
    """A validation image written to disk (paths, so the event stays small and JSON-safe)."""

    type: ClassVar[str] = "preview"
    step: int
    path: str
    prompt: str = ""


@dataclass
class Artifact(Event):
    """A file the run wrote for the user (or for resuming)."""

    type: ClassVar[str] = "artifact"
    kind: str             # "checkpoint" | "diffusers" | "lora" | "embedding" | "hypernetwork" | "state" | "loss_plot" | "eval_plot" | "samples"
    path: str
    name: str = ""
    prompt_hint: str = ""  # e.g. "<lora:zwx_dog:0.8>", "zwx_dog", "<hypernet:zwx_dog:1>"
    final: bool = True     # False for intermediate (checkpoint-step, cancelled) artifacts


@dataclass
class Evaluation(Event):
    """The measures at one step (evaluate/): subject fidelity, prompt fidelity, prior drift, diversity."""

    type: ClassVar[str] = "evaluation"
    step: int
    scores: dict[str, float]
    best_step: int | None = None   # select_best: the step that would be published now
    plot: str = ""                 # the curves so far (PNG)


@dataclass
class Log(Event):
    type: ClassVar[str] = "log"
    level: str            # "info" | "warning"
    message: str


@dataclass
class Error(Event):
    type: ClassVar[str] = "error"
    message: str
    user_error: bool = True
    traceback: str = ""


@dataclass
class Done(Event):
    type: ClassVar[str] = "done"
    status: str           # "completed" | "cancelled" | "failed"
    run_dir: str = ""
    step: int = 0
    artifacts: list[dict[str, Any]] = field(default_factory=list)


EVENT_TYPES: dict[str, type[Event]] = {cls.type: cls for cls in (Started, Progress, Preview, Artifact, Evaluation, Log, Error, Done)}

EventSink = Callable[[Event], None]


def event_from_dict(data: dict[str, Any]) -> Event:
    fields = dict(data)
    cls = EVENT_TYPES.get(fields.pop("type", ""))
    if cls is None:
        return Log(level="info", message=json.dumps(data))
    return cls(**fields)


def event_from_json(line: str) -> Event:
    return event_from_dict(json.loads(line))


class CancelToken:
    """Set from any thread (a UI button, a signal, a worker's stdin); checked by the loop every step."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def check(self) -> None:
        if self._event.is_set():
            raise Cancelled()
