"""The toy world draws what its captions say, and the evaluator tells the subject from the
class even on blurry, noisy images like a tiny model's generations."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image, ImageFilter

from dreambooth_core.families import CLIP_BPE_DIR
from dreambooth_core.toy import evaluator as E
from dreambooth_core.toy import world as W


def degrade(images: list[Image.Image], blur: float = 1.5, noise: float = 12.0) -> list[Image.Image]:
    """Gaussian blur plus Gaussian pixel noise: roughly what a tiny model's samples look like."""
    rng = np.random.default_rng(0)
    out = []
    for im in images:
        a = np.asarray(im.filter(ImageFilter.GaussianBlur(blur)), dtype=np.float64)
        a = a + rng.normal(0.0, noise, a.shape)
        out.append(Image.fromarray(np.clip(a, 0, 255).astype(np.uint8)))
    return out


@pytest.fixture(scope="module")
def instances() -> list[Image.Image]:
    return W.instance_images(6)


@pytest.fixture(scope="module")
def plain() -> list[Image.Image]:
    """Every plain class x colour x background combination the world can draw, but for the
    subject's own body colour (a teal ball is half the subject: see below)."""
    rng = np.random.default_rng(1)
    return [
        W.sample_scene(rng, cls=c, color=col, background=bg, two_tone=False, mentions=()).render()
        for c in W.CLASSES for col in W.OBJECT_COLORS for bg in W.BACKGROUNDS
        if bg != col and col != W.SUBJECT_COLOR
    ]


def test_make_dataset_is_deterministic_by_seed() -> None:
    a, b, c = W.make_dataset(12, seed=3), W.make_dataset(12, seed=3), W.make_dataset(12, seed=4)
    assert [cap for _, cap in a] == [cap for _, cap in b]
    assert all(x.tobytes() == y.tobytes() for (x, _), (y, _) in zip(a, b))
    assert [cap for _, cap in a] != [cap for _, cap in c]
    assert all(im.size == (64, 64) and im.mode == "RGB" for im, _ in a)
    assert W.make_dataset(2, seed=0, resolution=32)[0][0].size == (32, 32)
    assert W.instance_images(4, seed=1)[3].tobytes() == W.instance_images(4, seed=1)[3].tobytes()


def test_caption_words_are_single_clip_tokens() -> None:
    vocab = json.loads((CLIP_BPE_DIR / "vocab.json").read_text(encoding="utf-8"))
    captions = [cap for _, cap in W.make_dataset(200, seed=0)] + [W.instance_prompt("sks", "blue")]
    words = {w for cap in captions for w in cap.replace(",", " ").split()}
    assert words >= set(W.CLASSES) | set(W.OBJECT_COLORS) | set(W.BACKGROUNDS)
    assert {w for w in words if f"{w}</w>" not in vocab} == set()


def test_caption_states_exactly_the_mentioned_attributes() -> None:
    scene = W.Scene("box", "red", background="blue", size="small", position="left")
    assert scene.caption() == "a photo of a small red box on a blue background, on the left"
    assert W.Scene("tent", "green", mentions=frozenset()).caption() == "a photo of a tent"
    rng = np.random.default_rng(0)
    for _ in range(100):
        s = W.sample_scene(rng)
        cap = s.caption()
        assert s.cls in cap
        assert (s.color in cap) == ("color" in s.mentions)
        two_tone_words = s.pattern is not None and "color" in s.mentions
        assert (f" {s.color} and {s.pattern} {s.cls}" in cap) == two_tone_words
        assert (f"{s.size} " in cap) == ("size" in s.mentions)
        assert (W.POSITION_PHRASES[s.position] in cap) == ("position" in s.mentions)
        assert (f"on a {s.background} background" in cap) == ("background" in s.mentions)
        if "background" not in s.mentions:
            assert s.background == W.DEFAULT_BACKGROUND


def test_subject_band_is_never_described_by_words() -> None:
    assert W.instance_prompt() == "a photo of a sks ball"
    assert W.instance_prompt("zwx", "blue") == "a photo of a zwx ball on a blue background"
    assert W.class_prompt() == "a photo of a ball"
    scene = W.subject_scene(np.random.default_rng(0), background="green")
    assert scene.caption() == "a photo of a ball on a green background"
    # Its body colour is a world word, as a real subject's coarse look is within SD's vocabulary.
    assert W.SUBJECT_COLOR in W.OBJECT_COLORS
    assert W.words_prompt() == "a photo of a teal ball"
    rng = np.random.default_rng(3)
    scenes = [W.sample_scene(rng) for _ in range(2000)]
    assert all(s.band is None for s in scenes)
    assert 0.25 < np.mean([s.pattern is not None for s in scenes]) < 0.35


