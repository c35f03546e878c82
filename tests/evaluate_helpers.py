"""Tiny random encoders saved as the files users have: a full CLIP, a CLIP image tower
(ComfyUI's clip_vision layout) and a DINOv2 model with the hub's key names."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=1, image_size=32, patch_size=8)
TEXT = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=1, vocab_size=49408,
            max_position_embeddings=77, eos_token_id=49407)
# DINOv2 key names as the hub's files have them (transformers renames them on load)
DINO_HUB_NAMES = {".attention.q_proj.": ".attention.attention.query.", ".attention.k_proj.": ".attention.attention.key.",
                  ".attention.v_proj.": ".attention.attention.value.", ".attention.o_proj.": ".attention.output.dense."}


def _save(model, path: Path, rename: dict[str, str] | None = None) -> Path:
    from safetensors.torch import save_file

    state = {}
    for k, v in model.state_dict().items():
        for old, new in (rename or {}).items():
            k = k.replace(old, new)
        state[k] = v.contiguous()
    save_file(state, str(path))
    return path


def tiny_clip(path: Path, vision_only: bool = False, seed: int = 0) -> Path:
    import torch
    from transformers import CLIPConfig, CLIPModel, CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(seed)
    if vision_only:
        return _save(CLIPVisionModelWithProjection(CLIPVisionConfig(**VISION, projection_dim=16)), path)
    return _save(CLIPModel(CLIPConfig(text_config=TEXT, vision_config=VISION, projection_dim=16)), path)


def tiny_dino(path: Path, seed: int = 0) -> Path:
    import torch
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(seed)
    return _save(Dinov2Model(Dinov2Config(**VISION)), path, DINO_HUB_NAMES)


def pictures(n: int, seed: int) -> list[Image.Image]:
    """Distinct images: a coloured disc on a coloured background, different per image."""
    from PIL import ImageDraw

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        image = Image.new("RGB", (64, 64), tuple(int(c) for c in rng.integers(0, 255, 3)))
        x, y, r = (int(v) for v in rng.integers(16, 48, 3) // [1, 1, 2])
        ImageDraw.Draw(image).ellipse((x - r, y - r, x + r, y + r), fill=tuple(int(c) for c in rng.integers(0, 255, 3)))
        out.append(image)
    return out


def pixel_shuffled(images: list[Image.Image], seed: int = 0) -> list[Image.Image]:
    """Each image's pixels in a random order: the same colours, no picture."""
    rng = np.random.default_rng(seed)
    out = []
    for image in images:
        a = np.asarray(image).reshape(-1, 3).copy()
        rng.shuffle(a)
        out.append(Image.fromarray(a.reshape(image.height, image.width, 3)))
    return out
