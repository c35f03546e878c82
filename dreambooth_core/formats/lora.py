"""LoRA files: read kohya, peft/diffusers and `.pt` LoRAs; write kohya (for the hosts) or peft.

A LoRA adds `scale · up @ down` to a weight, with `scale = alpha / rank`. In memory a LoRA
is a `LoraWeights`: one `LoraModule` (down, up, alpha) per kohya key, because kohya keys
are what A1111 and ComfyUI read and they need no model to stay meaningful. Files in peft
layout are renamed to kohya keys on reading; writing peft needs the module tree (a base
model, or the family's full-size architecture) to turn keys back into module paths.

Alpha is kept exactly in both layouts: kohya stores it per module (`.alpha`), peft in the
`lora_adapter_metadata` header that diffusers' `load_lora_weights` turns into the
`LoraConfig` (`lora_alpha`, `alpha_pattern`). diffusers' own peft → kohya helper writes
alpha = rank instead, silently changing the strength; this module never does.
"""
from __future__ import annotations

import collections
import datetime
import hashlib
import json
import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import FamilyError, FormatError, UserError
from ..families import FAMILIES, Family, get_family
from ..fileio import load_state_dict, read_safetensors_metadata, read_shapes, require_file, save_safetensors
from .lora_keys import (
    TEXT_PARTS,
    UNET,
    canonical_text_name,
    kohya_name,
    kohya_prefix,
    model_parts,
    names_for_family,
    names_for_model,
    part_of_kohya_key,
)

if TYPE_CHECKING:
    import torch

    from ..models.base import BaseModel

log = logging.getLogger(__name__)

PEFT_METADATA_KEY = "lora_adapter_metadata"  # diffusers' LORA_ADAPTER_METADATA_KEY
PEFT_PARTS = (UNET, *TEXT_PARTS)
STABILITY_IMPL = "https://github.com/Stability-AI/generative-models"
_KOHYA_SLOTS = {"lora_down.weight": "down", "lora_up.weight": "up", "lora_A.weight": "down", "lora_B.weight": "up", "alpha": "alpha"}
_PEFT_SLOTS = {".lora_A.weight": "down", ".lora_B.weight": "up", ".alpha": "alpha"}
# Other adapter kinds: what their keys contain, and their name in the error message.
_NOT_PLAIN_LORA = {
    "hada_w1": "LyCORIS LoHa", "lokr_w1": "LyCORIS LoKr", "lora_mid": "LyCORIS LoCon with CP decomposition",
    "dora_scale": "DoRA", "lora_magnitude_vector": "DoRA", "oft_": "OFT", "bundle_emb": "bundled-embedding",
    ".diff": "full-difference", "lora_B.bias": "LoRA-with-bias", "w_norm": "norm-layer",
}
# Width of the cross-attention context (attn2 to_k input) and of text encoder 1, per family group.
_CONTEXT_WIDTH = {768: "sd1", 1024: "sd2", 2048: "sdxl"}
_TEXT_WIDTH = {768: "sd1", 1024: "sd2"}


@dataclass
class LoraModule:
    """One adapted layer: `down` [r, in] or [r, in, k, k], `up` [out, r] or [out, r, 1, 1]."""

    down: "torch.Tensor"
    up: "torch.Tensor"
    alpha: float

    @property
    def rank(self) -> int:
        return int(self.down.shape[0])

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    @property
    def is_conv3x3(self) -> bool:
        """kohya's LoCon layers: trained at the conv rank (`conv_dim`)."""
        return self.down.ndim == 4 and tuple(self.down.shape[2:]) != (1, 1)

    @property
    def weight_shape(self) -> tuple[int, ...]:
        return (int(self.up.shape[0]), *self.down.shape[1:])

    def delta(self) -> "torch.Tensor":
        """`scale · up @ down` in float32, shaped like the adapted weight."""
        product = self.up.float().flatten(1) @ self.down.float().flatten(1)
        return (product * self.scale).reshape(self.weight_shape)


@dataclass
class LoraWeights:
    """A LoRA: modules by kohya key (`lora_unet_…`, `lora_te…`), the family if known, string metadata."""

    modules: dict[str, LoraModule]
    family: Family | None = None
    metadata: dict[str, str] = field(default_factory=dict)

    def rank_and_alpha(self, conv: bool = False) -> tuple[int, float] | None:
        """Most common (rank, alpha) of the linear (or, with `conv`, the 3×3 conv) modules."""
        pairs = [(m.rank, m.alpha) for m in self.modules.values() if m.is_conv3x3 == conv]
        return collections.Counter(pairs).most_common(1)[0][0] if pairs else None


