"""A prefix-level correspondence between two module trees (diffusers ⇄ original LDM).

Both the UNet and the VAE differ from their LDM originals in the same way: whole
sub-modules sit at other paths (`down_blocks.1.attentions.0` ⇄ `input_blocks.4.1`) and a
few names inside some of them differ (`norm1` ⇄ `in_layers.0`). `ModuleMap` holds exactly
that, and translates any parameter *or* module name by its longest mapped prefix.
`Rule` then says how one single-file tensor is made from the component tensor(s).
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def _longest_prefix(parts: list[str], table: Mapping[str, object]) -> int:
    """Number of leading segments of `parts` forming the longest key of `table` (0 if none)."""
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in table:
            return n
    return 0


def _rename_inner(rest: list[str], renames: Mapping[str, str]) -> list[str]:
    n = _longest_prefix(rest, renames)
    if n == 0:
        return rest
    return renames[".".join(rest[:n])].split(".") + rest[n:]


@dataclass(frozen=True)
class ModuleMap:
    """`to_ldm` maps diffusers module prefixes to LDM prefixes; `inner[prefix]` renames
    names inside that diffusers module (diffusers sub-path → LDM sub-path)."""

    to_ldm: dict[str, str]
    inner: dict[str, Mapping[str, str]] = field(default_factory=dict)
    what: str = "model"

    def __post_init__(self) -> None:
        back = {ldm: d for d, ldm in self.to_ldm.items()}
        if len(back) != len(self.to_ldm):
            raise ValueError(f"{self.what} module map is not one-to-one")
        object.__setattr__(self, "to_diffusers", back)
        object.__setattr__(
            self, "inner_back",
            {self.to_ldm[d]: {v: k for k, v in r.items()} for d, r in self.inner.items()},
        )

    def ldm_name(self, name: str) -> str:
        """LDM name of a diffusers parameter or module name; KeyError if it has none."""
        return self._translate(name, self.to_ldm, self.inner)

    def diffusers_name(self, name: str) -> str:
        """Diffusers name of an LDM parameter or module name; KeyError if it has none."""
        return self._translate(name, self.to_diffusers, self.inner_back)  # type: ignore[attr-defined]

    def _translate(self, name: str, table: Mapping[str, str], inner: Mapping[str, Mapping[str, str]]) -> str:
        parts = name.split(".")
        n = _longest_prefix(parts, table)
        if n == 0:
            raise KeyError(f"{name!r} has no counterpart in the {self.what} layout")
        prefix = ".".join(parts[:n])
        rest = parts[n:]
        if rest and prefix in inner:
            rest = _rename_inner(rest, inner[prefix])
        return ".".join([table[prefix], *rest])


@dataclass(frozen=True)
class Rule:
    """One tensor of a single file and the component tensor(s) it is made of.

    `op` says how: "copy"; "conv1x1" (LDM stores a linear weight as [out, in, 1, 1]);
    "transpose" (OpenCLIP's text_projection is applied as x @ P, a Linear as x @ W.T);
    "concat" (OpenCLIP fuses q, k, v into one in_proj along dim 0).
    """

    ldm: str
    sources: tuple[str, ...]
    op: str = "copy"

    def ldm_shape(self, shapes: list[tuple[int, ...]]) -> tuple[int, ...]:
        first = tuple(shapes[0])
        if self.op == "conv1x1":
            return first + (1, 1)
        if self.op == "transpose":
            return first[::-1]
        if self.op == "concat":
            return (sum(s[0] for s in shapes),) + first[1:]
        return first

    def to_ldm(self, tensors: list["torch.Tensor"]) -> "torch.Tensor":
        t = tensors[0]
        if self.op == "conv1x1":
            return t.reshape(*t.shape, 1, 1)
        if self.op == "transpose":
            return t.t().contiguous()
        if self.op == "concat":
            import torch

            return torch.cat(tensors, 0)
        return t

    def from_ldm(self, t: "torch.Tensor", shapes: list[tuple[int, ...]]) -> list["torch.Tensor"]:
        """Split/reshape an LDM tensor (already checked against `ldm_shape`) into its sources.

        Pieces of a fused tensor are cloned so no two parameters share storage (safetensors
        refuses to save shared tensors, and transformers would silently drop one).
        """
        if self.op == "conv1x1":
            return [t.reshape(shapes[0])]
        if self.op == "transpose":
            return [t.t().contiguous()]
        if self.op == "concat":
            return [p.clone() for p in t.split([s[0] for s in shapes], 0)]
        return [t]
