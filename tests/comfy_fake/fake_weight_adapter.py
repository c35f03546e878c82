"""ComfyUI 0.3.64's `comfy.lora.load_lora` and `comfy/weight_adapter/{lora,loha,lokr}.py`,
for the network types written here.

Host facts modelled: per module prefix, `<prefix>.alpha` is read (and counted as loaded)
whether or not an adapter then takes the module; adapters are tried in turn (LoRA needs
`lora_up.weight`; LoHa needs `hada_w1_a`; LoKr any of lokr_w1, lokr_w2, lokr_w1_a,
lokr_w2_a) and mark the tensors they take as loaded; every key never marked is logged as
"lora key not loaded: <key>". The change, computed in float32: LoRA up @ down; LoHa
(w1_a @ w1_b) * (w2_a @ w2_b) with rank = hada_w1_b rows; LoKr kron(w1, w2) (w1 given two
unit axes when w2 is 4-D) where rank is the rows of the last split factor (`_b`) and stays
unknown when both factors are whole. Scale alpha/rank when alpha and rank are known, else 1;
then weight + strength · scale · change, reshaped to the weight.

DoRA: `<prefix>.dora_scale` is read (and counted as loaded) beside alpha and kept with the
adapter; the change then goes through base.py `weight_decompose`: merged = weight + scaled
change; on the output axis (dora_scale.shape[0] == weight.shape[0]) it is divided by the
row norms of the *unchanged* weight, otherwise by the column norms of the merged weight
(each + float32 eps), times dora_scale; strength s gives weight + s · (that − weight).
Forge f2.0.1 (backend/patcher/lora.py `weight_decompose`, "modified from" ComfyUI's) is the
same arithmetic, so this fake stands for both.

OFT (weight_adapter/oft.py, tried after LoRA/LoHa/LoKr): `<prefix>.oft_blocks` of 3 axes
(and `rescale`, which it marks loaded but does not use when merging). `alpha` is a norm
bound on Q = blocks − blocksᵀ itself (not times the rows): when alpha > 0 and ‖Q‖ + 1e-8 >
alpha, Q becomes Q · alpha / (‖Q‖ + 1e-8). R = (I + Q) · inverse(I − Q); the change is
einsum("k n m, k n … -> k m …", s·R − s·I, weight as k blocks of rows), added times s
again, so a strength s scales it by s². Forge f2.0.1 has no OFT: its patcher skips these keys.
"""
from __future__ import annotations

import logging

import torch

log = logging.getLogger(__name__)


def load_lora(lora: dict[str, torch.Tensor], prefixes: list[str]) -> tuple[dict[str, dict], set[str]]:
    """{prefix: adapter} for the given module prefixes, and the keys no adapter took (logged)."""
    loaded: set[str] = set()
    patches: dict[str, dict] = {}
    for x in prefixes:
        alpha = None
        if f"{x}.alpha" in lora:
            alpha = lora[f"{x}.alpha"].item()
            loaded.add(f"{x}.alpha")
        dora_scale = lora.get(f"{x}.dora_scale")
        if dora_scale is not None:
            loaded.add(f"{x}.dora_scale")
        adapter = None
        if f"{x}.lora_up.weight" in lora:
            adapter = {"type": "lora", "up": lora[f"{x}.lora_up.weight"], "down": lora[f"{x}.lora_down.weight"]}
            loaded.update({f"{x}.lora_up.weight", f"{x}.lora_down.weight"})
        elif f"{x}.hada_w1_a" in lora:
            names = [f"{x}.hada_w{i}_{s}" for i in (1, 2) for s in "ab"]
            adapter = {"type": "loha", **{n.rsplit(".", 1)[1]: lora[n] for n in names}}
            loaded.update(names)
        elif any(f"{x}.{n}" in lora for n in ("lokr_w1", "lokr_w2", "lokr_w1_a", "lokr_w2_a")):
            names = [f"{x}.{n}" for n in ("lokr_w1", "lokr_w2", "lokr_w1_a", "lokr_w1_b", "lokr_w2_a", "lokr_w2_b") if f"{x}.{n}" in lora]
            adapter = {"type": "lokr", **{n.rsplit(".", 1)[1]: lora[n] for n in names}}
            loaded.update(names)
        elif f"{x}.oft_blocks" in lora and lora[f"{x}.oft_blocks"].ndim == 3:
            adapter = {"type": "oft", "oft_blocks": lora[f"{x}.oft_blocks"]}
            loaded.add(f"{x}.oft_blocks")
            if f"{x}.rescale" in lora:
                loaded.add(f"{x}.rescale")
        if adapter is not None:
            adapter["alpha"] = alpha
            adapter["dora_scale"] = dora_scale
            patches[x] = adapter
    left = set(lora) - loaded
    for key in sorted(left):
        log.warning("lora key not loaded: %s", key)
    return patches, left


