"""Stand-in for the host module our adapter imports to patch a hypernetwork into a MODEL.

Host behaviour modelled (ComfyUI's hypernetwork loader), so that a file ComfyUI would run
differently from A1111 shows up in tests:
- the file is read through the host's safe (weights-only) torch loader; an activation name
  outside the host's table makes the loader give up (None, with an error logged);
- each entry keyed by an attention width holds a (k, v) pair of state dicts; each becomes
  a stack read in key order from the `<name>.weight` entries, each needing its
  `<name>.bias` (KeyError otherwise): a Linear, then the activation unless it is the
  stack's last entry (counting LayerNorm entries too) and `activate_output` is off, then,
  when `is_layer_norm`, a LayerNorm made from the next entry; with `use_dropout`,
  Dropout(0.3) after every entry but the last (and the one before it unless
  `last_layer_dropout`). The stacks stay in training mode;
- the patch adds strength × stack(k) to k and strength × stack(v) to v when the stack's
  width matches, and leaves q alone.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

import comfy.utils

ACTIVATION_LAYERS = {
    "linear": torch.nn.Identity, "relu": torch.nn.ReLU, "leakyrelu": torch.nn.LeakyReLU, "elu": torch.nn.ELU,
    "swish": torch.nn.Hardswish, "tanh": torch.nn.Tanh, "sigmoid": torch.nn.Sigmoid, "softsign": torch.nn.Softsign,
    "mish": torch.nn.Mish,
}
KNOWN_ACTIVATIONS = frozenset(ACTIVATION_LAYERS)


@dataclass(frozen=True)
class _Settings:
    activation: str
    layer_norm: bool
    dropout: bool
    activate_output: bool
    last_layer_dropout: bool

    @classmethod
    def of(cls, data: dict) -> "_Settings":
        return cls(data.get("activation_func", "linear"), data.get("is_layer_norm", False), data.get("use_dropout", False),
                   data.get("activate_output", False), data.get("last_layer_dropout", False))


def _with_weights(layer: torch.nn.Module, state: dict, name: str) -> torch.nn.Module:
    layer.load_state_dict({"weight": state[f"{name}.weight"], "bias": state[f"{name}.bias"]})
    return layer


def _stack(state: dict, settings: _Settings) -> torch.nn.Sequential:
    names = [key[: -len(".weight")] for key in state if key.endswith(".weight")]
    layers: list[torch.nn.Module] = []
    position = 0
    while position < len(names):
        weight = state[f"{names[position]}.weight"]
        final = position == len(names) - 1
        next_to_final = position == len(names) - 2
        layers.append(_with_weights(torch.nn.Linear(weight.shape[1], weight.shape[0]), state, names[position]))
        if settings.activation != "linear" and (not final or settings.activate_output):
            layers.append(ACTIVATION_LAYERS[settings.activation]())
        if settings.layer_norm:
            position += 1
            norm_weight = state[f"{names[position]}.weight"]
            layers.append(_with_weights(torch.nn.LayerNorm(norm_weight.shape[0]), state, names[position]))
        if settings.dropout and not final and (not next_to_final or settings.last_layer_dropout):
            layers.append(torch.nn.Dropout(p=0.3))
        position += 1
    return torch.nn.Sequential(*layers)


class HypernetworkPatch:
    """What the loader hands to MODEL.set_model_attn1_patch / set_model_attn2_patch."""

    def __init__(self, hypernet: dict[int, torch.nn.ModuleList], strength: float):
        self.hypernet = hypernet
        self.strength = strength

    def __call__(self, q, k, v, extra_options=None):
        stacks = self.hypernet.get(k.shape[-1])
        if stacks is not None:
            k = k + stacks[0](k) * self.strength
            v = v + stacks[1](v) * self.strength
        return q, k, v


def _width(key: object) -> int | None:
    try:
        return int(key)
    except (TypeError, ValueError):
        return None


def load_hypernetwork_patch(path, strength):
    data = comfy.utils.load_torch_file(path, safe_load=True)
    settings = _Settings.of(data)
    if settings.activation not in ACTIVATION_LAYERS:
        logging.error("fake host: hypernetwork %s uses activation %r, which this host cannot build", path, settings.activation)
        return None
    hypernet = {}
    for key, pair in data.items():
        width = _width(key)
        if width is not None:
            hypernet[width] = torch.nn.ModuleList(_stack(state, settings) for state in pair[:2])
    return HypernetworkPatch(hypernet, strength)
