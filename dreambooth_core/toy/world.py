"""A procedural, captioned image world in which words control the picture.

Scenes are one large flat-coloured shape on a flat background, described by a caption of
common English words (each a single CLIP BPE token). Some objects are two-toned, their
lower half in a second colour ("a red and blue ball"). The world is deliberately easy: a
tiny Stable-Diffusion-architecture model can learn it at 64x64 px in tens of minutes on a
CPU, which is what lets our demo and tests show DreamBooth learning a new subject.

The subject is a teal "ball" with an orange band across its middle. Its coarse look is
within the world's vocabulary (a teal ball), as a real subject's is within Stable
Diffusion's, so Textual Inversion can find it in the frozen model's embedding space; the
band, its identity, appears on no pretraining object and no caption word describes it, so
the pretrained model cannot draw the subject from words alone, and only methods that change
the model's weights learn it fully. The class noun ("ball") is well known, which is exactly
the setting DreamBooth's prior preservation is about.

A second subject, a purple box with a yellow band (SECOND_SUBJECT), is built the same way:
a run with two concepts teaches both, and the evaluator scores each by its own colours.
"""
from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

RGB = tuple[int, int, int]

# Every named colour, chosen so any two that can meet are >= ~100 apart in RGB: an easy
# colour world for a tiny model, and a margin the evaluator's colour kernels rely on.
COLORS: dict[str, RGB] = {
    "red": (215, 35, 35),
    "green": (35, 155, 55),
    "blue": (35, 70, 215),
    "yellow": (245, 225, 30),
    "purple": (150, 40, 190),
    "white": (240, 240, 240),
    "gray": (128, 128, 128),
    "black": (25, 25, 25),
    "orange": (250, 125, 0),
    "teal": (0, 180, 180),
}
OBJECT_COLORS: tuple[str, ...] = (
    "red", "green", "blue", "yellow", "purple", "white", "orange", "teal",
)
BACKGROUNDS: tuple[str, ...] = ("gray", "white", "black", "blue", "green")
DEFAULT_BACKGROUND = "gray"

# Class noun -> (width, height) of the shape's box as a fraction of the object's size.
CLASSES: dict[str, tuple[float, float]] = {
    "ball": (1.0, 1.0),   # disc
    "box": (0.85, 0.85),  # square, a little smaller so its area matches the disc's
    "tent": (1.0, 0.87),  # upward equilateral triangle
    "ring": (1.0, 1.0),   # annulus
}
RING_HOLE = 0.5  # inner diameter / outer diameter: a hole a 64 px image still resolves

SIZES: dict[str, float] = {"small": 0.36, "big": 0.54}  # object size / image side
# Centre x. Even a big, jittered object at the side stays clear of the image border,
# where the evaluator reads the background colour.
POSITIONS: dict[str, float] = {"left": 0.35, "middle": 0.5, "right": 0.65}
POSITION_PHRASES: dict[str, str] = {
    "left": "on the left", "middle": "in the middle", "right": "on the right",
}

ATTRIBUTES: tuple[str, ...] = ("size", "color", "position", "background")
# How often make_dataset's captions state each attribute. Unstated attributes are still
# drawn at random (the background falls back to gray), so the model learns the marginal
# distribution too and an underspecified prompt such as "a photo of a ball" stays diverse.
MENTION_PROB: dict[str, float] = {"size": 0.5, "color": 0.8, "position": 0.5, "background": 0.6}

TWO_TONE_PROB = 0.3         # share of pretraining objects with a differently coloured lower half
BAND = 0.24                 # height of the subject's middle band, as a fraction of its height

JITTER_SHIFT = 0.04          # max random offset of the object's centre, in image sides
JITTER_SCALE = (0.9, 1.1)    # range of the random size factor
SUPERSAMPLE = 4              # draw at 4x and box-downsample: antialiased edges

SUBJECT_CLASS = "ball"
SUBJECT_COLOR = "teal"      # its body
SUBJECT_BAND = "orange"     # the middle band no pretraining object has
# Instance "photos" sit mostly on the default background with a few others, like real
# DreamBooth photos; blue and green stay unseen for recontextualisation prompts.
SUBJECT_BACKGROUNDS: tuple[str, ...] = ("gray", "gray", "white", "gray", "black", "gray")


