"""General prompt control on the toy world: the control prompts' own scenes score high, the
same scenes under other prompts low, and the toy scorer reports it with the other measures."""
from __future__ import annotations

import numpy as np

from dreambooth_core.evaluate.evalset import EvalImages, EvalSet
from dreambooth_core.evaluate.scorers import TOY_CONTROLS, ToyScorer, toy_prompt_control
from dreambooth_core.toy.world import Scene, class_images, subject_scene

PROMPTS = list(TOY_CONTROLS)


def drawn(prompt: str, n: int = 3) -> list:
    color, cls, background = TOY_CONTROLS[prompt]
    return [Scene(cls, color, background, dx=0.02 * i).render(64) for i in range(n)]


def test_each_control_prompt_is_a_caption_of_its_scene() -> None:
    for prompt, (color, cls, background) in TOY_CONTROLS.items():
        assert Scene(cls, color, background, mentions=frozenset({"color", "background"})).caption() == prompt


def test_control_scores_drawn_attributes_over_wrong_ones() -> None:
    right = toy_prompt_control([drawn(p) for p in PROMPTS], PROMPTS)
    rotated = toy_prompt_control([drawn(p) for p in PROMPTS[1:] + PROMPTS[:1]], PROMPTS)
    assert right > 0.8, right
    assert right > rotated + 0.4, (right, rotated)


def test_toy_scorer_reports_prompt_control_when_the_set_has_controls() -> None:
    scorer = ToyScorer()
    s = EvalSet.build("a photo of sks ball", "a photo of ball", "sks", scorer.contexts, scorer.controls, images_per_prompt=3)
    plain = class_images(3)
    rng = np.random.default_rng(0)
    subject = [subject_scene(rng).render(64) for _ in range(3)]
    with_controls = scorer.score(s, EvalImages(subject, [], plain, [drawn(p) for p in s.controls]), plain, [])
    without = scorer.score(s, EvalImages(subject, [], plain), plain, [])
    assert with_controls["prompt_control"] > 0.8 and "prompt_control" not in without
    assert with_controls["subject_fidelity"] == without["subject_fidelity"]
