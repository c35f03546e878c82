"""Fake of `comfy.model_management` (ComfyUI 0.3.64): the interrupt flag and memory calls.

`calls` records unload_all_models / soft_empty_cache so tests can see memory was freed.
"""
from __future__ import annotations

import threading

calls: list[str] = []


class InterruptProcessingException(Exception):
    pass


interrupt_processing_mutex = threading.RLock()
interrupt_processing = False


def interrupt_current_processing(value=True):
    global interrupt_processing
    with interrupt_processing_mutex:
        interrupt_processing = value


def processing_interrupted():
    with interrupt_processing_mutex:
        return interrupt_processing


def throw_exception_if_processing_interrupted():
    """Resets the flag and raises, exactly once per interrupt (as the real one does)."""
    global interrupt_processing
    with interrupt_processing_mutex:
        if interrupt_processing:
            interrupt_processing = False
            raise InterruptProcessingException()


def unload_all_models():
    calls.append("unload_all_models")


def soft_empty_cache(force=False):
    calls.append("soft_empty_cache")
