"""Save a base model as one LDM-layout `.safetensors` file or as a diffusers folder,
atomically, with what it was loaded with (extras, metadata, tokenizers)."""
from __future__ import annotations

import copy
import json
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import OutputExistsError, UserError
from ..formats.checkpoint import ldm_state_dict
from ..fileio import atomic_folder, check_output, save_safetensors
from ..paths import PathRefused, is_owned, make_owned_folder
from .base import BaseModel
from .configs import CONFIGS_METADATA_KEY, EXTRAS_FILE, _json, configs_differ_from_family, model_configs, torch_dtype
from .detect import FAMILY_INDEX_KEY
from .tokenizers import write_tokenizer_folder

if TYPE_CHECKING:
    import torch

STABILITY_IMPLEMENTATION = "https://github.com/Stability-AI/generative-models"


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


def _replaceable_folder(folder: Path, overwrite: bool) -> Path:
    """`folder`, checked before writing: only a folder this project wrote (its marker inside)
    is ever replaced."""
    if folder.exists() and not overwrite:
        raise OutputExistsError(f"{folder} already exists: choose another name or pass --overwrite")
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{folder} exists and is not a folder")
    if folder.exists() and not is_owned(folder):
        raise PathRefused(f"{folder} was not written by dreambooth_core, so it is not replaced: choose another name")
    return folder


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
    with atomic_folder(_replaceable_folder(target, overwrite), make=make_owned_folder) as tmp:
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
