"""Tiny random models with the exact module structure of each family.

Every layer's fast tests build these instead of downloading weights: the same diffusers and
transformers classes and the same key names as the real models, at a few MB. The real
CLIP tokenizer is used, so the token embedding keeps its 49408 rows.
"""
from __future__ import annotations

import copy

from ..families import Family, get_family
from .base import BaseModel
from .tokenizers import family_tokenizers

TINY_TEXT = dict(
    hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
    max_position_embeddings=77, vocab_size=49408, layer_norm_eps=1e-5,
    bos_token_id=49406, eos_token_id=49407,
)


def tiny_configs(family: Family) -> dict[str, dict]:
    """Component configs for a tiny model of `family` (same block types, tiny widths)."""
    text = [dict(TINY_TEXT, hidden_act="quick_gelu", projection_dim=32, pad_token_id=49407)]
    unet = dict(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=2,
        block_out_channels=[32, 64], norm_num_groups=8, attention_head_dim=4,
        down_block_types=["CrossAttnDownBlock2D", "DownBlock2D"],
        up_block_types=["UpBlock2D", "CrossAttnUpBlock2D"],
        cross_attention_dim=32,
    )
    if family.is_v2:
        text = [dict(TINY_TEXT, hidden_act="gelu", projection_dim=16, pad_token_id=0)]
        unet.update(use_linear_projection=True, attention_head_dim=[2, 4])
    if family.is_sdxl:
        text.append(dict(TINY_TEXT, hidden_size=48, num_attention_heads=4, hidden_act="gelu", projection_dim=24, pad_token_id=0))
        unet.update(
            down_block_types=["DownBlock2D", "CrossAttnDownBlock2D"],
            up_block_types=["CrossAttnUpBlock2D", "UpBlock2D"],
            transformer_layers_per_block=[1, 2], cross_attention_dim=32 + 48,
            use_linear_projection=True, addition_embed_type="text_time",
            addition_time_embed_dim=8, projection_class_embeddings_input_dim=6 * 8 + 24,
            attention_head_dim=[2, 4],
        )
    vae = dict(
        in_channels=3, out_channels=3, latent_channels=4, sample_size=32, layers_per_block=1,
        block_out_channels=[32, 64], norm_num_groups=32,
        down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
        scaling_factor=0.18215 if not family.is_sdxl else 0.13025,
    )
    return {"unet": unet, "vae": vae, "text": text}


def tiny_base_model(family: str | Family = "sd1", seed: int = 0) -> BaseModel:
    """A tiny random model of `family`, deterministic for `seed`."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    fam = family if isinstance(family, Family) else get_family(family)
    cfg = tiny_configs(fam)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**cfg["unet"])
    vae = AutoencoderKL(**cfg["vae"])
    encoders = []
    for i, tcfg in enumerate(cfg["text"]):
        cls = CLIPTextModelWithProjection if (fam.is_sdxl and i == 1) else CLIPTextModel
        encoders.append(cls(CLIPTextConfig(**copy.deepcopy(tcfg))))
    sched = fam.scheduler_config()
    for m in (unet, vae, *encoders):
        m.eval()
    return BaseModel(fam, unet, vae, encoders, family_tokenizers(fam), sched, name=f"tiny-{fam.name}")
