"""Aspect-ratio buckets: train on non-square images without cropping away their subject.

Each bucket is a (width, height) of about `resolution`² pixels with sides on a grid of
resolution/8 (64 px at 512, as NovelAI and kohya do); an image goes to the bucket whose
aspect ratio is closest, and a batch only ever holds images of one bucket.
"""
from __future__ import annotations

import math

Size = tuple[int, int]  # (width, height)

MAX_ASPECT = 2.0


def bucket_step(resolution: int) -> int:
    return max(8, resolution // 8 // 8 * 8)


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