# ----------------------------------------------------------------------------- reading


def read_lora(path: str | Path, family: Family | str | None = None, base: "BaseModel | None" = None) -> LoraWeights:
    """Read a kohya, peft/diffusers or `.pt` (weights only) LoRA file.

    The family comes from `family`, `base`, the file's metadata or its tensor shapes, in
    that order; it may stay unknown (None) for a kohya file. SDXL files in peft layout need
    the SDXL UNet layout to name their UNet modules: `base` (or the family's shipped
    config) provides it.
    """
    p = require_file(path, "LoRA file")
    metadata = {}
    if p.suffix == ".safetensors":  # refuse a checkpoint passed by mistake before reading gigabytes
        keys = sorted(read_shapes(p))
        if keys and not any("lora" in k for k in keys):
            raise FormatError(f"{p} is not a LoRA (it holds tensors like {', '.join(keys[:2])}): expected lora_unet_…/lora_te_… or ….lora_A.weight keys")
        metadata = read_safetensors_metadata(p)
    state = load_state_dict(p)
    if not state:
        raise FormatError(f"{p} holds no tensors: it is not a LoRA")
    _refuse_other_adapters(state, p)
    fam = _as_family(family) or (base.family if base is not None else None)
    if all(part_of_kohya_key(k) for k in state):
        modules = _kohya_modules(state, p)
    else:
        modules, fam = _peft_modules(state, metadata, p, fam, base)
    weights = LoraWeights(modules, None, {k: v for k, v in metadata.items() if k not in ("format", PEFT_METADATA_KEY)})
    weights.family = fam or guess_family(weights)
    return weights


def _as_family(family: Family | str | None) -> Family | None:
    return get_family(family) if isinstance(family, str) else family


def _refuse_other_adapters(state: dict[str, Any], path: Path) -> None:
    for key in state:
        for marker, kind in _NOT_PLAIN_LORA.items():
            if marker in key:
                raise FormatError(f"{path} is a {kind} adapter (key {key}), not a plain LoRA: only plain LoRA (down/up/alpha) files are supported here")


def _assemble(slots: dict[str, dict[str, Any]], path: Path, default_alpha: Any = None) -> dict[str, LoraModule]:
    """LoraModules from {key: {"down", "up", "alpha"}}; missing alpha means alpha = rank."""
    out = {}
    for key, s in slots.items():
        if "down" not in s or "up" not in s:
            raise FormatError(f"{path}: LoRA module {key} has no {'down' if 'down' not in s else 'up'} weight: the file is incomplete")
        down, up = s["down"], s["up"]
        if down.ndim not in (2, 4) or up.ndim != down.ndim or up.shape[1] != down.shape[0]:
            raise FormatError(f"{path}: LoRA module {key} has mismatched shapes down {tuple(down.shape)} and up {tuple(up.shape)}")
        alpha = s.get("alpha")
        if alpha is None and default_alpha is not None:
            alpha = default_alpha(key, int(down.shape[0]))
        alpha = float(alpha.item() if hasattr(alpha, "item") else alpha) if alpha is not None else float(down.shape[0])
        out[key] = LoraModule(down, up, alpha if alpha != 0 else float(down.shape[0]))  # kohya: alpha 0 means rank
    return out


def _kohya_modules(state: dict[str, "torch.Tensor"], path: Path) -> dict[str, LoraModule]:
    slots: dict[str, dict[str, Any]] = collections.defaultdict(dict)
    for key, tensor in state.items():
        name, _, suffix = key.partition(".")
        if suffix not in _KOHYA_SLOTS:
            raise FormatError(f"{path}: unexpected LoRA tensor {key} (expected .lora_down.weight, .lora_up.weight and .alpha)")
        slots[name][_KOHYA_SLOTS[suffix]] = tensor
    return _assemble(slots, path)


@dataclass
class _PeftConfig:
    """The parts of a peft `LoraConfig` that decide each module's alpha."""

    lora_alpha: float | None = None
    alpha_pattern: dict[str, float] = field(default_factory=dict)
    use_rslora: bool = False

    def alpha(self, module_name: str, rank: int) -> float | None:
        """kohya alpha (scale · rank) of a module, following peft's pattern matching."""
        pattern = next((k for k in self.alpha_pattern if re.match(rf"(.*\.)?({k})$", module_name)), None)
        a = self.alpha_pattern[pattern] if pattern is not None else self.lora_alpha
        if a is None:
            return None
        return float(a) * math.sqrt(rank) if self.use_rslora else float(a)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "_PeftConfig":
        return cls(d.get("lora_alpha"), dict(d.get("alpha_pattern") or {}), bool(d.get("use_rslora", False)))


