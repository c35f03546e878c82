"""A UNet config read from the tensor shapes of an LDM single file.

Trimmed and distilled models keep the LDM key layout: SD1/SD2 ones with fewer down/up
levels, fewer res blocks, another transformer depth or no mid block (BK-SDM, small-sd),
SDXL ones with fewer transformer blocks per attention, which may differ from block to
block and between the down and the up side, and a mid block of one res block (SSD-1B, Vega). The hosts load them by reading
the structure off the keys, as ComfyUI's model detection does: the channels of each res
block, the down-samplers that end a level, the transformer blocks behind each res block
on both sides and in the mid block, the context width of the cross-attention. This module
does the same and says what it found when diffusers' UNet cannot express it.
"""
from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import FamilyError
from ..families import Family

PREFIX = "model.diffusion_model."
LABEL_EMB = f"{PREFIX}label_emb.0.0.weight"   # SDXL's size/crop conditioning


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


def _up_depths(shapes: Mapping[str, Any], levels: list[_Level], what: str) -> list[list[int]]:
    """Transformer blocks behind each up-side res block, by up level (deepest first)."""
    ups = 0
    while any(k.startswith(f"{PREFIX}output_blocks.{ups}.") for k in shapes):
        ups += 1
    needed = sum(lv.res_blocks + 1 for lv in levels)
    if ups != needed:
        raise FamilyError(f"{what}: the UNet has {ups} up blocks where its down side ({_found(levels)}) needs "
                          f"{needed}; that asymmetry cannot be trained here")
    out, block = [], 0
    for lv in reversed(levels):
        out.append([_depth(shapes, f"output_blocks.{b}.1") for b in range(block, block + lv.res_blocks + 1)])
        block += lv.res_blocks + 1
    return out


def _found(levels: list[_Level], up: list[list[int]] | None = None, mid: int | None = None) -> str:
    text = ", ".join(f"level {n}: {lv.res_blocks} res blocks of {lv.channels} channels, transformer depths {lv.depths}"
                     for n, lv in enumerate(levels))
    if up is not None:
        text += f"; up side transformer depths {up}"
    return text if mid is None else f"{text}; mid block transformer depth {mid}"


def _per_level(value: Any, levels: int) -> list[Any]:
    return list(value) if isinstance(value, (list, tuple)) else [value] * levels


def _transformer_layers(config: dict[str, Any], down: list[list[int]], up: list[list[int]], mid: int, found: str, what: str) -> None:
    """Set `transformer_layers_per_block` (and its up-side mirror) in `config` from the depths found.

    One depth per level when every attention of a level (both sides) has it, as diffusers'
    standard configs write it; else a depth per block, with the up side given apart.
    Diffusers' mid block takes the depth of the last level's first block.
    """
    attention = [any(d) for d in down]
    flat = all(len(set(d)) == 1 for d in down) and all(set(u) == set(d) for u, d in zip(up, reversed(down)))
    last = down[-1][0]
    if mid and attention[-1] and mid != last:
        raise FamilyError(f"{what}: the mid block's transformer depth {mid} differs from the depth {last} of the last "
                          f"level's first block, which diffusers' UNet cannot build ({found})")
    if flat:
        per_level = [d[0] or 1 for d in down]
        if mid:
            per_level[-1] = mid
        baseline = _per_level(config.get("transformer_layers_per_block", 1), len(down))
        if per_level != baseline:
            config["transformer_layers_per_block"] = per_level
        if config.get("reverse_transformer_layers_per_block") is not None:
            config["reverse_transformer_layers_per_block"] = None
        return
    nested = [[d or 1 for d in level] for level in down]
    if mid and not attention[-1]:
        nested[-1] = [mid] * len(nested[-1])
    config["transformer_layers_per_block"] = nested
    config["reverse_transformer_layers_per_block"] = [[d or 1 for d in level] for level in up]


def _check_attention(sides: list[list[int]], found: str, what: str) -> None:
    for depths in sides:
        if any(depths) and not all(depths):
            raise FamilyError(f"{what}: a UNet level has attention behind some res blocks only, which diffusers cannot build ({found})")


def _head_counts(standard: dict[str, Any], channels: list[int]) -> list[int] | None:
    """Attention heads per level, keeping the standard model's channels per head (SD2/SDXL
    give heads per level; SD1's single number is the same at every width)."""
    heads = standard.get("attention_head_dim")
    if not isinstance(heads, (list, tuple)):
        return None
    per_head = standard["block_out_channels"][0] // heads[0]
    return [c // per_head for c in channels]


def unet_config_from_shapes(shapes: Mapping[str, Any], standard: dict[str, Any], family: Family, what: str) -> dict[str, Any]:
    """`standard` (the family's UNet config, or the one a file records) with the structure
    the file's shapes show.

    Equal to `standard` for a model of that structure. Raises FamilyError, naming what was
    found, for a structure diffusers' UNet2DConditionModel has no form for.
    """
    levels = _levels(shapes)
    if any(lv.res_blocks == 0 for lv in levels):
        raise FamilyError(f"{what}: a UNet level without res blocks cannot be trained ({_found(levels)})")
    up = _up_depths(shapes, levels, what)
    mid = _depth(shapes, "middle_block.1")
    has_mid = any(k.startswith(f"{PREFIX}middle_block.") for k in shapes)
    down = [lv.depths for lv in levels]
    found = _found(levels, up if any(map(any, up)) else None, mid if has_mid else None)
    _check_attention(down + up, found, what)
    resnet_only_mid = has_mid and not any(k.startswith(f"{PREFIX}middle_block.{i}.") for k in shapes for i in (1, 2))
    if has_mid and mid == 0 and not resnet_only_mid:
        raise FamilyError(f"{what}: the UNet's mid block has no attention, which has no LDM layout here ({found})")

    config = copy.deepcopy(standard)
    channels = [lv.channels for lv in levels]
    layers = [lv.res_blocks for lv in levels]
    config["block_out_channels"] = channels
    config["layers_per_block"] = layers[0] if len(set(layers)) == 1 else layers
    config["down_block_types"] = ["CrossAttnDownBlock2D" if any(d) else "DownBlock2D" for d in down]
    config["up_block_types"] = ["CrossAttnUpBlock2D" if any(u) else "UpBlock2D" for u in up]
    config["in_channels"] = shapes[f"{PREFIX}input_blocks.0.0.weight"][1]
    config["out_channels"] = shapes[f"{PREFIX}out.2.weight"][0]
    if not has_mid or resnet_only_mid:   # SSD-1B's mid block is one res block
        config["mid_block_type"] = "UNetMidBlock2D" if has_mid else None
    _transformer_layers(config, down, up, mid, found, what)
    to_k = next((v for k, v in shapes.items() if k.startswith(PREFIX) and k.endswith("attn2.to_k.weight")), None)
    if to_k is not None:
        config["cross_attention_dim"] = to_k[1]
    proj_in = next((v for k, v in shapes.items() if k.startswith(PREFIX) and k.endswith(".proj_in.weight")), None)
    if proj_in is not None and (len(proj_in) == 2) != bool(standard.get("use_linear_projection", False)):
        config["use_linear_projection"] = len(proj_in) == 2
    heads = _head_counts(standard, channels)
    if heads is not None:
        config["attention_head_dim"] = heads
    if LABEL_EMB in shapes:
        config["projection_class_embeddings_input_dim"] = shapes[LABEL_EMB][1]
    return config
