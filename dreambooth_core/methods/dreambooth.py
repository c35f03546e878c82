"""DreamBooth (Ruiz et al. 2022): fine-tune the whole UNet (and optionally the text
encoders) and save a complete checkpoint the hosts load like any other model."""
from __future__ import annotations

from typing import TYPE_CHECKING

from .base import Method, SaveInfo

if TYPE_CHECKING:
    import torch

    from ..config import TrainConfig
    from ..events import Artifact


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
        bytes) and saved from it: a bf16 run's saved fp16 file carries them at bf16's precision."""
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
        if "single-file" in self.config.formats:
            path = self.host_path(info)
            save_single_file(self.model, path, dtype=self.config.save_dtype, metadata=meta, overwrite=info.overwrite)
            out.append(self.host_artifact(path, info))
        if "diffusers" in self.config.formats:
            folder = info.out_dir / info.stem
            save_diffusers(self.model, folder, dtype=self.config.save_dtype, overwrite=info.overwrite)
            out.append(Artifact(kind="diffusers", path=str(folder), name=info.stem, prompt_hint=folder.name, final=info.final))
        return out