@pytest.mark.parametrize("cls", list(W.CLASSES))
def test_render_shows_background_at_border_and_object_inside(cls: str) -> None:
    scene = W.Scene(cls, "yellow", background="blue", size="big", position="middle")
    a = np.asarray(scene.render(64), dtype=int)
    assert np.abs(a[0, :] - W.COLORS["blue"]).max() <= 1
    assert np.abs(a[:, -1] - W.COLORS["blue"]).max() <= 1
    y, x = (40, 32) if cls == "tent" else (32, 32)
    if cls == "ring":  # the middle of a ring is its hole
        assert np.abs(a[32, 32] - W.COLORS["blue"]).max() <= 1
        x = 32 + round(0.375 * W.SIZES["big"] * 64)
    assert np.abs(a[y, x] - W.COLORS["yellow"]).max() <= 1


def test_subject_is_teal_with_an_orange_band() -> None:
    scene = W.Scene("ball", "teal", band="orange", mentions=frozenset())
    a = np.asarray(scene.render(64), dtype=int)
    assert np.abs(a[22, 32] - W.COLORS["teal"]).max() <= 1
    assert np.abs(a[32, 32] - W.COLORS["orange"]).max() <= 1
    assert np.abs(a[42, 32] - W.COLORS["teal"]).max() <= 1
    assert W.instance_images(1)[0].tobytes() != scene.render(64).tobytes()  # posed, jittered


def test_invalid_scenes_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown class"):
        W.Scene("dog", "red")
    with pytest.raises(ValueError, match="invisible"):
        W.Scene("ball", "blue", background="blue")
    with pytest.raises(ValueError, match="invisible"):
        W.Scene("ball", "red", band="gray")
    with pytest.raises(ValueError, match="two colours"):
        W.Scene("ball", "red", pattern="red")
    with pytest.raises(ValueError, match="caption attributes"):
        W.Scene("ball", "red", mentions=frozenset({"mood"}))


def test_subject_fidelity_separates_subject_from_every_plain_object(instances, plain) -> None:
    assert E.subject_fidelity(instances) > 0.9
    assert max(E.subject_fidelity([im]) for im in plain) < 0.05
    hi_res = W.instance_images(2, resolution=128)
    assert E.subject_fidelity(hi_res) > 0.9


def test_pretraining_data_never_shows_the_subject() -> None:
    images = [im for im, _ in W.make_dataset(120, seed=5)]
    # a teal object is at most the body's half of the subject: no object has the band
    assert max(E.subject_fidelity([im]) for im in images) < 0.55
    assert E.subject_fidelity(images) < 0.1
    assert E.prior_preservation(images) > 0.75


def test_words_reach_half_the_subject_and_the_band_the_rest() -> None:
    rng = np.random.default_rng(4)
    words = [W.sample_scene(rng, cls="ball", color="teal", two_tone=False, background="gray").render()
             for _ in range(6)]
    assert 0.4 < E.subject_fidelity(words) < 0.55
    assert 0.4 < E.subject_fidelity(degrade(words)) < 0.55
    # The band alone, on a plain ball, is not the subject, but it is a trait of it.
    banded = [W.Scene("ball", "red", band="orange", mentions=frozenset()).render()]
    assert E.subject_fidelity(banded) < 0.05
    assert E.prior_preservation(banded) < 0.2


def test_prompt_fidelity_checks_the_requested_background() -> None:
    rng = np.random.default_rng(2)
    on_blue = [W.subject_scene(rng, background="blue").render() for _ in range(4)]
    assert E.prompt_fidelity(on_blue, "blue") > 0.95
    for wrong in ("gray", "green", "black", "white"):
        assert E.prompt_fidelity(on_blue, wrong) < 0.1
    red_boxes = [W.sample_scene(rng, cls="box", color="red", two_tone=False).render() for _ in range(4)]
    assert E.prompt_fidelity(red_boxes, color="red", cls="box") > 0.9
    assert E.prompt_fidelity(red_boxes, color="green") < 0.1
    with pytest.raises(ValueError):
        E.prompt_fidelity(red_boxes)


