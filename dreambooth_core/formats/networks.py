"""Network types of the `lora` method (registry.NETWORKS): the peft adapter each trains
with, and the file layout the hosts read for it.

LoRA keeps kohya's `lora_down/lora_up/alpha` (formats.lora). LoHa and LoKr are written in
LyCORIS's layout, which A1111 (extensions-builtin/Lora/network_hada.py, network_lokr.py)
and ComfyUI (comfy/weight_adapter/loha.py, lokr.py) read per kohya module key:

- LoHa: `hada_w1_a, hada_w1_b, hada_w2_a, hada_w2_b, alpha`; both hosts add
  `(w1_a @ w1_b) * (w2_a @ w2_b) * alpha / rank` (rank = `hada_w1_b.shape[0]`), reshaped to
  the weight: peft's LoHa delta term for term, so peft's tensors are written as they are.
- LoKr: `lokr_w1, lokr_w2`; both hosts add `kron(w1, w2)` scaled by `alpha / rank` only when
  a factor is split (`_a/_b`), by 1 otherwise. peft's own scale (`alpha / r`) is folded
  into `lokr_w1` and both factors are written whole, so the scale rule cannot differ (and
  A1111's test of the split factors is never reached). The whole factors are small:
  each side is about the square root of the layer's width.

- DoRA: LyCORIS's LoCon with weight decomposition on the output axis (`dora_wd`,
  `wd_on_output`): `lora_down.weight, lora_up.weight, alpha, dora_scale` with `dora_scale`
  of shape (out, 1, …). peft trains W' = m · (W + ΔW) / ‖W + ΔW‖ per output row. ComfyUI
  (comfy/weight_adapter/base.py `weight_decompose`) and Forge (backend/patcher/lora.py) pick
  the output axis from that shape and compute dora_scale · (W + ΔW) / ‖W‖, dividing by the
  norm of the *base* weight, so `dora_scale = m · ‖W‖ / ‖W + ΔW‖` makes them compute peft's
  weight. (LyCORIS's own merge divides by ‖W + ΔW‖ and would see a slightly other
  magnitude; the hosts are what load these files.) A1111 v1.10.1 always normalises per
  input column, which no low-rank file can turn into peft's per-row magnitude: it loads the
  file and computes another weight, and registry.NETWORKS says so to whoever delivers there.

- OFT: `oft_blocks, alpha`, trained by a peft method of our own (formats.oft: peft's OFT
  rotates another axis). A type like it, whose registry entry names its `file_slots`, brings
  its own host math (`delta`) and its way into peft (`into_peft`, `peft_rank`) on its
  NetworkType; the readers below dispatch to it by those slots.
"""
from __future__ import annotations

import collections
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from ..errors import FormatError, UserError
from ..families import Family, get_family
from ..fileio import save_safetensors

if TYPE_CHECKING:
    import torch

    from ..models.base import BaseModel

LYCORIS_MODULE = "lycoris.kohya"  # ss_network_module of files LyCORIS's kohya wrapper writes


@dataclass(frozen=True)
class NetworkType:
    """One network type: its peft config class and how one trained layer becomes file tensors."""

    name: str
    peft_config: str                           # class name in peft, or "module:Class" of our own
    layer_class: str                           # "module:Class" of its peft layer
    export: Callable[[Any, str], dict[str, "torch.Tensor"]] | None = None  # (peft layer, adapter) → slots
    args: tuple[tuple[str, str], ...] = ()     # ss_network_args LyCORIS writes besides algo and conv
    peft_options: tuple[tuple[str, Any], ...] = ()  # further fields of the peft config
    delta: Callable[[dict[str, "torch.Tensor"], "torch.Tensor"], "torch.Tensor"] | None = None  # (slots, weight) → host change
    into_peft: Callable[[Any, dict[str, "torch.Tensor"], str], dict[str, tuple["torch.Tensor", "torch.Tensor"]]] | None = None
    peft_rank: Callable[[dict[str, "torch.Tensor"]], tuple[int, float]] | None = None  # (r, alpha) of a file module

    def config(self, targets: list[str], rank: int, alpha: float, conv: dict[str, tuple[int, float]]):
        """The peft config: `rank`/`alpha` for `targets`, per-name (rank, alpha) for the convolutions in `conv`."""
        import peft

        from ..registry import load

        cls = load(self.peft_config) if ":" in self.peft_config else getattr(peft, self.peft_config)
        fields = dict(r=rank, target_modules=targets, rank_pattern={t: r for t, (r, _) in conv.items()},
                      alpha_pattern={t: a for t, (_, a) in conv.items()})
        fields.update(self.peft_options)
        if self.peft_config == "LoraConfig":
            # kaiming-uniform down, zero up (DoRA: magnitude = the weight's norm): training starts at the base model
            return cls(lora_alpha=alpha, init_lora_weights=True, **fields)
        return cls(alpha=alpha, init_weights=True, **fields)


