"""Our stand-in for `comfy.utils`: the node progress bar and the model-file reader.

Host facts modelled: a `ProgressBar` reports through the global hook that was set when
the bar was created (ComfyUI's hook also raises on Cancel), never past its total, with the
node id as keyword; `load_torch_file` reads .safetensors/.sft with safetensors and other
files with torch.load, weights only when `safe_load` is true.
"""
from __future__ import annotations

_hook = None


def set_progress_bar_global_hook(function):
    global _hook
    _hook = function


class ProgressBar:
    def __init__(self, total, node_id=None):
        self.total, self.current, self.node_id = total, 0, node_id
        self._report = _hook

    def update_absolute(self, value, total=None, preview=None):
        self.total = self.total if total is None else total
        self.current = min(value, self.total)
        if self._report is not None:
            self._report(self.current, self.total, preview, node_id=self.node_id)


def load_torch_file(ckpt, safe_load=False, device=None):
    """The file's tensors (or pickled dict) as a dict, on `device` (default: the CPU)."""
    device = device or "cpu"
    if str(ckpt).lower().endswith((".safetensors", ".sft")):
        from safetensors.torch import load_file

        return load_file(ckpt, device=str(device))
    import torch

    return torch.load(ckpt, map_location=device, weights_only=bool(safe_load))
