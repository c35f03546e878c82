"""Samplers, the pipelines built from a BaseModel, grids, and the class-image cache."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from dreambooth_core.config import TrainConfig
from dreambooth_core.errors import Cancelled, UserError
from dreambooth_core.events import CancelToken
from dreambooth_core.models.tiny import tiny_base_model
from dreambooth_core.sample import SAMPLERS, generate, image_grid, make_scheduler


@pytest.fixture(scope="module")
def sd1():
    return tiny_base_model("sd1")


def pixels(image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


@pytest.mark.slow
def test_every_sampler_draws_deterministic_images(sd1):
    from diffusers.utils import is_scipy_available

    results = {}
    for name in SAMPLERS:
        if name == "lms" and not is_scipy_available():
            continue
        a = generate(sd1, ["a photo of a dog"], steps=3, sampler=name, seed=5, width=64, height=48)
        b = generate(sd1, ["a photo of a dog"], steps=3, sampler=name, seed=5, width=64, height=48)
        assert a[0].size == (64, 48) and a[0].mode == "RGB"
        assert np.array_equal(pixels(a[0]), pixels(b[0]))
        results[name] = pixels(a[0])
    other_seed = generate(sd1, ["a photo of a dog"], steps=3, sampler="ddim", seed=6, width=64, height=48)
    assert not np.array_equal(pixels(other_seed[0]), results["ddim"])
    assert not np.array_equal(results["euler_a"], results["euler"])  # ancestral noise matters


def test_lms_without_scipy_is_a_clear_error():
    from diffusers.utils import is_scipy_available

    if is_scipy_available():
        pytest.skip("scipy is installed")
    with pytest.raises(UserError, match="scipy"):
        make_scheduler("lms", tiny_base_model("sd1").scheduler_config)


def test_schedulers_keep_the_models_prediction_type():
    config = tiny_base_model("sd2-v").scheduler_config
    for name in ("ddim", "euler_a", "dpmpp_2m", "euler"):
        assert make_scheduler(name, config).config.prediction_type == "v_prediction"
    assert make_scheduler("dpmpp_2m", config).config.algorithm_type == "dpmsolver++"
    with pytest.raises(UserError, match="unknown sampler"):
        make_scheduler("heun", config)


@pytest.mark.parametrize("family", ["sd2-v", "sdxl"])
def test_other_families_generate(family):
    images = generate(tiny_base_model(family), ["a dog", "a cat"], negative_prompt="blurry", steps=2, width=64, height=64)
    assert [im.size for im in images] == [(64, 64), (64, 64)]


def test_image_i_is_the_same_picture_whatever_the_batch(sd1):
    one = generate(sd1, ["a dog"] * 3, steps=2, seed=1, width=32, height=32, batch_size=1)
    three = generate(sd1, ["a dog"] * 3, steps=2, seed=1, width=32, height=32, batch_size=3)
    for a, b in zip(one, three):
        assert np.abs(pixels(a) - pixels(b)).max() <= 2  # batched matmuls round differently
    assert not np.array_equal(pixels(one[0]), pixels(one[1]))


def test_image_grid():
    from PIL import Image

    images = [Image.new("RGB", (10, 8), (i * 40, 0, 0)) for i in range(5)]
    grid = image_grid(images, cols=3)
    assert grid.size == (30, 16)
    assert grid.getpixel((25, 2)) == (80, 0, 0) and grid.getpixel((15, 12)) == (160, 0, 0)


# ---- class images ---------------------------------------------------------------------------
def class_config(tmp_path, **kw) -> TrainConfig:
    values = dict(class_noun="dog", output_dir=str(tmp_path / "runs"), num_class_images=2, class_inference_steps=2,
                  class_sampler="euler", with_prior_preservation=True)
    values.update(kw)
    return TrainConfig(**values)


def test_class_images_are_generated_cached_and_topped_up(tmp_path, sd1, monkeypatch):
    import dreambooth_core.sample as sample
    from dreambooth_core.class_images import ClassImageSpec, ensure_class_images

    events = []
    cfg = class_config(tmp_path)
    spec = ClassImageSpec.from_config(cfg, "hash1", 32)
    folder = ensure_class_images(sd1, cfg, spec, events.append, CancelToken())
    files = sorted(folder.glob("*.png"))
    assert [f.name for f in files] == ["class-00000.png", "class-00001.png"]
    assert [(e.phase, e.step, e.total) for e in events] == [("class_images", 0, 2), ("class_images", 1, 2), ("class_images", 2, 2)]
    first = files[0].read_bytes()

    # a re-run reuses them without generating anything
    def no_generation(*a, **k):
        raise AssertionError("class images were generated again")

    monkeypatch.setattr(sample, "generate", no_generation)
    assert ensure_class_images(sd1, cfg, spec, events.append, CancelToken()) == folder
    monkeypatch.undo()

    # more wanted: only the missing ones are made, and they are what one go would have made
    cfg.num_class_images = 3
    ensure_class_images(sd1, cfg, spec, events.append, CancelToken())
    assert len(list(folder.glob("*.png"))) == 3 and (folder / "class-00000.png").read_bytes() == first
    in_one_go = generate(sd1, [spec.prompt] * 3, steps=2, seed=spec.seed, sampler="euler", width=32, height=32)
    from PIL import Image

    assert np.abs(pixels(Image.open(folder / "class-00002.png")) - pixels(in_one_go[2])).max() <= 2

    # anything that changes the pictures gets its own folder
    other = ClassImageSpec.from_config(class_config(tmp_path, class_guidance_scale=3.0), "hash1", 32)
    assert other.folder_name() != spec.folder_name() and other.folder_name().startswith("a_photo_of_dog-32-")
    assert ClassImageSpec.from_config(cfg, "hash2", 32).key != spec.key


def test_own_class_images_count_and_cancel_keeps_finished_ones(tmp_path, sd1):
    from PIL import Image

    from dreambooth_core.class_images import ClassImageSpec, ensure_class_images

    own = tmp_path / "mine"
    own.mkdir()
    Image.new("RGB", (32, 32)).save(own / "photo.jpg")
    cfg = class_config(tmp_path, class_data_dir=str(own), num_class_images=4)
    cancel = CancelToken()

    def emit(event):
        if event.step == 2:
            cancel.cancel()

    with pytest.raises(Cancelled):
        ensure_class_images(sd1, cfg, ClassImageSpec.from_config(cfg, "h", 32), emit, cancel)
    assert sorted(p.name for p in own.iterdir()) == ["class-00000.png", "photo.jpg"]


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
@pytest.mark.parametrize("clip_skip", [None, 2])
def test_a_multi_vector_embedding_reaches_the_encoder_once_per_vector(family, clip_skip):
    """Previews and evaluations hand `generate` the prompt as the user writes it; each of the
    embedding's vectors must reach the text encoder exactly once, in order, whichever side
    encodes (diffusers' own rewrite expands the token again inside a written-out prompt)."""
    from dreambooth_core.formats.embeddings import add_tokens, expand_added_tokens, expand_prompt
    from dreambooth_core.train.prompts import TextEncoding

    model = tiny_base_model(family)
    ids = [add_tokens(tok, te, "zwx", 3, "dog") for tok, te in zip(model.tokenizers, model.text_encoders)]
    seen: list[list[int]] = []
    hook = model.text_encoders[0].register_forward_pre_hook(
        lambda module, args, kwargs: seen.extend((args[0] if args else kwargs["input_ids"]).tolist()), with_kwargs=True)
    encoding = TextEncoding(clip_skip=clip_skip) if clip_skip else None
    written = expand_prompt("a photo of zwx dog", "zwx", 3)
    assert expand_added_tokens(model.tokenizers[0], written) == written  # written out once, never twice
    for prompt in ("a photo of zwx dog", written):
        seen.clear()
        generate(model, [prompt], steps=1, width=64, height=64, encoding=encoding)
        row = next(r for r in seen if ids[0][0] in r)
        assert [t for t in row if t in ids[0]] == ids[0]
    hook.remove()
