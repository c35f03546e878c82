"""A base model's component configs, and the empty model built from them.

Everything is built offline from the configs shipped in the package (or the configs a
dreambooth-core file carries in its metadata), on the meta device, so the module tree and
its key names cost no memory until the weights are assigned (`models.load`).
"""
from __future__ import annotations

import contextlib
import inspect
import json
import logging
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import FormatError, UserError
from ..families import Family, get_family
from .base import BaseModel
from .detect import scheduler_settings
from .shapes import unet_config_from_shapes
from .tokenizers import family_tokenizers

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

CONFIGS_METADATA_KEY = "dreambooth_core.configs"
EXTRAS_FILE = "ldm_extras.safetensors"
COMPONENTS = ("unet", "vae", "text_encoder", "text_encoder_2")
DTYPES = {"fp16": "float16", "float16": "float16", "half": "float16", "bf16": "bfloat16", "bfloat16": "bfloat16", "fp32": "float32", "float32": "float32", "float": "float32"}
_TEXT_CONFIG_NOISE = ("transformers_version", "_name_or_path", "architectures", "dtype", "torch_dtype")


def torch_dtype(dtype: "str | torch.dtype") -> "torch.dtype":
    """A torch dtype from "fp16" / "bf16" / "fp32" (or a torch dtype)."""
    import torch

    if isinstance(dtype, torch.dtype):
        return dtype
    name = DTYPES.get(str(dtype).lower())
    if name is None:
        raise UserError(f"unknown dtype {dtype!r}: use fp16, bf16 or fp32")
    return getattr(torch, name)


def component_dtypes(dtype: "str | torch.dtype | Mapping[str, str | torch.dtype]", components: Iterable[str]) -> dict[str, "torch.dtype"]:
    """The load dtype of each of `components`: one dtype for all, or a mapping by component
    name ("unet", "vae", "text_encoder", "text_encoder_2"; a name the model lacks is ignored,
    a component the mapping lacks loads in fp32).

    Loading frozen parts straight into the compute dtype, one tensor at a time, is what
    keeps a bf16 LoRA run below a full fp32 copy of the UNet at its peak.
    """
    if isinstance(dtype, Mapping):
        unknown = set(dtype) - set(COMPONENTS)
        if unknown:
            raise UserError(f"unknown model component(s) {', '.join(sorted(unknown))}: use {', '.join(COMPONENTS)}")
        return {c: torch_dtype(dtype.get(c, "fp32")) for c in components}
    return dict.fromkeys(components, torch_dtype(dtype))


# ---------------------------------------------------------------- configs

def _json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def shipped_configs(family: Family) -> dict[str, dict[str, Any]]:
    """The family's component configs shipped in the package (no weights, no network)."""
    root = family.config_dir
    out = {name: _json(root / name / "config.json") for name in ("unet", "vae", *family.text_encoders)}
    out["scheduler"] = family.scheduler_config()
    return out