def _split_part(key: str) -> tuple[str, str]:
    """(part, module path) of a peft/diffusers key, guessing the part when the key has no prefix."""
    key = key.removeprefix("base_model.model.")  # peft's save_pretrained of a single model
    part, _, rest = key.partition(".")
    if part in PEFT_PARTS:
        return part, rest
    return ("text_encoder" if key.startswith(("text_model.", "encoder.layers.")) else UNET), key


def _peft_configs(metadata: dict[str, str], path: Path) -> dict[str, _PeftConfig]:
    """Per-part configs from diffusers' header metadata, or a peft `adapter_config.json` beside the file."""
    if PEFT_METADATA_KEY in metadata:
        try:
            flat = json.loads(metadata[PEFT_METADATA_KEY])
        except json.JSONDecodeError as exc:
            raise FormatError(f"{path}: its {PEFT_METADATA_KEY} header is not valid JSON ({exc})") from exc
        per_part: dict[str, dict[str, Any]] = collections.defaultdict(dict)
        for k, v in flat.items():
            part, _, field_name = k.partition(".")
            per_part[part][field_name] = v
        return {part: _PeftConfig.from_dict(d) for part, d in per_part.items()}
    config_file = path.with_name("adapter_config.json")
    if config_file.exists():
        cfg = _PeftConfig.from_dict(json.loads(config_file.read_text()))
        return {part: cfg for part in PEFT_PARTS}
    return {}


def _peft_modules(
    state: dict[str, "torch.Tensor"], metadata: dict[str, str], path: Path, family: Family | None, base: "BaseModel | None"
) -> tuple[dict[str, LoraModule], Family | None]:
    if any("to_out_lora" in k or "lora_linear_layer" in k for k in state):  # older diffusers layouts
        from diffusers.utils.state_dict_utils import convert_state_dict_to_peft

        state = convert_state_dict_to_peft(state)
    slots: dict[tuple[str, str], dict[str, Any]] = collections.defaultdict(dict)
    for key, tensor in state.items():
        suffix = next((s for s in _PEFT_SLOTS if key.endswith(s)), None)
        if suffix is None:
            raise FormatError(f"{path}: {key} is neither a kohya LoRA key (lora_unet_…) nor a peft one (….lora_A.weight / lora_B.weight)")
        part, name = _split_part(key[: -len(suffix)])
        slots[(part, name.replace(".processor.", "."))][_PEFT_SLOTS[suffix]] = tensor

    fam = family or _peft_family(slots, metadata)
    configs = _peft_configs(metadata, path)
    names = names_for_model(base) if base is not None else None

    def kohya_key(part: str, name: str) -> str:
        if names is not None:
            return names.key(part, name)
        # SD1 and SD2 name kohya keys alike, so an unknown non-SDXL family names them as SD1.
        return kohya_name(name, part, fam or FAMILIES["sd1"])

    by_key = {kohya_key(part, name): s for (part, name), s in slots.items()}
    back = {kohya_key(part, name): (part, name) for (part, name) in slots}

    def alpha(key: str, rank: int) -> float | None:
        part, name = back[key]
        cfg = configs.get(part)
        return cfg.alpha(name, rank) if cfg else None

    return _assemble(by_key, path, alpha), fam


def _peft_family(slots: dict[tuple[str, str], Any], metadata: dict[str, str]) -> Family | None:
    """SDXL needs its own UNet naming, so tell it apart: a second text encoder or deep transformers."""
    fam = _family_from_metadata(metadata)
    if fam is not None:
        return fam
    if any(part == "text_encoder_2" for part, _ in slots) or any(".transformer_blocks.1." in name for _, name in slots):
        return FAMILIES["sdxl"]  # SD1/SD2 UNets have one transformer block per attention
    return None


# ----------------------------------------------------------------------------- family


def _family_from_metadata(metadata: dict[str, str]) -> Family | None:
    version = metadata.get("ss_base_model_version", "")
    arch = metadata.get("modelspec.architecture", "")
    for fam in FAMILIES.values():
        if version == fam.base_model_version or arch.split("/")[0] == fam.modelspec_arch:
            return fam
    if version.startswith("sdxl"):
        return FAMILIES["sdxl"]
    if version.startswith("sd_v2") or metadata.get("ss_v2") == "True":
        return FAMILIES["sd2-v" if version.endswith("_v") else "sd2"]
    if version.startswith("sd_v1"):
        return FAMILIES["sd1"]
    return None


