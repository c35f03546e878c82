"""A1111-style hypernetworks: the MLPs, their `.pt` file, and attaching them to a diffusers UNet.

Facts from A1111 `modules/hypernetworks/hypernetwork.py` and ComfyUI
`comfy_extras/nodes_hypernetwork.py`:
- For each width ``dim`` in the file there are two MLPs, one transforming the context
  fed to ``to_k`` and one the context fed to ``to_v``; each returns
  ``context + mlp(context) * multiplier``. Both hosts apply them in *every* attention
  (cross and self), choosing the pair by the context's last dimension — so 768/1024/2048
  entries act on cross-attention, 320/640/1280 entries on self-attention.
- The MLP is ``nn.Sequential`` named ``linear``: per step of ``layer_structure``
  (widths as multiples of dim, first and last 1) a Linear, then the activation unless it
  is "linear" or this is the last step without ``activate_output``, then a LayerNorm if
  ``is_layer_norm``, then a Dropout where ``dropout_structure`` is non-zero. The file
  stores each MLP's state dict (``linear.0.weight`` …) in that order.
- The file is a pickled dict: int dim → (k state dict, v state dict) plus ``layer_structure``,
  ``activation_func``, ``is_layer_norm``, ``weight_initialization``, ``use_dropout``,
  ``dropout_structure``, ``last_layer_dropout``, ``activate_output``, ``name``, ``step``,
  ``sd_checkpoint``, ``sd_checkpoint_name``, ``optional_info``. A1111's restricted
  unpickler accepts torch's legacy (non-zip) format, so we write that.
- ComfyUI supports only these activations (A1111 accepts more), so we do too; "swish"
  means Hardswish in both hosts.
"""
from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch

from ..errors import FamilyError, FormatError, UserError
from ..fileio import save_torch_atomic
from ..fileio import load_pickled

# activation name → torch.nn class name (None: no module)
ACTIVATIONS: dict[str, str | None] = {
    "linear": None, "relu": "ReLU", "leakyrelu": "LeakyReLU", "elu": "ELU", "swish": "Hardswish",
    "tanh": "Tanh", "sigmoid": "Sigmoid", "softsign": "Softsign", "mish": "Mish",
}
WEIGHT_INITS = ("Normal", "XavierUniform", "XavierNormal", "KaimingUniform", "KaimingNormal")


def dropout_structure_for(layer_structure: Sequence[float], dropout: float) -> list[float]:
    """A1111's structure for 'use dropout' with last-layer dropout: p after every hidden layer."""
    return [0.0] + [float(dropout)] * (len(layer_structure) - 2) + [0.0]


def _validate(layer_structure: Sequence[float], activation: str, dropout_structure: Sequence[float] | None, weight_init: str) -> None:
    if len(layer_structure) < 2 or layer_structure[0] != 1 or layer_structure[-1] != 1:
        raise UserError(f"hypernetwork layer_structure must start and end with 1, e.g. [1, 2, 1] (got {list(layer_structure)})")
    if activation not in ACTIVATIONS:
        raise UserError(f"hypernetwork activation {activation!r} is not supported by both A1111 and ComfyUI: use one of {', '.join(ACTIVATIONS)}")
    if weight_init not in WEIGHT_INITS:
        raise UserError(f"hypernetwork weight initialisation {weight_init!r} is unknown: use one of {', '.join(WEIGHT_INITS)}")
    if dropout_structure is not None:
        ok = len(dropout_structure) == len(layer_structure) and dropout_structure[0] == 0 and dropout_structure[-1] == 0
        if not ok or not all(0 <= p < 1 for p in dropout_structure):
            raise UserError(f"dropout_structure must have one value in [0, 1) per layer_structure entry, first and last 0 (got {list(dropout_structure)})")


def check_host_compatible(activation: str, layer_norm: bool, activate_output: bool, dropout_structure: Sequence[float] | None) -> None:
    """Refuse settings with which ComfyUI computes something other than A1111 (call before training).

    ComfyUI's loader decides "last layer" by counting LayerNorms as layers, so with layer
    norm it also applies the activation after the final Linear; and it never switches its
    MLPs to eval mode, so any dropout stays active (and at p=0.3) when generating.
    """
    if layer_norm and ACTIVATIONS.get(activation) is not None and not activate_output:
        raise UserError(
            f"a hypernetwork with layer norm and the {activation!r} activation runs differently in ComfyUI than in A1111: "
            "use activation 'linear', turn off layer norm, or activate the output layer"
        )
    if dropout_structure is not None and any(p > 0 for p in dropout_structure):
        raise UserError("hypernetwork dropout stays switched on when ComfyUI generates (random results there): train without dropout")


