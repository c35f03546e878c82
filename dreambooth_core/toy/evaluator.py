"""Analytic scores for images of the toy world: DreamBooth's metrics without CLIP or DINO.

We know how every scene is drawn (one flat shape on a flat background), so we measure
directly: the background colour is read from the image border, the object is whatever
differs from it, and the subject is recognised by its colours and their layout (a teal
body, an orange band across its middle; another `world.Subject` by its own two colours). Every measure is soft - colour kernels, weighted
fractions, soft shape overlap - because a tiny model's 64 px generations are blurry,
noisy and only roughly right, and a score should degrade smoothly with them.

All scores are in [0, 1] and higher is better:
- subject_fidelity    (DINO / CLIP-I analogue) the images show the subject;
- prompt_fidelity     (CLIP-T analogue) the prompt's background / colour / class hold;
- class_fidelity      the object has the class's shape;
- prior_preservation  (PRES, inverted) plain class images do not show subject traits;
- diversity           (DIV analogue) mean pairwise distance between the images.
"""
from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter

from .world import BAND, CLASSES, COLORS, SUBJECT, SUBJECT_CLASS, SUPERSAMPLE, Subject, shape_mask

ImageLike = Image.Image | np.ndarray  # PIL image, or an H x W x 3 uint8 array

COLOR_SIGMA = 40.0           # RGB distance at which a colour match falls to exp(-1/2)
FOREGROUND_RAMP = (35.0, 75.0)  # distance from the background where foreground goes 0 -> 1
BORDER = 0.06                # width of the border the background is read from, in sides
MIN_FOREGROUND = 0.01        # below this fraction of the image there is no object to judge
SPLIT_MARGIN = 0.15          # half-height of the middle rows the body colour ignores
BAND_CORE = 0.6 * BAND / 2   # half-height of the rows read as the subject's band: its middle
BAND_CONTRAST_RAMP = (0.35, 0.75)  # how far from the band colour the halves must be: 0 -> 1
SHAPE_TEMPERATURE = 0.05     # softmax temperature over the shape templates' overlaps
DIVERSITY_SIDE = 16          # images are compared at this size, so noise barely counts


@dataclass(frozen=True)
class _View:
    """One image, lightly denoised, with its foreground weights."""

    rgb: np.ndarray   # H x W x 3 float
    fg: np.ndarray    # H x W foreground weight in [0, 1]
    core: np.ndarray  # fg eroded: the object without its edge, where colours blend

    @property
    def has_object(self) -> bool:
        return float(self.fg.mean()) >= MIN_FOREGROUND


def _to_pil(image: ImageLike) -> Image.Image:
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    return Image.fromarray(np.asarray(image, dtype=np.uint8)).convert("RGB")


def _border(rgb: np.ndarray) -> np.ndarray:
    """The pixels within BORDER of the image's edge, as an N x 3 array."""
    h, w = rgb.shape[:2]
    b = max(1, round(BORDER * min(h, w)))
    ys, xs = np.ogrid[:h, :w]
    edge = np.minimum(np.minimum(ys, h - 1 - ys), np.minimum(xs, w - 1 - xs)) < b
    return rgb[edge]


def _ramp(x: np.ndarray | float, lo: float, hi: float) -> np.ndarray:
    return np.clip((np.asarray(x, dtype=np.float64) - lo) / (hi - lo), 0.0, 1.0)


def _analyse(image: ImageLike) -> _View:
    """Denoise, read the background from the border (median: robust to an object that
    touches it) and weight every pixel by how far its colour is from the background."""
    img = _to_pil(image)
    smooth = img.filter(ImageFilter.GaussianBlur(radius=min(img.size) / 64))
    rgb = np.asarray(smooth, dtype=np.float64)
    background = np.median(_border(rgb), axis=0)
    fg = _ramp(np.linalg.norm(rgb - background, axis=-1), *FOREGROUND_RAMP)
    size = 2 * max(1, round(min(img.size) / 64)) + 1
    fg_image = Image.fromarray(np.round(fg * 255).astype(np.uint8))
    core = np.asarray(fg_image.filter(ImageFilter.MinFilter(size)), dtype=np.float64) / 255
    return _View(rgb, fg, core)


