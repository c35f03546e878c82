"""Our stand-in for `comfy.model_management`: Cancel and freeing memory.

Host facts modelled: Cancel sets a process-wide flag (`interrupt_current_processing`);
`throw_exception_if_processing_interrupted` raises InterruptProcessingException once
and clears the flag; `unload_all_models` and `soft_empty_cache` free GPU memory. Here the
two memory calls are only recorded, in order, in `calls`.
"""
from __future__ import annotations

import threading

calls: list[str] = []

_lock = threading.Lock()
_cancel_requested = [False]


class InterruptProcessingException(Exception):
    pass


def interrupt_current_processing(value=True):
    with _lock:
        _cancel_requested[0] = bool(value)


def throw_exception_if_processing_interrupted():
    with _lock:
        pending, _cancel_requested[0] = _cancel_requested[0], False
    if pending:
        raise InterruptProcessingException()


def unload_all_models():
    calls.append("unload_all_models")


def soft_empty_cache(force=False):
    calls.append("soft_empty_cache")