class HypernetworkModule(torch.nn.Module):
    """One MLP of a hypernetwork, laid out exactly as A1111 builds it (same state-dict keys)."""

    def __init__(
        self,
        dim: int,
        layer_structure: Sequence[float] = (1, 2, 1),
        activation: str = "linear",
        layer_norm: bool = False,
        dropout_structure: Sequence[float] | None = None,
        activate_output: bool = False,
        weight_init: str = "Normal",
    ):
        super().__init__()
        _validate(layer_structure, activation, dropout_structure, weight_init)
        act_cls = ACTIVATIONS[activation]
        layers: list[torch.nn.Module] = []
        for i in range(len(layer_structure) - 1):
            width_out = int(dim * layer_structure[i + 1])
            layers.append(torch.nn.Linear(int(dim * layer_structure[i]), width_out))
            is_last = i == len(layer_structure) - 2
            if act_cls is not None and (not is_last or activate_output):
                layers.append(getattr(torch.nn, act_cls)())
            if layer_norm:
                layers.append(torch.nn.LayerNorm(width_out))
            if dropout_structure is not None and dropout_structure[i + 1] > 0:
                layers.append(torch.nn.Dropout(p=dropout_structure[i + 1]))
        self.linear = torch.nn.Sequential(*layers)
        self.reset_parameters(weight_init, activation)

    def reset_parameters(self, weight_init: str = "Normal", activation: str = "linear") -> None:
        """A1111's initialisations; "Normal" is N(0, 0.01) weights and zero biases (LayerNorms always so)."""
        nonlinearity = "leaky_relu" if activation == "leakyrelu" else "relu"
        init = torch.nn.init
        with torch.no_grad():
            for layer in self.linear:
                if not isinstance(layer, (torch.nn.Linear, torch.nn.LayerNorm)):
                    continue
                layer.bias.zero_()
                if weight_init == "Normal" or isinstance(layer, torch.nn.LayerNorm):
                    init.normal_(layer.weight, mean=0.0, std=0.01)
                elif weight_init == "XavierUniform":
                    init.xavier_uniform_(layer.weight)
                elif weight_init == "XavierNormal":
                    init.xavier_normal_(layer.weight)
                elif weight_init == "KaimingUniform":
                    init.kaiming_uniform_(layer.weight, nonlinearity=nonlinearity)
                else:
                    init.kaiming_normal_(layer.weight, nonlinearity=nonlinearity)

    def forward(self, context: torch.Tensor, multiplier: float = 1.0) -> torch.Tensor:
        return context + self.linear(context) * multiplier


class Hypernetwork(torch.nn.Module):
    """A (k, v) MLP pair per context width, plus the settings the file records.

    As an `nn.Module`, `parameters()`, `.to()`, `.train()` and `state_dict()` (for resuming)
    cover every MLP, so the trainer can treat it like any model.
    """

    def __init__(
        self,
        dims: Iterable[int],
        layer_structure: Sequence[float] = (1, 2, 1),
        activation: str = "linear",
        layer_norm: bool = False,
        dropout_structure: Sequence[float] | None = None,
        activate_output: bool = False,
        weight_init: str = "Normal",
        name: str = "hypernetwork",
        step: int = 0,
        sd_checkpoint: str | None = None,
        sd_checkpoint_name: str | None = None,
        metadata: dict[str, str] | None = None,
    ):
        super().__init__()
        dims = [int(d) for d in dims]
        if not dims:
            raise UserError("a hypernetwork needs at least one context width, e.g. 768 for SD1")
        self.layer_structure = [float(x) for x in layer_structure]
        self.activation = activation
        self.layer_norm = bool(layer_norm)
        self.dropout_structure = [float(p) for p in dropout_structure] if dropout_structure is not None else [0.0] * len(layer_structure)
        self.activate_output = bool(activate_output)
        self.weight_init = weight_init
        self.name = name
        self.step = int(step)
        self.sd_checkpoint = sd_checkpoint
        self.sd_checkpoint_name = sd_checkpoint_name
        self.metadata = dict(metadata or {})
        self.mlps = torch.nn.ModuleDict({
            str(d): torch.nn.ModuleList([
                HypernetworkModule(d, self.layer_structure, activation, self.layer_norm, self.dropout_structure, self.activate_output, weight_init)
                for _ in range(2)
            ])
            for d in dims
        })

    @property
    def dims(self) -> list[int]:
        return [int(d) for d in self.mlps]

    def pair(self, dim: int) -> tuple[HypernetworkModule, HypernetworkModule] | None:
        """The (k, v) MLPs for a context width, or None if this hypernetwork has none for it."""
        mlps = self.mlps[str(dim)] if str(dim) in self.mlps else None
        return (mlps[0], mlps[1]) if mlps is not None else None

    @property
    def use_dropout(self) -> bool:
        return any(p > 0 for p in self.dropout_structure)


