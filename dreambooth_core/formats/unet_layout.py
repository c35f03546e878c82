"""Diffusers `UNet2DConditionModel` module paths ⇄ original LDM/SGM UNet paths.

The LDM UNet numbers its blocks flatly. `input_blocks.0` is `conv_in`; then every level
contributes `layers_per_block` blocks `[resnet, attention?]` and, except the last level, one
downsampler block. `output_blocks` walk the levels in reverse with one more resnet each,
and the upsampler rides in the level's last block after the resnet (and attention). The
numbering therefore follows from the config alone, which is why this works for SD1, SD2,
SDXL and for tiny models with other widths, depths or level counts.

Names are relative to the UNet (no `model.diffusion_model.` prefix) and may be parameter
names (`…conv1.weight`) or module names (`…attn1.to_q`), as kohya LoRA keys need.
"""
from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from typing import Any

from .module_map import ModuleMap

# diffusers ResnetBlock2D sub-module → LDM ResBlock sub-module
RESNET_INTERNALS: dict[str, str] = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}

_LAYOUT_KEYS = ("down_block_types", "up_block_types", "layers_per_block", "mid_block_type", "addition_embed_type")


def _has_attention(block_type: str) -> bool:
    return "Attn" in block_type


def _per_level(value: Any, levels: int) -> list[int]:
    return list(value) if isinstance(value, (list, tuple)) else [int(value)] * levels


@functools.lru_cache(maxsize=32)
def _unet_map(layout_json: str) -> ModuleMap:
    cfg = json.loads(layout_json)
    down, up = cfg["down_block_types"], cfg["up_block_types"]
    layers = _per_level(cfg.get("layers_per_block", 2), len(down))
    to_ldm: dict[str, str] = {
        "conv_in": "input_blocks.0.0",
        "time_embedding.linear_1": "time_embed.0",
        "time_embedding.linear_2": "time_embed.2",
        "conv_norm_out": "out.0",
        "conv_out": "out.2",
    }
    if cfg.get("addition_embed_type") == "text_time":  # SDXL's size/crop conditioning
        to_ldm["add_embedding.linear_1"] = "label_emb.0.0"
        to_ldm["add_embedding.linear_2"] = "label_emb.0.2"
    resnets: list[str] = []

    block = 1
    for level, block_type in enumerate(down):
        for j in range(layers[level]):
            to_ldm[f"down_blocks.{level}.resnets.{j}"] = f"input_blocks.{block}.0"
            resnets.append(f"down_blocks.{level}.resnets.{j}")
            if _has_attention(block_type):
                to_ldm[f"down_blocks.{level}.attentions.{j}"] = f"input_blocks.{block}.1"
            block += 1
        if level < len(down) - 1:
            to_ldm[f"down_blocks.{level}.downsamplers.0.conv"] = f"input_blocks.{block}.0.op"
            block += 1

    mid_type = cfg.get("mid_block_type", "UNetMidBlock2DCrossAttn")
    if mid_type not in (None, "UNetMidBlock2DCrossAttn", "UNetMidBlock2D"):
        raise KeyError(f"a UNet mid block of type {mid_type!r} has no LDM counterpart")
    if mid_type == "UNetMidBlock2D":  # one res block without attention (SSD-1B)
        to_ldm["mid_block.resnets.0"] = "middle_block.0"
        resnets.append("mid_block.resnets.0")
    elif mid_type:
        to_ldm.update({
            "mid_block.resnets.0": "middle_block.0",
            "mid_block.attentions.0": "middle_block.1",
            "mid_block.resnets.1": "middle_block.2",
        })
        resnets += ["mid_block.resnets.0", "mid_block.resnets.1"]

    block = 0
    for level, (block_type, n) in enumerate(zip(up, reversed(layers))):
        attn = _has_attention(block_type)
        for j in range(n + 1):
            to_ldm[f"up_blocks.{level}.resnets.{j}"] = f"output_blocks.{block}.0"
            resnets.append(f"up_blocks.{level}.resnets.{j}")
            if attn:
                to_ldm[f"up_blocks.{level}.attentions.{j}"] = f"output_blocks.{block}.1"
            block += 1
        if level < len(up) - 1:
            to_ldm[f"up_blocks.{level}.upsamplers.0.conv"] = f"output_blocks.{block - 1}.{2 if attn else 1}.conv"

    return ModuleMap(to_ldm, {r: RESNET_INTERNALS for r in resnets}, what="UNet")


def _layout(unet_config: Mapping[str, Any]) -> ModuleMap:
    return _unet_map(json.dumps({k: unet_config[k] for k in _LAYOUT_KEYS if k in unet_config}, sort_keys=True))


def unet_module_map(unet_config: Mapping[str, Any]) -> dict[str, str]:
    """Diffusers module prefix → LDM module prefix, e.g. "down_blocks.1.attentions.0" → "input_blocks.4.1"."""
    return dict(_layout(unet_config).to_ldm)


def diffusers_to_ldm_unet_key(name: str, unet_config: Mapping[str, Any]) -> str:
    """LDM name (without `model.diffusion_model.`) of a diffusers UNet parameter or module name."""
    return _layout(unet_config).ldm_name(name)


def ldm_to_diffusers_unet_key(name: str, unet_config: Mapping[str, Any]) -> str:
    """Diffusers name of an LDM UNet parameter or module name (without `model.diffusion_model.`)."""
    return _layout(unet_config).diffusers_name(name)
