"""transformers CLIP text encoders ⇄ the two text-encoder layouts of single files.

* "hf": OpenAI CLIP-L as A1111/ComfyUI/SGM store it, the transformers tree under
  `…transformer.text_model.` (SD1 `cond_stage_model.`, SDXL `conditioner.embedders.0.`).
  transformers ≥ 5 drops the `text_model.` level from `CLIPTextModel.state_dict()`, so the
  level is added here whenever the module's own keys lack it.
* "openclip": OpenCLIP's own tree (SD2 `cond_stage_model.model.`, SDXL
  `conditioner.embedders.1.model.`): `transformer.resblocks.N` with q, k and v fused into
  `attn.in_proj_*`, `positional_embedding` without `.weight`, and `text_projection`
  stored transposed.
"""
from __future__ import annotations

import re

from .module_map import Rule

_OPENCLIP_LAYER = {
    "layer_norm1": "ln_1",
    "self_attn.out_proj": "attn.out_proj",
    "layer_norm2": "ln_2",
    "mlp.fc1": "mlp.c_fc",
    "mlp.fc2": "mlp.c_proj",
}
_QKV = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")
_LAYER_KEY = re.compile(r"encoder\.layers\.(\d+)\.(.+)\.(weight|bias)")
# Non-persistent in current transformers; a persistent copy (older versions) has no OpenCLIP twin.
POSITION_IDS = "embeddings.position_ids"


def hf_clip_rules(keys: list[str], prefix: str) -> list[Rule]:
    """Rules for a CLIP text encoder stored in the transformers layout under `prefix`."""
    out = []
    for k in keys:
        name = k if k.startswith("text_model.") or k == "text_projection.weight" else f"text_model.{k}"
        out.append(Rule(prefix + name, (k,)))
    return out


def openclip_rules(keys: list[str], prefix: str) -> list[Rule]:
    """Rules for a CLIP text encoder stored in OpenCLIP's layout under `prefix`."""
    out: list[Rule] = []
    fused: dict[tuple[str, str], dict[str, str]] = {}
    for k in keys:
        name = k.removeprefix("text_model.")
        layer = _LAYER_KEY.fullmatch(name)
        if name == POSITION_IDS:
            continue
        if name == "embeddings.token_embedding.weight":
            out.append(Rule(prefix + "token_embedding.weight", (k,)))
        elif name == "embeddings.position_embedding.weight":
            out.append(Rule(prefix + "positional_embedding", (k,)))
        elif name.startswith("final_layer_norm."):
            out.append(Rule(prefix + "ln_final." + name.split(".", 1)[1], (k,)))
        elif name == "text_projection.weight":
            out.append(Rule(prefix + "text_projection", (k,), "transpose"))
        elif layer and layer.group(2) in _QKV:
            n, module, kind = layer.groups()
            fused.setdefault((n, kind), {})[module] = k
        elif layer and layer.group(2) in _OPENCLIP_LAYER:
            n, module, kind = layer.groups()
            out.append(Rule(f"{prefix}transformer.resblocks.{n}.{_OPENCLIP_LAYER[module]}.{kind}", (k,)))
        else:
            raise KeyError(f"{k!r} has no counterpart in the OpenCLIP layout")
    for (n, kind), parts in fused.items():
        out.append(Rule(f"{prefix}transformer.resblocks.{n}.attn.in_proj_{kind}", tuple(parts[m] for m in _QKV), "concat"))
    return out
