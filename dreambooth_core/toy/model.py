"""The bundled toy base model: a tiny Stable Diffusion 1 pretrained on the toy world.

It has SD1's component types (CLIP tokenizer and text model, AutoencoderKL, a UNet with
SD1's block types, SD1's DDPM schedule) at toy sizes, and is stored as one LDM-layout
single file whose metadata carries these configs, so every layer treats it as family
"sd1". `pretrain.py` builds it; this module is the one place its sizes are written down.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..families import get_family

if TYPE_CHECKING:
    from ..models.base import BaseModel

TOY_DIR = Path(__file__).resolve().parents[1] / "assets" / "toy"
TOY_MODEL_PATH = TOY_DIR / "toy_sd1.safetensors"
TOY_INSTANCE_DIR = TOY_DIR / "instance"
FAMILY = "sd1"
RESOLUTION = 64  # px; the VAE downsamples 4x, so latents are 16 x 16

# CLIP's real vocabulary and 77 positions (the real tokenizer and prompt length), at a
# width small enough that the 49408-row token embedding fits the size budget.
TEXT_ENCODER_CONFIG: dict[str, Any] = dict(
    vocab_size=49408, max_position_embeddings=77, hidden_size=64, intermediate_size=256,
    num_attention_heads=4, num_hidden_layers=3, projection_dim=64, hidden_act="quick_gelu",
    layer_norm_eps=1e-5, bos_token_id=49406, eos_token_id=49407, pad_token_id=49407,
)
# SD1's block types, three levels (16 -> 8 -> 4 latent px), one resnet per level.
UNET_CONFIG: dict[str, Any] = dict(
    sample_size=RESOLUTION // 4, in_channels=4, out_channels=4, layers_per_block=1,
    block_out_channels=[64, 128, 128], attention_head_dim=8, norm_num_groups=32,
    down_block_types=["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    up_block_types=["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    cross_attention_dim=TEXT_ENCODER_CONFIG["hidden_size"],
)
# Three levels: 4x downsampling. `scaling_factor` is measured by pretraining (1 / the std
# of the world's latents) and stored with the weights; the value here is a placeholder.
VAE_CONFIG: dict[str, Any] = dict(
    in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1,
    block_out_channels=[32, 32, 64], norm_num_groups=16, sample_size=RESOLUTION,
    down_block_types=["DownEncoderBlock2D"] * 3, up_block_types=["UpDecoderBlock2D"] * 3,
    scaling_factor=1.0,
)


def scheduler_config() -> dict[str, Any]:
    """SD1's DDPM noise schedule, exactly as the family ships it."""
    return get_family(FAMILY).scheduler_config()


def build_toy_model(seed: int = 0) -> "BaseModel":
    """A randomly initialised toy model (deterministic for `seed`): pretraining's start."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from ..models.base import BaseModel
    from ..models.tokenizers import family_tokenizers

    family = get_family(FAMILY)
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(CLIPTextConfig(**copy.deepcopy(TEXT_ENCODER_CONFIG)))
    vae = AutoencoderKL(**copy.deepcopy(VAE_CONFIG))
    unet = UNet2DConditionModel(**copy.deepcopy(UNET_CONFIG))
    return BaseModel(family, unet, vae, [text_encoder], family_tokenizers(family), scheduler_config(), name="toy-sd1")


def load_toy_model(path: str | Path = TOY_MODEL_PATH, dtype: str = "fp32") -> "BaseModel":
    """The bundled toy model (offline; fp16 on disk, `dtype` in memory)."""
    from ..models.load import load_base_model

    return load_base_model(path, family=FAMILY, dtype=dtype)
