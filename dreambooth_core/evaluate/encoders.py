"""Image/text encoders the measures compare generations with, loaded offline from one file.

Users already have such files: ComfyUI's `models/clip_vision` (the CLIP ViT-L/H/bigG image
towers IP-Adapter uses; a full CLIP file there also has the text tower) or a DINOv2 model.
Sizes are read from the tensors' shapes; what shapes cannot tell (attention heads,
activation) comes from the configs shipped in `configs/encoders/` for the known CLIP
variants, and from the usual 64-wide heads otherwise. Nothing is downloaded.
"""
from __future__ import annotations

import json
import math
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, Sequence

from ..errors import UserError
from ..families import CONFIG_ROOT

if TYPE_CHECKING:
    import torch
    from PIL import Image

ENCODER_CONFIGS = CONFIG_ROOT / "encoders"
# the shipped CLIP variant for each vision width
CLIP_VARIANTS = {1024: "clip-vit-l-14", 1280: "clip-vit-h-14", 1664: "clip-vit-bigg-14"}
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
DINO_INPUT = 224   # DINOv2 interpolates its position embeddings; 224 px is how it is usually scored
ENCODER_SUFFIXES = (".safetensors",)


class Encoder(Protocol):
    """Unit-length embeddings of images (and of text, when the encoder has a text tower)."""

    name: str
    has_text: bool

    def embed_images(self, images: Sequence["Image.Image"]) -> "torch.Tensor": ...

    def embed_text(self, texts: Sequence[str]) -> "torch.Tensor": ...


def _pixels(images: Sequence["Image.Image"], side: int, mean, std) -> "torch.Tensor":
    """Shorter side resized to `side` (bicubic), centre crop, normalised: CLIP's and DINO's preprocessing."""
    import numpy as np
    import torch
    from PIL import Image

    out = []
    for image in images:
        image = image.convert("RGB")
        scale = side / min(image.size)
        w, h = max(side, round(image.width * scale)), max(side, round(image.height * scale))
        image = image.resize((w, h), Image.Resampling.BICUBIC)
        left, top = (w - side) // 2, (h - side) // 2
        array = np.asarray(image.crop((left, top, left + side, top + side)), dtype=np.float32) / 255
        out.append(torch.from_numpy((array - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)).permute(2, 0, 1))
    return torch.stack(out)


def _unit(x: "torch.Tensor") -> "torch.Tensor":
    return x.float() / x.float().norm(dim=-1, keepdim=True).clamp_min(1e-12)


def _from_file(cls, path: Path, config) -> Any:
    """`cls.from_pretrained` over a folder holding the config and a link to the file, so
    transformers maps older key names itself; strictly offline."""
    with tempfile.TemporaryDirectory() as folder:
        config.save_pretrained(folder)
        (Path(folder) / "model.safetensors").symlink_to(path.resolve())
        model, info = cls.from_pretrained(folder, local_files_only=True, output_loading_info=True)
    if info.get("missing_keys"):   # never score with randomly initialised parts
        missing = sorted(info["missing_keys"])
        raise UserError(f"{path.name} lacks {len(missing)} weight(s) the encoder needs, e.g. {missing[0]}")
    return model.eval()


@dataclass
class ClipEncoder:
    """CLIP image embeddings (CLIP-I), and text embeddings (CLIP-T) when the file has the text tower."""

    model: Any            # CLIPModel, or CLIPVisionModelWithProjection for a vision-only file
    image_size: int
    name: str = "clip"
    tokenizer: Any = None

    @property
    def has_text(self) -> bool:
        return self.tokenizer is not None

    def embed_images(self, images: Sequence["Image.Image"]) -> "torch.Tensor":
        import torch

        pixels = _pixels(images, self.image_size, CLIP_MEAN, CLIP_STD)
        with torch.no_grad():
            if self.has_text:
                # the towers and projections directly: get_*_features' return type changed across transformers versions
                return _unit(self.model.visual_projection(self.model.vision_model(pixel_values=pixels).pooler_output))
            return _unit(self.model(pixel_values=pixels).image_embeds)

    def embed_text(self, texts: Sequence[str]) -> "torch.Tensor":
        import torch

        if not self.has_text:
            raise UserError(f"{self.name} is an image-only CLIP file: prompt fidelity needs a full CLIP file (with its text tower)")
        ids = self.tokenizer(list(texts), padding="max_length", truncation=True,
                             max_length=self.model.config.text_config.max_position_embeddings, return_tensors="pt")
        with torch.no_grad():
            out = self.model.text_model(input_ids=ids.input_ids, attention_mask=ids.attention_mask)
            return _unit(self.model.text_projection(out.pooler_output))


@dataclass
class DinoEncoder:
    """DINOv2 image embeddings (the paper's DINO subject fidelity): the class token. No text tower."""

    model: Any
    name: str = "dinov2"
    has_text: bool = False

    def embed_images(self, images: Sequence["Image.Image"]) -> "torch.Tensor":
        import torch

        with torch.no_grad():
            return _unit(self.model(pixel_values=_pixels(images, DINO_INPUT, IMAGENET_MEAN, IMAGENET_STD)).pooler_output)

    def embed_text(self, texts: Sequence[str]) -> "torch.Tensor":
        raise UserError("a DINOv2 encoder embeds images only: prompt fidelity needs a full CLIP file")


def _layers(keys: list[str], pattern: str) -> int:
    found = {int(m.group(1)) for k in keys if (m := re.match(pattern, k))}
    return max(found) + 1 if found else 0