def guess_family(weights: LoraWeights) -> Family | None:
    """The family a LoRA was made for: metadata first, then key names and tensor widths."""
    fam = _family_from_metadata(weights.metadata)
    if fam is not None:
        return fam
    keys = list(weights.modules)
    if any(k.startswith(("lora_te1_", "lora_te2_")) for k in keys):
        return FAMILIES["sdxl"]
    for key, mod in weights.modules.items():
        if key.startswith("lora_unet_") and key.endswith("attn2_to_k"):
            group = _CONTEXT_WIDTH.get(int(mod.down.shape[1]))
            if group:
                return FAMILIES[group]
    for key, mod in weights.modules.items():
        if key.startswith("lora_te_") and key.endswith("self_attn_q_proj"):
            group = _TEXT_WIDTH.get(int(mod.down.shape[1]))
            if group:
                return FAMILIES[group]
    return None


# ----------------------------------------------------------------------------- matching


def _fits(mod: LoraModule, weight_shape: tuple[int, ...]) -> bool:
    """Whether `mod` can adapt a weight of this shape (a 2-D LoRA may adapt a 1×1 conv and back)."""
    if mod.weight_shape == tuple(weight_shape):
        return True
    numel = math.prod(weight_shape)
    return mod.weight_shape[0] == weight_shape[0] and math.prod(mod.weight_shape) == numel and (mod.down.ndim == 2 or mod.down.shape[2:] == (1, 1))


def match_report(weights: LoraWeights, model: "BaseModel") -> tuple[list[str], list[str]]:
    """(matched, unmatched) kohya keys: a key matches when it names a layer of `model` of a fitting shape."""
    names = names_for_model(model)
    parts = model_parts(model)
    matched, unmatched = [], []
    for key, mod in weights.modules.items():
        found = names.module(key)
        ok = found is not None and _fits(mod, tuple(parts[found[0]].get_submodule(found[1]).weight.shape))
        (matched if ok else unmatched).append(key)
    return matched, unmatched


def require_match(weights: LoraWeights, model: "BaseModel", what: str = "LoRA") -> list[str]:
    """Matched keys, or FamilyError when the LoRA cannot be meant for `model`.

    A LoRA applied to a model of another family would otherwise have no (or a garbled)
    effect, silently. Refused: nothing matches, or only part matches and the LoRA looks
    like another family (an SDXL LoRA shares a few layer names and shapes with SD1).
    A partial match within the family is applied where it matches, with a logged warning.
    """
    from ..models.detect import family_group

    matched, unmatched = match_report(weights, model)
    if not unmatched:
        return matched
    guess = guess_family(weights) or weights.family  # the file's own evidence first
    foreign = guess is not None and family_group(guess) != family_group(model.family)
    hint = f"; the {what} looks like {guess.title}" if foreign else ""
    msg = f"{len(matched)} of {len(weights.modules)} {what} modules match this {model.family.title} model{hint}"
    if not matched or foreign:
        raise FamilyError(f"{msg}: use a base model of the family the {what} was trained on")
    log.warning("%s; not applied: %s", msg, ", ".join(unmatched[:5]) + (" …" if len(unmatched) > 5 else ""))
    return matched


# ----------------------------------------------------------------------------- writing


def _require_family(weights: LoraWeights, family: Family | str | None) -> Family:
    fam = _as_family(family) or weights.family
    if fam is None:
        raise UserError("the LoRA's model family is unknown (no metadata, no telling tensors): pass --family " + "|".join(FAMILIES))
    allowed = {kohya_prefix(p, fam) for p in (UNET, *fam.text_encoders)}
    wrong = [k for k in weights.modules if (m := re.match(r"lora_(unet|te\d?)(?=_)", k)) is None or m[0] not in allowed]
    if wrong:
        raise FamilyError(f"LoRA key {wrong[0]} does not belong to a {fam.title} LoRA (expected {', '.join(sorted(allowed))}_…)")
    return fam