def _plain_list(values: Sequence[float]) -> list[float | int]:
    """[1.0, 2.0, 1.0] → [1, 2, 1]: what A1111's UI shows and writes for whole numbers."""
    return [int(v) if float(v).is_integer() else float(v) for v in values]


def hypernetwork_file_dict(hn: Hypernetwork) -> dict[Any, Any]:
    """The exact object A1111's `Hypernetwork.save` would write (plus our `metadata` dict)."""
    out: dict[Any, Any] = {}
    for dim in hn.dims:
        k, v = hn.pair(dim)
        out[dim] = tuple(OrderedDict((n, t.detach().to("cpu", copy=True)) for n, t in m.state_dict().items()) for m in (k, v))
    out.update(
        step=hn.step,
        name=hn.name,
        layer_structure=_plain_list(hn.layer_structure),
        activation_func=hn.activation,
        is_layer_norm=hn.layer_norm,
        weight_initialization=hn.weight_init,
        sd_checkpoint=hn.sd_checkpoint,
        sd_checkpoint_name=hn.sd_checkpoint_name,
        activate_output=hn.activate_output,
        use_dropout=hn.use_dropout,
        dropout_structure=[float(p) for p in hn.dropout_structure],
        last_layer_dropout=hn.dropout_structure[-2] != 0,
        optional_info=None,
        metadata=dict(hn.metadata),
    )
    return out


def save_hypernetwork(hn: Hypernetwork, path: str | Path, metadata: dict[str, str] | None = None, overwrite: bool = False) -> Path:
    """Write `hn` as an A1111/ComfyUI hypernetwork `.pt` (legacy pickle format) atomically.

    The hosts list hypernetworks by file stem (``<hypernet:stem:1>``), so the stored
    `name` is the stem too. `metadata` (strings) is merged over `hn.metadata`.
    """
    out = Path(path)
    if out.suffix != ".pt":
        raise UserError(f"{out}: hypernetworks are .pt files (A1111 lists only *.pt): name it {out.stem}.pt")
    obj = hypernetwork_file_dict(hn)
    obj["name"] = out.stem
    obj["metadata"] = {**hn.metadata, **{str(k): str(v) for k, v in (metadata or {}).items()}}
    return save_torch_atomic(obj, out, overwrite=overwrite, legacy=True)


