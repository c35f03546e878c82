"""Count the bytes of tensor storage alive while some code runs, and their peak.

A TorchDispatchMode sees every tensor an operator returns; each new storage is counted
until Python frees it (a weak reference's callback). It works the same on real tensors
(to measure a real training step) and on fake ones (to plan a step that never allocates).
"""
from __future__ import annotations

import weakref
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


def storage_bytes(tensors: Any) -> int:
    """Bytes of the distinct storages behind `tensors` (views of one storage count once)."""
    seen: dict[int, int] = {}
    for t in tree_leaves(tensors):
        if isinstance(t, torch.Tensor) and t.device.type != "meta" or _is_fake(t):
            st = t.untyped_storage()
            seen[st._cdata] = st.nbytes()
    return sum(seen.values())


def _is_fake(t: Any) -> bool:
    from torch._subclasses.fake_tensor import FakeTensor

    return isinstance(t, FakeTensor)


class LiveBytes(TorchDispatchMode):
    """`live`: bytes allocated inside the mode and not yet freed; `peak`: their maximum."""

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self._refs: dict[int, weakref.ref] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        # in-place ops and views return storage that already existed (maybe from before the mode)
        inputs = {t.untyped_storage()._cdata for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                st = t.untyped_storage()
                if st._cdata not in inputs:
                    self._track(st)
        return out

    def _track(self, st: torch.UntypedStorage) -> None:
        key = st._cdata
        if key in self._refs:
            return
        size = st.nbytes()
        self.live += size
        self.peak = max(self.peak, self.live)

        def freed(_ref, key=key, size=size) -> None:
            self.live -= size
            self._refs.pop(key, None)

        self._refs[key] = weakref.ref(st, freed)

    def reset_peak(self) -> None:
        self.peak = self.live