def safetensors_hashes(tensors: dict[str, "torch.Tensor"], metadata: dict[str, str]) -> tuple[str, str]:
    """(sshs_model_hash, sshs_legacy_hash) as kohya and sd-webui-additional-networks define them.

    The model hash is the SHA-256 of the file's tensor data (everything after the JSON
    header), so editing user metadata later does not change it; A1111 uses it as the
    LoRA's hash. The legacy hash reads 64 KiB at 1 MiB of a file holding only `ss_*` metadata.
    """
    from safetensors.torch import save

    data = save({k: v.contiguous() for k, v in tensors.items()}, {k: v for k, v in metadata.items() if k.startswith("ss_")})
    header = int.from_bytes(data[:8], "little")
    view = memoryview(data)
    return hashlib.sha256(view[8 + header:]).hexdigest(), hashlib.sha256(view[0x100000:0x110000]).hexdigest()[:8]


def kohya_metadata(weights: LoraWeights, family: Family, output_name: str, metadata: dict[str, Any] | None = None) -> dict[str, str]:
    """The `ss_*` and `modelspec.*` header of a kohya LoRA.

    Facts that follow from the tensors and family (dim, alpha, conv args, base version,
    architecture) are always recomputed; training facts carried in `weights.metadata` or
    passed in `metadata` (e.g. `ss_steps`, `modelspec.trigger_phrase`) are kept, the
    passed ones winning. Names default to the output file's stem, which A1111 shows.
    """
    carried = {k: v for k, v in weights.metadata.items() if k.startswith(("ss_", "modelspec.")) and k != "modelspec.hash_sha256"}
    meta: dict[str, str] = {
        "modelspec.date": datetime.datetime.now().replace(microsecond=0).isoformat(),
        **carried,
        "ss_output_name": output_name,
        "modelspec.title": output_name,
    }
    meta.update({k: str(v) for k, v in (metadata or {}).items()})
    linear, conv = weights.rank_and_alpha(), weights.rank_and_alpha(conv=True)
    try:
        args = json.loads(meta.get("ss_network_args") or "{}") or {}
    except json.JSONDecodeError:
        args = {}
    args = {k: v for k, v in args.items() if k not in ("conv_dim", "conv_alpha")} if isinstance(args, dict) else {}
    if conv is not None:
        args.update(conv_dim=str(conv[0]), conv_alpha=str(float(conv[1])))
    rank, alpha = linear or conv or (0, 0.0)
    meta.update({
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(rank),
        "ss_network_alpha": str(float(alpha)),
        "ss_base_model_version": family.base_model_version,
        "ss_v2": str(family.is_v2),
        "modelspec.sai_model_spec": "1.0.1",
        "modelspec.architecture": f"{family.modelspec_arch}/lora",
        "modelspec.implementation": STABILITY_IMPL if family.is_sdxl else "diffusers",
        "modelspec.resolution": f"{family.resolution}x{family.resolution}",
        "modelspec.prediction_type": family.modelspec_prediction_type,
    })
    if args:
        meta["ss_network_args"] = json.dumps(args)
    else:
        meta.pop("ss_network_args", None)
    return meta


def kohya_state_dict(weights: LoraWeights) -> dict[str, "torch.Tensor"]:
    import torch

    out = {}
    for key, mod in weights.modules.items():
        out[f"{key}.lora_down.weight"] = mod.down
        out[f"{key}.lora_up.weight"] = mod.up
        out[f"{key}.alpha"] = torch.tensor(mod.alpha, dtype=torch.float32)
    return out