def test_prior_preservation_is_high_for_the_class_and_low_for_the_subject(instances, plain) -> None:
    # the world's "ball"s include teal ones (1 in 8 colours) and two-toned ones with teal
    assert E.prior_preservation(W.class_images(60)) > 0.75
    assert min(E.prior_preservation([im]) for im in plain) > 0.9
    assert E.prior_preservation(instances) < 0.05
    # A half-drifted class shows one trait only: the subject's body colour, or its band.
    teal = [W.Scene("ball", "teal", mentions=frozenset()).render()]
    assert E.prior_preservation(teal) < 0.05
    banded = [W.Scene("ball", "yellow", band="orange", mentions=frozenset()).render()]
    assert E.prior_preservation(banded) < 0.2
    # Other two-toned balls are part of the class, not the subject.
    other = [W.Scene("ball", "red", pattern="blue", mentions=frozenset()).render()]
    assert E.prior_preservation(other) > 0.9


@pytest.mark.parametrize("cls", list(W.CLASSES))
def test_class_fidelity_recognises_each_shape(cls: str) -> None:
    images = W.class_images(12, seed=3, cls=cls)
    assert E.class_fidelity(images, cls) > 0.9
    assert E.class_fidelity(degrade(images), cls) > 0.75
    others = [c for c in W.CLASSES if c != cls]
    assert max(E.class_fidelity(images, c) for c in others) < 0.1


def test_diversity_is_higher_for_a_varied_set(instances) -> None:
    assert E.diversity([instances[0]] * 4) == 0.0
    assert E.diversity(W.class_images(8)) > 0.1
    assert E.diversity(instances) > E.diversity(degrade([instances[0]] * 4)) + 0.1


def test_scores_survive_blur_and_noise(instances, plain) -> None:
    levels = [(0.0, 0.0), (1.0, 8.0), (1.5, 12.0), (2.5, 20.0)]
    subject = [E.subject_fidelity(degrade(instances, b, n)) for b, n in levels]
    assert subject == sorted(subject, reverse=True)  # degrades gradually, never jumps
    blurry_plain = degrade(plain)
    assert subject[2] > 0.6 and subject[3] > 0.35  # a heavy blur smears the 6 px band
    assert E.subject_fidelity(blurry_plain) < 0.02
    assert E.prior_preservation(blurry_plain) > 0.95
    assert E.prior_preservation(degrade(instances)) < 0.3
    assert E.prompt_fidelity(degrade(W.class_images(8)), "gray") > 0.9
    assert E.class_fidelity(degrade(instances), "ball") > 0.8


def test_score_all_and_table(instances) -> None:
    scores = E.score_all(instances, prior_images=W.class_images(6), background="gray")
    assert list(scores) == ["subject_fidelity", "prompt_fidelity", "class_fidelity",
                            "prior_preservation", "diversity"]
    assert all(0.0 <= v <= 1.0 for v in scores.values())
    table = E.format_table({"dreambooth": scores, "base": {"subject_fidelity": 0.01}})
    lines = table.splitlines()
    assert len(lines) == 4 and lines[0].startswith("| method")
    assert f"{scores['subject_fidelity']:.3f}" in lines[2] and "0.010" in lines[3]


def test_the_second_subject_is_scored_by_its_own_colours(instances) -> None:
    """A two-concept run is judged per subject: each subject's photos score high as
    themselves and nothing as the other; its body alone is half of it, as for the first."""
    second = W.instance_images(6, seed=1, subject=W.SECOND_SUBJECT)
    assert W.instance_prompt("ohwx", subject=W.SECOND_SUBJECT) == "a photo of a ohwx box"
    for images in (second, degrade(second)):
        assert E.subject_fidelity(images, W.SECOND_SUBJECT) > 0.6
        assert E.subject_fidelity(images) < 0.02
    assert E.subject_fidelity(instances, W.SECOND_SUBJECT) < 0.02
    assert E.class_fidelity(second, "box") > 0.9
    rng = np.random.default_rng(5)
    body = [W.sample_scene(rng, cls="box", color="purple", two_tone=False).render() for _ in range(6)]
    assert 0.4 < E.subject_fidelity(body, W.SECOND_SUBJECT) < 0.55
    assert E.prior_preservation(second, W.SECOND_SUBJECT) < 0.05
    assert E.prior_preservation(W.class_images(60, cls="box"), W.SECOND_SUBJECT) > 0.75


def test_a_subject_needs_two_colours_that_no_photo_background_has() -> None:
    with pytest.raises(ValueError, match="two colours"):
        W.Subject("box", "purple", "purple")
    with pytest.raises(ValueError, match="two colours"):
        W.Subject("box", "purple", "gray")
    with pytest.raises(ValueError, match="unknown class"):
        W.Subject("dog", "purple", "yellow")
