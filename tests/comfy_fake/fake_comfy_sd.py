"""Our stand-in for `comfy.sd`: loading a checkpoint and patching a LoRA into MODEL/CLIP.

Host facts modelled: `load_checkpoint_guess_config` gives (MODEL, CLIP, VAE, CLIP vision)
and fails on a file with no UNet weights (`model.diffusion_model.*`);
`load_lora_for_models` returns patched clones and leaves its inputs alone, takes kohya
keys (`lora_unet_*` for the UNet, `lora_te_*`/`lora_te1_*`/`lora_te2_*` for the text
encoders; .lora_up/.lora_down/.lora_mid weights and .alpha) and logs
"lora key not loaded: <key>" for any other key. MODEL objects have `clone` and the
attention-patch setters. Each object remembers the file it came from in `source`.
"""
from __future__ import annotations

import logging

_UNET_PREFIX = "lora_unet_"
_TEXT_PREFIXES = ("lora_te_", "lora_te1_", "lora_te2_")
_TENSOR_SUFFIXES = (".lora_down.weight", ".lora_up.weight", ".lora_mid.weight", ".alpha")

log = logging.getLogger(__name__)


class _Patchable:
    """A graph object that collects LoRA patches: {module: [(strength, tensors), ...]}."""

    prefixes: tuple[str, ...] = ()

    def __init__(self, source=""):
        self.source = source
        self.patches: dict[str, list[tuple[float, dict]]] = {}

    def _copy(self):
        twin = object.__new__(type(self))
        twin.__dict__.update(self.__dict__)
        twin.patches = {module: list(entries) for module, entries in self.patches.items()}
        return twin

    def clone(self):
        return self._copy()

    def _take(self, modules: dict[str, dict], strength: float) -> set[str]:
        mine = {m for m in modules if m.startswith(self.prefixes)}
        for module in mine:
            self.patches.setdefault(module, []).append((strength, modules[module]))
        return mine


class ModelPatcher(_Patchable):
    prefixes = (_UNET_PREFIX,)

    def __init__(self, source=""):
        super().__init__(source)
        self.attn1_patches: list = []
        self.attn2_patches: list = []

    def clone(self):
        twin = self._copy()
        twin.attn1_patches, twin.attn2_patches = list(self.attn1_patches), list(self.attn2_patches)
        return twin

    def set_model_attn1_patch(self, patch):
        self.attn1_patches.append(patch)

    def set_model_attn2_patch(self, patch):
        self.attn2_patches.append(patch)


class CLIP(_Patchable):
    prefixes = _TEXT_PREFIXES


class VAE:
    def __init__(self, source=""):
        self.source = source


def _split_module(key: str) -> tuple[str, str] | None:
    """'lora_unet_x.lora_up.weight' -> ('lora_unet_x', 'lora_up.weight'); None if not a kohya key."""
    for suffix in _TENSOR_SUFFIXES:
        if key.endswith(suffix):
            module = key[: -len(suffix)]
            if module.startswith((_UNET_PREFIX, *_TEXT_PREFIXES)):
                return module, suffix[1:]
    return None


def load_lora_for_models(model, clip, lora, strength_model, strength_clip):
    modules: dict[str, dict] = {}
    for key, tensor in lora.items():
        split = _split_module(key)
        if split is None:
            log.warning("lora key not loaded: %s", key)
            continue
        modules.setdefault(split[0], {})[split[1]] = tensor
    new_model = model.clone() if model is not None else None
    new_clip = clip.clone() if clip is not None else None
    if new_model is not None:
        new_model._take(modules, strength_model)
    if new_clip is not None:
        new_clip._take(modules, strength_clip)
    return new_model, new_clip


def load_checkpoint_guess_config(ckpt_path, output_vae=True, output_clip=True, output_clipvision=False,
                                 embedding_directory=None, output_model=True, **_model_options):
    from safetensors import safe_open

    with safe_open(ckpt_path, framework="pt") as f:
        has_unet = any(k.startswith("model.diffusion_model.") for k in f.keys())
    if not has_unet:
        raise RuntimeError(f"fake comfy.sd: no UNet weights in {ckpt_path}, so no model type to guess")
    model = ModelPatcher(ckpt_path) if output_model else None
    clip = CLIP(ckpt_path) if output_clip else None
    if clip is not None:
        clip.embedding_directory = embedding_directory
    vae = VAE(ckpt_path) if output_vae else None
    return model, clip, vae, None
