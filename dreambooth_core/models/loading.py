"""Load a base model from a single file or a diffusers folder; save it as either.

Everything is built offline from the configs shipped in the package (or the configs a
dreambooth-core file carries in its metadata), on the meta device, and the weights are
assigned one tensor at a time from a memory-mapped file, so peak memory stays near one
copy of the weights. Tensors of a single file that no component consumes travel along in
`BaseModel.extras` (and `ldm_extras.safetensors` in a diffusers folder), so a round trip
reproduces the source file exactly.
"""
from __future__ import annotations

import contextlib
import copy
import hashlib
import inspect
import json
import logging
import os
import shutil
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import FormatError, OutputExistsError, UserError
from ..families import Family, get_family
from ..formats.checkpoint import UNET_PREFIX, ldm_state_dict, load_ldm_state, normalized_key_names
from ..fileio import (SafetensorsReader, check_output, clean_stale_temps, load_state_dict, require_file, save_safetensors,
                      temp_name, write_failure)
from ..paths import PathRefused, is_owned, make_owned_folder
from .base import BaseModel
from .detect import FAMILY_INDEX_KEY, detect_diffusers_family, detect_family, scheduler_settings
from .shapes import unet_config_from_shapes
from .tokenizers import family_tokenizers, write_tokenizer_folder

if TYPE_CHECKING:
    import torch

CONFIGS_METADATA_KEY = "dreambooth_core.configs"
EXTRAS_FILE = "ldm_extras.safetensors"
COMPONENTS = ("unet", "vae", "text_encoder", "text_encoder_2")
DTYPES = {"fp16": "float16", "float16": "float16", "half": "float16", "bf16": "bfloat16", "bfloat16": "bfloat16", "fp32": "float32", "float32": "float32", "float": "float32"}
_TEXT_CONFIG_NOISE = ("transformers_version", "_name_or_path", "architectures", "dtype", "torch_dtype")
log = logging.getLogger(__name__)
STABILITY_IMPLEMENTATION = "https://github.com/Stability-AI/generative-models"


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


# ---------------------------------------------------------------- loading

@contextlib.contextmanager
def _open_tensors(path: Path, unsafe_pickle: bool) -> Iterator[tuple[dict[str, tuple[int, ...]], dict[str, str], Any]]:
    """(shapes, metadata, get) of a single file; safetensors are read one tensor at a time."""
    if path.suffix.lower() != ".safetensors":
        sd = load_state_dict(path, unsafe_pickle=unsafe_pickle)
        yield {k: tuple(v.shape) for k, v in sd.items()}, {}, sd.__getitem__
        return
    with SafetensorsReader(path) as reader:
        yield reader.shapes, dict(reader.metadata), reader.get


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


def _load_single_file(path: Path, family: str | Family | None, dtype: Any, unsafe_pickle: bool) -> BaseModel:
    with _open_tensors(path, unsafe_pickle) as (file_shapes, metadata, get_stored):
        names = normalized_key_names(file_shapes)
        shapes = {k: file_shapes[old] for k, old in names.items()}

        def get(key: str) -> "torch.Tensor":
            return get_stored(names[key])

        fam = detect_family(shapes, metadata, path.with_suffix(".yaml"), requested=family, what=str(path))
        configs = single_file_configs(shapes, metadata, fam, str(path))
        modules = _empty_components(fam, configs)
        extras = load_ldm_state(modules, fam, shapes.keys(), get, component_dtypes(dtype, modules), source=str(path))
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


def _load_diffusers(folder: Path, family: str | Family | None, dtype: Any) -> BaseModel:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTokenizer

    fam = detect_diffusers_family(folder, requested=family)
    dtypes = component_dtypes(dtype, ("unet", "vae", *fam.text_encoders))
    classes = {"unet": UNet2DConditionModel, "vae": AutoencoderKL}
    classes.update((name, _text_encoder_class(fam, i)) for i, name in enumerate(fam.text_encoders))
    modules: dict[str, Any] = {}
    try:
        for name, cls in classes.items():
            modules[name] = _load_diffusers_component(folder, name, cls, dtypes[name], name in fam.text_encoders)
    except FormatError as exc:
        raise FormatError(f"{folder}: the {name} cannot be loaded: {exc}") from exc
    except UserError:
        raise
    except Exception as exc:  # the libraries raise OSError, ValueError, SafetensorError, … for a bad file
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise FormatError(f"{folder}: the {name} cannot be loaded ({first_line}); the folder may be incomplete or corrupt") from exc
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


# ---------------------------------------------------------------- saving

def _modelspec(model: BaseModel) -> dict[str, str]:
    fam = model.family
    return {
        "modelspec.sai_model_spec": "1.0.1",
        "modelspec.architecture": fam.modelspec_arch,
        "modelspec.implementation": STABILITY_IMPLEMENTATION,
        "modelspec.prediction_type": "v" if model.prediction_type == "v_prediction" else "epsilon",
        "modelspec.resolution": f"{fam.resolution}x{fam.resolution}",
    }


