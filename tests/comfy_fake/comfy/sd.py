"""Fake of `comfy.sd` (ComfyUI 0.3.64): load_lora_for_models and load_checkpoint_guess_config.

The fake MODEL/CLIP objects have the real methods the nodes call (clone, add_patches,
set_model_attn1_patch/attn2_patch). LoRA keys are accepted as ComfyUI's key map accepts
kohya keys (`lora_unet_…`, `lora_te_…`, `lora_te1_/lora_te2_…` with .lora_up/.lora_down/.alpha);
anything else is logged `lora key not loaded:` and ignored, as the real loader does.
"""
from __future__ import annotations

import logging

KOHYA_PREFIXES = ("lora_unet_", "lora_te_", "lora_te1_", "lora_te2_")
WEIGHT_PARTS = (".lora_up.weight", ".lora_down.weight", ".alpha", ".lora_mid.weight")


class ModelPatcher:
    def __init__(self, keys=(), source=""):
        self.keys = set(keys)
        self.source = source
        self.patches: dict = {}
        self.attn1_patches: list = []
        self.attn2_patches: list = []

    def clone(self):
        n = ModelPatcher(self.keys, self.source)
        n.patches = {k: list(v) for k, v in self.patches.items()}
        n.attn1_patches, n.attn2_patches = list(self.attn1_patches), list(self.attn2_patches)
        return n

    def add_patches(self, patches, strength_patch=1.0, strength_model=1.0):
        added = []
        for k, v in patches.items():
            if k.startswith("lora_unet_"):
                self.patches.setdefault(k, []).append((strength_patch, v, strength_model))
                added.append(k)
        return added

    def set_model_attn1_patch(self, patch):
        self.attn1_patches.append(patch)

    def set_model_attn2_patch(self, patch):
        self.attn2_patches.append(patch)


class CLIP:
    def __init__(self, embedding_directory=None, source=""):
        self.embedding_directory = embedding_directory
        self.source = source
        self.patches: dict = {}

    def clone(self):
        n = CLIP(self.embedding_directory, self.source)
        n.patches = {k: list(v) for k, v in self.patches.items()}
        return n

    def add_patches(self, patches, strength_patch=1.0, strength_model=1.0):
        added = []
        for k, v in patches.items():
            if k.startswith(("lora_te_", "lora_te1_", "lora_te2_")):
                self.patches.setdefault(k, []).append((strength_patch, v, strength_model))
                added.append(k)
        return added


class VAE:
    def __init__(self, source=""):
        self.source = source


def _load_lora(lora: dict) -> dict:
    loaded: dict = {}
    for key, value in lora.items():
        module = next((key[: -len(p)] for p in WEIGHT_PARTS if key.endswith(p)), None)
        if module is None or not module.startswith(KOHYA_PREFIXES):
            logging.warning("lora key not loaded: %s", key)
            continue
        loaded.setdefault(module, {})[key[len(module) + 1:]] = value
    return loaded


def load_lora_for_models(model, clip, lora, strength_model, strength_clip):
    loaded = _load_lora(lora)
    new_model = new_clip = None
    k, k1 = set(), set()
    if model is not None:
        new_model = model.clone()
        k = set(new_model.add_patches(loaded, strength_model))
    if clip is not None:
        new_clip = clip.clone()
        k1 = set(new_clip.add_patches(loaded, strength_clip))
    for x in loaded:
        if x not in k and x not in k1:
            logging.warning("NOT LOADED %s", x)
    return (new_model, new_clip)


def load_checkpoint_guess_config(ckpt_path, output_vae=True, output_clip=True, output_clipvision=False, embedding_directory=None,
                                 output_model=True, model_options={}, te_model_options={}):
    """Reads the file's keys; like the real one, refuses a file without a recognisable UNet."""
    from safetensors import safe_open

    with safe_open(ckpt_path, framework="pt") as f:
        keys = list(f.keys())
    unet = [k for k in keys if k.startswith("model.diffusion_model.")]
    if not unet:
        raise RuntimeError(f"ERROR: Could not detect model type of: {ckpt_path}")
    model = ModelPatcher(unet, ckpt_path) if output_model else None
    clip = CLIP(embedding_directory, ckpt_path) if output_clip else None
    vae = VAE(ckpt_path) if output_vae else None
    return (model, clip, vae, None)
