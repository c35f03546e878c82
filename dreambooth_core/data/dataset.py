"""Training examples, their deterministic batch order, image preparation and the latent cache.

Determinism is the design constraint. The run is a sequence of *global* micro-batches;
micro-batch m holds `global_batch = batch_size × num_processes` slots, and process p
takes slots [p·batch, (p+1)·batch). Which image fills a slot, whether it is flipped, and
(in the loop) its noise and timestep all derive from (seed, m, slot) alone. So resuming
at step N replays exactly what an uninterrupted run would have done, and two processes
with batch B see exactly what one process with batch 2B sees.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from .buckets import Size, assign_bucket, make_buckets
from .captions import CaptionOptions, vary_caption

if TYPE_CHECKING:
    import numpy as np
    import torch
    from PIL import Image


def derive_seed(*parts: object) -> int:
    """A 63-bit seed from any tuple of ints/strings (stable across processes and runs)."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def example_generator(*parts: object) -> "torch.Generator":
    import torch

    return torch.Generator().manual_seed(derive_seed(*parts))


def numpy_rng(*parts: object) -> "np.random.Generator":
    import numpy as np

    return np.random.default_rng(derive_seed(*parts))


@dataclass(frozen=True)
class Example:
    path: Path
    prompt: str
    is_class: bool
    size: Size            # original (width, height), EXIF-rotated
    bucket: Size          # (width, height) it is trained at
    captions: CaptionOptions | None = None  # how the prompt (a caption) varies per step; None: fixed
    repeats: int = 1      # times seen per epoch (its concept's repeats)
    weight: float = 1.0   # loss weight (a class image: its concept's prior weight)
    mask: Path | None = None  # weights the loss per pixel (data.images.find_mask)


def caption_prompt(caption: str | None, instance_prompt: str, token: str, class_noun: str) -> str:
    """An instance image's prompt: its caption (with {token}/{class_noun} filled in), led by
    the instance prompt when the caption does not mention the token, so the token always
    appears next to the subject; no caption means the instance prompt."""
    if not caption or not caption.strip():
        return instance_prompt
    text = caption.strip().replace("{token}", token).replace("{class_noun}", class_noun)
    if token not in text.replace(",", " ").split():
        text = f"{instance_prompt}, {text}"
    return text


def make_examples(
    records: list,
    prompt_of: Callable[[object], str],
    is_class: bool,
    resolution: int,
    bucketing: bool,
    no_upscale: bool = False,
    captions: CaptionOptions | None = None,
    repeats: int = 1,
    weight: float = 1.0,
) -> list[Example]:
    """Examples from `data.images.ImageRecord`s; sizes are read from headers only."""
    buckets = make_buckets(resolution) if bucketing else [(resolution, resolution)]
    out = []
    for rec in records:
        size = image_size(rec.path)
        bucket = assign_bucket(size, resolution, buckets, no_upscale) if bucketing else buckets[0]
        out.append(Example(Path(rec.path), prompt_of(rec), is_class, size, bucket, captions, repeats, weight,
                           getattr(rec, "mask", None)))
    return out


def image_size(path: Path) -> Size:
    """(width, height) as displayed, i.e. after EXIF rotation, read from the header only."""
    from PIL import Image

    with Image.open(path) as im:
        try:
            rotated = im.getexif().get(0x0112, 1) in (5, 6, 7, 8)
        except Exception:
            rotated = False
        return (im.height, im.width) if rotated else im.size


