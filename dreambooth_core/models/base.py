"""`BaseModel`: a Stable Diffusion model as diffusers components plus what we know about it."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError
from ..families import Family

if TYPE_CHECKING:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer


@dataclass
class BaseModel:
    """All components of one model, in diffusers layout.

    `text_encoders[i]` pairs with `tokenizers[i]` and with `family.text_encoders[i]`
    (SDXL: CLIP-L first, OpenCLIP bigG second). `extras` keeps single-file tensors that
    no component consumes (e.g. SD2's unused last text layer), so writing the model back
    reproduces the original file exactly. `tokenizer_dirs` lets a diffusers folder written
    from this model carry the base's own tokenizer files rather than the family's.
    """

    family: Family
    unet: "UNet2DConditionModel"
    vae: "AutoencoderKL"
    text_encoders: list["CLIPTextModel"]
    tokenizers: list["CLIPTokenizer"]
    scheduler_config: dict[str, Any]
    source: Path | None = None
    name: str = "model"
    extras: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, str] = field(default_factory=dict)
    # The source folder of each tokenizer (a diffusers base): written back unchanged.
    tokenizer_dirs: list[Path] = field(default_factory=list)

    @property
    def prediction_type(self) -> str:
        return self.scheduler_config.get("prediction_type", self.family.prediction_type)

    @property
    def resolution_multiple(self) -> int:
        """The pixel multiple a training resolution must be: what the VAE downsamples by
        times what the UNet's down-samplers do (SD1/SD2: 8 x 8, SDXL: 8 x 4, a toy less)."""
        vae = 2 ** (len(self.vae.config.block_out_channels) - 1)
        return vae * 2 ** (len(self.unet.config.down_block_types) - 1)

    def check_resolution(self, resolution: int) -> None:
        """Refuse a resolution whose latents the UNet cannot halve down to its last level and back."""
        step = self.resolution_multiple
        if resolution % step:
            lower, upper = max(step, resolution // step * step), (resolution // step + 1) * step
            raise ConfigError(f"resolution {resolution} is not a multiple of {step}, what this model's VAE and UNet "
                              f"downsample by: use e.g. {lower} or {upper}")

    def noise_scheduler(self):
        """A fresh DDPM scheduler with this model's betas and prediction type (for training)."""
        from diffusers import DDPMScheduler

        return DDPMScheduler.from_config(self.scheduler_config)

    def components(self) -> dict[str, Any]:
        """Diffusers pipeline keyword arguments (unet, vae, text_encoder[_2], tokenizer[_2])."""
        out: dict[str, Any] = {"unet": self.unet, "vae": self.vae}
        for name, te in zip(self.family.text_encoders, self.text_encoders):
            out[name] = te
        for name, tok in zip(self.family.tokenizers, self.tokenizers):
            out[name] = tok
        return out
