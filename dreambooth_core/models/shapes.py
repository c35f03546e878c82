"""A UNet config read from the tensor shapes of an LDM single file.

Trimmed and distilled SD1/SD2 models (fewer down/up levels, fewer res blocks, another
transformer depth, no mid block) keep the LDM key layout, so the hosts load them by
reading the structure off the keys, as ComfyUI's model detection does: the channels of
each res block, the down-samplers that end a level, the transformer blocks behind each
res block, the context width of the cross-attention. This module does the same and says
what it found when diffusers' UNet cannot express it.
"""
from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import FamilyError
from ..families import Family

PREFIX = "model.diffusion_model."


@dataclass
class _Level:
    res_blocks: int = 0
    channels: int = 0
    depths: list[int] = field(default_factory=list)   # transformer blocks behind each res block (0: none)


def _depth(shapes: Mapping[str, Any], block: str) -> int:
    """How many transformer blocks `block` (e.g. "input_blocks.1.1") holds."""
    n = 0
    while f"{PREFIX}{block}.transformer_blocks.{n}.attn1.to_q.weight" in shapes:
        n += 1
    return n


def _levels(shapes: Mapping[str, Any]) -> list[_Level]:
    levels, current, i = [], _Level(), 1
    while any(k.startswith(f"{PREFIX}input_blocks.{i}.") for k in shapes):
        if f"{PREFIX}input_blocks.{i}.0.op.weight" in shapes:   # a down-sampler ends a level
            levels.append(current)
            current = _Level()
        else:
            current.res_blocks += 1
            current.channels = shapes[f"{PREFIX}input_blocks.{i}.0.out_layers.3.weight"][0]
            current.depths.append(_depth(shapes, f"input_blocks.{i}.1"))
        i += 1
    return [*levels, current]


def _found(levels: list[_Level]) -> str:
    return ", ".join(f"level {n}: {lv.res_blocks} res blocks of {lv.channels} channels, transformer depths {lv.depths}"
                     for n, lv in enumerate(levels))


def unet_config_from_shapes(shapes: Mapping[str, Any], standard: dict[str, Any], family: Family, what: str) -> dict[str, Any]:
    """`standard` (the family's UNet config) with the structure the file's shapes show.

    Equal to `standard` for a standard model. Raises FamilyError, naming what was found,
    for a structure diffusers' UNet2DConditionModel has no form for.
    """
    levels = _levels(shapes)
    if any(lv.res_blocks == 0 for lv in levels):
        raise FamilyError(f"{what}: a UNet level without res blocks cannot be trained ({_found(levels)})")
    for lv in levels:
        if len(set(lv.depths)) > 1:
            raise FamilyError(f"{what}: a UNet level mixes transformer depths, which diffusers cannot build ({_found(levels)})")
    ups = 0
    while any(k.startswith(f"{PREFIX}output_blocks.{ups}.") for k in shapes):
        ups += 1
    if ups != sum(lv.res_blocks + 1 for lv in levels):
        raise FamilyError(f"{what}: the UNet has {ups} up blocks where its down side ({_found(levels)}) needs "
                          f"{sum(lv.res_blocks + 1 for lv in levels)}; that asymmetry cannot be trained here")
    depths = [lv.depths[0] for lv in levels]
    attention = [d > 0 for d in depths]
    mid = _depth(shapes, "middle_block.1")
    has_mid = any(k.startswith(f"{PREFIX}middle_block.") for k in shapes)
    if has_mid and mid == 0:
        raise FamilyError(f"{what}: the UNet's mid block has no attention, which has no LDM layout here ({_found(levels)})")
    if mid and attention[-1] and mid != depths[-1]:  # diffusers' mid block takes the last level's depth
        raise FamilyError(f"{what}: the mid block's transformer depth {mid} differs from the last level's {depths[-1]} ({_found(levels)})")

    config = copy.deepcopy(standard)
    channels = [lv.channels for lv in levels]
    layers = [lv.res_blocks for lv in levels]
    config["block_out_channels"] = channels
    config["layers_per_block"] = layers[0] if len(set(layers)) == 1 else layers
    config["down_block_types"] = ["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attention]
    config["up_block_types"] = ["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention)]
    config["in_channels"] = shapes[f"{PREFIX}input_blocks.0.0.weight"][1]
    config["out_channels"] = shapes[f"{PREFIX}out.2.weight"][0]
    if not has_mid:
        config["mid_block_type"] = None
    per_level = [d or 1 for d in depths]
    if mid:
        per_level[-1] = mid
    if any(d != 1 for d in per_level):
        config["transformer_layers_per_block"] = per_level
    to_k = next((v for k, v in shapes.items() if k.startswith(PREFIX) and k.endswith("attn2.to_k.weight")), None)
    if to_k is not None:
        config["cross_attention_dim"] = to_k[1]
    proj_in = next((v for k, v in shapes.items() if k.startswith(PREFIX) and k.endswith(".proj_in.weight")), None)
    if proj_in is not None and (len(proj_in) == 2) != bool(standard.get("use_linear_projection", False)):
        config["use_linear_projection"] = len(proj_in) == 2
    if isinstance(standard.get("attention_head_dim"), list):   # SD2: heads of 64 channels per level
        config["attention_head_dim"] = [c // 64 for c in channels]
    return config
