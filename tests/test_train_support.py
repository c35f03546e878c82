"""Shared helpers for the training tests, and unit tests of the loop's building blocks
(loss terms, batch order, buckets, prompts, state files, run folder)."""
from __future__ import annotations

import errno
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dreambooth_core.config import TrainConfig
from dreambooth_core.errors import OutputExistsError, UserError
from dreambooth_core.events import CancelToken, Event


FAMILIES = ("sd1", "sd2", "sd2-v", "sdxl")


# ---- helpers used by the other test_train_* files ----------------------------------------
def make_images(folder: Path, n: int = 3, size: tuple[int, int] = (64, 80), seed: int = 0, captions: bool = False) -> Path:
    """`n` small pictures (a coloured box on a coloured ground), optionally with captions."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        a = np.zeros((size[1], size[0], 3), np.uint8)
        a[:] = rng.integers(0, 255, 3)
        a[size[1] // 4 : size[1] // 2, size[0] // 4 : size[0] // 2] = rng.integers(0, 255, 3)
        Image.fromarray(a).save(folder / f"img{i}.png")
        if captions:
            (folder / f"img{i}.txt").write_text(f"a {('red', 'green', 'blue')[i % 3]} picture")
    return folder


def tiny_config(tmp_path: Path, **overrides) -> TrainConfig:
    """A few-step run at 64 px without validation (tests switch on what they need)."""
    values = dict(
        method="lora", instance_data_dir=str(make_images(tmp_path / "instance")), token="zwx", class_noun="dog",
        resolution=64, max_train_steps=2, learning_rate=1e-2, rank=4, alpha=4.0, output_dir=str(tmp_path / "runs"),
        num_validation_images=0, validation_inference_steps=2, class_inference_steps=2, num_class_images=2,
    )
    values.update(overrides)
    return TrainConfig(**values)


class Recorder:
    """An event sink that keeps every event (and can cancel after a given train step)."""

    def __init__(self, cancel_after: int | None = None):
        self.events: list[Event] = []
        self.cancel = CancelToken()
        self.cancel_after = cancel_after

    def __call__(self, event: Event) -> None:
        self.events.append(event)
        if self.cancel_after is not None and event.type == "progress" and event.phase == "train" and event.step >= self.cancel_after:
            self.cancel.cancel()

    def of(self, kind: str) -> list[Event]:
        return [e for e in self.events if e.type == kind]


def train(config: TrainConfig, family: str = "sd1", recorder: Recorder | None = None, model=None):
    """Run the trainer on a tiny model of `family`; returns (result, recorder, model)."""
    from dreambooth_core.models.tiny import tiny_base_model
    from dreambooth_core.train.loop import Trainer

    recorder = recorder or Recorder()
    model = model or tiny_base_model(family)
    result = Trainer(config, recorder, recorder.cancel, model=model).run()
    return result, recorder, model


def unet_output(model, seed: int = 0) -> torch.Tensor:
    """The UNet's prediction for a fixed random input (with SDXL's extra conditioning)."""
    g = torch.Generator().manual_seed(seed)
    width = model.unet.config.cross_attention_dim
    x = torch.randn(1, 4, 16, 16, generator=g)
    hidden = torch.randn(1, 77, width, generator=g)
    kwargs = {}
    if model.family.is_sdxl:
        pooled = model.text_encoders[1].config.projection_dim
        kwargs["added_cond_kwargs"] = {"text_embeds": torch.randn(1, pooled, generator=g),
                                       "time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64]])}
    with torch.no_grad():
        return model.unet(x, torch.tensor([500]), encoder_hidden_states=hidden, **kwargs).sample


# ---- loss ----------------------------------------------------------------------------
def test_v_prediction_target_is_velocity_and_epsilon_target_is_noise():
    from dreambooth_core.models.tiny import tiny_base_model
    from dreambooth_core.train.loss import training_target

    x, noise, t = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8), torch.tensor([10, 900])
    v_sched = tiny_base_model("sd2-v").noise_scheduler()
    a = v_sched.alphas_cumprod[t].sqrt().view(-1, 1, 1, 1)
    s = (1 - v_sched.alphas_cumprod[t]).sqrt().view(-1, 1, 1, 1)
    torch.testing.assert_close(training_target(v_sched, x, noise, t), a * noise - s * x)
    eps_sched = tiny_base_model("sd2").noise_scheduler()
    assert torch.equal(training_target(eps_sched, x, noise, t), noise)


def test_min_snr_weights_follow_the_paper_for_both_targets():
    from dreambooth_core.models.tiny import tiny_base_model
    from dreambooth_core.train.loss import min_snr_weights, snr

    t = torch.tensor([5, 500, 990])
    for family, denominator in (("sd1", lambda s: s), ("sd2-v", lambda s: s + 1)):
        sched = tiny_base_model(family).noise_scheduler()
        s = snr(sched, t)
        torch.testing.assert_close(min_snr_weights(sched, t, 5.0), torch.clamp(s, max=5.0) / denominator(s))
    # low-noise steps (high SNR) are down-weighted, high-noise steps are not
    w = min_snr_weights(tiny_base_model("sd1").noise_scheduler(), t, 5.0)
    assert w[0] < 0.1 and w[2] == 1.0


def test_dreambooth_loss_adds_the_weighted_class_term():
    from dreambooth_core.train.loss import dreambooth_loss

    inst, cls = torch.tensor([1.0, 3.0]), torch.tensor([2.0, 6.0])
    parts = dreambooth_loss(inst, cls, 0.5)
    assert parts.total.item() == pytest.approx(2.0 + 0.5 * 4.0)
    assert (parts.instance.item(), parts.prior.item()) == (2.0, 4.0)
    assert dreambooth_loss(inst, None, 0.5).total.item() == 2.0


def test_noise_offset_shifts_each_channel_by_a_constant():
    from dreambooth_core.train.loss import sample_noise

    plain = sample_noise((4, 8, 8), torch.Generator().manual_seed(1))
    offset = sample_noise((4, 8, 8), torch.Generator().manual_seed(1), noise_offset=0.5)
    diff = offset - plain
    assert torch.allclose(diff, diff[:, :1, :1].expand_as(diff)) and diff.abs().max() > 0


# ---- data ----------------------------------------------------------------------------
def test_batch_order_is_the_same_for_any_number_of_processes():
    """Global micro-batch m holds the same examples and flips whether one process takes all
    of it or two processes take halves: the property multi-process training relies on."""
    from dreambooth_core.data.dataset import Example, TrainingData

    examples = [Example(Path(f"{i}.png"), "p", False, (64, 64), (64, 64)) for i in range(5)]
    one = TrainingData(examples, [], batch_size=4, num_processes=1, seed=3, center_crop=True, random_flip=True)
    two = TrainingData(examples, [], batch_size=2, num_processes=2, seed=3, center_crop=True, random_flip=True)
    for m in range(7):
        whole = [(i.index, i.slot, i.flip) for i in one.items("instance", m, 0)]
        halves = [(i.index, i.slot, i.flip) for p in (0, 1) for i in two.items("instance", m, p)]
        assert whole == halves
    # every image is seen once per epoch (5 images, padded to 8 slots by repeating)
    seen = [i.index for m in range(2) for i in one.items("instance", m, 0)]
    assert set(seen) == set(range(5)) and len(seen) == 8


def test_buckets_keep_area_and_match_aspect():
    from dreambooth_core.data.buckets import make_buckets, nearest_bucket

    buckets = make_buckets(512)
    assert (512, 512) in buckets
    assert all(w % 64 == 0 and h % 64 == 0 and w * h <= 512 * 512 and max(w / h, h / w) <= 2 for w, h in buckets)
    wide = nearest_bucket((1600, 900), buckets)
    assert wide[0] > wide[1] and abs(math.log(wide[0] / wide[1]) - math.log(16 / 9)) < 0.15
    assert nearest_bucket((300, 300), buckets) == (512, 512)


def test_prepared_image_records_sdxl_crop_coordinates(tmp_path):
    from dreambooth_core.data.dataset import numpy_rng, prepare_image

    image = Image.new("RGB", (100, 60), (10, 20, 30))
    centre = prepare_image(image, (64, 64), center_crop=True, flip=False, rng=numpy_rng(0))
    assert tuple(centre.pixels.shape) == (3, 64, 64) and centre.crop_top_left == (0, (107 - 64) // 2)
    assert centre.pixels.min() >= -1 and centre.pixels.max() <= 1


def test_captions_keep_the_token():
    from dreambooth_core.data.dataset import caption_prompt

    assert caption_prompt(None, "a photo of zwx dog", "zwx", "dog") == "a photo of zwx dog"
    assert caption_prompt("{token} {class_noun} on grass", "x", "zwx", "dog") == "zwx dog on grass"
    assert caption_prompt("a dog on grass", "a photo of zwx dog", "zwx", "dog") == "a photo of zwx dog, a dog on grass"


def test_common_word_tokens_are_flagged():
    from dreambooth_core.models.tokenizers import clip_tokenizer
    from dreambooth_core.train.prompts import common_word_warning

    tok = clip_tokenizer()
    assert common_word_warning(tok, "dog") and common_word_warning(tok, "photo")
    assert common_word_warning(tok, "sks") is None and common_word_warning(tok, "ohwx") is None
    assert common_word_warning(tok, "zwx") is None  # two tokens, no single meaning


# ---- state and run folder --------------------------------------------------------------
def _state(step: int):
    from dreambooth_core.train.state import TrainingState, rng_states

    opt = torch.optim.AdamW([torch.nn.Parameter(torch.ones(3))])
    return TrainingState(step, step * 2, {"unet/w": torch.arange(4.0) + step}, opt.state_dict(), {"last_epoch": step},
                         rng_states(), {"method": "lora"})


def test_state_round_trip_and_latest(tmp_path):
    from dreambooth_core.train.state import load_state, save_state, state_dirs

    for step in (2, 4, 6):
        save_state(tmp_path, _state(step))
    assert [p.name for p in state_dirs(tmp_path)] == ["step-4", "step-6"]  # the newest two are kept
    back = load_state(tmp_path / "step-6")
    assert back.step == 6 and back.micro_step == 12 and torch.equal(back.weights["unet/w"], torch.arange(4.0) + 6)


def test_full_disk_while_saving_state_keeps_the_previous_state(tmp_path, monkeypatch):
    import safetensors.torch

    from dreambooth_core.train.state import save_state, state_dirs

    save_state(tmp_path, _state(2))

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    with pytest.raises(UserError, match="disk full"):
        save_state(tmp_path, _state(4))
    assert [p.name for p in state_dirs(tmp_path)] == ["step-2"]
    assert [p.name for p in tmp_path.iterdir()] == ["step-2"]  # no temporary folder left


def test_a_fresh_run_does_not_mix_into_an_earlier_run(tmp_path):
    from dreambooth_core.train.run_dir import RunDir

    rd = RunDir(tmp_path / "run")
    rd.check_fresh(overwrite=False)
    rd.create(clear=False)
    (rd.outputs / "zwx_dog.safetensors").write_bytes(b"x")
    with pytest.raises(OutputExistsError, match="resume_from='latest'"):
        rd.check_fresh(overwrite=False)
    rd.check_fresh(overwrite=True)


def test_loss_plot_is_a_png_with_the_curve(tmp_path):
    from dreambooth_core.train.run_dir import RunDir

    rd = RunDir(tmp_path)
    for step in range(1, 30):
        rd.append_loss({"step": step, "loss": 1.0 / step, "instance_loss": 1.0 / step, "lr": 1e-4})
    rd.truncate_loss(20)
    assert [int(r["step"]) for r in rd.read_loss()] == list(range(1, 21))
    image = Image.open(rd.write_loss_plot())
    assert image.size == (800, 400)
    dark_blue = np.all(np.asarray(image) == (20, 60, 160), axis=-1)
    assert dark_blue.sum() > 100  # the smoothed curve is drawn


def test_a_resumed_run_checks_its_final_output_up_front(tmp_path):
    from dreambooth_core.train.run_dir import RunDir

    rd = RunDir(tmp_path)
    rd.create(clear=False)
    rd.check_no_final_output("zwx_dog")
    (rd.outputs / "zwx_dog-step4-cancelled.safetensors").write_bytes(b"x")
    rd.check_no_final_output("zwx_dog")
    (rd.outputs / "zwx_dog.pt").write_bytes(b"x")
    with pytest.raises(OutputExistsError, match="zwx_dog.pt already exists"):
        rd.check_no_final_output("zwx_dog")
