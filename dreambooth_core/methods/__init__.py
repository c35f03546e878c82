"""The training methods, by the names `TrainConfig.method` uses (from the registry, imported on demand)."""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .base import Method


def get_method(name: str) -> type["Method"]:
    from ..errors import ConfigError
    from ..registry import METHODS, load

    if name not in METHODS:
        raise ConfigError(f"method must be one of {', '.join(METHODS)} (got {name!r})")
    return load(METHODS[name].impl)