class BatchPlan:
    """Which examples fill global micro-batch m: per epoch, each bucket's images are shuffled
    and padded (by repeating) to whole global batches, and the batches are shuffled."""

    def __init__(self, buckets: list[Size], global_batch: int, seed: int, role: str, repeats: list[int] | None = None):
        self.buckets = buckets
        self.global_batch = global_batch
        self.seed = seed
        self.role = role
        groups: dict[Size, list[int]] = {}
        for i, b in enumerate(buckets):
            groups.setdefault(b, []).extend([i] * (repeats[i] if repeats else 1))
        self.groups = [groups[k] for k in sorted(groups)]
        self.batches_per_epoch = sum(-(-len(g) // global_batch) for g in self.groups)

    @lru_cache(maxsize=4)
    def epoch(self, e: int) -> list[list[int]]:
        rng = numpy_rng(self.seed, self.role, "epoch", e)
        batches = []
        for group in self.groups:
            order = [group[i] for i in rng.permutation(len(group))]
            n = -(-len(order) // self.global_batch) * self.global_batch
            padded = [order[i % len(order)] for i in range(n)]
            batches += [padded[i : i + self.global_batch] for i in range(0, n, self.global_batch)]
        return [batches[i] for i in rng.permutation(len(batches))]

    def batch(self, m: int) -> list[int]:
        return self.epoch(m // self.batches_per_epoch)[m % self.batches_per_epoch]


@dataclass
class Prepared:
    pixels: "torch.Tensor"          # [3, H, W] in [-1, 1]
    crop_top_left: tuple[int, int]  # (top, left) in resized coordinates, as SDXL is conditioned
    mask: "torch.Tensor | None" = None  # [1, H, W] in [0, 1], cut as the pixels are


def prepare_image(image: "Image.Image", bucket: Size, center_crop: bool, flip: bool, rng: "np.random.Generator",
                  mask: "Image.Image | None" = None) -> Prepared:
    """Resize to cover the bucket, crop to it (centre or random), optionally mirror; the
    mask, if any, goes through the same resize, crop and mirror."""
    import numpy as np
    import torch
    from PIL import Image

    bw, bh = bucket
    w, h = image.size
    scale = max(bw / w, bh / h)
    rw, rh = max(bw, round(w * scale)), max(bh, round(h * scale))
    if (rw, rh) != (w, h):
        image = image.resize((rw, rh), Image.Resampling.BICUBIC if scale > 1 else Image.Resampling.LANCZOS)
    if mask is not None:
        mask = mask.convert("L").resize((rw, rh), Image.Resampling.BILINEAR)
    if center_crop:
        top, left = (rh - bh) // 2, (rw - bw) // 2
    else:
        top, left = int(rng.integers(0, rh - bh + 1)), int(rng.integers(0, rw - bw + 1))
    image = image.crop((left, top, left + bw, top + bh))
    if mask is not None:
        mask = mask.crop((left, top, left + bw, top + bh))
    if flip:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        mask = mask.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if mask is not None else None
        left = rw - left - bw
    array = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
    mask_t = torch.from_numpy(np.asarray(mask, dtype=np.float32) / 255.0)[None] if mask is not None else None
    return Prepared(torch.from_numpy(array).permute(2, 0, 1).contiguous(), (top, left), mask_t)


@dataclass
class Item:
    """One slot of a micro-batch, ready for the VAE (or the latent cache)."""

    index: int                      # into the examples list of its role
    example: Example
    slot: int                       # position in the global micro-batch
    flip: bool
    crop_top_left: tuple[int, int] = (0, 0)
    mask: "torch.Tensor | None" = None  # [1, H, W] as prepared, set with the latents

    @property
    def time_ids(self) -> list[int]:
        """SDXL's micro-conditioning: original (h, w), crop (top, left), target (h, w)."""
        w, h = self.example.size
        bw, bh = self.example.bucket
        return [h, w, *self.crop_top_left, bh, bw]


@dataclass
class LatentStats:
    mean: "torch.Tensor"
    std: "torch.Tensor"


@dataclass
class ExampleSet:
    """Instance or class examples with their batch plan and (optional) latent cache."""

    role: str                       # "instance" | "class"
    examples: list[Example]
    plan: BatchPlan
    cache: dict[tuple[int, bool], tuple[LatentStats, tuple[int, int], "torch.Tensor | None"]] = field(default_factory=dict)


class TrainingData:
    """Instance (and class) examples, the micro-batches of each process, and their latents."""

    def __init__(
        self,
        instances: list[Example],
        classes: list[Example],
        batch_size: int,
        num_processes: int,
        seed: int,
        center_crop: bool,
        random_flip: bool,
    ):
        self.batch_size = batch_size
        self.global_batch = batch_size * num_processes
        self.seed = seed
        self.center_crop = center_crop
        self.random_flip = random_flip
        self.sets = {role: ExampleSet(role, examples, BatchPlan([e.bucket for e in examples], self.global_batch, seed, role,
                                                              [e.repeats for e in examples]))
                     for role, examples in (("instance", instances), ("class", classes)) if examples or role == "instance"}

    @property
    def prompts(self) -> list[str]:
        return sorted({e.prompt for s in self.sets.values() for e in s.examples})

    def prompt(self, role: str, m: int, item: "Item") -> str:
        """The prompt of `item` in micro-batch m: its caption as the caption options vary it
        for this (seed, role, m, slot)."""
        options = item.example.captions
        if options is None or not options.varies:
            return item.example.prompt
        return vary_caption(item.example.prompt, options, numpy_rng(self.seed, role, "caption", m, item.slot))

    @property
    def captions_vary(self) -> bool:
        return any(e.captions is not None and e.captions.varies for s in self.sets.values() for e in s.examples)

    @property
    def has_class(self) -> bool:
        return "class" in self.sets

    def items(self, role: str, m: int, process_index: int) -> list[Item]:
        """This process's share of global micro-batch m of `role`."""
        s = self.sets[role]
        indices = s.plan.batch(m)
        out = []
        for slot in range(process_index * self.batch_size, (process_index + 1) * self.batch_size):
            i = indices[slot]
            flip = self.random_flip and bool(numpy_rng(self.seed, role, "flip", m, slot).integers(0, 2))
            out.append(Item(i, s.examples[i], slot, flip))
        return out

    def _prepare(self, item: Item, rng: "np.random.Generator") -> Prepared:
        from .images import load_image

        mask = load_image(item.example.mask) if item.example.mask is not None else None
        return prepare_image(load_image(item.example.path), item.example.bucket, self.center_crop, item.flip, rng, mask)

    @property
    def has_masks(self) -> bool:
        return any(e.mask is not None for s in self.sets.values() for e in s.examples)

    def build_latent_cache(self, encode: Callable[["torch.Tensor"], LatentStats], progress: Callable[[int, int], None]) -> None:
        """Encode every image once (both mirror images when flipping), with a crop fixed per image."""
        todo = [(s, i, flip) for s in self.sets.values() for i in range(len(s.examples)) for flip in ((False, True) if self.random_flip else (False,))]
        for n, (s, i, flip) in enumerate(todo):
            rng = numpy_rng(self.seed, s.role, "crop", i)
            prepared = self._prepare(Item(i, s.examples[i], 0, flip), rng)
            stats = encode(prepared.pixels.unsqueeze(0))
            s.cache[(i, flip)] = (LatentStats(stats.mean[0].float(), stats.std[0].float()), prepared.crop_top_left, prepared.mask)
            progress(n + 1, len(todo))

    @property
    def cached(self) -> bool:
        return all(s.cache for s in self.sets.values())

    def latent_stats(self, role: str, items: list[Item], m: int, encode: Callable[["torch.Tensor"], LatentStats]) -> LatentStats:
        """Latent distributions for `items` (same bucket): from the cache, or encoded now with a
        crop drawn for this step. Sets each item's crop coordinates."""
        import torch

        s = self.sets[role]
        if s.cache:
            stats = []
            for item in items:
                st, item.crop_top_left, item.mask = s.cache[(item.index, item.flip)]
                stats.append(st)
            return LatentStats(torch.stack([st.mean for st in stats]), torch.stack([st.std for st in stats]))
        pixels = []
        for item in items:
            prepared = self._prepare(item, numpy_rng(self.seed, role, "crop", m, item.slot))
            item.crop_top_left, item.mask = prepared.crop_top_left, prepared.mask
            pixels.append(prepared.pixels)
        return encode(torch.stack(pixels))
