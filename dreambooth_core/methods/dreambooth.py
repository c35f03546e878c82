"""DreamBooth (Ruiz et al. 2022): fine-tune the whole UNet (and optionally the text
encoders) and save a complete checkpoint the hosts load like any other model."""
from __future__ import annotations

from typing import TYPE_CHECKING

from .base import Method, SaveInfo

if TYPE_CHECKING:
    import torch

    from ..config import TrainConfig
    from ..events import Artifact
    from ..models.base import BaseModel


class DreamBoothMethod(Method):
    name = "dreambooth"
    small_artifacts = False  # a full checkpoint per checkpointing step would fill disks

    @property
    def trains_text_encoder(self) -> bool:
        return self.config.train_text_encoder

    @classmethod
    def full_precision_components(cls, config: "TrainConfig") -> tuple[str, ...]:
        """The trained parts (unless `full_bf16`); the frozen ones too when the model is saved in
        fp32. Otherwise the VAE and frozen text encoders are held in the compute dtype (half the
        bytes) and read again from the base file when saved (`as_saved`)."""
        from ..models.configs import COMPONENTS

        if config.save_dtype == "fp32":
            return COMPONENTS
        if config.full_bf16:
            return ()
        return ("unet", "text_encoder", "text_encoder_2") if config.train_text_encoder else ("unet",)

    @property
    def needs_full_model(self) -> bool:
        return True

    def prepare(self) -> None:
        self.model.unet.requires_grad_(True)
        if self.trains_text_encoder:
            for te in self.model.text_encoders:
                te.requires_grad_(True)

    def trainable_modules(self) -> dict[str, "torch.nn.Module"]:
        out: dict[str, torch.nn.Module] = {"unet": self.model.unet}
        if self.trains_text_encoder:
            out.update(zip(self.model.family.text_encoders, self.model.text_encoders))
        return out

    def save(self, info: SaveInfo) -> list["Artifact"]:
        from ..events import Artifact
        from ..models.save import save_diffusers, save_single_file

        # save_single_file adds the architecture facts (modelspec.architecture, prediction type)
        meta = {**self.common_metadata(info), "modelspec.title": info.stem,
                "modelspec.trigger_phrase": self.trigger(info)}
        out = []
        model = self.as_saved()
        if "single-file" in self.config.formats:
            path = self.host_path(info)
            save_single_file(model, path, dtype=self.config.save_dtype, metadata=meta, overwrite=info.overwrite)
            out.append(self.host_artifact(path, info))
        if "diffusers" in self.config.formats:
            folder = info.out_dir / info.stem
            save_diffusers(model, folder, dtype=self.config.save_dtype, overwrite=info.overwrite)
            out.append(Artifact(kind="diffusers", path=str(folder), name=info.stem, prompt_hint=folder.name, final=info.final))
        return out

    def as_saved(self) -> "BaseModel":
        """The model as the checkpoint must carry it: the trained weights, and the frozen parts
        exactly as the base file holds them. A run in bf16 holds the VAE and the untrained text
        encoders in bf16 (full_precision_components); saved from there, every one of their weights
        would be rounded to bf16's 8 bits, so they are read again from the base file (only those
        components, in the save dtype). A model given in memory, without a file, is saved as held."""
        import dataclasses
        from pathlib import Path

        import torch

        from ..models.configs import torch_dtype
        from ..models.load import load_components

        cfg, m = self.config, self.model
        target = torch_dtype(cfg.save_dtype)
        held = {"vae": m.vae, **dict(zip(m.family.text_encoders, m.text_encoders))}
        rounded = [name for name, module in held.items()
                   if name not in self.trainable_modules() and torch.finfo(module.dtype).eps > torch.finfo(target).eps]
        if not rounded or not cfg.base_model or not Path(cfg.base_model).exists():
            return m
        from ..fileio import unsafe_pickle_requested

        exact = load_components(cfg.base_model, rounded, family=m.family, dtype=target, unsafe_pickle=unsafe_pickle_requested())
        return dataclasses.replace(m, vae=exact.get("vae", m.vae),
                                   text_encoders=[exact.get(name, te) for name, te in zip(m.family.text_encoders, m.text_encoders)])