@dataclass(frozen=True)
class Scene:
    """One object on a flat background, plus which attributes its caption states.

    `pattern` is the colour of the object's lower half (a two-toned object, captioned
    "a red and blue ball"); None means a plain, single-coloured object. `band` is the
    colour of a band across the object's middle, which only the subject has and no
    caption names. `dx`, `dy` and `scale` are small random jitters of position and size.
    """

    cls: str
    color: str
    background: str = DEFAULT_BACKGROUND
    size: str = "big"
    position: str = "middle"
    pattern: str | None = None
    band: str | None = None
    dx: float = 0.0
    dy: float = 0.0
    scale: float = 1.0
    mentions: frozenset[str] = field(default_factory=lambda: frozenset(ATTRIBUTES))

    def __post_init__(self) -> None:
        _check("class", self.cls, CLASSES)
        _check("colour", self.color, COLORS)
        _check("background", self.background, COLORS)
        _check("size", self.size, SIZES)
        _check("position", self.position, POSITIONS)
        for what, value in (("pattern colour", self.pattern), ("band colour", self.band)):
            if value is not None:
                _check(what, value, COLORS)
        if self.pattern == self.color:
            raise ValueError(f"a two-toned object needs two colours, not {self.color} twice")
        if self.background in (self.color, self.pattern, self.band):
            raise ValueError(f"a {self.background} object on a {self.background} background is invisible")
        unknown = set(self.mentions) - set(ATTRIBUTES)
        if unknown:
            raise ValueError(f"unknown caption attributes {sorted(unknown)}; use {ATTRIBUTES}")
        object.__setattr__(self, "mentions", frozenset(self.mentions))

    def caption(self, identifier: str | None = None) -> str:
        """E.g. "a photo of a big red ball on a blue background, on the left".

        With `identifier` (DreamBooth's rare token) it takes the colours' place: "a photo
        of a sks ball". A two-toned object's colours read "red and blue"; a band is never
        named: no word describes it.
        """
        words = ["a photo of a"]
        if "size" in self.mentions:
            words.append(self.size)
        if identifier is not None:
            words.append(identifier)
        elif "color" in self.mentions:
            words.append(self.color if self.pattern is None else f"{self.color} and {self.pattern}")
        words.append(self.cls)
        text = " ".join(words)
        if "background" in self.mentions:
            text += f" on a {self.background} background"
        if "position" in self.mentions:
            text += f", {POSITION_PHRASES[self.position]}"
        return text

    def render(self, resolution: int = 64) -> Image.Image:
        """The scene as an RGB image of `resolution` x `resolution` px (antialiased)."""
        side = resolution * SUPERSAMPLE
        canvas = Image.new("RGB", (side, side), COLORS[self.background])
        fw, fh = CLASSES[self.cls]
        extent = SIZES[self.size] * self.scale * side
        w, h = max(1, round(fw * extent)), max(1, round(fh * extent))
        obj = Image.new("RGB", (w, h), COLORS[self.color])
        if self.pattern is not None:
            obj.paste(COLORS[self.pattern], (0, h // 2, w, h))
        if self.band is not None:
            obj.paste(COLORS[self.band], (0, round(h * (1 - BAND) / 2), w, round(h * (1 + BAND) / 2)))
        cx = (POSITIONS[self.position] + self.dx) * side
        cy = (0.5 + self.dy) * side
        canvas.paste(obj, (round(cx - w / 2), round(cy - h / 2)), shape_mask(self.cls, (w, h)))
        return canvas.resize((resolution, resolution), Image.Resampling.BOX)


def _check(what: str, value: str, allowed: Collection[str]) -> None:
    if value not in allowed:
        raise ValueError(f"unknown {what} {value!r}; use one of {sorted(allowed)}")


@dataclass(frozen=True)
class Subject:
    """A subject to teach: a world class whose body has one colour and a band of another
    across its middle (which no pretraining object has and no word names)."""

    cls: str
    color: str
    band: str

    def __post_init__(self) -> None:
        _check("class", self.cls, CLASSES)
        for what, value in (("colour", self.color), ("band colour", self.band)):
            _check(what, value, COLORS)
        if self.color == self.band or {self.color, self.band} & set(SUBJECT_BACKGROUNDS):
            raise ValueError(f"a subject needs a body and a band in two colours, neither a photo background {SUBJECT_BACKGROUNDS}")


SUBJECT = Subject(SUBJECT_CLASS, SUBJECT_COLOR, SUBJECT_BAND)
# A second subject for multi-concept runs: another class and another pair of colours, far
# in RGB from the first's (so the evaluator tells the two apart) and from the photos'
# backgrounds. Its band is yellow: a colour pretraining objects have, never as a band.
SECOND_SUBJECT = Subject("box", "purple", "yellow")


def shape_mask(cls: str, size: tuple[int, int]) -> Image.Image:
    """The class's shape filling a `size` (w, h) box, as an "L" mask (255 inside).

    Shared by rendering and by the evaluator's shape templates, so both agree exactly.
    """
    _check("class", cls, CLASSES)
    w, h = size
    mask = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(mask)
    if cls == "box":
        draw.rectangle((0, 0, w - 1, h - 1), fill=255)
    elif cls == "tent":
        draw.polygon([(w / 2, 0), (w - 1, h - 1), (0, h - 1)], fill=255)
    else:  # ball and ring
        draw.ellipse((0, 0, w - 1, h - 1), fill=255)
        if cls == "ring":
            mx, my = w * (1 - RING_HOLE) / 2, h * (1 - RING_HOLE) / 2
            draw.ellipse((mx, my, w - 1 - mx, h - 1 - my), fill=0)
    return mask


def _pick(rng: np.random.Generator, options: Collection[str]) -> str:
    options = list(options)
    return options[int(rng.integers(len(options)))]


def sample_scene(
    rng: np.random.Generator,
    *,
    cls: str | None = None,
    color: str | None = None,
    background: str | None = None,
    size: str | None = None,
    position: str | None = None,
    two_tone: bool | None = None,
    mentions: Collection[str] | None = None,
) -> Scene:
    """A random scene; any attribute given is fixed instead of drawn.

    `two_tone` (a second colour on the lower half) is drawn with TWO_TONE_PROB when None.
    `mentions` (which attributes the caption states) is drawn from MENTION_PROB when None.
    An unstated background is the default gray; other unstated attributes stay random.
    No colour of the object equals the background's, so it is always visible.
    """
    if mentions is None:
        mentions = {a for a, p in MENTION_PROB.items() if rng.random() < p}
    if background is None:
        if "background" in mentions:
            background = _pick(rng, [b for b in BACKGROUNDS if b != color])
        else:
            background = DEFAULT_BACKGROUND
    color = color or _pick(rng, [c for c in OBJECT_COLORS if c != background])
    if two_tone is None:
        two_tone = bool(rng.random() < TWO_TONE_PROB)
    pattern = _pick(rng, [c for c in OBJECT_COLORS if c not in (color, background)]) if two_tone else None
    return Scene(
        cls=cls or _pick(rng, CLASSES),
        color=color,
        pattern=pattern,
        background=background,
        size=size or _pick(rng, SIZES),
        position=position or _pick(rng, POSITIONS),
        dx=float(rng.uniform(-JITTER_SHIFT, JITTER_SHIFT)),
        dy=float(rng.uniform(-JITTER_SHIFT, JITTER_SHIFT)),
        scale=float(rng.uniform(*JITTER_SCALE)),
        mentions=frozenset(mentions),
    )


def make_dataset(n: int, seed: int = 0, resolution: int = 64) -> list[tuple[Image.Image, str]]:
    """`n` (image, caption) pretraining pairs, identical for the same seed.

    Never contains the subject: no object has a band.
    """
    rng = np.random.default_rng(seed)
    scenes = [sample_scene(rng) for _ in range(n)]
    return [(s.render(resolution), s.caption()) for s in scenes]


def class_images(
    n: int, resolution: int = 64, seed: int = 0, cls: str = SUBJECT_CLASS
) -> list[Image.Image]:
    """`n` images of `cls` as "a photo of a {cls}" would show them in the world.

    The ground truth of what the class prior looks like, for tests and evaluator
    baselines (real prior-preservation images come from the pretrained model).
    """
    rng = np.random.default_rng(seed)
    return [sample_scene(rng, cls=cls, mentions=()).render(resolution) for _ in range(n)]


def subject_scene(
    rng: np.random.Generator,
    background: str = DEFAULT_BACKGROUND,
    position: str | None = None,
    size: str = "big",
    subject: Subject = SUBJECT,
) -> Scene:
    """The subject (by default the teal ball with an orange band) in one random pose, on
    `background`.

    The caption states only the background, and only when it is not the default.
    """
    mentions = frozenset() if background == DEFAULT_BACKGROUND else frozenset({"background"})
    return Scene(
        cls=subject.cls,
        color=subject.color,
        band=subject.band,
        background=background,
        size=size,
        position=position or _pick(rng, POSITIONS),
        dx=float(rng.uniform(-JITTER_SHIFT, JITTER_SHIFT)),
        dy=float(rng.uniform(-JITTER_SHIFT, JITTER_SHIFT)),
        scale=float(rng.uniform(*JITTER_SCALE)),
        mentions=mentions,
    )


def instance_images(
    n: int = 6, resolution: int = 64, seed: int = 0, subject: Subject = SUBJECT
) -> list[Image.Image]:
    """DreamBooth's instance "photos" of the subject: mostly gray backgrounds, a few
    white or black ones, with varying position and size, identical for the same seed."""
    rng = np.random.default_rng(seed)
    return [
        subject_scene(rng, background=SUBJECT_BACKGROUNDS[i % len(SUBJECT_BACKGROUNDS)], subject=subject)
        .render(resolution)
        for i in range(n)
    ]


def instance_prompt(
    identifier: str = "sks", background: str | None = None, subject: Subject = SUBJECT
) -> str:
    """The prompt for the subject, e.g. "a photo of a sks ball on a blue background"."""
    mentions = () if background is None else ("background",)
    scene = Scene(subject.cls, subject.color, background=background or DEFAULT_BACKGROUND,
                  band=subject.band, mentions=frozenset(mentions))
    return scene.caption(identifier)


def class_prompt(cls: str = SUBJECT_CLASS) -> str:
    """The class (prior) prompt, e.g. "a photo of a ball"."""
    return Scene(cls, OBJECT_COLORS[0], mentions=frozenset()).caption()


def words_prompt() -> str:
    """The closest the world's words come to the subject: "a photo of a teal ball" (the
    band has no word)."""
    return Scene(SUBJECT_CLASS, SUBJECT_COLOR, mentions=frozenset({"color"})).caption()
