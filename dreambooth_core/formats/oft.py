"""OFT as the hosts compute it: a custom peft method and the LyCORIS `oft_blocks` layout.

What the hosts do with a LyCORIS diag-OFT module (A1111 v1.10 extensions-builtin/Lora/
network_oft.py, ComfyUI 0.3.64 comfy/weight_adapter/oft.py; Forge f2.0.1 has no OFT at all,
its patcher skips these keys): `oft_blocks` [k, n, n] splits the weight's *output* rows into
k blocks of n; Q = blocks − blocksᵀ per block, R = (I + Q)(I − Q)⁻¹ (an exact Cayley
transform, so R is orthogonal), and each block of rows becomes Rᵀ·W_block
(einsum "k n m, k n … -> k m …"), any trailing kernel axes along for the ride. The bias
is untouched. `alpha` is a norm constraint, not a scale: ‖Q‖ (all blocks together) is
clamped to it, A1111 to `alpha · out rows` (as LyCORIS trains), ComfyUI to `alpha` itself;
0 or missing means none. A1111 scales the change linearly by the strength; ComfyUI by its
square (it multiplies both R − I and the result by the strength).

peft 0.21.2's OFT rotates the *input* features with an approximate (Cayley–Neumann) R, a
different function, so this module is written here, the peft way: a config, a tuner and a
layer registered with `register_peft_method`, so `inject_adapter_in_model` and every
peft-generic path (trainable parameters, merge, adapter names) handle it like LoHa.
The layer computes y = Rᵀ·(W x) per block of output channels, + b: the same as the hosts'
merged weight, for Linear and Conv2d (a channel rotation commutes with the convolution).

Our training constraint is LyCORIS's (‖Q‖ ≤ alpha · out rows; `alpha` of the run, 0 = none);
the file carries the blocks with that clamp already applied and `alpha` = 0, so both hosts,
whose constraints disagree, compute exactly the trained rotation.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from peft.tuners.lycoris_utils import LycorisConfig, LycorisLayer, LycorisTuner
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

from ..errors import UserError
from .networks import NetworkType

try:
    from peft.utils import PeftType, register_peft_method
except ImportError as e:  # an older peft than the tested set
    raise UserError("network = 'oft' needs a peft with register_peft_method (the tested set has peft 0.21.2; "
                    "see dreambooth_core/constraints.txt)") from e

PEFT_NAME = "host_oft"  # the peft method's name (PeftType.HOST_OFT)


# ----------------------------------------------------------------------------- the hosts' math


def block_size(out_features: int, largest: int) -> int:
    """The largest divisor of `out_features` not above `largest`: the rows per block."""
    return max(d for d in range(1, min(largest, out_features) + 1) if out_features % d == 0)


def clamp_scale(q: torch.Tensor, bound: float) -> torch.Tensor | float:
    """The factor the hosts multiply Q by under a norm bound (‖Q‖ + 1e-8 > bound: bound / that)."""
    if bound <= 0:
        return 1.0
    norm = q.norm() + 1e-8
    return torch.where(norm > bound, bound / norm, torch.ones_like(norm))


def rotation(blocks: torch.Tensor, bound: float = 0.0) -> torch.Tensor:
    """R = (I + Q)(I − Q)⁻¹ per block, Q the skew part of `blocks` clamped to `bound` (float32)."""
    b = blocks.float()
    q = b - b.transpose(1, 2)
    q = q * clamp_scale(q, bound)
    eye = torch.eye(q.shape[-1], dtype=q.dtype, device=q.device)
    return torch.linalg.solve(eye - q, eye + q)  # (I − Q)⁻¹ and (I + Q) commute


def rotate_rows(r: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Each block of the weight's output rows (axis 0) becomes Rᵀ·block, as the hosts merge it."""
    blocks = weight.float().unflatten(0, (r.shape[0], r.shape[1]))
    return torch.einsum("knm,kn...->km...", r, blocks).flatten(0, 1)


def host_bound(slots: dict[str, torch.Tensor], out_rows: int) -> float:
    """A file's constraint as A1111 and LyCORIS read it (`alpha` · out rows; ComfyUI reads `alpha`)."""
    return float(slots["alpha"]) * out_rows if "alpha" in slots else 0.0


def oft_delta(slots: dict[str, torch.Tensor], weight: torch.Tensor) -> torch.Tensor:
    """The change an `oft_blocks` module makes to `weight` at strength 1 (float32)."""
    w = weight.float()
    return rotate_rows(rotation(slots["oft_blocks"], host_bound(slots, w.shape[0])), w) - w


