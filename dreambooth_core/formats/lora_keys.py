"""Which modules a LoRA targets, and their kohya key names (`lora_unet_…`, `lora_te_…`).

kohya's names are what A1111 requires and ComfyUI maps without warnings, so they are the
canonical names of a LoRA module here. They are made from module paths with `.` → `_`:
the diffusers UNet path for SD1/SD2 (`lora_unet_down_blocks_0_attentions_0_…`), the
LDM/SGM path for SDXL (`lora_unet_input_blocks_4_1_…`, because kohya trains SDXL on the
SGM UNet), and the text-encoder path always with the `text_model` level
(`lora_te_text_model_encoder_layers_0_self_attn_q_proj`), whatever transformers builds.

Underscores are ambiguous (`to_q`, `down_blocks`), so a key is never parsed: the inverse is
the forward map computed over a real (or meta-device) module tree and turned around.
"""
from __future__ import annotations

import functools
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import FormatError
from ..families import Family, get_family

if TYPE_CHECKING:
    import torch

    from ..models.base import BaseModel

UNET = "unet"
TEXT_PARTS = ("text_encoder", "text_encoder_2")

# What kohya's LoRANetwork wraps: every Linear/Conv2d inside a Transformer2DModel (UNet)
# or a CLIP attention/MLP (text encoder); with conv layers ("LoCon") also everything inside
# ResnetBlock2D/Downsample2D/Upsample2D. Written as name patterns over diffusers paths.
_UNET_ATTENTION = re.compile(
    r"(^|\.)attentions\.\d+\.(proj_in|proj_out|transformer_blocks\.\d+\."
    r"(attn[12]\.(to_q|to_k|to_v|to_out\.0)|ff\.net\.(0\.proj|2)))$"
)
_UNET_CONV = re.compile(r"(^|\.)(resnets\.\d+\.(conv1|conv2|conv_shortcut|time_emb_proj)|(down|up)samplers\.0\.conv)$")
_TEXT = re.compile(r"(^|\.)encoder\.layers\.\d+\.(self_attn\.(q|k|v|out)_proj|mlp\.fc[12])$")


def kohya_prefix(part: str, family: Family) -> str:
    """`lora_unet`, `lora_te` (SD1/SD2) or `lora_te1`/`lora_te2` (SDXL)."""
    if part == UNET:
        return "lora_unet"
    if part not in TEXT_PARTS[: len(family.text_encoders)]:
        raise FormatError(f"{family.title} has no {part}")
    return f"lora_te{TEXT_PARTS.index(part) + 1}" if family.is_sdxl else "lora_te"


def part_of_kohya_key(key: str) -> str | None:
    """The model part a kohya key belongs to, from its prefix (None if not a kohya key)."""
    for prefix, part in (("lora_unet_", UNET), ("lora_te_", "text_encoder"), ("lora_te1_", "text_encoder"), ("lora_te2_", "text_encoder_2")):
        if key.startswith(prefix):
            return part
    return None


def canonical_text_name(module_name: str) -> str:
    """Text-encoder module path with the `text_model.` level that host files and kohya keys use."""
    return module_name if module_name.startswith("text_model.") else f"text_model.{module_name}"


def _ldm_name(module_name: str, unet_config: Mapping[str, Any]) -> str:
    from .unet_layout import diffusers_to_ldm_unet_key

    return diffusers_to_ldm_unet_key(module_name, unet_config)


def kohya_name(module_name: str, part: str, family: Family | str, unet_config: Mapping[str, Any] | None = None) -> str:
    """kohya key of a diffusers/transformers module path.

    SDXL UNet names go through the LDM layout, which depends on `unet_config` (the family's
    shipped full-size config when not given).
    """
    fam = family if isinstance(family, Family) else get_family(family)
    prefix = kohya_prefix(part, fam)
    if part == UNET:
        path = _ldm_name(module_name, unet_config or _shipped_unet_config(fam.name)) if fam.is_sdxl else module_name
    else:
        path = canonical_text_name(module_name)
    return f"{prefix}_{path.replace('.', '_')}"


def lora_target_modules(
    model_part: "torch.nn.Module | str",
    family: Family | str | None = None,
    unet_config: Mapping[str, Any] | None = None,
    conv: bool = False,
) -> list[str]:
    """Full names of the modules a kohya-style LoRA targets in `model_part`, in tree order.

    `model_part` is a UNet or a CLIP text encoder, or the part's name ("unet",
    "text_encoder", "text_encoder_2") to use the family's architecture (built on the meta
    device from `unet_config` or the shipped config). The names exist on that tree as-is,
    so they can go straight into peft's `LoraConfig(target_modules=...)`. `conv` adds
    kohya's LoCon targets: the resnet convolutions and time projections and the
    down/upsampler convolutions (3×3 convs train at the conv rank, the rest at the rank).
    """
    import torch

    if isinstance(model_part, str):
        if family is None:
            raise ValueError("lora_target_modules needs the family when given a part name")
        fam = family if isinstance(family, Family) else get_family(family)
        model_part = _build_meta_part(fam, model_part, unet_config)
    is_unet = hasattr(model_part, "down_blocks")
    out = []
    for name, module in model_part.named_modules():
        if not isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
            continue
        if is_unet:
            attention = _UNET_ATTENTION.search(name) and (isinstance(module, torch.nn.Linear) or module.kernel_size == (1, 1))
            if attention or (conv and _UNET_CONV.search(name)):
                out.append(name)
        elif isinstance(module, torch.nn.Linear) and _TEXT.search(name):
            out.append(name)
    return out


