"""Load a base model from a single file or a diffusers folder.

The model is built empty from its configs (`models.configs`) and the weights are assigned
one tensor at a time from a memory-mapped file, so peak memory stays near one copy of the
weights. Tensors of a single file that no component consumes travel along in
`BaseModel.extras` (and `ldm_extras.safetensors` in a diffusers folder), so a round trip
through `models.save` reproduces the source file exactly.
"""
from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import FormatError, UserError
from ..families import Family
from ..formats.checkpoint import UNET_PREFIX, component_rules, load_ldm_state, normalized_key_names
from ..fileio import SafetensorsReader, load_state_dict, require_file
from .base import BaseModel
from .configs import (CONFIGS_METADATA_KEY, EXTRAS_FILE, _bundle, _empty_components, _json, _text_encoder_class,
                      component_dtypes, shipped_configs, single_file_configs)
from .detect import FAMILY_INDEX_KEY, detect_diffusers_family, detect_family
from .tokenizers import family_tokenizers

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)


@contextlib.contextmanager
def _open_tensors(path: Path, unsafe_pickle: bool) -> Iterator[tuple[dict[str, tuple[int, ...]], dict[str, str], Any]]:
    """(shapes, metadata, get) of a single file; safetensors are read one tensor at a time."""
    if path.suffix.lower() != ".safetensors":
        sd = load_state_dict(path, unsafe_pickle=unsafe_pickle)
        yield {k: tuple(v.shape) for k, v in sd.items()}, {}, sd.__getitem__
        return
    with SafetensorsReader(path) as reader:
        yield reader.shapes, dict(reader.metadata), reader.get


def _single_file_modules(path: Path, family: str | Family | None, dtype: Any, unsafe_pickle: bool,
                         names: "Iterable[str] | None" = None):
    """The components of a single file (only `names`, whose other tensors are never read, if
    given): (family, configs, modules, extras, metadata)."""
    with _open_tensors(path, unsafe_pickle) as (file_shapes, metadata, get_stored):
        key_names = normalized_key_names(file_shapes)
        shapes = {k: file_shapes[old] for k, old in key_names.items()}

        def get(key: str) -> "torch.Tensor":
            return get_stored(key_names[key])

        fam = detect_family(shapes, metadata, path.with_suffix(".yaml"), requested=family, what=str(path))
        configs = single_file_configs(shapes, metadata, fam, str(path))
        modules = _empty_components(fam, configs)
        keys: Iterable[str] = shapes.keys()
        if names is not None:
            modules = {k: m for k, m in modules.items() if k in set(names)}
            keys = [r.ldm for name, module in modules.items() for r in component_rules(name, module, fam) if r.ldm in shapes]
        extras = load_ldm_state(modules, fam, keys, get, component_dtypes(dtype, modules), source=str(path))
    return fam, configs, modules, extras, metadata


def _load_single_file(path: Path, family: str | Family | None, dtype: Any, unsafe_pickle: bool) -> BaseModel:
    fam, configs, modules, extras, metadata = _single_file_modules(path, family, dtype, unsafe_pickle)
    derived = configs["unet"] != shipped_configs(fam)["unet"]
    unread = [k for k in extras if k.startswith(UNET_PREFIX)] if derived else []
    if unread:  # a structure the config did not capture must not be dropped silently
        raise FormatError(f"{path}: {len(unread)} UNet tensors fit no block of the UNet read from the file (e.g. {unread[0]})")
    metadata.pop(CONFIGS_METADATA_KEY, None)
    return _bundle(fam, modules, configs["scheduler"], family_tokenizers(fam), source=path, name=path.stem, extras=extras, metadata=metadata)


def _variant(folder: Path, stem: str) -> str | None:
    """The weights variant of a component folder (None for plain weights, "fp16" for *.fp16.*)."""
    if any((folder / f"{stem}.{ext}").exists() or (folder / f"{stem}.{ext}.index.json").exists() for ext in ("safetensors", "bin")):
        return None
    for f in sorted(folder.glob(f"{stem}.*.safetensors")) + sorted(folder.glob(f"{stem}.*.bin")):
        return f.name.split(".")[1]
    raise FormatError(f"{folder} has no {stem}.safetensors weights")


def _transformers_dtype_kw(dtype: "torch.dtype") -> dict[str, Any]:
    import transformers

    return {"dtype" if int(transformers.__version__.split(".")[0]) >= 5 else "torch_dtype": dtype}


def _assign_from_file(module: Any, path: Path, dtype: "torch.dtype") -> bool:
    """Fill `module` (built on the meta device) from one safetensors file, one tensor at a
    time in `dtype`. False when the file's keys or shapes are not exactly the module's (an
    older layout the library's own loader knows how to convert)."""
    expected = module.state_dict()
    with SafetensorsReader(path) as reader:
        if reader.shapes != {k: tuple(v.shape) for k, v in expected.items()}:
            return False
        state = {}
        for key in reader.shapes:
            tensor = reader.get(key)
            state[key] = tensor.to(dtype) if tensor.is_floating_point() else tensor
    module.load_state_dict(state, strict=True, assign=True)
    return True


