"""The training resolution must be a multiple of what the model's VAE and UNet downsample
by, read from the model itself: SD1 64, SDXL 32, a tiny two-level toy 4 (a fixed "multiple
of 8, at least 64" refused 32 px toys that diffusers' own scripts train)."""
from __future__ import annotations

import pytest

from dreambooth_core.errors import ConfigError
from dreambooth_core.models.configs import empty_base_model
from dreambooth_core.models.tiny import tiny_base_model
from test_train_support import Recorder, tiny_config, train


@pytest.mark.parametrize("family, multiple", [("sd1", 64), ("sd2-v", 64), ("sdxl", 32)])
def test_the_multiple_comes_from_the_vae_and_the_unet(family, multiple):
    assert empty_base_model(family).resolution_multiple == multiple


def test_a_resolution_off_the_models_multiple_is_refused_naming_it():
    model = tiny_base_model("sd1")
    assert model.resolution_multiple == 4
    model.check_resolution(32)
    with pytest.raises(ConfigError, match=r"resolution 30 is not a multiple of 4, .* use e.g. 28 or 32"):
        model.check_resolution(30)


@pytest.mark.slow
def test_a_32px_tiny_model_trains_and_an_off_multiple_run_fails_before_training(tmp_path):
    result, _, _ = train(tiny_config(tmp_path / "ok", resolution=32, max_train_steps=1))
    assert result.status == "completed"
    rec = Recorder()
    with pytest.raises(ConfigError, match="not a multiple of 4"):
        train(tiny_config(tmp_path / "bad", resolution=30, max_train_steps=1), recorder=rec)
    assert rec.events[-1].type == "done" and rec.events[-1].status == "failed"
    assert not [e for e in rec.of("progress") if e.phase == "train"]
