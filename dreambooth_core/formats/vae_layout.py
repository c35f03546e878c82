"""Diffusers `AutoencoderKL` paths ⇄ original LDM `first_stage_model` paths.

The LDM decoder numbers its levels from the lowest resolution up (`decoder.up.0` is the
last one to run) while diffusers numbers `up_blocks` in execution order, so decoder
levels are reversed. The mid-block attention uses 1x1 convolutions in LDM and linear
layers in diffusers; `CONV_1X1_WEIGHTS` marks the weights whose shape differs.
"""
from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

from .module_map import ModuleMap

RESNET_INTERNALS = {"conv_shortcut": "nin_shortcut"}
ATTENTION_INTERNALS = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
CONV_1X1_WEIGHTS = ("to_q.weight", "to_k.weight", "to_v.weight", "to_out.0.weight")


@functools.lru_cache(maxsize=16)
def _vae_map(levels: int, layers: int) -> ModuleMap:
    to_ldm: dict[str, str] = {"quant_conv": "quant_conv", "post_quant_conv": "post_quant_conv"}
    inner: dict[str, Mapping[str, str]] = {}
    for part in ("encoder", "decoder"):
        to_ldm.update({
            f"{part}.conv_in": f"{part}.conv_in",
            f"{part}.conv_out": f"{part}.conv_out",
            f"{part}.conv_norm_out": f"{part}.norm_out",
            f"{part}.mid_block.resnets.0": f"{part}.mid.block_1",
            f"{part}.mid_block.attentions.0": f"{part}.mid.attn_1",
            f"{part}.mid_block.resnets.1": f"{part}.mid.block_2",
        })
        inner[f"{part}.mid_block.resnets.0"] = inner[f"{part}.mid_block.resnets.1"] = RESNET_INTERNALS
        inner[f"{part}.mid_block.attentions.0"] = ATTENTION_INTERNALS
    for i in range(levels):
        for j in range(layers):
            to_ldm[f"encoder.down_blocks.{i}.resnets.{j}"] = f"encoder.down.{i}.block.{j}"
            inner[f"encoder.down_blocks.{i}.resnets.{j}"] = RESNET_INTERNALS
        if i < levels - 1:
            to_ldm[f"encoder.down_blocks.{i}.downsamplers.0.conv"] = f"encoder.down.{i}.downsample.conv"
        ldm_level = levels - 1 - i
        for j in range(layers + 1):
            to_ldm[f"decoder.up_blocks.{i}.resnets.{j}"] = f"decoder.up.{ldm_level}.block.{j}"
            inner[f"decoder.up_blocks.{i}.resnets.{j}"] = RESNET_INTERNALS
        if i < levels - 1:
            to_ldm[f"decoder.up_blocks.{i}.upsamplers.0.conv"] = f"decoder.up.{ldm_level}.upsample.conv"
    return ModuleMap(to_ldm, inner, what="VAE")


def vae_module_map(vae_config: Mapping[str, Any]) -> ModuleMap:
    return _vae_map(len(vae_config["block_out_channels"]), int(vae_config.get("layers_per_block", 2)))


def is_conv_1x1_weight(diffusers_name: str) -> bool:
    """True for mid-attention weights stored as [C, C, 1, 1] convolutions in LDM files."""
    return ".mid_block.attentions." in diffusers_name and diffusers_name.endswith(CONV_1X1_WEIGHTS)

