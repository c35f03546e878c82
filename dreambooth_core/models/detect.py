"""Which family a model file or folder belongs to, or a clear refusal.

Single files are recognised by their key layout (the same facts A1111 and ComfyUI use):
SDXL has two `conditioner.embedders`, SD2 an OpenCLIP `cond_stage_model.model`, SD1 a
transformers `cond_stage_model.transformer`. SD2's v-prediction cannot be read from the
layout, so it comes from modelspec metadata, a `<stem>.yaml` beside the file
(`parameterization: "v"`, as A1111 reads it) or an explicit `--family`. SDXL v-prediction
models (NoobAI-XL v-pred) carry ComfyUI's marker tensors: `v_pred`, and `ztsnr` when the
model was trained with zero-terminal-SNR betas; files written here keep them.
"""
from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import FamilyError, FormatError
from ..families import FAMILIES, Family, get_family

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

UNET_INPUT = "model.diffusion_model.input_blocks.0.0.weight"
FAMILY_INDEX_KEY = "_dreambooth_core_family"  # our own model_index.json entry (diffusers ignores "_" keys)
_LORA_MARKERS = ("lora_unet_", "lora_te", ".lora_down.", ".lora_up.", ".lora_A.", ".lora_B.", ".hada_w1", ".lokr_w1", "lora.down.")
_EMBEDDING_KEYS = {"emb_params", "clip_l", "clip_g", "string_to_param.*"}
V_PRED_KEY = "v_pred"   # ComfyUI's markers of an SDXL v-prediction model (and of zero terminal SNR)
ZTSNR_KEY = "ztsnr"


def family_group(family: Family) -> str:
    """'sd1', 'sd2' or 'sdxl': what a file's layout can tell (SD2 and SD2-v look alike)."""
    return "sdxl" if family.is_sdxl else "sd2" if family.is_v2 else "sd1"


def _examples(keys: list[str], n: int = 3) -> str:
    return ", ".join(sorted(keys)[:n])


def _has(keys: list[str], prefix: str) -> bool:
    return any(k.startswith(prefix) for k in keys)


def refuse_non_checkpoint(keys: list[str], what: str = "this file") -> None:
    """Raise a FormatError if `keys` are a LoRA, an embedding or nothing at all."""
    if not keys:
        raise FormatError(f"{what} holds no tensors: it is not a model checkpoint (an embedding or hypernetwork .pt?)")
    if any(marker in k for k in keys for marker in _LORA_MARKERS):
        raise FormatError(f"{what} is a LoRA, not a checkpoint: pick a base model here and apply the LoRA on top of it")
    if set(keys) <= _EMBEDDING_KEYS:
        raise FormatError(f"{what} is a textual-inversion embedding, not a checkpoint: pick a base model here")


def _layout_group(shapes: Mapping[str, tuple[int, ...]], what: str) -> str:
    keys = list(shapes)
    refuse_non_checkpoint(keys, what)
    if _has(keys, "depth_model."):
        raise FamilyError(f"{what} is a depth-conditioned (depth2img) model, which is not supported: use a base text-to-image model")
    if _has(keys, "embedder.model.") or _has(keys, "noise_augmentor."):
        raise FamilyError(f"{what} is an unCLIP image-variation model, which is not supported: use a base text-to-image model")
    if UNET_INPUT not in shapes:
        hint = " (diffusers weight names: pass the whole diffusers folder instead)" if _has(keys, "down_blocks.") or _has(keys, "unet.") else ""
        raise FormatError(f"{what} is not a Stable Diffusion checkpoint: found keys like {_examples(keys)}{hint}")
    channels = shapes[UNET_INPUT][1]
    if channels == 9:
        raise FamilyError(f"{what} is an inpainting model (9 input channels), which cannot be trained or converted here: use a base model")
    if channels == 8:
        raise FamilyError(f"{what} is an instruct-pix2pix model (8 input channels), which is not supported: use a base model")
    if channels != 4:
        raise FamilyError(f"{what} has a UNet with {channels} input channels; only 4-channel text-to-image models are supported")
    if _has(keys, "conditioner.embedders.1.model."):
        return "sdxl"
    if _has(keys, "conditioner.embedders.0.model.") and _has(keys, "model.diffusion_model.label_emb."):
        raise FamilyError(f"{what} is an SDXL refiner (one 1280-wide text encoder, no CLIP-L), which is not supported: use an SDXL base model")
    if _has(keys, "cond_stage_model.model.transformer."):
        return "sd2"
    if _has(keys, "cond_stage_model.transformer."):
        return "sd1"
    other = [k for k in keys if not k.startswith(("model.", "first_stage_model."))]
    if not other:
        raise FormatError(f"{what} has no text encoder (cond_stage_model.* / conditioner.*): it is a UNet/VAE only file, not a full checkpoint")
    raise FormatError(f"{what} is not a Stable Diffusion 1/2/XL checkpoint: found text-encoder keys like {_examples(other)}")


def prediction_hint(metadata: Mapping[str, str], yaml_path: Path | None) -> str | None:
    """'v_prediction', 'epsilon' or None, from modelspec metadata or an LDM yaml config."""
    pred = str(metadata.get("modelspec.prediction_type", "")).strip().lower()
    if pred in ("v", "v_prediction", "v-prediction"):
        return "v_prediction"
    if pred in ("epsilon", "eps"):
        return "epsilon"
    arch = str(metadata.get("modelspec.architecture", ""))
    if arch.startswith("stable-diffusion-v2-768-v"):
        return "v_prediction"
    if arch.startswith("stable-diffusion-v2-512"):
        return "epsilon"
    if yaml_path is not None and yaml_path.is_file():
        text = yaml_path.read_text(encoding="utf-8", errors="replace")
        match = re.search(r"^\s*parameterization:\s*['\"]?(\w+)", text, re.MULTILINE)
        return "v_prediction" if match and match.group(1) == "v" else "epsilon"
    return None