def calculate_weight(adapter: dict, weight: torch.Tensor, strength: float = 1.0) -> torch.Tensor:
    if adapter["type"] == "oft":
        return oft_weight(adapter, weight, strength)
    f = {k: v.float() for k, v in adapter.items() if isinstance(v, torch.Tensor) and k != "dora_scale"}
    dim = None
    if adapter["type"] == "lora":
        dim = f["down"].shape[0]
        diff = f["up"].flatten(1) @ f["down"].flatten(1)
    elif adapter["type"] == "loha":
        dim = f["hada_w1_b"].shape[0]
        diff = (f["hada_w1_a"] @ f["hada_w1_b"]) * (f["hada_w2_a"] @ f["hada_w2_b"])
    else:
        if "lokr_w1" in f:
            w1 = f["lokr_w1"]
        else:
            dim = f["lokr_w1_b"].shape[0]
            w1 = f["lokr_w1_a"] @ f["lokr_w1_b"]
        if "lokr_w2" in f:
            w2 = f["lokr_w2"]
        else:
            dim = f["lokr_w2_b"].shape[0]
            w2 = f["lokr_w2_a"] @ f["lokr_w2_b"]
        if w2.ndim == 4:
            w1 = w1.unsqueeze(2).unsqueeze(2)
        diff = torch.kron(w1, w2)
    alpha = adapter["alpha"]
    scale = alpha / dim if alpha is not None and dim is not None else 1.0
    if adapter.get("dora_scale") is not None:
        return weight_decompose(adapter["dora_scale"].float(), weight.float(), diff.reshape(weight.shape), scale, strength).to(weight.dtype)
    return weight + (strength * scale * diff).reshape(weight.shape).to(weight.dtype)


def weight_decompose(dora_scale: torch.Tensor, weight: torch.Tensor, diff: torch.Tensor, alpha: float, strength: float) -> torch.Tensor:
    calc = weight + diff * alpha
    if dora_scale.shape[0] == calc.shape[0]:
        norm = weight.reshape(weight.shape[0], -1).norm(dim=1, keepdim=True).reshape(weight.shape[0], *[1] * (weight.ndim - 1))
    else:
        norm = (calc.transpose(0, 1).reshape(calc.shape[1], -1).norm(dim=1, keepdim=True)
                .reshape(calc.shape[1], *[1] * (calc.ndim - 1)).transpose(0, 1))
    calc = calc * (dora_scale / (norm + torch.finfo(weight.dtype).eps))
    return weight + strength * (calc - weight) if strength != 1.0 else calc


def oft_weight(adapter: dict, weight: torch.Tensor, strength: float) -> torch.Tensor:
    blocks = adapter["oft_blocks"].float()
    alpha = adapter["alpha"] or 0
    block_num, block_size = blocks.shape[:2]
    eye = torch.eye(block_size)
    q = blocks - blocks.transpose(1, 2)
    if alpha > 0:
        q_norm = torch.norm(q) + 1e-8
        if q_norm > alpha:
            q = q * alpha / q_norm
    r = (eye + q) @ (eye - q).float().inverse()
    w = weight.float()
    diff = torch.einsum("k n m, k n ... -> k m ...", r * strength - strength * eye,
                        w.view(block_num, block_size, *w.shape[1:])).view(-1, *w.shape[1:])
    return (w + strength * diff).to(weight.dtype)
