"""Scorers turn an evaluation set's images into the four measures. One interface, two kinds:
an encoder's embeddings (CLIP, DINOv2), or the toy world's exact analytic evaluator.

Every scorer returns a dict with `subject_fidelity`, `prior_drift` and `diversity` (of the
plain-class images), and `prompt_fidelity` when it can judge text (a CLIP file with its text
tower, or the toy world); the toy scorer adds `prior_preservation` and `prompt_control`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, Sequence

from . import measures

if TYPE_CHECKING:
    from PIL import Image

    from .encoders import Encoder
    from .evalset import EvalImages, EvalSet

# new contexts for a real model's subject (the paper's recontextualisation prompts, a few)
DEFAULT_CONTEXTS = ("on the beach", "in the snow", "on a blue background")
# the toy world's unseen backgrounds (its instance photos sit on gray, white and black)
TOY_CONTEXTS = {"on a blue background": "blue", "on a green background": "green"}
# the toy world's control prompts (general prompt control: language drift beyond the class):
# prompt -> (colour, class, background), each of which should be drawn
TOY_CONTROLS = {
    "a photo of a red ball on a green background": ("red", "ball", "green"),
    "a photo of a yellow box on a blue background": ("yellow", "box", "blue"),
    "a photo of a purple tent on a white background": ("purple", "tent", "white"),
    "a photo of a white ring on a black background": ("white", "ring", "black"),
}


def toy_prompt_control(groups: Sequence[Sequence["Image.Image"]], prompts: Sequence[str]) -> float:
    """Mean share of what each control prompt asked for (colour, class, background) that its images show."""
    from ..toy import evaluator

    scores = [evaluator.prompt_fidelity(group, TOY_CONTROLS[p][2], color=TOY_CONTROLS[p][0], cls=TOY_CONTROLS[p][1])
              for p, group in zip(prompts, groups)]
    return sum(scores) / len(scores)


class Scorer(Protocol):
    name: str
    contexts: tuple[str, ...]   # the context phrases it can judge
    controls: tuple[str, ...]   # plain prompts whose attributes it can judge (general prompt control)

    def score(self, s: "EvalSet", images: "EvalImages", base_class: Sequence["Image.Image"],
              instance: Sequence["Image.Image"]) -> dict[str, float]: ...


@dataclass
class EncoderScorer:
    encoder: "Encoder"
    contexts: tuple[str, ...] = DEFAULT_CONTEXTS
    controls: tuple[str, ...] = ()
    _instance: Any = field(default=None, repr=False)   # the photos' embeddings, computed once
    _base: Any = field(default=None, repr=False)

    @property
    def name(self) -> str:
        return self.encoder.name

    def score(self, s, images, base_class, instance) -> dict[str, float]:
        enc = self.encoder
        if self._instance is None:
            self._instance, self._base = enc.embed_images(instance), enc.embed_images(base_class)
        plain = enc.embed_images(images.plain)
        scores = {"subject_fidelity": measures.subject_fidelity(enc.embed_images(images.subject), self._instance)}
        if enc.has_text and images.contexts:
            drawn = [im for group in images.contexts for im in group]
            texts = [t for t, group in zip(s.context_texts, images.contexts) for _ in group]
            scores["prompt_fidelity"] = measures.prompt_fidelity(enc.embed_images(drawn), enc.embed_text(texts))
        scores["prior_drift"] = measures.prior_drift(plain, self._base, self._instance)
        scores["diversity"] = measures.diversity(plain)
        return scores


@dataclass
class ToyScorer:
    """The toy world's evaluator (toy.evaluator): exact, no encoder needed."""

    name: str = "toy world"
    contexts: tuple[str, ...] = tuple(TOY_CONTEXTS)
    controls: tuple[str, ...] = tuple(TOY_CONTROLS)

    def score(self, s, images, base_class, instance) -> dict[str, float]:
        from ..toy import evaluator

        preserved = evaluator.prior_preservation(images.plain)
        scores = {"subject_fidelity": evaluator.subject_fidelity(images.subject)}
        if images.contexts:
            scores["prompt_fidelity"] = sum(evaluator.prompt_fidelity(group, background=TOY_CONTEXTS[phrase])
                                            for phrase, group in zip(self.contexts, images.contexts)) / len(images.contexts)
        # drift: the subject's traits in plain-class images, over what the base's own show
        scores["prior_drift"] = evaluator.prior_preservation(base_class) - preserved
        scores["diversity"] = evaluator.diversity(images.plain)
        scores["prior_preservation"] = preserved
        if images.controls:
            scores["prompt_control"] = toy_prompt_control(images.controls, s.controls)
        return scores
