"""The training methods, by the names `TrainConfig.method` uses (imported on demand)."""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .base import Method

METHOD_CLASSES: dict[str, str] = {
    "dreambooth": "dreambooth:DreamBoothMethod",
    "lora": "lora:LoraMethod",
    "textual_inversion": "textual_inversion:TextualInversionMethod",
    "hypernetwork": "hypernetwork:HypernetworkMethod",
}


def get_method(name: str) -> type["Method"]:
    from ..errors import ConfigError

    if name not in METHOD_CLASSES:
        raise ConfigError(f"method must be one of {', '.join(METHOD_CLASSES)} (got {name!r})")
    module, cls = METHOD_CLASSES[name].split(":")
    return getattr(importlib.import_module(f"{__name__}.{module}"), cls)