def save_single_file(
    model: BaseModel,
    path: str | os.PathLike,
    dtype: "str | torch.dtype" = "fp16",
    metadata: dict[str, str] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write `model` as one LDM-layout `.safetensors` (with its extras), atomically.

    Metadata: the source file's, then modelspec facts of the family, then `metadata`;
    plus `dreambooth_core.configs` when the model is not its family's standard size, so
    it loads back from the single file alone.
    """
    out = Path(path)
    if out.suffix.lower() != ".safetensors":
        raise UserError(f"{out}: single files are written as .safetensors (pickled .ckpt is not written)")
    check_output(out, overwrite)
    meta = {**model.metadata, **_modelspec(model)}
    meta.setdefault("modelspec.title", model.name)
    meta.update(metadata or {})
    if configs_differ_from_family(model):
        meta[CONFIGS_METADATA_KEY] = json.dumps(model_configs(model), sort_keys=True)
    else:
        meta.pop(CONFIGS_METADATA_KEY, None)
    return save_safetensors(ldm_state_dict(model, torch_dtype(dtype)), out, meta, overwrite=overwrite)


@contextlib.contextmanager
def _atomic_folder(folder: Path, overwrite: bool) -> Iterator[Path]:
    """A hidden temporary folder beside `folder`, renamed onto it on success. Only a folder
    this project wrote (its marker inside) is ever replaced."""
    if folder.exists() and not overwrite:
        raise OutputExistsError(f"{folder} already exists: choose another name or pass --overwrite")
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{folder} exists and is not a folder")
    if folder.exists() and not is_owned(folder):
        raise PathRefused(f"{folder} was not written by dreambooth_core, so it is not replaced: choose another name")
    folder.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temps(folder.parent)
    tmp = temp_name(folder)
    try:
        make_owned_folder(tmp)
        yield tmp
        old = None
        if folder.exists():
            old = folder.with_name(f".{folder.name}.{os.getpid()}.old")
            os.replace(folder, old)
        os.replace(tmp, folder)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except Exception as exc:
        failure = write_failure(exc, folder, kept="the previous folder is intact")
        if failure is not None:
            raise failure from exc
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _save_weights(state: dict[str, "torch.Tensor"], path: Path, dtype: "torch.dtype") -> None:
    from safetensors.torch import save_file

    tensors = {k: v.detach().to("cpu", dtype if v.is_floating_point() else v.dtype).contiguous() for k, v in state.items()}
    save_file(tensors, str(path), metadata={"format": "pt"})


def _write_tokenizers(model: BaseModel, dest: Path) -> None:
    """The base's own tokenizer folders, copied unchanged where it came from a diffusers
    folder that still has them; else the model's tokenizers."""
    dirs = model.tokenizer_dirs
    if len(dirs) == len(model.family.tokenizers) and all(d.is_dir() for d in dirs):
        for name, d in zip(model.family.tokenizers, dirs):
            shutil.copytree(d, dest / name)
        return
    write_tokenizer_folder(model.family, dest, model.tokenizers)


def save_diffusers(model: BaseModel, folder: str | os.PathLike, dtype: "str | torch.dtype" = "fp16", overwrite: bool = False) -> Path:
    """Write `model` as a diffusers folder (safetensors weights in `dtype`), atomically.

    Extras and the source metadata go to `ldm_extras.safetensors`, so converting the folder
    back to a single file restores them.
    """
    import diffusers

    target = Path(folder)
    td = torch_dtype(dtype)
    with _atomic_folder(target, overwrite) as tmp:
        for name in ("unet", "vae"):
            module = getattr(model, name)
            (tmp / name).mkdir()
            module.save_config(tmp / name)
            _save_weights(module.state_dict(), tmp / name / "diffusion_pytorch_model.safetensors", td)
        for name, te in zip(model.family.text_encoders, model.text_encoders):
            (tmp / name).mkdir()
            config = copy.deepcopy(te.config)
            config.architectures = [type(te).__name__]
            # The dtype a plain from_pretrained loads it in: fp32, as diffusers loads the UNet
            # and VAE; the stored dtype here would mix fp16 text with fp32 UNet.
            setattr(config, "dtype" if hasattr(config, "dtype") else "torch_dtype", torch_dtype("fp32"))
            config.save_pretrained(tmp / name)
            _save_weights(te.state_dict(), tmp / name / "model.safetensors", td)
        _write_tokenizers(model, tmp)
        (tmp / "scheduler").mkdir()
        scheduler = {"_class_name": "DDPMScheduler", **model.scheduler_config}
        (tmp / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        index = _json(model.family.config_dir / "model_index.json")
        index.update({
            "_diffusers_version": diffusers.__version__,
            FAMILY_INDEX_KEY: model.family.name,
            "scheduler": ["diffusers", scheduler["_class_name"]],
        })
        (tmp / "model_index.json").write_text(json.dumps(index, indent=2), encoding="utf-8")
        if model.extras or model.metadata:
            from safetensors.torch import save_file

            save_file({k: v.contiguous() for k, v in model.extras.items()}, str(tmp / EXTRAS_FILE), metadata=dict(model.metadata))
    return target


# ---------------------------------------------------------------- hashes

def model_hash(path: str | os.PathLike) -> str:
    """kohya / sd-webui-additional-networks hash (`sshs_model_hash`): sha256 of a
    safetensors file's bytes after its header, so editing metadata does not change it."""
    p = require_file(path, "safetensors file")
    h = hashlib.sha256()
    with open(p, "rb") as f:
        header_len = int.from_bytes(f.read(8), "little")
        f.seek(8 + header_len)
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def legacy_model_hash(path: str | os.PathLike) -> str:
    """A1111's old 8-hex model hash (kohya `ss_sd_model_hash`): sha256 of 64 KiB at offset 1 MiB."""
    with open(require_file(path, "model file"), "rb") as f:
        f.seek(0x100000)
        return hashlib.sha256(f.read(0x10000)).hexdigest()[:8]


def file_sha256(path: str | os.PathLike) -> str:
    """A1111's current model hash (kohya `ss_new_sd_model_hash`); its short form is the first 10 hex digits."""
    h = hashlib.sha256()
    with open(require_file(path, "model file"), "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