def _choose(group: str, prediction: str | None, requested: str | Family | None, what: str) -> Family:
    if requested is not None:
        fam = requested if isinstance(requested, Family) else get_family(requested)
        if family_group(fam) != group:
            raise FamilyError(f"{what} is a {FAMILIES[group].title} model, but the family {fam.name!r} was requested")
        return fam
    if group == "sd2":
        if prediction is None:
            log.warning(
                "%s is SD2 but nothing says whether it predicts v or epsilon; assuming epsilon (SD2-512). "
                "For a 768-v model pass --family sd2-v or put a <name>.yaml with parameterization: \"v\" beside it", what,
            )
        return FAMILIES["sd2-v" if prediction == "v_prediction" else "sd2"]
    if prediction == "v_prediction" and group == "sdxl":
        return FAMILIES["sdxl-v"]
    if prediction == "v_prediction":
        raise FamilyError(f"{what} is a v-prediction {FAMILIES[group].title} model, which is not supported")
    return FAMILIES[group]


def detect_family(
    shapes: Mapping[str, tuple[int, ...]],
    metadata: Mapping[str, str],
    yaml_path: Path | None,
    requested: str | Family | None = None,
    what: str = "this file",
) -> Family:
    """The family of an LDM single file from its tensor shapes and hints; refuses what we cannot load.

    `requested` (an explicit --family) settles SD2 vs SD2-v but must agree with the layout.
    """
    group = _layout_group(shapes, what)
    prediction = "v_prediction" if V_PRED_KEY in shapes else prediction_hint(metadata, yaml_path)
    return _choose(group, prediction, requested, what)


def scheduler_settings(family: Family, shapes: Mapping[str, Any]) -> dict[str, Any]:
    """What a single file's model says about its noise schedule: the family's prediction
    type, and zero-terminal-SNR betas for a v-prediction model marked `ztsnr` (as ComfyUI
    samples it; eps cannot be predicted at zero SNR, so the marker means nothing there)."""
    out: dict[str, Any] = {"prediction_type": family.prediction_type}
    if family.prediction_type == "v_prediction" and ZTSNR_KEY in shapes:
        out["rescale_betas_zero_snr"] = True
    return out


def prediction_markers(family: Family, scheduler_config: Mapping[str, Any]) -> dict[str, "torch.Tensor"]:
    """The marker tensors an SDXL single file needs for the hosts to load it as v-prediction
    (with zero-terminal-SNR betas): ComfyUI reads them by key; the values do not matter."""
    import torch

    if not family.is_sdxl or scheduler_config.get("prediction_type") != "v_prediction":
        return {}
    keys = [V_PRED_KEY] + ([ZTSNR_KEY] if scheduler_config.get("rescale_betas_zero_snr") else [])
    return {k: torch.tensor([]) for k in keys}


def _read_json(path: Path, what: str) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FormatError(f"{what} has no {path.name}: it is not a complete diffusers folder") from None
    except (OSError, ValueError) as exc:
        raise FormatError(f"{path} is not valid JSON ({exc})") from exc


def detect_diffusers_family(folder: Path, requested: str | Family | None = None) -> Family:
    """The family of a diffusers folder from model_index.json and the component configs."""
    what = str(folder)
    index = _read_json(folder / "model_index.json", what)
    pipeline = str(index.get("_class_name", ""))
    for marker, kind in (("Inpaint", "an inpainting"), ("InstructPix2Pix", "an instruct-pix2pix"), ("Depth2Img", "a depth2img"), ("Upscale", "an upscaler"), ("UnCLIP", "an unCLIP")):
        if marker in pipeline:
            raise FamilyError(f"{what} is {kind} pipeline ({pipeline}), which is not supported: use a base text-to-image model")
    unet = _read_json(folder / "unet" / "config.json", what)
    channels = unet.get("in_channels", 4)
    if channels != 4:
        raise FamilyError(f"{what} has a UNet with {channels} input channels (inpainting/pix2pix); only 4-channel text-to-image models are supported")
    if "text_encoder_2" in index and "text_encoder" not in index:
        raise FamilyError(f"{what} is an SDXL refiner (no CLIP-L text encoder), which is not supported: use an SDXL base model")
    if "unet" not in index or "vae" not in index or "text_encoder" not in index:
        raise FormatError(f"{what}: model_index.json lacks a unet, vae or text_encoder; it is not a Stable Diffusion pipeline")
    recorded = index.get(FAMILY_INDEX_KEY)
    if recorded in FAMILIES and requested is None:
        return FAMILIES[recorded]
    if "text_encoder_2" in index:
        group = "sdxl"
    else:
        text = _read_json(folder / "text_encoder" / "config.json", what)
        # OpenAI CLIP-L (SD1) uses quick_gelu; OpenCLIP ViT-H (SD2) uses gelu.
        group = "sd1" if text.get("hidden_act", "quick_gelu") == "quick_gelu" else "sd2"
    scheduler = folder / "scheduler" / "scheduler_config.json"
    prediction = _read_json(scheduler, what).get("prediction_type", "epsilon") if scheduler.exists() else "epsilon"
    return _choose(group, prediction, requested, what)