def _fix_old_keys(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The oldest A1111 files named the two Linears linear1/linear2."""
    old = {"linear1.": "linear.0.", "linear2.": "linear.1."}
    return {next((new + k[len(o):] for o, new in old.items() if k.startswith(o)), k): v for k, v in sd.items()}


def hypernetwork_from_object(obj: Any, name: str, where: str) -> Hypernetwork:
    """Interpret a loaded hypernetwork dict with A1111's defaults for missing settings."""
    if not isinstance(obj, dict):
        raise FormatError(f"{where} holds a {type(obj).__name__}, not a hypernetwork")
    sds = {int(k): v for k, v in obj.items() if isinstance(k, int) or (isinstance(k, str) and k.isdigit())}
    if not sds:
        raise FormatError(f"{where} is not a hypernetwork: it has no context-width entries (e.g. 768)")
    layer_structure = obj.get("layer_structure") or [1, 2, 1]
    activation = obj.get("activation_func") or "linear"
    dropout_structure = obj.get("dropout_structure")
    if dropout_structure is None:  # files from before dropout_structure existed
        uses = bool(obj.get("use_dropout", False))
        dropout_structure = dropout_structure_for(layer_structure, 0.3) if uses else [0.0] * len(layer_structure)
        if uses and not obj.get("last_layer_dropout", False):
            dropout_structure[-2] = 0.0
    try:
        hn = Hypernetwork(
            sds, layer_structure, activation, bool(obj.get("is_layer_norm", False)), dropout_structure,
            bool(obj.get("activate_output", True)), obj.get("weight_initialization") or "Normal",
            name=str(obj.get("name") or name), step=int(obj.get("step") or 0),
            sd_checkpoint=obj.get("sd_checkpoint"), sd_checkpoint_name=obj.get("sd_checkpoint_name"),
            metadata={str(k): str(v) for k, v in (obj.get("metadata") or {}).items()},
        )
    except UserError as exc:
        raise FormatError(f"{where}: {exc}") from exc
    for dim, pair in sds.items():
        if not (isinstance(pair, (tuple, list)) and len(pair) == 2 and all(isinstance(s, dict) for s in pair)):
            raise FormatError(f"{where}: entry {dim} is not a (k, v) pair of state dicts")
        for module, sd in zip(hn.pair(dim), pair):
            try:
                module.load_state_dict(_fix_old_keys(sd))
            except RuntimeError as exc:
                first = str(exc).strip().splitlines()[0]
                raise FormatError(f"{where}: the weights for width {dim} do not match its layer_structure/activation/layer-norm settings ({first})") from exc
    return hn


def load_hypernetwork(path: str | Path) -> Hypernetwork:
    """Read an A1111/ComfyUI hypernetwork `.pt` (legacy or zip format) without unpickling code."""
    p = Path(path)
    hn = hypernetwork_from_object(load_pickled(p, "hypernetwork file"), p.stem, str(p))
    return hn.eval()


class HypernetworkHandle:
    """Hooks of one attached hypernetwork; `remove()` (or leaving the `with` block) detaches it.

    `multiplier` is read on every call, so it can be changed while attached.
    """

    def __init__(self, hn: Hypernetwork, multiplier: float):
        self.hypernetwork = hn
        self.multiplier = float(multiplier)
        self.hooks: list[torch.utils.hooks.RemovableHandle] = []
        self.attention_layers: list[str] = []

    def remove(self) -> None:
        for hook in self.hooks:
            hook.remove()
        self.hooks.clear()

    def __enter__(self) -> "HypernetworkHandle":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


def _context_hook(handle: HypernetworkHandle, mlp: HypernetworkModule):
    def hook(_module, args):
        context = args[0]
        dtype = next(mlp.parameters()).dtype
        return (mlp(context.to(dtype), handle.multiplier).to(context.dtype), *args[1:])
    return hook


def apply_hypernetwork(unet: torch.nn.Module, hn: Hypernetwork, multiplier: float = 1.0) -> HypernetworkHandle:
    """Transform the k/v context of every attention of `unet` whose context width `hn` covers.

    Forward pre-hooks on each attention's ``to_k``/``to_v`` replace their input with
    ``context + mlp(context) * multiplier`` — what A1111 and ComfyUI do at inference —
    and gradients flow to `hn`'s parameters when it is trained.
    """
    handle = HypernetworkHandle(hn, multiplier)
    widths = set()
    for name, module in unet.named_modules():
        to_k, to_v = getattr(module, "to_k", None), getattr(module, "to_v", None)
        if not isinstance(to_k, torch.nn.Module) or not isinstance(to_v, torch.nn.Module):
            continue
        width = getattr(to_k, "in_features", None)
        widths.add(width)
        pair = hn.pair(width) if width is not None else None
        if pair is None:
            continue
        handle.hooks.append(to_k.register_forward_pre_hook(_context_hook(handle, pair[0])))
        handle.hooks.append(to_v.register_forward_pre_hook(_context_hook(handle, pair[1])))
        handle.attention_layers.append(name)
    if not handle.attention_layers:
        raise FamilyError(
            f"hypernetwork widths {hn.dims} match no attention layer of this UNet "
            f"(its attention context widths are {sorted(w for w in widths if w)}): it was made for another model family"
        )
    return handle


def attention_widths(unet: torch.nn.Module) -> list[int]:
    """Every k/v input width of `unet`'s attentions: its context width first, then self-attention widths.

    A1111's default hypernetwork covers all of them (768, 320, 640, 1280 for SD1).
    """
    widths = {getattr(m.to_k, "in_features", None) for m in unet.modules() if isinstance(getattr(m, "to_k", None), torch.nn.Module)}
    context = unet.config.cross_attention_dim
    return [context] + sorted(w for w in widths if w and w != context)


def family_from_dims(dims: Iterable[int]) -> list[str]:
    """Families whose UNet context width appears among `dims` (768 → sd1, 1024 → sd2/sd2-v, 2048 → sdxl).

    The SDXL UNet's context is both text encoders' outputs concatenated, hence the sum.
    """
    from ..families import FAMILIES

    dims = set(dims)
    return [f.name for f in FAMILIES.values() if sum(f.context_dims) in dims]
