"""Stand-in for the host module our adapter imports to patch a hypernetwork into a MODEL.

What the adapter relies on, and what this checks: the file is read through the host's
safe (weights-only) torch loader; an activation name outside the host's list makes the
loader give up (None, with an error in the log); every entry whose key is an attention
width holds a (k, v) pair of module state dicts. The result carries those pairs by width
and the strength it was asked for.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import comfy.utils

KNOWN_ACTIVATIONS = frozenset({"linear", "relu", "leakyrelu", "elu", "swish", "tanh", "sigmoid", "softsign", "mish"})


@dataclass
class HypernetworkPatch:
    hypernet: dict[int, tuple[dict, dict]]
    strength: float


def _width(key: object) -> int | None:
    try:
        return int(key)
    except (TypeError, ValueError):
        return None


def load_hypernetwork_patch(path, strength):
    data = comfy.utils.load_torch_file(path, safe_load=True)
    activation = data.get("activation_func", "linear")
    if activation not in KNOWN_ACTIVATIONS:
        logging.error("fake host: hypernetwork %s uses activation %r, which this host cannot build", path, activation)
        return None
    pairs = {}
    for key, value in data.items():
        width = _width(key)
        if width is not None:
            pairs[width] = (dict(value[0]), dict(value[1]))
    return HypernetworkPatch(pairs, strength)
