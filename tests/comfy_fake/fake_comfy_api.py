"""Our stand-in for `comfy_api.latest`: the `io` and `ui` namespaces and `ComfyExtension`.

Host fact modelled: a V3 node pack's `comfy_entrypoint` returns a ComfyExtension whose
async `get_node_list` gives the node classes.
"""
from __future__ import annotations

import abc

from . import _io as io
from . import _ui as ui

__all__ = ["ComfyExtension", "io", "ui"]


class ComfyExtension(abc.ABC):
    @abc.abstractmethod
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        ...
