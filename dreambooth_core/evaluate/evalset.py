"""The fixed evaluation set: the same prompts and seeds at every step and for every artifact,
so numbers compare like for like. Built from the run's instance and class prompts: the
subject, the subject in a few new contexts, and the plain class.
"""
from __future__ import annotations

import hashlib
import io
import json
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:
    from PIL import Image

    from ..models.base import BaseModel

EVAL_SEED = 20_240   # its own seed, apart from the run's validation previews
DEFAULT_IMAGES = 4   # per prompt


@dataclass(frozen=True)
class EvalSet:
    subject: str                  # "a photo of zwx dog"
    contexts: tuple[str, ...]     # the subject in new contexts: "a photo of zwx dog on the beach"
    context_texts: tuple[str, ...]  # what each context image is compared with: the prompt without the token
    plain: str                    # the class prompt: "a photo of dog"
    controls: tuple[str, ...] = ()  # prompts without the token whose every attribute should be drawn (general prompt control)
    images_per_prompt: int = DEFAULT_IMAGES
    seed: int = EVAL_SEED
    steps: int = 25
    guidance_scale: float = 7.5
    sampler: str = "dpmpp_2m"
    resolution: int = 512
    negative_prompt: str = ""

    @classmethod
    def build(cls, subject: str, plain: str, token: str, phrases: Sequence[str], controls: Sequence[str] = (),
              **settings) -> "EvalSet":
        """Contexts are `subject` + each phrase; their texts drop the token (the encoder does not know it)."""
        contexts = tuple(f"{subject} {p}" for p in phrases)
        texts = tuple(" ".join(w for w in c.split() if w != token) for c in contexts)
        return cls(subject, contexts, texts, plain, tuple(controls), **settings)

    def key(self, model_id: str) -> str:
        """What the base model's class images depend on: they are reused while it stays the same."""
        data = json.dumps({"model": model_id, "plain": self.plain, **{k: v for k, v in asdict(self).items()
                           if k not in ("subject", "contexts", "context_texts", "plain", "controls")}}, sort_keys=True)
        return hashlib.sha256(data.encode()).hexdigest()[:16]


@dataclass
class EvalImages:
    subject: list["Image.Image"]
    contexts: list[list["Image.Image"]]   # one list per context prompt
    plain: list["Image.Image"]
    controls: list[list["Image.Image"]] = field(default_factory=list)   # one list per control prompt


def _draw(model: "BaseModel", s: EvalSet, prompt: str, autocast) -> list["Image.Image"]:
    from ..sample import generate

    with autocast():
        return generate(model, [prompt] * s.images_per_prompt, s.negative_prompt, s.steps, s.guidance_scale,
                        seed=s.seed, sampler=s.sampler, width=s.resolution, height=s.resolution)


def draw_set(model: "BaseModel", s: EvalSet, autocast=nullcontext) -> EvalImages:
    """Every image of the set (an embedding's token is written out by `generate`)."""
    return EvalImages(_draw(model, s, s.subject, autocast),
                      [_draw(model, s, c, autocast) for c in s.contexts],
                      _draw(model, s, s.plain, autocast),
                      [_draw(model, s, c, autocast) for c in s.controls])


def base_class_images(model: "BaseModel", s: EvalSet, folder: Path, model_id: str, autocast=nullcontext) -> list["Image.Image"]:
    """The base model's own class images for the set, drawn once and kept in `folder/<key>/`."""
    from PIL import Image

    from ..fileio import write_bytes_atomic

    cache = folder / s.key(model_id)
    paths = [cache / f"{i}.png" for i in range(s.images_per_prompt)]
    if all(p.is_file() for p in paths):
        return [Image.open(p).convert("RGB") for p in paths]
    cache.mkdir(parents=True, exist_ok=True)
    images = _draw(model, s, s.plain, autocast)
    for p, image in zip(paths, images):
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        write_bytes_atomic(p, buf.getvalue(), overwrite=True)
    return images


def instance_photos(folder: str | Path) -> list["Image.Image"]:
    """The instance photos, decoded as training decodes them."""
    from ..data.images import load_image, scan_images

    return [load_image(r.path) for r in scan_images(folder, min_size=0)]   # any size: they are only compared
