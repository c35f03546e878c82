"""Caption variation for tag-style captions, the way kohya's trainers vary them.

Booru-style captions are comma-separated tags whose order carries no meaning. Shuffling
them (after `keep_tokens` fixed leading tags, usually the trigger), dropping single tags
(`tag_dropout_rate`) or the whole caption (`caption_dropout_rate`, which trains the
unconditional prompt) stops the model tying the subject to tag order or to one tag.

Every choice is drawn from (seed, role, micro-batch, slot), like the rest of the data
order, so a resumed run and a run on several processes see the same captions.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np


@dataclass(frozen=True)
class CaptionOptions:
    shuffle: bool = False
    separator: str = ","
    keep_tokens: int = 0
    caption_dropout_rate: float = 0.0
    tag_dropout_rate: float = 0.0

    @property
    def varies(self) -> bool:
        """Whether a caption can differ from step to step (then prompts are encoded per step)."""
        return self.shuffle or self.caption_dropout_rate > 0 or self.tag_dropout_rate > 0


def split_tags(caption: str, separator: str) -> list[str]:
    return [t.strip() for t in caption.split(separator) if t.strip()]


def vary_caption(caption: str, options: CaptionOptions, rng: "np.random.Generator") -> str:
    """This step's version of `caption`: dropped whole with `caption_dropout_rate`; else the
    tags after the first `keep_tokens` each dropped with `tag_dropout_rate`, then shuffled.

    Draws are made in a fixed order (caption dropout, one draw per tag, the permutation)
    whatever is switched on, so turning one option on does not reshuffle another."""
    drop_caption = rng.random() < options.caption_dropout_rate
    tags = split_tags(caption, options.separator)
    fixed, flex = tags[: options.keep_tokens], tags[options.keep_tokens :]
    keep = rng.random(len(flex)) >= options.tag_dropout_rate
    order = rng.permutation(len(flex))
    if drop_caption:
        return ""
    if not (options.shuffle or options.tag_dropout_rate > 0):
        return caption
    flex = [flex[i] for i in (order if options.shuffle else range(len(flex))) if keep[i]]
    joiner = options.separator if options.separator.endswith(" ") else options.separator + " "
    return joiner.join(fixed + flex)