def _load_diffusers_component(folder: Path, name: str, cls: Any, dtype: "torch.dtype", is_text_encoder: bool) -> Any:
    """One component of a diffusers folder. A single plain safetensors file is read tensor by
    tensor into a module built on the meta device (peak memory: the result plus one tensor);
    anything else (shards, .bin, older key layouts) goes through the library's loader."""
    from accelerate import init_empty_weights

    sub = folder / name
    stem = "model" if is_text_encoder else "diffusion_pytorch_model"
    variant = _variant(sub, stem)
    single = sub / (f"{stem}.{variant}.safetensors" if variant else f"{stem}.safetensors")
    if single.is_file():
        if is_text_encoder:
            from transformers import CLIPTextConfig

            with init_empty_weights():
                module = cls(CLIPTextConfig.from_pretrained(sub, local_files_only=True))
        else:
            with init_empty_weights():
                module = cls.from_config(cls.load_config(sub, local_files_only=True))
        if _assign_from_file(module, single, dtype):
            return module
    if is_text_encoder:
        return cls.from_pretrained(sub, local_files_only=True, variant=variant, **_transformers_dtype_kw(dtype))
    return cls.from_pretrained(folder, subfolder=name, torch_dtype=dtype, local_files_only=True, variant=variant)


def _diffusers_modules(folder: Path, fam: Family, dtype: Any, names: "Iterable[str]") -> dict[str, Any]:
    """The components `names` of a diffusers folder, in `dtype`; a FormatError naming the part that fails."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    wanted = list(dict.fromkeys(names))
    dtypes = component_dtypes(dtype, wanted)
    classes = {"unet": UNet2DConditionModel, "vae": AutoencoderKL}
    classes.update((name, _text_encoder_class(fam, i)) for i, name in enumerate(fam.text_encoders))
    modules: dict[str, Any] = {}
    try:
        for name in wanted:
            modules[name] = _load_diffusers_component(folder, name, classes[name], dtypes[name], name in fam.text_encoders)
    except FormatError as exc:
        raise FormatError(f"{folder}: the {name} cannot be loaded: {exc}") from exc
    except UserError:
        raise
    except Exception as exc:  # the libraries raise OSError, ValueError, SafetensorError, … for a bad file
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise FormatError(f"{folder}: the {name} cannot be loaded ({first_line}); the folder may be incomplete or corrupt") from exc
    return modules


def _load_diffusers(folder: Path, family: str | Family | None, dtype: Any) -> BaseModel:
    from transformers import CLIPTokenizer

    fam = detect_diffusers_family(folder, requested=family)
    modules = _diffusers_modules(folder, fam, dtype, ("unet", "vae", *fam.text_encoders))
    ours = FAMILY_INDEX_KEY in _json(folder / "model_index.json")
    tokenizer_dirs = [folder / name for name in fam.tokenizers]
    if not all(d.is_dir() for d in tokenizer_dirs):
        tokenizers, tokenizer_dirs = family_tokenizers(fam), []
    elif ours:
        tokenizers = family_tokenizers(fam)  # what our folders hold, built without parsing tokenizer.json
    else:
        tokenizers = [CLIPTokenizer.from_pretrained(d) for d in tokenizer_dirs]
    sched_file = folder / "scheduler" / "scheduler_config.json"
    scheduler = _json(sched_file) if sched_file.exists() else shipped_configs(fam)["scheduler"]
    scheduler["prediction_type"] = fam.prediction_type
    extras: dict[str, Any] = {}
    metadata: dict[str, str] = {}
    if (folder / EXTRAS_FILE).exists():
        with _open_tensors(folder / EXTRAS_FILE, False) as (shapes, metadata, get):
            extras = {k: get(k) for k in shapes}
    return _bundle(fam, modules, scheduler, tokenizers, source=folder, name=folder.name, extras=extras, metadata=metadata,
                   tokenizer_dirs=tokenizer_dirs)


def load_base_model(
    path: str | os.PathLike,
    family: str | Family | None = None,
    dtype: "str | torch.dtype | Mapping[str, str | torch.dtype]" = "fp32",
    unsafe_pickle: bool = False,
) -> BaseModel:
    """Load a `.safetensors` / `.ckpt` single file or a diffusers folder, offline.

    `family` (e.g. "sd2-v") overrides detection where the file cannot tell (SD2 v vs eps)
    but must agree with the file's layout. Pickled checkpoints are read with
    `weights_only=True` unless `unsafe_pickle` is set. `dtype` is one dtype or one per
    component (see `component_dtypes`).
    """
    p = Path(path)
    if p.is_dir():
        return _load_diffusers(p, family, dtype)
    require_file(p, "model file")
    return _load_single_file(p, family, dtype, unsafe_pickle)


def load_components(
    path: str | os.PathLike,
    names: "Iterable[str]",
    family: str | Family | None = None,
    dtype: "str | torch.dtype" = "fp32",
    unsafe_pickle: bool = False,
) -> dict[str, Any]:
    """Only the components `names` ("vae", "text_encoder", ...) of a model file or folder, in
    `dtype`; the others' weights are never read. A DreamBooth run reads its frozen parts again
    this way to save them exactly as the base holds them."""
    p = Path(path)
    if p.is_dir():
        modules = _diffusers_modules(p, detect_diffusers_family(p, requested=family), dtype, names)
    else:
        modules = _single_file_modules(require_file(p, "model file"), family, dtype, unsafe_pickle, list(names))[2]
    return {name: module.eval() for name, module in modules.items()}