@dataclass(frozen=True)
class KohyaNames:
    """kohya key ⇄ (part, module path) for one model's module trees.

    Covers every Linear and Conv2d (not only the default targets), so LoRAs from other
    trainers that also train e.g. `time_embedding` still resolve. `to_module` gives the
    paths on the tree the map was built from; `key` accepts text-encoder paths with or
    without the `text_model.` level. UNet keys also resolve in the other naming (LDM names
    for SD1/SD2, diffusers names for SDXL), as ComfyUI accepts both.
    """

    family: Family
    to_module: dict[str, tuple[str, str]]
    to_kohya: dict[tuple[str, str], str]  # (part, UNet path or canonical text path) → key

    def module(self, key: str) -> tuple[str, str] | None:
        return self.to_module.get(key)

    def key(self, part: str, module_name: str) -> str:
        name = module_name if part == UNET else canonical_text_name(module_name)
        try:
            return self.to_kohya[(part, name)]
        except KeyError:
            raise FormatError(f"{part} module {module_name!r} does not exist in this {self.family.title} model") from None


def _linear_and_conv(module: "torch.nn.Module") -> Iterator[str]:
    import torch

    for name, m in module.named_modules():
        if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)):
            yield name


def build_kohya_names(parts: Mapping[str, "torch.nn.Module"], family: Family) -> KohyaNames:
    """The key map for these part modules (e.g. `{"unet": unet, "text_encoder": te}`)."""
    to_module: dict[str, tuple[str, str]] = {}
    to_kohya: dict[tuple[str, str], str] = {}
    aliases: dict[str, tuple[str, str]] = {}
    for part, module in parts.items():
        cfg = module.config if part == UNET else None
        for name in _linear_and_conv(module):
            key = kohya_name(name, part, family, cfg)
            if key in to_module:
                raise FormatError(f"two modules share the kohya key {key}: {to_module[key]} and {(part, name)}")
            to_module[key] = (part, name)
            to_kohya[(part, name if part == UNET else canonical_text_name(name))] = key
            if part == UNET:
                other = _other_unet_naming(name, family, cfg)
                if other is not None:
                    aliases[f"lora_unet_{other.replace('.', '_')}"] = (part, name)
    for key, target in aliases.items():
        to_module.setdefault(key, target)
    return KohyaNames(family, to_module, to_kohya)


def _other_unet_naming(name: str, family: Family, unet_config: Mapping[str, Any]) -> str | None:
    if family.is_sdxl:
        return name
    try:
        return _ldm_name(name, unet_config)
    except KeyError:  # e.g. SDXL-only add_embedding has no LDM name in an SD1 layout
        return None


def model_parts(model: "BaseModel") -> dict[str, "torch.nn.Module"]:
    """`{"unet": …, "text_encoder": …[, "text_encoder_2": …]}` of a base model."""
    return {UNET: model.unet, **dict(zip(model.family.text_encoders, model.text_encoders))}


def names_for_model(model: "BaseModel") -> KohyaNames:
    return build_kohya_names(model_parts(model), model.family)


@functools.lru_cache(maxsize=None)
def names_for_family(family_name: str) -> KohyaNames:
    """The key map of the family's full-size architecture (built on the meta device, no memory)."""
    from ..models.configs import empty_base_model

    fam = get_family(family_name)
    return build_kohya_names(model_parts(empty_base_model(fam)), fam)


def module_name_from_kohya(kohya_key: str, family: Family | str, model: "BaseModel | None" = None) -> tuple[str, str]:
    """(part, module path) of a kohya key in `model`, or in the family's full-size architecture."""
    fam = family if isinstance(family, Family) else get_family(family)
    names = names_for_model(model) if model is not None else names_for_family(fam.name)
    found = names.module(kohya_key)
    if found is None:
        raise FormatError(f"LoRA key {kohya_key} names no module of {'this' if model is not None else 'the'} {fam.title} model")
    return found


@functools.lru_cache(maxsize=None)
def _shipped_unet_config(family_name: str) -> dict[str, Any]:
    from ..models.configs import shipped_configs

    return shipped_configs(get_family(family_name))["unet"]


def _build_meta_part(family: Family, part: str, unet_config: Mapping[str, Any] | None) -> "torch.nn.Module":
    from ..models.configs import empty_base_model, shipped_configs

    configs = shipped_configs(family)
    if unet_config is not None:
        configs["unet"] = dict(unet_config)
    return model_parts(empty_base_model(family, configs))[part]