def _normal(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def _diffusers_config_differs(module: Any, shipped: dict[str, Any]) -> bool:
    defaults = {
        name: p.default for name, p in inspect.signature(type(module).__init__).parameters.items()
        if p.default is not inspect.Parameter.empty
    }
    reference = {**defaults, **{k: v for k, v in shipped.items() if not k.startswith("_")}}
    return any(
        _normal(value) != _normal(reference.get(key)) for key, value in module.config.items()
        if not key.startswith("_") and key in reference
    )


def _text_config(module: Any) -> dict[str, Any]:
    return {k: v for k, v in module.config.to_diff_dict().items() if k not in _TEXT_CONFIG_NOISE}


def model_configs(model: BaseModel) -> dict[str, dict[str, Any]]:
    """Every component config of `model`, in the form `dreambooth_core.configs` metadata stores."""
    out: dict[str, dict[str, Any]] = {
        "unet": {k: v for k, v in model.unet.config.items() if not k.startswith("_")},
        "vae": {k: v for k, v in model.vae.config.items() if not k.startswith("_")},
    }
    for name, te in zip(model.family.text_encoders, model.text_encoders):
        out[name] = _text_config(te)
    out["scheduler"] = dict(model.scheduler_config)
    return _normal(out)


def configs_differ_from_family(model: BaseModel) -> bool:
    """True when `model` cannot be rebuilt from its family's shipped configs (tiny/toy models)."""
    shipped = shipped_configs(model.family)
    if _diffusers_config_differs(model.unet, shipped["unet"]) or _diffusers_config_differs(model.vae, shipped["vae"]):
        return True
    for name, te in zip(model.family.text_encoders, model.text_encoders):
        ours = te.config.to_dict()
        if any(_normal(ours.get(k)) != _normal(v) for k, v in shipped[name].items() if k not in _TEXT_CONFIG_NOISE):
            return True
    return False


def _configs_from_metadata(metadata: dict[str, str], family: Family, what: str) -> dict[str, dict[str, Any]] | None:
    raw = metadata.get(CONFIGS_METADATA_KEY)
    if raw is None:
        return None
    try:
        configs = json.loads(raw)
    except ValueError as exc:
        raise FormatError(f"{what}: metadata {CONFIGS_METADATA_KEY} is not valid JSON ({exc})") from exc
    needed = ("unet", "vae", *family.text_encoders)
    if not isinstance(configs, dict) or not all(isinstance(configs.get(k), dict) for k in needed):
        raise FormatError(f"{what}: metadata {CONFIGS_METADATA_KEY} must hold the configs of {', '.join(needed)}")
    configs.setdefault("scheduler", shipped_configs(family)["scheduler"])
    return configs


# ---------------------------------------------------------------- building

def single_file_configs(shapes: Mapping[str, tuple[int, ...]], metadata: Mapping[str, str], family: Family,
                        what: str) -> dict[str, dict[str, Any]]:
    """The component configs of a single file of `family`: those its metadata records (else
    the family's), with the UNet's structure read from its tensors (trimmed and distilled
    models: fewer levels or res blocks, other transformer depths, no mid block) and the
    schedule its markers give (v-prediction, zero terminal SNR)."""
    configs = _configs_from_metadata(dict(metadata), family, what) or shipped_configs(family)
    unet = unet_config_from_shapes(shapes, configs["unet"], family, what)
    if unet != configs["unet"]:
        changed = {k: v for k, v in unet.items() if configs["unet"].get(k) != v}
        log.info("%s: the UNet structure read from its tensors: %s", what, json.dumps(changed))
    configs["unet"] = unet
    configs["scheduler"] = {**configs["scheduler"], **scheduler_settings(family, shapes)}
    return configs


def _text_encoder_class(family: Family, index: int):
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    return CLIPTextModelWithProjection if family.is_sdxl and index == 1 else CLIPTextModel


@contextlib.contextmanager
def _default_dtype(dtype: "torch.dtype | None") -> Iterator[None]:
    import torch

    before = torch.get_default_dtype()
    torch.set_default_dtype(dtype or before)
    try:
        yield
    finally:
        torch.set_default_dtype(before)


def _empty_components(family: Family, configs: dict[str, dict[str, Any]], empty: bool = True,
                      dtypes: Mapping[str, "torch.dtype"] | None = None) -> dict[str, Any]:
    """Components with parameters on the meta device (buffers real), ready for assign-loading;
    with `empty=False`, parameters made by the current mode (fake tensors, for memory planning:
    built straight in `dtypes`, as fake parameters cannot be converted afterwards)."""
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig

    dtypes = dtypes or {}
    with init_empty_weights() if empty else contextlib.nullcontext():
        with _default_dtype(dtypes.get("unet")):
            out: dict[str, Any] = {"unet": UNet2DConditionModel.from_config(configs["unet"])}
        with _default_dtype(dtypes.get("vae")):
            out["vae"] = AutoencoderKL.from_config(configs["vae"])
        for i, name in enumerate(family.text_encoders):
            cfg = {k: v for k, v in configs[name].items() if k not in _TEXT_CONFIG_NOISE}
            with _default_dtype(dtypes.get(name)):
                out[name] = _text_encoder_class(family, i)(CLIPTextConfig(**cfg))
    return out


def _bundle(family: Family, modules: dict[str, Any], scheduler: dict[str, Any], tokenizers: list, **kw: Any) -> BaseModel:
    for m in modules.values():
        m.eval()
    for tok, name in zip(tokenizers, family.text_encoders):
        # A text encoder with fewer positions than CLIP's 77 (tiny and toy models) needs a
        # tokenizer that stops there, or every prompt overflows it.
        tok.model_max_length = min(tok.model_max_length, modules[name].config.max_position_embeddings)
    return BaseModel(
        family=family,
        unet=modules["unet"],
        vae=modules["vae"],
        text_encoders=[modules[n] for n in family.text_encoders],
        tokenizers=tokenizers,
        scheduler_config=dict(scheduler),
        **kw,
    )


def empty_base_model(family: str | Family, configs: dict[str, dict[str, Any]] | None = None, meta: bool = True,
                     dtypes: Mapping[str, "torch.dtype"] | None = None) -> BaseModel:
    """A full-size (or `configs`-size) model whose parameters live on the meta device:
    the real module tree and key names at no memory cost, for layout checks in tests.
    `meta=False` makes them in the current mode, in `dtypes`, instead (under FakeTensorMode: planning)."""
    fam = family if isinstance(family, Family) else get_family(family)
    configs = configs or shipped_configs(fam)
    modules = _empty_components(fam, configs, empty=meta, dtypes=dtypes)
    return _bundle(fam, modules, configs["scheduler"], family_tokenizers(fam), name=f"empty-{fam.name}")
