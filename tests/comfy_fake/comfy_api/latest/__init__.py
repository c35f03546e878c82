"""Fake of `comfy_api.latest` (ComfyUI 0.3.64): ComfyExtension, io, ui."""
from __future__ import annotations

from abc import ABC, abstractmethod

from . import _io as io
from . import _ui as ui


class ComfyExtension(ABC):
    async def on_load(self) -> None:
        """Never called by ComfyUI 0.3.64's loader (kept for the signature)."""

    @abstractmethod
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        """The node classes this extension provides."""


__all__ = ["ComfyExtension", "io", "ui"]
