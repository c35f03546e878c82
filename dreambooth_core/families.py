"""The Stable Diffusion families we support, and the facts every layer needs about them.

One registry, so that the loader, the LoRA/embedding writers (metadata), the trainer
(prediction type, resolution, text encoders) and the adapters all agree.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import FamilyError

CONFIG_ROOT = Path(__file__).parent / "configs"
CLIP_BPE_DIR = CONFIG_ROOT / "clip_bpe"


@dataclass(frozen=True)
class Family:
    name: str                  # our id, as used by --family
    title: str                 # for messages
    base_model_version: str    # kohya's ss_base_model_version
    modelspec_arch: str        # modelspec.architecture prefix (…/lora, …/textual-inversion are appended)
    prediction_type: str       # "epsilon" or "v_prediction"
    resolution: int            # native training resolution
    text_encoders: tuple[str, ...]  # diffusers component names of the text encoders
    context_dims: tuple[int, ...]   # hidden size of each text encoder
    architecture: str = ""     # the family whose shipped configs it shares, when only the prediction differs

    @property
    def config_dir(self) -> Path:
        """Diffusers-layout config folder shipped with the package (no weights)."""
        return CONFIG_ROOT / (self.architecture or self.name)

    def scheduler_config(self) -> dict[str, Any]:
        """The shipped DDPM schedule with this family's prediction type."""
        config = json.loads((self.config_dir / "scheduler" / "scheduler_config.json").read_text(encoding="utf-8"))
        return {**config, "prediction_type": self.prediction_type}

    @property
    def modelspec_prediction_type(self) -> str:
        """modelspec.prediction_type as kohya and SAI's model spec spell it."""
        return "v" if self.prediction_type == "v_prediction" else "epsilon"

    @property
    def is_sdxl(self) -> bool:
        return (self.architecture or self.name) == "sdxl"

    @property
    def is_v2(self) -> bool:
        return self.name in ("sd2", "sd2-v")

    @property
    def tokenizers(self) -> tuple[str, ...]:
        return tuple(te.replace("text_encoder", "tokenizer") for te in self.text_encoders)


FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        Family("sd1", "Stable Diffusion 1.x", "sd_v1", "stable-diffusion-v1", "epsilon", 512, ("text_encoder",), (768,)),
        Family("sd2", "Stable Diffusion 2.x (512, epsilon)", "sd_v2", "stable-diffusion-v2-512", "epsilon", 512, ("text_encoder",), (1024,)),
        Family("sd2-v", "Stable Diffusion 2.x (768, v-prediction)", "sd_v2_v", "stable-diffusion-v2-768-v", "v_prediction", 768, ("text_encoder",), (1024,)),
        Family("sdxl", "Stable Diffusion XL base", "sdxl_base_v1-0", "stable-diffusion-xl-v1-base", "epsilon", 1024, ("text_encoder", "text_encoder_2"), (768, 1280)),
        # NoobAI-XL v-pred and the like: SDXL's architecture, v targets (zero terminal SNR where the file says so).
        Family("sdxl-v", "Stable Diffusion XL (v-prediction)", "sdxl_base_v1-0", "stable-diffusion-xl-v1-base", "v_prediction", 1024, ("text_encoder", "text_encoder_2"), (768, 1280), "sdxl"),
    )
}


def get_family(name: str) -> Family:
    key = name.strip().lower().replace("_", "-")
    aliases = {"sd15": "sd1", "sd1.5": "sd1", "sd-v1": "sd1", "sd21": "sd2", "sd2.1": "sd2", "sd2v": "sd2-v", "sd21-v": "sd2-v", "xl": "sdxl", "sdxlv": "sdxl-v", "xl-v": "sdxl-v"}
    key = aliases.get(key, key)
    if key not in FAMILIES:
        raise FamilyError(f"unknown model family {name!r}: use one of {', '.join(FAMILIES)}")
    return FAMILIES[key]