def _match(rgb: np.ndarray, color: str) -> np.ndarray:
    """Per-pixel closeness to a named colour: a Gaussian kernel of the RGB distance."""
    d2 = ((rgb - np.asarray(COLORS[color], dtype=np.float64)) ** 2).sum(axis=-1)
    return np.exp(-d2 / (2 * COLOR_SIGMA**2))


def _weighted_mean(values: np.ndarray, weights: np.ndarray) -> float:
    total = float(weights.sum())
    return float((values * weights).sum() / total) if total > 0 else 0.0


def _zones(view: _View) -> tuple[np.ndarray, np.ndarray]:
    """Core weights of the object's middle rows (where the subject's band is) and of the
    rest of it, leaving out a margin between the two where colours blur. The object's
    extent is read from the foreground's row profile (2 %..98 % of its mass, so stray
    pixels do not count)."""
    rows = view.fg.sum(axis=1)
    cum = np.cumsum(rows) / rows.sum()
    top, bottom = np.searchsorted(cum, 0.02), np.searchsorted(cum, 0.98)
    height = float(bottom - top)
    offset = np.abs(np.arange(view.fg.shape[0])[:, None] - (top + bottom) / 2)
    return view.core * (offset < BAND_CORE * height), view.core * (offset > SPLIT_MARGIN * height)


def _traits(view: _View, subject: Subject) -> tuple[float, float]:
    """(body, band): how much the object has the subject's body colour (teal) outside its
    middle, and its band colour (orange) in its middle where the rest of it has not (so a
    plain orange object shows no band)."""
    middle, rest = _zones(view)
    body = _weighted_mean(_match(view.rgb, subject.color), rest)
    band = _match(view.rgb, subject.band)
    elsewhere = 1.0 - _weighted_mean(band, rest)
    return body, _weighted_mean(band, middle) * float(_ramp(elsewhere, *BAND_CONTRAST_RAMP))


def _subject_score(view: _View, subject: Subject) -> float:
    """The body colour, counted half without the band and fully with it: a teal ball
    (what words can ask for) gets 0.5, the subject itself 1."""
    if not view.has_object:
        return 0.0
    body, band = _traits(view, subject)
    return body * (1.0 + band) / 2


def _trait_score(view: _View, subject: Subject) -> float:
    """Any sign of the subject in a class image: its body colour or its band."""
    return max(_traits(view, subject)) if view.has_object else 0.0


def _class_probs(view: _View) -> dict[str, float]:
    """Soft shape classification: each class's template, stretched over the object's
    bounding box, is compared with the foreground by soft IoU; a softmax turns the
    overlaps into probabilities."""
    ys, xs = np.nonzero(view.fg >= 0.5)
    if not view.has_object or len(ys) == 0:
        return {cls: 1.0 / len(CLASSES) for cls in CLASSES}
    y0, y1 = np.percentile(ys, [0.5, 99.5]).round().astype(int)
    x0, x1 = np.percentile(xs, [0.5, 99.5]).round().astype(int)
    crop = view.fg[y0 : y1 + 1, x0 : x1 + 1]
    h, w = crop.shape
    overlaps = []
    for cls in CLASSES:
        big = shape_mask(cls, (w * SUPERSAMPLE, h * SUPERSAMPLE))
        template = np.asarray(big.resize((w, h), Image.Resampling.BOX), dtype=np.float64) / 255
        overlaps.append(np.minimum(crop, template).sum() / np.maximum(crop, template).sum())
    logits = np.asarray(overlaps) / SHAPE_TEMPERATURE
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    return dict(zip(CLASSES, probs.tolist()))


def _mean(values: Sequence[float]) -> float:
    if not values:
        raise ValueError("no images to score")
    return float(np.mean(values))


def subject_fidelity(images: Sequence[ImageLike], subject: Subject = SUBJECT) -> float:
    """Mean over images of how clearly each shows `subject`: its body colour (0.5) and
    its band (the other 0.5, only on top of the body)."""
    return _mean([_subject_score(_analyse(im), subject) for im in images])