# ----------------------------------------------------------------------------- the peft method


@dataclass
class HostOftConfig(LycorisConfig):
    """OFT on a layer's output rows. `r`: the largest block size (LyCORIS's `dim`; each layer
    takes the largest divisor of its width not above it); `alpha`: the norm constraint
    (‖Q‖ ≤ alpha · out rows, LyCORIS's `constraint`; 0 = none)."""

    r: int = field(default=8, metadata={"help": "largest block size"})
    alpha: float = field(default=0.0, metadata={"help": "norm constraint per output row; 0: none"})
    rank_dropout: float = 0.0
    module_dropout: float = 0.0
    target_modules: Any = None
    exclude_modules: Any = None
    init_weights: bool = field(default=True, metadata={"help": "zero blocks (R = I, the base model); False: small random"})
    layers_to_transform: Any = None
    layers_pattern: Any = None
    modules_to_save: Any = None

    def __post_init__(self):
        super().__post_init__()
        self.peft_type = PeftType.HOST_OFT
        if isinstance(self.target_modules, list):
            self.target_modules = set(self.target_modules)


class HostOftLayer(nn.Module, LycorisLayer):
    """A Linear or Conv2d whose output channels are rotated blockwise by an exact Cayley R."""

    adapter_layer_names = ("oft_blocks",)

    def __init__(self, base_layer: nn.Module, adapter_name: str, config: HostOftConfig, r: int = 8, alpha: float = 0.0, **kwargs):
        super().__init__()
        LycorisLayer.__init__(self, base_layer)
        self.oft_blocks = nn.ParameterDict({})
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, r, alpha, config)

    @property
    def _available_adapters(self) -> set[str]:
        return set(self.oft_blocks)

    def create_adapter_parameters(self, adapter_name: str, r: int, **kwargs) -> None:
        n = block_size(self.out_features, r)
        self.oft_blocks[adapter_name] = nn.Parameter(torch.zeros(self.out_features // n, n, n))

    def reset_adapter_parameters(self, adapter_name: str) -> None:
        nn.init.zeros_(self.oft_blocks[adapter_name])

    def update_layer(self, adapter_name: str, r: int, alpha: float, config: HostOftConfig, **kwargs) -> None:
        if r <= 0:
            raise ValueError(f"the OFT block size must be positive (got {r})")
        self.create_adapter_parameters(adapter_name, r)
        self.r[adapter_name] = self.oft_blocks[adapter_name].shape[-1]
        self.alpha[adapter_name] = alpha
        self.scaling[adapter_name] = 1.0  # a rotation has no strength while training
        self.rank_dropout[adapter_name] = 0.0
        self.rank_dropout_scale[adapter_name] = False
        self.module_dropout[adapter_name] = config.module_dropout
        if config.init_weights:
            self.reset_adapter_parameters(adapter_name)
        else:  # tests: a rotation that is not the identity
            nn.init.normal_(self.oft_blocks[adapter_name], std=0.1)
        self._move_adapter_to_device_of_base_layer(adapter_name)
        self.set_adapter(self.active_adapters)

    def bound(self, adapter_name: str) -> float:
        return float(self.alpha[adapter_name]) * self.out_features

    def rotation(self, adapter_name: str) -> torch.Tensor:
        return rotation(self.oft_blocks[adapter_name], self.bound(adapter_name))

    def get_delta_weight(self, adapter_name: str, *, apply_rank_dropout: bool = False) -> torch.Tensor:
        w = self.get_base_layer().weight
        return (rotate_rows(self.rotation(adapter_name), w) - w.float()).to(w.dtype)

    def unmerge(self) -> None:
        """Undo merges with Rᵀ's inverse, R (the delta depends on the weight it is applied to)."""
        while self.merged_adapters:
            adapter = self.merged_adapters.pop()
            if adapter in self._available_adapters:
                w = self.get_base_layer().weight
                w.data = rotate_rows(self.rotation(adapter).transpose(1, 2), w.data).to(w.dtype)

    def _get_delta_activations(self, adapter_name: str, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        raise NotImplementedError("OFT rotates the base output (forward), it adds no activations")

    def _rotate_output(self, adapter_name: str, y: torch.Tensor) -> torch.Tensor:
        r = self.rotation(adapter_name)
        channels_last = y.movedim(1, -1) if isinstance(self.get_base_layer(), nn.Conv2d) else y
        rotated = torch.einsum("knm,...kn->...km", r, channels_last.float().unflatten(-1, r.shape[:2])).flatten(-2)
        if isinstance(self.get_base_layer(), nn.Conv2d):
            rotated = rotated.movedim(-1, 1)
        return rotated.to(y.dtype)

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if self.disable_adapters and self.merged:
            self.unmerge()
        result = self.base_layer(x, *args, **kwargs)
        if self.disable_adapters or self.merged:
            return result
        bias = self.get_base_layer().bias
        shape = (-1, 1, 1) if isinstance(self.get_base_layer(), nn.Conv2d) else (-1,)
        for adapter in self.active_adapters:
            if adapter not in self._available_adapters:
                continue
            if self.training and self.module_dropout[adapter] and torch.rand(1) < self.module_dropout[adapter]:
                continue
            # rotate W x, not the bias: the hosts rotate the weight only
            plain = result if bias is None else result - bias.reshape(shape)
            result = self._rotate_output(adapter, plain)
            if bias is not None:
                result = result + bias.reshape(shape)
        return result


class HostOftModel(LycorisTuner):
    """peft tuner that puts HostOftLayer on the targeted Linear and Conv2d layers."""

    prefix: str = "oft_"
    tuner_layer_cls = HostOftLayer
    target_module_mapping: dict = {}
    layers_mapping = {nn.Conv2d: HostOftLayer, nn.Linear: HostOftLayer}

    def _create_and_replace(self, config, adapter_name, target, target_name, parent, current_key) -> None:
        """Adapt `target`, unless its width is prime to every block size up to `r`: 1×1 blocks
        have no skew part, so R would stay I for good (such a layer is left out of the file)."""
        from peft.tuners.tuners_utils import _get_in_out_features
        from peft.utils.other import get_pattern_key

        r = config.rank_pattern.get(get_pattern_key(config.rank_pattern.keys(), current_key), config.r)
        out_features = _get_in_out_features(target.get_base_layer() if isinstance(target, BaseTunerLayer) else target)[1]
        if block_size(out_features, r) == 1:
            return
        kwargs = {"r": r, "alpha": config.alpha_pattern.get(get_pattern_key(config.alpha_pattern.keys(), current_key), config.alpha)}
        if isinstance(target, HostOftLayer):
            target.update_layer(adapter_name, config=config, **kwargs)
        else:
            self._replace_module(parent, target_name, self._create_new_module(config, adapter_name, target, **kwargs), target)


def _peft_type(name: str) -> None:
    """Give peft's PeftType enum a member for this method: register_peft_method requires one,
    and only peft's own methods have theirs (the enum has no public way to add one)."""
    if name in PeftType.__members__:
        return
    member = str.__new__(PeftType, name)
    member._name_, member._value_ = name, name
    PeftType._member_map_[name] = member
    PeftType._value2member_map_[name] = member
    PeftType._member_names_.append(name)
    type.__setattr__(PeftType, name, member)


def _register() -> None:
    from peft.mapping import PEFT_TYPE_TO_TUNER_MAPPING

    _peft_type(PEFT_NAME.upper())
    if PeftType.HOST_OFT not in PEFT_TYPE_TO_TUNER_MAPPING:
        register_peft_method(name=PEFT_NAME, config_cls=HostOftConfig, model_cls=HostOftModel, prefix="oft_")


_register()


# ----------------------------------------------------------------------------- the file


def _oft_export(layer: HostOftLayer, adapter: str) -> dict[str, torch.Tensor]:
    """The blocks with the training constraint applied, and `alpha` = 0: both hosts then
    compute exactly the trained R (their own constraints disagree; see the module docstring)."""
    blocks = layer.oft_blocks[adapter].detach().float()
    scale = clamp_scale(blocks - blocks.transpose(1, 2), layer.bound(adapter))
    return {"oft_blocks": (blocks * scale).cpu().contiguous(), "alpha": torch.tensor(0.0)}


def _into_peft(layer: HostOftLayer, slots: dict[str, torch.Tensor], adapter: str) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{slot: (peft parameter, value)}: the file's blocks, clamped as A1111 and LyCORIS read them."""
    blocks = slots["oft_blocks"].float()
    return {"oft_blocks": (layer.oft_blocks[adapter], blocks * clamp_scale(blocks - blocks.transpose(1, 2), host_bound(slots, layer.out_features)))}


def _peft_rank(slots: dict[str, torch.Tensor]) -> tuple[int, float]:
    return int(slots["oft_blocks"].shape[-1]), 0.0


OFT = NetworkType("oft", "formats.oft:HostOftConfig", "dreambooth_core.formats.oft:HostOftLayer", _oft_export,
                  delta=oft_delta, into_peft=_into_peft, peft_rank=_peft_rank)