def write_kohya(
    weights: LoraWeights,
    path: str | Path,
    family: Family | str | None = None,
    metadata: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a kohya LoRA `.safetensors` (what A1111, ComfyUI and diffusers all load), atomically."""
    out = Path(path)
    if out.suffix != ".safetensors":
        raise UserError(f"{out}: LoRA files are written as .safetensors; name it {out.stem}.safetensors")
    fam = _require_family(weights, family)
    tensors = kohya_state_dict(weights)
    meta = kohya_metadata(weights, fam, out.stem, metadata)
    meta["sshs_model_hash"], meta["sshs_legacy_hash"] = safetensors_hashes(tensors, meta)
    return save_safetensors(tensors, out, meta, overwrite)


def _peft_part_config(entries: dict[str, LoraModule]) -> dict[str, Any]:
    """LoraConfig fields for one part: common rank/alpha plus patterns for the exceptions."""
    r = collections.Counter(m.rank for m in entries.values()).most_common(1)[0][0]
    alpha = collections.Counter(m.alpha for m in entries.values()).most_common(1)[0][0]
    return {
        "r": r,
        "lora_alpha": alpha,
        "target_modules": sorted(entries),
        "rank_pattern": {n: m.rank for n, m in entries.items() if m.rank != r},
        "alpha_pattern": {n: m.alpha for n, m in entries.items() if m.alpha != alpha},
    }


def write_peft(
    weights: LoraWeights,
    path: str | Path,
    family: Family | str | None = None,
    base: "BaseModel | None" = None,
    overwrite: bool = False,
) -> Path:
    """Write diffusers' `pytorch_lora_weights.safetensors` layout (`unet.….lora_A.weight`, …).

    Alphas go into the `lora_adapter_metadata` header as peft `LoraConfig` fields, which
    diffusers' `load_lora_weights` uses, so the strength is exact. Text-encoder paths are
    written with `text_model.` (diffusers strips it for transformers versions without it);
    config target names leave it out, so they match either layout.
    """
    out = Path(path)
    if out.suffix != ".safetensors":
        raise UserError(f"{out}: peft LoRA files are written as .safetensors; name it {out.stem}.safetensors")
    fam = _require_family(weights, family)
    names = names_for_model(base) if base is not None else names_for_family(fam.name)
    tensors: dict[str, "torch.Tensor"] = {}
    per_part: dict[str, dict[str, LoraModule]] = collections.defaultdict(dict)
    for key, mod in weights.modules.items():
        found = names.module(key)
        if found is None:
            where = "the base model" if base is not None else f"the {fam.title} architecture"
            raise FormatError(f"LoRA key {key} names no layer of {where}; pass the base model it was trained on (--base)")
        part, name = found
        if part != UNET:
            name = canonical_text_name(name)
        tensors[f"{part}.{name}.lora_A.weight"] = mod.down
        tensors[f"{part}.{name}.lora_B.weight"] = mod.up
        per_part[part][name if part == UNET else name.removeprefix("text_model.")] = mod
    adapter_meta = {f"{part}.{k}": v for part, entries in per_part.items() for k, v in _peft_part_config(entries).items()}
    meta = {k: v for k, v in weights.metadata.items() if k.startswith(("ss_", "modelspec."))}
    meta.update({"format": "pt", PEFT_METADATA_KEY: json.dumps(adapter_meta, sort_keys=True)})
    return save_safetensors(tensors, out, meta, overwrite)


def convert_lora(
    src: str | Path,
    out: str | Path,
    to: str = "kohya",
    base: "BaseModel | None" = None,
    family: Family | str | None = None,
    overwrite: bool = False,
) -> Path:
    """Convert a LoRA file between kohya and peft layouts, keeping tensors and alphas exactly."""
    if to not in ("kohya", "peft"):
        raise UserError(f"unknown LoRA layout {to!r}: use kohya or peft")
    weights = read_lora(src, family=family, base=base)
    if to == "kohya":
        return write_kohya(weights, out, overwrite=overwrite)
    return write_peft(weights, out, base=base, overwrite=overwrite)


# ----------------------------------------------------------------------------- training


def lora_from_peft_model(
    unet: "torch.nn.Module",
    text_encoders: "list[torch.nn.Module]",
    family: Family | str,
    adapter_name: str = "default",
) -> LoraWeights:
    """The trained peft adapter of these modules as a LoraWeights (detached CPU copies).

    Alpha is taken from the layer's own scaling, so `lora_alpha`, `alpha_pattern` and
    rsLoRA all come out as the kohya alpha giving the same strength.
    """
    from peft.tuners.lora import LoraLayer

    fam = _as_family(family)
    modules: dict[str, LoraModule] = {}
    for part, root in {UNET: unet, **dict(zip(fam.text_encoders, text_encoders))}.items():
        for name, layer in root.named_modules():
            if not isinstance(layer, LoraLayer) or adapter_name not in layer.lora_A:
                continue
            if layer.use_dora.get(adapter_name):
                raise UserError("DoRA adapters cannot be saved as a plain LoRA: train without use_dora")
            r, alpha, scaling = layer.r[adapter_name], layer.lora_alpha[adapter_name], layer.scaling[adapter_name]
            kohya_alpha = float(alpha) if math.isclose(scaling, alpha / r, rel_tol=1e-6) else float(scaling) * r
            name = name.removeprefix("base_model.model.")
            key = kohya_name(name, part, fam, unet.config)
            modules[key] = LoraModule(
                layer.lora_A[adapter_name].weight.detach().to("cpu", copy=True),
                layer.lora_B[adapter_name].weight.detach().to("cpu", copy=True),
                kohya_alpha,
            )
    if not modules:
        raise UserError(f"no peft LoRA adapter named {adapter_name!r} is injected in these modules")
    return LoraWeights(modules, fam)
