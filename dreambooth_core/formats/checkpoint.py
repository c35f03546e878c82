"""Whole-model conversion between diffusers components and one LDM/SGM state dict.

A single file is the concatenation of per-component layouts under fixed prefixes:
`model.diffusion_model.` (UNet), `first_stage_model.` (VAE) and the text encoder(s), which
sit under `cond_stage_model.` (SD1/SD2) or `conditioner.embedders.N.` (SDXL). Each
component's rules are derived from its own state-dict keys and config, so any width or
depth converts; everything in a file that no rule consumes is returned as `extras` and
written back unchanged, which makes single file → components → single file exact.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from ..errors import FamilyError, FormatError
from ..families import Family
from .module_map import Rule
from .text_encoder_layout import hf_clip_rules, openclip_rules
from .unet_layout import diffusers_to_ldm_unet_key
from .vae_layout import is_conv_1x1_weight, vae_module_map

if TYPE_CHECKING:
    import torch

    from ..models.base import BaseModel

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."


def text_encoder_layouts(family: Family) -> list[tuple[str, str]]:
    """(prefix, layout) of each text encoder of `family`, in `family.text_encoders` order."""
    if family.is_sdxl:
        return [("conditioner.embedders.0.transformer.", "hf"), ("conditioner.embedders.1.model.", "openclip")]
    if family.is_v2:
        return [("cond_stage_model.model.", "openclip")]
    return [("cond_stage_model.transformer.", "hf")]


# Older layouts that A1111 and ComfyUI rename on load, and so do we (written back in the
# current layout): SD1 saved by transformers < 4.19 lacks the `text_model.` level, and
# SD2.1-Turbo stores its OpenCLIP encoder SGM-style as `conditioner.embedders.0.model.`.
_SD1_OLD_TEXT = ("cond_stage_model.transformer.embeddings.", "cond_stage_model.transformer.encoder.", "cond_stage_model.transformer.final_layer_norm.")
_SGM_SD2_TEXT = "conditioner.embedders.0.model."


def normalized_key_names(shapes: dict[str, tuple[int, ...]]) -> dict[str, str]:
    """Current single-file name → name in the file, for every key of a file."""
    keys = list(shapes)
    # One OpenCLIP embedder and no size conditioning (label_emb): SD2, not an SDXL refiner.
    sgm_sd2 = _SGM_SD2_TEXT + "ln_final.weight" in shapes and not any(
        k.startswith(("conditioner.embedders.1.", "model.diffusion_model.label_emb.")) for k in keys
    )
    out = {}
    for k in keys:
        new = k
        if k.startswith(_SD1_OLD_TEXT):
            new = "cond_stage_model.transformer.text_model." + k[len("cond_stage_model.transformer."):]
        elif sgm_sd2 and k.startswith("conditioner.embedders.0."):
            new = "cond_stage_model." + k[len("conditioner.embedders.0."):]
        out[new] = k
    return out


def model_components(model: "BaseModel") -> dict[str, "torch.nn.Module"]:
    """The weight-bearing components of `model` by diffusers component name."""
    out: dict[str, Any] = {"unet": model.unet, "vae": model.vae}
    out.update(zip(model.family.text_encoders, model.text_encoders))
    return out


def component_rules(component: str, module: "torch.nn.Module", family: Family) -> list[Rule]:
    """Rules mapping every state-dict tensor of `module` to its single-file key."""
    keys = list(module.state_dict().keys())
    try:
        if component == "unet":
            return [Rule(UNET_PREFIX + diffusers_to_ldm_unet_key(k, module.config), (k,)) for k in keys]
        if component == "vae":
            vae_map = vae_module_map(module.config)
            return [Rule(VAE_PREFIX + vae_map.ldm_name(k), (k,), "conv1x1" if is_conv_1x1_weight(k) else "copy") for k in keys]
        prefix, layout = text_encoder_layouts(family)[family.text_encoders.index(component)]
        return (openclip_rules if layout == "openclip" else hf_clip_rules)(keys, prefix)
    except KeyError as exc:
        raise FamilyError(f"the {component} cannot be written as a {family.title} single file: {exc.args[0]}") from exc


def ldm_state_dict(model: "BaseModel", dtype: "torch.dtype | None" = None) -> dict[str, "torch.Tensor"]:
    """The model as one single-file state dict (component tensors cast to `dtype`, extras as stored).

    Copies are made only where the layouts differ in shape or the dtype changes, so a model
    already in `dtype` costs almost no extra memory.
    """
    out: dict[str, Any] = {}
    for component, module in model_components(model).items():
        sd = module.state_dict()
        for rule in component_rules(component, module, model.family):
            t = rule.to_ldm([sd[s].detach() for s in rule.sources])
            out[rule.ldm] = t.to(dtype) if dtype is not None and t.is_floating_point() else t
    for key, value in model.extras.items():
        out.setdefault(key, value)
    from ..models.detect import prediction_markers

    for key, value in prediction_markers(model.family, model.scheduler_config).items():
        out.setdefault(key, value)
    return out


def load_ldm_state(
    modules: dict[str, "torch.nn.Module"],
    family: Family,
    keys: Iterable[str],
    get: Callable[[str], "torch.Tensor"],
    dtypes: dict[str, "torch.dtype"],
    source: str = "the checkpoint",
) -> dict[str, "torch.Tensor"]:
    """Fill `modules` (built on the meta device) from single-file tensors, each component in
    its dtype from `dtypes`; return the extras.

    Tensors are fetched one key at a time with `get` and assigned in place of the empty
    parameters, so peak memory stays at one copy of the weights.
    """
    order = list(keys)
    available = set(order)
    consumed: set[str] = set()
    for component, module in modules.items():
        expected = module.state_dict()
        rules = component_rules(component, module, family)
        missing = [r.ldm for r in rules if r.ldm not in available]
        state: dict[str, Any] = {}
        for rule in rules:
            if rule.ldm in missing:
                continue
            shapes = [tuple(expected[s].shape) for s in rule.sources]
            tensor = get(rule.ldm)
            if tuple(tensor.shape) != rule.ldm_shape(shapes):
                raise FormatError(
                    f"{source}: {rule.ldm} has shape {list(tensor.shape)} but this {family.title} {component} needs "
                    f"{list(rule.ldm_shape(shapes))}; the model has non-standard sizes: convert it from a diffusers "
                    "folder, or save it with dreambooth-core, which records its configs in the file"
                )
            for name, part in zip(rule.sources, rule.from_ldm(tensor, shapes)):
                state[name] = part.to(dtypes[component]) if part.is_floating_point() else part
            consumed.add(rule.ldm)
        if missing:  # after the shape checks: a wrong-size model gets the more useful message
            raise FormatError(
                f"{source} lacks {len(missing)} of the {len(rules)} {component} tensors of a {family.title} model "
                f"(e.g. {missing[0]}): it is incomplete or not a full checkpoint"
            )
        module.load_state_dict(state, strict=False, assign=True)
        still_empty = [n for n, p in module.named_parameters() if p.is_meta]
        if still_empty:
            raise FormatError(f"{source}: the {component} parameter {still_empty[0]} has no weights in the file")
    return {k: get(k) for k in order if k not in consumed}