def prior_preservation(images: Sequence[ImageLike], subject: Subject = SUBJECT) -> float:
    """For images of the plain class prompt ("a photo of a ball"): 1 - the mean strength
    of `subject`'s traits in them. Language drift (the class turning into the subject)
    lowers it; the plain world's class images score about 1."""
    return 1.0 - _mean([_trait_score(_analyse(im), subject) for im in images])


def class_fidelity(images: Sequence[ImageLike], cls: str = SUBJECT_CLASS) -> float:
    """Mean probability that the object has the shape of `cls`."""
    if cls not in CLASSES:
        raise ValueError(f"unknown class {cls!r}; use one of {sorted(CLASSES)}")
    return _mean([_class_probs(_analyse(im))[cls] for im in images])


def _background_score(view: _View, background: str) -> float:
    return float(_match(_border(view.rgb), background).mean())


def _color_score(view: _View, color: str) -> float:
    return _weighted_mean(_match(view.rgb, color), view.core) if view.has_object else 0.0


def prompt_fidelity(
    images: Sequence[ImageLike],
    background: str | None = None,
    *,
    color: str | None = None,
    cls: str | None = None,
) -> float:
    """How well the images follow what a prompt asked for: the background colour (border
    pixels close to it), and optionally the object's colour and class; the mean of those."""
    for what, value, allowed in (("background", background, COLORS), ("colour", color, COLORS),
                                 ("class", cls, CLASSES)):
        if value is not None and value not in allowed:
            raise ValueError(f"unknown {what} {value!r}; use one of {sorted(allowed)}")
    if background is None and color is None and cls is None:
        raise ValueError("prompt_fidelity needs a background, colour or class to check")

    def score(view: _View) -> float:
        parts = []
        if background is not None:
            parts.append(_background_score(view, background))
        if color is not None:
            parts.append(_color_score(view, color))
        if cls is not None:
            parts.append(_class_probs(view)[cls])
        return float(np.mean(parts))

    return _mean([score(_analyse(im)) for im in images])


def diversity(images: Sequence[ImageLike]) -> float:
    """Mean pairwise RMS distance (pixel values in [0, 1]) of the images downsampled to
    16 x 16: pose, size, colour and background changes count, pixel noise barely does.
    0 for identical images or fewer than two."""
    small = [
        np.asarray(_to_pil(im).resize((DIVERSITY_SIDE, DIVERSITY_SIDE), Image.Resampling.BOX),
                   dtype=np.float64) / 255
        for im in images
    ]
    pairs = list(itertools.combinations(small, 2))
    if not pairs:
        return 0.0
    return float(np.mean([np.sqrt(((a - b) ** 2).mean()) for a, b in pairs]))


def score_all(
    images: Sequence[ImageLike],
    *,
    prior_images: Sequence[ImageLike] | None = None,
    background: str | None = None,
    cls: str = SUBJECT_CLASS,
) -> dict[str, float]:
    """Every score for one method: `images` from a subject prompt (on `background`, if
    the prompt asked for one), `prior_images` from the plain class prompt."""
    scores = {"subject_fidelity": subject_fidelity(images)}
    if background is not None:
        scores["prompt_fidelity"] = prompt_fidelity(images, background)
    scores["class_fidelity"] = class_fidelity(images, cls)
    if prior_images is not None:
        scores["prior_preservation"] = prior_preservation(prior_images)
    scores["diversity"] = diversity(images)
    return scores


def format_table(rows: dict[str, dict[str, float]]) -> str:
    """A Markdown table: one row per method, one column per score (blank if missing)."""
    columns = list(dict.fromkeys(key for scores in rows.values() for key in scores))
    header = ["method", *columns]
    body = [[name, *(f"{scores[c]:.3f}" if c in scores else "" for c in columns)]
            for name, scores in rows.items()]
    widths = [max(len(row[i]) for row in (header, *body)) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"

    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, body)])
