"""The evaluation measures on fixed images with tiny random encoders read from real
safetensors files (CLIP full, CLIP image tower, DINOv2 with the hub's key names)."""
from __future__ import annotations

import pytest
import torch

from dreambooth_core.errors import UserError
from dreambooth_core.evaluate import measures
from dreambooth_core.evaluate.encoders import find_encoder, load_encoder
from dreambooth_core.evaluate.evalset import EvalImages, EvalSet
from dreambooth_core.evaluate.scorers import EncoderScorer

from evaluate_helpers import pictures, pixel_shuffled, tiny_clip, tiny_dino


@pytest.fixture(scope="module", params=["clip", "clip_vision", "dinov2"])
def encoder(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp("enc")
    make = {"clip": tiny_clip, "clip_vision": lambda p: tiny_clip(p, vision_only=True), "dinov2": tiny_dino}[request.param]
    return load_encoder(make(folder / f"{request.param}.safetensors"))


PHOTOS = pictures(4, seed=1)
OTHERS = pictures(4, seed=2)
EVALSET = EvalSet.build("a photo of zwx ball", "a photo of ball", "zwx", ["on the beach"], images_per_prompt=4)


def test_identical_images_score_highest(encoder) -> None:
    inst = encoder.embed_images(PHOTOS)
    same = measures.subject_fidelity(encoder.embed_images(PHOTOS), inst)
    other = measures.subject_fidelity(encoder.embed_images(OTHERS), inst)
    shuffled = measures.subject_fidelity(encoder.embed_images(pixel_shuffled(PHOTOS)), inst)
    assert same > max(other, shuffled), (same, other, shuffled)


def test_drift_rises_when_class_images_become_the_subject(encoder) -> None:
    scorer = EncoderScorer(encoder)
    kept = scorer.score(EVALSET, EvalImages(PHOTOS, [OTHERS], plain=OTHERS), OTHERS, PHOTOS)
    half = scorer.score(EVALSET, EvalImages(PHOTOS, [OTHERS], plain=PHOTOS[:2] + OTHERS[2:]), OTHERS, PHOTOS)
    gone = scorer.score(EVALSET, EvalImages(PHOTOS, [OTHERS], plain=PHOTOS), OTHERS, PHOTOS)
    assert kept["prior_drift"] == pytest.approx(0.0, abs=1e-5)
    assert kept["prior_drift"] < half["prior_drift"] < gone["prior_drift"]
    assert gone["diversity"] == pytest.approx(measures.diversity(encoder.embed_images(PHOTOS)))
    assert ("prompt_fidelity" in gone) == encoder.has_text


def test_diversity_is_zero_for_copies_and_positive_for_distinct_images(encoder) -> None:
    assert measures.diversity(encoder.embed_images([PHOTOS[0]] * 3)) == pytest.approx(0.0, abs=1e-5)
    assert measures.diversity(encoder.embed_images(PHOTOS)) > 0.0


def test_prompt_fidelity_is_highest_matched_and_lowest_shuffled() -> None:
    images = torch.eye(3)
    assert measures.prompt_fidelity(images, torch.eye(3)) == pytest.approx(1.0)
    assert measures.prompt_fidelity(images, torch.eye(3)[[1, 2, 0]]) == pytest.approx(0.0)


def test_an_image_only_encoder_says_prompt_fidelity_needs_a_text_tower(tmp_path) -> None:
    enc = load_encoder(tiny_clip(tmp_path / "vision.safetensors", vision_only=True))
    with pytest.raises(UserError, match="text tower"):
        enc.embed_text(["a photo of a ball"])


def test_find_encoder_prefers_a_full_clip_file(tmp_path) -> None:
    tiny_clip(tmp_path / "a_vision.safetensors", vision_only=True)
    (tmp_path / "b_broken.safetensors").write_bytes(b"not a file")
    assert find_encoder([tmp_path]) == tmp_path / "a_vision.safetensors"
    tiny_clip(tmp_path / "c_full.safetensors")
    assert find_encoder([tmp_path, tmp_path / "missing"]) == tmp_path / "c_full.safetensors"


def test_a_file_that_is_no_encoder_is_refused_clearly(tmp_path) -> None:
    from safetensors.torch import save_file

    save_file({"unet.weight": torch.zeros(2)}, str(tmp_path / "x.safetensors"))
    with pytest.raises(UserError, match="neither a CLIP"):
        load_encoder(tmp_path / "x.safetensors")
