"""Training: `run_training(config, emit, cancel) -> RunResult` is the one entry point.

Importing this package stays light; torch, diffusers and the rest load when a run starts.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from .result import RunResult

if TYPE_CHECKING:
    from ..config import TrainConfig
    from ..events import CancelToken, EventSink

__all__ = ["RunResult", "run_training"]


def run_training(config: "TrainConfig", emit: "EventSink", cancel: "CancelToken") -> RunResult:
    """Train as `config` says, reporting through `emit`; `cancel` stops at the next step with
    a resumable state. Returns normally when completed or cancelled; on failure emits Error
    and Done("failed") and re-raises (UserError for bad input, anything else is a bug)."""
    from .loop import Trainer

    return Trainer(config, emit, cancel).run()