def _loha_export(layer: Any, adapter: str) -> dict[str, "torch.Tensor"]:
    import torch

    if adapter in layer.hada_t1:
        raise UserError("LoHa with effective conv2d (hada_t1/t2) is not written here: train without use_effective_conv2d")
    out = {k: getattr(layer, k)[adapter].detach().to("cpu", torch.float32, copy=True)
           for k in ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b")}
    # hosts scale by alpha / hada_w1_b.shape[0]: give the alpha that makes it peft's scaling
    out["alpha"] = torch.tensor(float(layer.scaling[adapter]) * out["hada_w1_b"].shape[0])
    return out


def _lokr_export(layer: Any, adapter: str) -> dict[str, "torch.Tensor"]:
    import torch

    if adapter in layer.lokr_t2:
        raise UserError("LoKr with effective conv2d (lokr_t2) is not written here: train without use_effective_conv2d")

    def factor(i: int) -> "torch.Tensor":
        whole = getattr(layer, f"lokr_w{i}")
        if adapter in whole:
            return whole[adapter].detach().float()
        return getattr(layer, f"lokr_w{i}_a")[adapter].detach().float() @ getattr(layer, f"lokr_w{i}_b")[adapter].detach().float()

    return {"lokr_w1": (factor(1) * float(layer.scaling[adapter])).cpu(), "lokr_w2": factor(2).cpu().contiguous()}


def _row_norms(weight: "torch.Tensor") -> "torch.Tensor":
    """‖row‖ per output channel, shaped (out, 1, …) to scale the weight."""
    return weight.flatten(1).norm(dim=1).reshape(weight.shape[0], *[1] * (weight.ndim - 1))


def _lora_diff(down: "torch.Tensor", up: "torch.Tensor", alpha: float, shape: tuple[int, ...]) -> "torch.Tensor":
    return (alpha / down.shape[0]) * (up.flatten(1) @ down.flatten(1)).reshape(shape)


def _dora_export(layer: Any, adapter: str) -> dict[str, "torch.Tensor"]:
    import torch

    down = layer.lora_A[adapter].weight.detach().to("cpu", torch.float32, copy=True)
    up = layer.lora_B[adapter].weight.detach().to("cpu", torch.float32, copy=True)
    alpha = float(layer.scaling[adapter]) * down.shape[0]  # hosts scale by alpha / lora_down rows
    weight = layer.get_base_layer().weight.detach().to("cpu", torch.float32)
    magnitude = layer.lora_magnitude_vector[adapter].weight.detach().to("cpu", torch.float32).reshape(_row_norms(weight).shape)
    # the hosts divide by the base weight's row norms, peft by the adapted weight's (module docstring)
    scale = magnitude * _row_norms(weight) / _row_norms(weight + _lora_diff(down, up, alpha, tuple(weight.shape)))
    return {"lora_down.weight": down, "lora_up.weight": up, "alpha": torch.tensor(alpha), "dora_scale": scale}


LORA = NetworkType("lora", "LoraConfig", "peft.tuners.lora:LoraLayer")
DORA = NetworkType("dora", "LoraConfig", "peft.tuners.lora:LoraLayer", _dora_export,
                   (("dora_wd", "True"), ("wd_on_output", "True")), (("use_dora", True),))
LOHA = NetworkType("loha", "LoHaConfig", "peft.tuners.loha:LoHaLayer", _loha_export)
LOKR = NetworkType("lokr", "LoKrConfig", "peft.tuners.lokr:LoKrLayer", _lokr_export, (("factor", "-1"),))


def network_type(name: str) -> NetworkType:
    from ..registry import NETWORKS, load

    if name not in NETWORKS:
        raise UserError(f"network must be one of {', '.join(NETWORKS)} (got {name!r})")
    return load(NETWORKS[name].impl)


# ----------------------------------------------------------------------------- from peft


def lycoris_from_peft_model(
    net: NetworkType, unet: "torch.nn.Module", text_encoders: "list[torch.nn.Module]", family: Family | str, adapter_name: str = "default",
) -> dict[str, dict[str, "torch.Tensor"]]:
    """{kohya module key: {slot: tensor}} of the trained `net` adapter in these modules."""
    import importlib

    from .lora_keys import UNET, kohya_name

    if net.export is None:
        raise UserError(f"{net.name} networks are written by formats.lora, not in the LyCORIS layout")
    module, cls = net.layer_class.split(":")
    layer_cls = getattr(importlib.import_module(module), cls)
    fam = get_family(family) if isinstance(family, str) else family
    out: dict[str, dict[str, torch.Tensor]] = {}
    for part, root in {UNET: unet, **dict(zip(fam.text_encoders, text_encoders))}.items():
        for name, layer in root.named_modules():
            if isinstance(layer, layer_cls) and adapter_name in layer.scaling:
                out[kohya_name(name.removeprefix("base_model.model."), part, fam, unet.config)] = net.export(layer, adapter_name)
    if not out:
        raise UserError(f"no peft {net.name} adapter named {adapter_name!r} is injected in these modules")
    return out


# ----------------------------------------------------------------------------- the file


def lycoris_metadata(net: NetworkType, family: Family, output_name: str, rank: int, alpha: float,
                     conv: tuple[int, float] | None, metadata: dict[str, Any] | None = None) -> dict[str, str]:
    """The `ss_*`/`modelspec.*` header as LyCORIS's kohya wrapper writes it (`ss_network_module
    = lycoris.kohya`, the algorithm and conv settings in `ss_network_args`)."""
    from ..registry import NETWORKS
    from .lora import LoraWeights, kohya_metadata

    meta = kohya_metadata(LoraWeights({}, family), family, output_name, metadata)
    args: dict[str, str] = {"algo": NETWORKS[net.name].lycoris_algo, **dict(net.args)}
    if conv is not None:
        args.update(conv_dim=str(conv[0]), conv_alpha=str(float(conv[1])))
    meta.update({"ss_network_module": LYCORIS_MODULE, "ss_network_dim": str(rank), "ss_network_alpha": str(float(alpha)),
                 "ss_network_args": json.dumps(args)})
    return meta


def write_lycoris(
    net: NetworkType,
    modules: dict[str, dict[str, "torch.Tensor"]],
    path: str | Path,
    family: Family,
    rank: int,
    alpha: float,
    conv: tuple[int, float] | None = None,
    metadata: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a LyCORIS-layout `.safetensors` (`<kohya key>.<slot>`), atomically, with hashes."""
    from .lora import safetensors_hashes

    out = Path(path)
    if out.suffix != ".safetensors":
        raise UserError(f"{out}: network files are written as .safetensors; name it {out.stem}.safetensors")
    tensors = {f"{key}.{slot}": t.contiguous() for key, slots in modules.items() for slot, t in slots.items()}
    meta = lycoris_metadata(net, family, out.stem, rank, alpha, conv, metadata)
    meta["sshs_model_hash"], meta["sshs_legacy_hash"] = safetensors_hashes(tensors, meta)
    return save_safetensors(tensors, out, meta, overwrite)


# ----------------------------------------------------------------------------- reading back

_SLOTS = {"hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "lokr_w1", "lokr_w2", "lokr_w1_a", "lokr_w1_b", "lokr_w2_a", "lokr_w2_b", "alpha",
          "lora_down.weight", "lora_up.weight", "dora_scale"}


def _own_types() -> dict[str, tuple[str, ...]]:
    """{network: file slots} of the types that read their own modules (registry `file_slots`)."""
    from ..registry import NETWORKS

    return {n: spec.file_slots for n, spec in NETWORKS.items() if spec.file_slots}


def _own_type(slots: dict[str, "torch.Tensor"]) -> NetworkType | None:
    """The NetworkType whose marking slot this module has, if one of `_own_types`."""
    return next((network_type(n) for n, own in _own_types().items() if own[0] in slots), None)


def read_lycoris(state: dict[str, "torch.Tensor"], path: Path | str = "") -> dict[str, dict[str, "torch.Tensor"]]:
    """{kohya key: {slot: tensor}} of a LoHa/LoKr/DoRA/OFT file; FormatError on anything else."""
    known = _SLOTS.union(*_own_types().values())
    modules: dict[str, dict[str, torch.Tensor]] = collections.defaultdict(dict)
    for key, tensor in state.items():
        name, _, slot = key.partition(".")
        if slot not in known:
            raise FormatError(f"{path}: {key} is not a LoHa/LoKr/OFT tensor this project reads (tucker, BOFT and rescaled OFT are not)")
        modules[name][slot] = tensor
    for name, slots in modules.items():
        if ("lora_down.weight" in slots) != ("dora_scale" in slots):
            raise FormatError(f"{path}: {name} mixes plain LoRA and LyCORIS tensors; a DoRA module has lora_down/lora_up and dora_scale")
    return dict(modules)


def lycoris_delta(slots: dict[str, "torch.Tensor"], weight: "torch.Tensor") -> "torch.Tensor":
    """The change a LoHa/LoKr/DoRA/OFT module makes to `weight` at strength 1 (float32), as the
    hosts compute it (DoRA as ComfyUI and Forge do: see the module docstring; OFT: formats.oft)."""
    import torch

    own = _own_type(slots)
    if own is not None and own.delta is not None:
        return own.delta(slots, weight)
    s = {k: v.float() for k, v in slots.items()}
    weight_shape = tuple(weight.shape)
    alpha = float(s["alpha"]) if "alpha" in s else None
    if "dora_scale" in s:
        w = weight.float()
        down = s["lora_down.weight"]
        merged = w + _lora_diff(down, s["lora_up.weight"], alpha if alpha is not None else down.shape[0], weight_shape)
        return merged * (s["dora_scale"] / _row_norms(w)) - w
    if "hada_w1_a" in s:
        rank = s["hada_w1_b"].shape[0]
        delta = (s["hada_w1_a"] @ s["hada_w1_b"]) * (s["hada_w2_a"] @ s["hada_w2_b"])
        return (delta * (alpha / rank if alpha is not None else 1.0)).reshape(weight_shape)
    rank = None
    w = []
    for i in (1, 2):
        if f"lokr_w{i}" in s:
            w.append(s[f"lokr_w{i}"])
        else:
            rank = s[f"lokr_w{i}_b"].shape[0]
            w.append(s[f"lokr_w{i}_a"] @ s[f"lokr_w{i}_b"])
    w1, w2 = w
    if w2.ndim == 4:
        w1 = w1[:, :, None, None]
    scale = alpha / rank if alpha is not None and rank is not None else 1.0
    return (torch.kron(w1, w2) * scale).reshape(weight_shape)


def is_lycoris(keys: list[str]) -> bool:
    marks = (".hada_w1_a", ".lokr_w1", ".lokr_w1_a", ".dora_scale", *(f".{own[0]}" for own in _own_types().values()))
    return any(k.endswith(marks) for k in keys)


def read_network_file(path: str | Path) -> dict[str, dict[str, "torch.Tensor"]] | None:
    """The modules of a LoHa/LoKr/DoRA/OFT `.safetensors` file; None when it is not one (a plain LoRA)."""
    from ..fileio import load_state_dict, read_shapes, require_file

    p = require_file(path, "network file")
    if p.suffix != ".safetensors" or not is_lycoris(list(read_shapes(p))):
        return None
    return read_lycoris(load_state_dict(p), p)


def merge_network(model: "BaseModel", modules: dict[str, dict[str, "torch.Tensor"]], multiplier: float = 1.0) -> "BaseModel":
    """Add a LoHa/LoKr/DoRA/OFT network into `model`'s weights in place, as the hosts apply it.

    Checked before anything changes: every module must name a layer of `model` whose size
    its weight change has, else FamilyError (a network of another model would do harm)."""
    import torch

    from ..errors import FamilyError
    from .lora_keys import model_parts, names_for_model

    names, parts = names_for_model(model), model_parts(model)
    plan = []
    for key, slots in modules.items():
        found = names.module(key)
        weight = parts[found[0]].get_submodule(found[1]).weight if found else None
        try:
            delta = lycoris_delta(slots, weight) if weight is not None else None
        except RuntimeError:  # shapes that do not multiply out to this layer
            delta = None
        if delta is None:
            raise FamilyError(f"network module {key} fits no layer of this {model.family.title} model: "
                              "use the base model the network was trained on")
        plan.append((weight, delta))
    with torch.no_grad():
        for weight, delta in plan:
            weight.copy_((weight.float() + multiplier * delta).to(weight.dtype))
    return model


def _peft_tensors(layer: Any, slots: dict[str, "torch.Tensor"], adapter: str) -> dict[str, tuple["torch.Tensor", "torch.Tensor"]]:
    """{slot: (peft parameter, value)} that make an injected peft layer compute this module."""
    own = _own_type(slots)
    if own is not None and own.into_peft is not None:
        return own.into_peft(layer, slots, adapter)
    if "dora_scale" not in slots:
        return {k: (getattr(layer, k)[adapter], v) for k, v in slots.items() if k != "alpha"}
    base = layer.get_base_layer().weight.detach().float()
    down, up = slots["lora_down.weight"].float(), slots["lora_up.weight"].float()
    merged = base + _lora_diff(down, up, float(slots["alpha"]), tuple(base.shape))
    magnitude = slots["dora_scale"].float() * _row_norms(merged) / _row_norms(base)  # the inverse of _dora_export
    return {"lora_down.weight": (layer.lora_A[adapter].weight, down), "lora_up.weight": (layer.lora_B[adapter].weight, up),
            "dora_scale": (layer.lora_magnitude_vector[adapter].weight, magnitude)}


def network_into_peft(model: "BaseModel", modules: dict[str, dict[str, "torch.Tensor"]], adapter_name: str = "default") -> "BaseModel":
    """Inject a LoHa/LoKr/DoRA/OFT file's modules into `model` as the peft adapter `adapter_name`,
    so it computes what the hosts do (to sample or train on with peft). LoKr's whole factors
    load as peft's whole `lokr_w1`/`lokr_w2` with alpha = r (scale 1: the file's scale is in w1)."""
    import collections

    import torch
    from peft import inject_adapter_in_model

    from ..errors import FamilyError
    from .lora_keys import model_parts, names_for_model

    names, parts = names_for_model(model), model_parts(model)
    first = next(iter(modules.values()))
    own = _own_type(first)
    kind = own.name if own else "dora" if "dora_scale" in first else "lokr" if "lokr_w1" in first else "loha"
    net = own or {"dora": DORA, "lokr": LOKR, "loha": LOHA}[kind]
    needed = {"dora": {"lora_down.weight", "lora_up.weight", "alpha", "dora_scale"}, "lokr": {"lokr_w1", "lokr_w2"},
              "loha": {"hada_w1_b", "alpha"}}.get(kind) or {_own_types()[kind][0]}
    plan: dict[str, dict[str, tuple[int, float, dict[str, torch.Tensor]]]] = collections.defaultdict(dict)
    for key, slots in modules.items():
        found = names.module(key)
        if found is None or not needed <= set(slots):
            raise FamilyError(f"network module {key} names no layer of this {model.family.title} model, or is not "
                              f"a {kind} module as written here ({', '.join(sorted(needed))}; LoKr with whole factors)")
        if own is not None and own.peft_rank is not None:
            plan[found[0]][found[1]] = (*own.peft_rank(slots), slots)
        elif kind == "lokr":
            w2 = slots["lokr_w2"]
            r = int(sum(w2.shape))  # large enough that peft keeps lokr_w2 whole
            plan[found[0]][found[1]] = (r, float(r), slots)
        else:
            rows = slots["lora_down.weight" if kind == "dora" else "hada_w1_b"].shape[0]
            plan[found[0]][found[1]] = (int(rows), float(slots["alpha"]), slots)
    for part, entries in plan.items():
        first = next(iter(entries.values()))
        config = net.config(sorted(entries), first[0], first[1], {n: (r, a) for n, (r, a, _) in entries.items()})
        inject_adapter_in_model(config, parts[part], adapter_name=adapter_name)
        with torch.no_grad():
            for name, (_, _, slots) in entries.items():
                for slot, (target, tensor) in _peft_tensors(parts[part].get_submodule(name), slots, adapter_name).items():
                    if target.numel() != tensor.numel():
                        raise FamilyError(f"network module {name}: {slot} has {tuple(tensor.shape)}, peft expects {tuple(target.shape)}")
                    target.copy_(tensor.reshape(target.shape))
    return model


def math_refusal(operation: str) -> str:
    """Why `operation` (resize, convert) cannot take a LoHa/LoKr/DoRA/OFT file."""
    return (f"{operation} works on plain LoRA (down/up) files only: a LoHa/LoKr weight change is a "
            "Hadamard/Kronecker product with no rank-r down/up factors to cut, a DoRA change rescales "
            "whole rows of the base weight, an OFT change rotates them (full rank, whatever the block "
            "size), and the diffusers layout here holds plain LoRA; merge it into a checkpoint "
            "(lora merge) or load it in a host as it is (ComfyUI: all; A1111: LoHa/LoKr/OFT; Forge: LoHa/LoKr/DoRA)")
