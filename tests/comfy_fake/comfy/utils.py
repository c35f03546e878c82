"""Fake of `comfy.utils` (ComfyUI 0.3.64): the progress bar with its global hook, and load_torch_file."""
from __future__ import annotations

PROGRESS_BAR_ENABLED = True
PROGRESS_BAR_HOOK = None


def set_progress_bar_global_hook(function):
    global PROGRESS_BAR_HOOK
    PROGRESS_BAR_HOOK = function


class ProgressBar:
    """As in ComfyUI: the hook is captured when the bar is made, values are clamped to total."""

    def __init__(self, total, node_id=None):
        self.total = total
        self.current = 0
        self.hook = PROGRESS_BAR_HOOK
        self.node_id = node_id

    def update_absolute(self, value, total=None, preview=None):
        if total is not None:
            self.total = total
        if value > self.total:
            value = self.total
        self.current = value
        if self.hook is not None:
            self.hook(self.current, self.total, preview, node_id=self.node_id)

    def update(self, value):
        self.update_absolute(self.current + value)


def load_torch_file(ckpt, safe_load=False, device=None, return_metadata=False):
    """safetensors via safe_open; anything else with torch.load (weights_only when safe_load)."""
    import safetensors
    import torch

    metadata = None
    if ckpt.lower().endswith((".safetensors", ".sft")):
        with safetensors.safe_open(ckpt, framework="pt", device="cpu") as f:
            sd = {k: f.get_tensor(k) for k in f.keys()}
            if return_metadata:
                metadata = f.metadata()
    else:
        pl_sd = torch.load(ckpt, map_location="cpu", weights_only=bool(safe_load))
        if "state_dict" in pl_sd:
            sd = pl_sd["state_dict"]
        elif len(pl_sd) == 1 and isinstance(next(iter(pl_sd.values())), dict):
            sd = next(iter(pl_sd.values()))
        else:
            sd = pl_sd
    return (sd, metadata) if return_metadata else sd
