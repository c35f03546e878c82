"""Class images for prior preservation: generated once by the base model, then reused.

Generated images are cached in a folder keyed by everything that decides what they look
like — base model hash, class prompt, negative prompt, resolution, sampler, steps, CFG and
seed — so a re-run (or another concept of the same class) reuses them, and a run that
needs more tops the folder up. Image i is always generated with seed `seed + i`, so a
topped-up folder holds the same images as one generated in a single go.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .data.images import IMAGE_SUFFIXES
from .events import CancelToken, EventSink, Progress
from .fileio import atomic_path, clean_stale_temps, write_text_atomic

if TYPE_CHECKING:
    from .config import TrainConfig
    from .models.base import BaseModel

KEY_FILE = "class_images.json"


@dataclass(frozen=True)
class ClassImageSpec:
    model_hash: str
    prompt: str
    negative_prompt: str
    resolution: int
    sampler: str
    steps: int
    guidance_scale: float
    seed: int
    clip_skip: int = 1   # in the key only when set, so earlier caches keep their key

    @classmethod
    def from_config(cls, config: "TrainConfig", model_hash: str, resolution: int) -> "ClassImageSpec":
        return cls(model_hash, config.class_prompt_text, config.negative_prompt, resolution,
                   config.class_sampler, config.class_inference_steps, config.class_guidance_scale, config.seed,
                   config.clip_skip)

    @property
    def key(self) -> str:
        fields = {k: v for k, v in self.__dict__.items() if not (k == "clip_skip" and v == 1)}
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]

    def folder_name(self) -> str:
        slug = re.sub(r"[^a-z0-9]+", "_", self.prompt.lower()).strip("_")[:40] or "class"
        return f"{slug}-{self.resolution}-{self.key}"


def default_class_dir(config: "TrainConfig", spec: ClassImageSpec) -> Path:
    """Shared by all runs in the same output folder: `<output_dir>/class_images/<prompt>-<res>-<key>/`."""
    return Path(config.output_dir) / "class_images" / spec.folder_name()


def existing_images(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))


def ensure_class_images(
    model: "BaseModel",
    config: "TrainConfig",
    spec: ClassImageSpec,
    emit: EventSink,
    cancel: CancelToken,
    batch_size: int = 1,
) -> Path:
    """A folder with at least `config.num_class_images` class images, generating the missing ones.

    `config.class_data_dir`, if set, is used as given (your own class photos count, and are
    topped up with generated ones); otherwise the keyed cache folder. Progress is reported
    as phase "class_images"; `cancel` is honoured between images (finished ones are kept).
    """
    folder = Path(config.class_data_dir) if config.class_data_dir else default_class_dir(config, spec)
    folder.mkdir(parents=True, exist_ok=True)
    clean_stale_temps(folder)   # images a killed run was writing
    want = config.num_class_images
    have = existing_images(folder)
    if len(have) >= want:
        return folder
    if not config.class_data_dir:
        write_text_atomic(folder / KEY_FILE, json.dumps(spec.__dict__, indent=2) + "\n")
    from .sample import generate

    taken = {p.stem for p in have}
    todo = [i for i in range(want) if f"class-{i:05d}" not in taken][: want - len(have)]
    total, done = want, len(have)
    emit(Progress(phase="class_images", step=done, total=total))

    def save(index: int, image) -> None:
        nonlocal done
        with atomic_path(folder / f"class-{index:05d}.png") as tmp:
            image.save(tmp, format="PNG")
        done += 1
        emit(Progress(phase="class_images", step=done, total=total))
        cancel.check()

    # contiguous runs of indices keep `seed + i` per image while batching
    for run in _runs(todo):
        generate(
            model, [spec.prompt] * len(run), negative_prompt=spec.negative_prompt, steps=spec.steps,
            guidance_scale=spec.guidance_scale, seed=spec.seed + run[0], sampler=spec.sampler,
            width=spec.resolution, height=spec.resolution, batch_size=batch_size, encoding=config.text_encoding,
            on_image=lambda j, image, start=run[0]: save(start + j, image),
        )
    return folder


def _runs(indices: list[int]) -> list[list[int]]:
    out: list[list[int]] = []
    for i in indices:
        if out and out[-1][-1] + 1 == i:
            out[-1].append(i)
        else:
            out.append([i])
    return out
