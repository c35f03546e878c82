"""Hypernetworks (NovelAI, as A1111 trains them): small MLPs that transform the context
fed to every attention's key and value projections; the base model stays untouched."""
from __future__ import annotations

from typing import TYPE_CHECKING

from .base import Method, SaveInfo

if TYPE_CHECKING:
    import torch

    from ..events import Artifact


class HypernetworkMethod(Method):
    name = "hypernetwork"

    def prepare(self) -> None:
        from ..formats.hypernetwork import Hypernetwork, apply_hypernetwork, attention_widths

        cfg = self.config
        unet = self.model.unet
        # A1111's default covers the context width and every self-attention width
        self.hypernetwork = Hypernetwork(
            attention_widths(unet), cfg.layer_structure, cfg.activation, cfg.hypernetwork_layer_norm, name=cfg.name,
        ).to(next(unet.parameters()).device)
        self.handle = apply_hypernetwork(unet, self.hypernetwork, 1.0)

    def trainable_modules(self) -> dict[str, "torch.nn.Module"]:
        return {"hypernetwork": self.hypernetwork}

    def save(self, info: SaveInfo) -> list["Artifact"]:
        from ..formats.hypernetwork import save_hypernetwork

        hn = self.hypernetwork
        hn.step = info.step
        hn.sd_checkpoint = info.base_model_hash[:10] or None
        hn.sd_checkpoint_name = info.base_model or None
        path = self.host_path(info)
        save_hypernetwork(hn, path, self.common_metadata(info), overwrite=info.overwrite)
        return [self.host_artifact(path, info)]
