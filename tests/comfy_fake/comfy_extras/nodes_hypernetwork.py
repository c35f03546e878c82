"""Fake of `comfy_extras.nodes_hypernetwork.load_hypernetwork_patch` (ComfyUI 0.3.64).

Reads the file as the real one does (`load_torch_file(path, safe_load=True)`, i.e.
weights_only) and checks the same things: a known activation, int-able context-dim
keys holding (k, v) state dicts. Returns a patch object, or None for an unknown activation.
"""
from __future__ import annotations

import logging

import comfy.utils

VALID_ACTIVATIONS = ("linear", "relu", "leakyrelu", "elu", "swish", "tanh", "sigmoid", "softsign", "mish")


class HypernetworkPatch:
    def __init__(self, hypernet: dict, strength: float):
        self.hypernet = hypernet
        self.strength = strength


def load_hypernetwork_patch(path, strength):
    sd = comfy.utils.load_torch_file(path, safe_load=True)
    activation_func = sd.get("activation_func", "linear")
    if activation_func not in VALID_ACTIVATIONS:
        logging.error("Unsupported Hypernetwork format, if you report it I might implement it. %s %s", path, activation_func)
        return None
    out = {}
    for d in sd:
        try:
            dim = int(d)
        except (TypeError, ValueError):
            continue
        k_sd, v_sd = sd[dim][0], sd[dim][1]
        out[dim] = (dict(k_sd), dict(v_sd))
    return HypernetworkPatch(out, strength)
