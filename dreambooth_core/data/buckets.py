"""Aspect-ratio buckets: train on non-square images without cropping away their subject.

Each bucket is a (width, height) of about `resolution`² pixels with sides on a grid of
64 px (resolution/8 below 512, so tiny test models bucket too), as NovelAI and kohya do;
an image goes to the bucket whose aspect ratio is closest, and a batch only ever holds
images of one bucket. With `no_upscale` (kohya's `bucket_no_upscale`), an image smaller
than the resolution's area keeps its own size, cut down to the grid, instead of being
blown up to a bucket: upscaled photos train blur.
"""
from __future__ import annotations

import math

Size = tuple[int, int]  # (width, height)

MAX_ASPECT = 2.0


def bucket_step(resolution: int) -> int:
    return min(64, max(8, resolution // 8 // 8 * 8))


def make_buckets(resolution: int, max_aspect: float = MAX_ASPECT) -> list[Size]:
    """All (w, h) with w·h ≤ resolution², sides multiples of the grid step, aspect ≤ max_aspect."""
    step = bucket_step(resolution)
    area = resolution * resolution
    out = {(resolution, resolution)}
    width = step
    while width <= resolution * max_aspect:
        height = min(area // width // step * step, int(resolution * max_aspect) // step * step)
        if height >= step and max(width / height, height / width) <= max_aspect:
            out.add((width, height))
        width += step
    # keep, per aspect ratio, only the largest area
    best: dict[float, Size] = {}
    for w, h in out:
        key = round(w / h, 4)
        if key not in best or w * h > best[key][0] * best[key][1]:
            best[key] = (w, h)
    return sorted(best.values())


def nearest_bucket(size: Size, buckets: list[Size]) -> Size:
    """The bucket whose log aspect ratio is closest to the image's (ties: the larger area)."""
    w, h = size
    ratio = math.log(w / h)
    return min(buckets, key=lambda b: (abs(math.log(b[0] / b[1]) - ratio), -b[0] * b[1]))


def assign_bucket(size: Size, resolution: int, buckets: list[Size], no_upscale: bool) -> Size:
    """The bucket an image of `size` trains at: the nearest of `buckets`, or with
    `no_upscale` and an area at most resolution², its own size cut down to the grid."""
    w, h = size
    if not no_upscale or w * h > resolution * resolution:
        return nearest_bucket(size, buckets)
    step = bucket_step(resolution)
    return (max(step, w // step * step), max(step, h // step * step))


def bucket_table(buckets: list[Size]) -> str:
    """'512x768: 3, 640x640: 5' — the buckets in use and how many images each holds."""
    counts: dict[Size, int] = {}
    for b in buckets:
        counts[b] = counts.get(b, 0) + 1
    return ", ".join(f"{w}x{h}: {n}" for (w, h), n in sorted(counts.items()))