def _shapes(path: Path) -> dict[str, tuple[int, ...]]:
    from ..fileio import read_shapes

    return read_shapes(path)


def _clip_config(shapes: dict[str, tuple[int, ...]], with_text: bool):
    """CLIPConfig from the tensor shapes; heads and activation from the shipped variant of that width."""
    from transformers import CLIPConfig

    keys = list(shapes)
    hidden = shapes["vision_model.embeddings.class_embedding"][0]
    patch = shapes["vision_model.embeddings.patch_embedding.weight"][-1]
    positions = shapes["vision_model.embeddings.position_embedding.weight"][0]
    variant = CLIP_VARIANTS.get(hidden)
    base = json.loads((ENCODER_CONFIGS / f"{variant}.json").read_text()) if variant else {"text_config": {}, "vision_config": {}}
    vision = {**base["vision_config"],
              "hidden_size": hidden, "patch_size": patch, "image_size": patch * math.isqrt(positions - 1),
              "num_hidden_layers": _layers(keys, r"vision_model\.encoder\.layers\.(\d+)\."),
              "intermediate_size": shapes["vision_model.encoder.layers.0.mlp.fc1.weight"][0]}
    vision.setdefault("num_attention_heads", max(1, hidden // 64))
    projection = shapes["visual_projection.weight"][0]
    vision["projection_dim"] = projection
    text = dict(base["text_config"], projection_dim=projection)
    if with_text:
        t_hidden = shapes["text_model.embeddings.token_embedding.weight"][1]
        text.update(hidden_size=t_hidden, vocab_size=shapes["text_model.embeddings.token_embedding.weight"][0],
                    max_position_embeddings=shapes["text_model.embeddings.position_embedding.weight"][0],
                    num_hidden_layers=_layers(keys, r"text_model\.encoder\.layers\.(\d+)\."),
                    intermediate_size=shapes["text_model.encoder.layers.0.mlp.fc1.weight"][0])
        text.setdefault("num_attention_heads", max(1, t_hidden // 64))
        text.setdefault("eos_token_id", 49407)
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=projection), variant or f"clip (width {hidden})"


def _dino_config(shapes: dict[str, tuple[int, ...]]):
    from transformers import Dinov2Config

    keys = list(shapes)
    hidden = shapes["embeddings.cls_token"][-1]
    patch = shapes["embeddings.patch_embeddings.projection.weight"][-1]
    positions = shapes["embeddings.position_embeddings"][1]
    swiglu = any(".mlp.weights_in." in k for k in keys)
    fc1 = next((v for k, v in shapes.items() if k.startswith("encoder.layer.0.mlp.fc1.weight")), None)
    return Dinov2Config(
        hidden_size=hidden, patch_size=patch, image_size=patch * math.isqrt(positions - 1),
        num_hidden_layers=_layers(keys, r"encoder\.layer\.(\d+)\."), num_attention_heads=max(1, hidden // 64),
        mlp_ratio=4 if swiglu or fc1 is None else round(fc1[0] / hidden), use_swiglu_ffn=swiglu,
        layerscale_value=1.0,
    )


def load_encoder(path: str | Path) -> Encoder:
    """A CLIP (full or image-only) or DINOv2 encoder from one safetensors file, by its keys."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"encoder file not found: {path}")
    if path.suffix not in ENCODER_SUFFIXES:
        raise UserError(f"{path.name}: give the encoder as a .safetensors file (CLIP vision, full CLIP or DINOv2)")
    shapes = _shapes(path)
    if "vision_model.embeddings.class_embedding" in shapes and "visual_projection.weight" in shapes:
        from transformers import CLIPModel, CLIPVisionModelWithProjection

        from ..models.tokenizers import clip_tokenizer

        with_text = "text_model.embeddings.token_embedding.weight" in shapes and "text_projection.weight" in shapes
        config, variant = _clip_config(shapes, with_text)
        if with_text:
            return ClipEncoder(_from_file(CLIPModel, path, config), config.vision_config.image_size, variant, clip_tokenizer())
        model = _from_file(CLIPVisionModelWithProjection, path, config.vision_config)
        return ClipEncoder(model, config.vision_config.image_size, f"{variant} (image only)")
    if "embeddings.cls_token" in shapes and "embeddings.patch_embeddings.projection.weight" in shapes:
        from transformers import Dinov2Model

        config = _dino_config(shapes)
        return DinoEncoder(_from_file(Dinov2Model, path, config), f"dinov2 (width {config.hidden_size})")
    raise UserError(f"{path.name} is neither a CLIP (transformers layout: vision_model.*, visual_projection) "
                    "nor a DINOv2 (embeddings.cls_token, encoder.layer.*) model file")


def find_encoder(folders: Sequence[str | Path]) -> Path | None:
    """The first encoder file in a host's model folders (e.g. ComfyUI's clip_vision): a full CLIP
    file first (it also measures prompt fidelity), else any CLIP or DINOv2 file."""
    candidates = sorted(p for folder in folders if Path(folder).is_dir() for p in Path(folder).iterdir()
                        if p.suffix in ENCODER_SUFFIXES and p.is_file())
    readable = []
    for p in candidates:
        try:
            keys = _shapes(p)
        except UserError:
            continue
        if "text_projection.weight" in keys and "visual_projection.weight" in keys:
            return p
        if "visual_projection.weight" in keys or "embeddings.cls_token" in keys:
            readable.append(p)
    return readable[0] if readable else None
