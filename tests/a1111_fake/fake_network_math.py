"""The weight arithmetic of A1111 v1.10's built-in Lora extension (network.py,
network_lora.py, network_hada.py, network_lokr.py), for the network types written here.

Host facts modelled: each module's tensors are offered to the module types in turn and the
first that finds its keys takes them (LoRA: lora_up/lora_down; LoHa: all four hada_w*;
LoKr: lokr_w1 or both lokr_w1_a/_b, and lokr_w2 or both lokr_w2_a/_b); a module no type
takes is reported as not matched. The change is computed in the weight's dtype:
LoHa (w1_a @ w1_b) * (w2_a @ w2_b); LoKr kron(w1, w2) (w1 given two trailing unit axes
when w2 is 4-D) reshaped to the weight for a conv, else to [w1 rows·w2 rows, w1 cols·w2
cols]. The LoKr module sets its `dim` from `lokr_w1_b`/`lokr_w2_b` with a truth test on
the tensor itself (which raises for a tensor of more than one element, as in the host).
Then the shared finishing step: reshape to the weight when the element counts agree, and
scale by `scale` if given, else alpha/dim when both are known, else 1. A module with a
`dora_scale` (any type) then goes through `apply_weight_decompose`: merged = change +
weight, normalised per input column (transpose(0, 1), norm of each column over all other
axes, no epsilon) and multiplied by `dora_scale` as it broadcasts, whatever its shape; the
change is merged · dora_scale / norm − weight. Last, times the multiplier.

OFT (network_oft.py, tried after the others): a module with `oft_blocks` [k, n, n]. Its
`alpha` tensor is a norm constraint of alpha · out rows (0 when missing; the scale is fixed
at 1, so alpha never scales): when nonzero, Q = blocks − blocksᵀ is multiplied by
(min(‖Q‖, constraint) + 1e-8) / (‖Q‖ + 1e-8). R = (I + Q) · inverse((I − Q) in float32);
the weight's output rows, taken as k blocks of out/k, become einsum("k n m, k n … -> k m …",
R, blocks), times `rescale` when given; the change is that − weight, times the multiplier.
"""
from __future__ import annotations

import torch


def module_type(slots: dict[str, torch.Tensor]) -> str | None:
    if "lora_up.weight" in slots and "lora_down.weight" in slots:
        return "lora"
    if all(f"hada_w{i}_{s}" in slots for i in (1, 2) for s in "ab"):
        return "hada"
    has = [f"lokr_w{i}" in slots or (f"lokr_w{i}_a" in slots and f"lokr_w{i}_b" in slots) for i in (1, 2)]
    if all(has):
        return "lokr"
    if "oft_blocks" in slots:
        return "oft"
    return None


def calc_updown(slots: dict[str, torch.Tensor], orig_weight: torch.Tensor, multiplier: float = 1.0) -> torch.Tensor:
    """The change A1111 adds to `orig_weight` for one module's tensors."""
    kind = module_type(slots)
    if kind is None:
        raise KeyError("no network module type matched these tensors")
    if kind == "oft":
        return oft_updown(slots, orig_weight) * multiplier
    w = {k: v.to(orig_weight.dtype) for k, v in slots.items()}
    alpha = slots["alpha"].item() if "alpha" in slots else None
    scale = slots["scale"].item() if "scale" in slots else None
    dim = None
    if kind == "lora":
        down, up = w["lora_down.weight"], w["lora_up.weight"]
        dim = down.shape[0]
        updown = up.flatten(1) @ down.flatten(1)
        output_shape = orig_weight.shape
    elif kind == "hada":
        dim = w["hada_w1_b"].shape[0]
        updown = (w["hada_w1_a"] @ w["hada_w1_b"]) * (w["hada_w2_a"] @ w["hada_w2_b"])
        output_shape = [w["hada_w1_a"].size(0), w["hada_w1_b"].size(1)]
        if orig_weight.ndim == 4:
            output_shape = orig_weight.shape
    else:
        for i in (1, 2):
            b = slots.get(f"lokr_w{i}_b")
            if b is not None and bool(b):  # the host's own truth test
                dim = b.shape[0]
        w1 = w["lokr_w1"] if "lokr_w1" in w else w["lokr_w1_a"] @ w["lokr_w1_b"]
        w2 = w["lokr_w2"] if "lokr_w2" in w else w["lokr_w2_a"] @ w["lokr_w2_b"]
        output_shape = [w1.size(0) * w2.size(0), w1.size(1) * w2.size(1)]
        if orig_weight.ndim == 4:
            output_shape = orig_weight.shape
        if w2.ndim == 4:
            w1 = w1.unsqueeze(2).unsqueeze(2)
        updown = torch.kron(w1, w2.contiguous()).reshape(output_shape)
    if len(output_shape) == 4:
        updown = updown.reshape(output_shape)
    if orig_weight.numel() == updown.numel():
        updown = updown.reshape(orig_weight.shape)
    if scale is None:
        scale = alpha / dim if dim is not None and alpha is not None else 1.0
    updown = updown * scale
    if "dora_scale" in slots:
        updown = apply_weight_decompose(updown, orig_weight, slots["dora_scale"])
    return updown * multiplier


def apply_weight_decompose(updown: torch.Tensor, orig_weight: torch.Tensor, dora_scale: torch.Tensor) -> torch.Tensor:
    orig_weight = orig_weight.to(updown.dtype)
    dora_scale = dora_scale.to(updown.dtype)
    merged = updown + orig_weight
    norm_dims = orig_weight.ndim - 1
    column_norm = (merged.transpose(0, 1).reshape(merged.shape[1], -1).norm(dim=1, keepdim=True)
                   .reshape(merged.shape[1], *[1] * norm_dims).transpose(0, 1))
    return merged * (dora_scale / column_norm) - orig_weight


def oft_updown(slots: dict[str, torch.Tensor], orig_weight: torch.Tensor) -> torch.Tensor:
    blocks = slots["oft_blocks"]
    alpha = slots.get("alpha")
    out_dim = orig_weight.shape[0]
    num_blocks = blocks.shape[0]
    block_size = out_dim // num_blocks
    constraint = (0 if alpha is None else alpha) * out_dim
    eye = torch.eye(block_size)
    q = blocks - blocks.transpose(-1, -2)
    if constraint != 0:
        norm = torch.norm(q.flatten())
        q = q * ((torch.clamp(norm, max=constraint) + 1e-8) / (norm + 1e-8))
    r = torch.matmul(eye + q, (eye - q).float().inverse())
    merged = torch.einsum("k n m, k n ... -> k m ...", r, orig_weight.reshape(num_blocks, block_size, *orig_weight.shape[1:]))
    merged = merged.reshape(orig_weight.shape)
    if "rescale" in slots:
        merged = slots["rescale"].reshape(-1, *[1] * (orig_weight.ndim - 1)) * merged
    return merged - orig_weight
