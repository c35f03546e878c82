"""SDXL v-prediction models (NoobAI-XL v-pred): told by ComfyUI's `v_pred` / `ztsnr` marker
tensors or `--family sdxl-v`, trained with v targets (on zero-terminal-SNR betas where the
file says so), saved with the markers so the hosts load them as v-prediction again."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from dreambooth_core.formats.checkpoint import ldm_state_dict
from dreambooth_core.models.configs import CONFIGS_METADATA_KEY, model_configs
from dreambooth_core.models.load import load_base_model
from dreambooth_core.models.save import save_diffusers, save_single_file
from dreambooth_core.models.tiny import tiny_base_model
from dreambooth_core.sample import make_scheduler


def write_sdxl(path, markers=("v_pred", "ztsnr")) -> None:
    """A tiny SDXL single file with ComfyUI's marker tensors; its recorded configs (needed
    for the tiny widths) are the plain SDXL ones, epsilon schedule included."""
    plain = tiny_base_model("sdxl")
    tensors = {**ldm_state_dict(plain), **{k: torch.tensor([]) for k in markers}}
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path),
              metadata={CONFIGS_METADATA_KEY: json.dumps(model_configs(plain))})


def keys_and_metadata(path):
    with safe_open(str(path), "pt") as f:
        return set(f.keys()), f.metadata()


@pytest.mark.parametrize("markers, zero_snr", [(("v_pred", "ztsnr"), True), (("v_pred",), False)])
def test_marker_tensors_make_an_sdxl_file_v_prediction(tmp_path, markers, zero_snr):
    write_sdxl(tmp_path / "m.safetensors", markers)
    model = load_base_model(tmp_path / "m.safetensors")
    assert model.family.name == "sdxl-v" and model.prediction_type == "v_prediction"
    scheduler = model.noise_scheduler()
    assert scheduler.config.prediction_type == "v_prediction"
    assert bool(scheduler.config.rescale_betas_zero_snr) == zero_snr
    assert (float(scheduler.alphas_cumprod[-1]) == 0.0) == zero_snr   # zero SNR at the last timestep
    preview = make_scheduler("euler", model.scheduler_config)
    assert preview.config.prediction_type == "v_prediction"
    assert (preview.config.timestep_spacing == "trailing") == zero_snr


def test_family_sdxl_v_on_an_unmarked_file_is_saved_with_the_marker(tmp_path):
    write_sdxl(tmp_path / "plain.safetensors", markers=())
    assert load_base_model(tmp_path / "plain.safetensors").family.name == "sdxl"
    model = load_base_model(tmp_path / "plain.safetensors", family="sdxl-v")
    assert model.prediction_type == "v_prediction" and not model.scheduler_config.get("rescale_betas_zero_snr")
    out = save_single_file(model, tmp_path / "out.safetensors", dtype="fp32")
    keys, metadata = keys_and_metadata(out)
    assert "v_pred" in keys and "ztsnr" not in keys and metadata["modelspec.prediction_type"] == "v"
    assert load_base_model(out).family.name == "sdxl-v"


def test_a_diffusers_folder_keeps_v_prediction_and_zero_snr(tmp_path):
    write_sdxl(tmp_path / "m.safetensors")
    folder = save_diffusers(load_base_model(tmp_path / "m.safetensors"), tmp_path / "folder", dtype="fp32")
    again = load_base_model(folder)
    assert again.family.name == "sdxl-v" and again.scheduler_config["rescale_betas_zero_snr"] is True
    keys, _ = keys_and_metadata(save_single_file(again, tmp_path / "back.safetensors", dtype="fp32"))
    assert {"v_pred", "ztsnr"} <= keys


@pytest.mark.slow
def test_an_sdxl_v_file_trains_with_v_targets_and_keeps_its_markers(tmp_path, monkeypatch):
    from test_train_support import tiny_config, train

    import dreambooth_core.train.loop as loop

    write_sdxl(tmp_path / "m.safetensors")
    seen = []
    real = loop.training_target

    def recording(scheduler, latents, noise, timesteps):
        target = real(scheduler, latents, noise, timesteps)
        seen.append((scheduler.config.prediction_type, scheduler.config.rescale_betas_zero_snr,
                     torch.equal(target, scheduler.get_velocity(latents, noise, timesteps))))
        return target

    monkeypatch.setattr(loop, "training_target", recording)
    cfg = tiny_config(tmp_path, method="dreambooth", max_train_steps=1, learning_rate=1e-3, save_dtype="fp32")
    result, _, _ = train(cfg, model=load_base_model(tmp_path / "m.safetensors"))
    assert result.status == "completed"
    assert seen and all(s == ("v_prediction", True, True) for s in seen)
    keys, metadata = keys_and_metadata(result.outputs[0].path)
    assert {"v_pred", "ztsnr"} <= keys and metadata["modelspec.prediction_type"] == "v"
    saved = load_base_model(result.outputs[0].path)
    assert saved.family.name == "sdxl-v" and saved.scheduler_config["rescale_betas_zero_snr"] is True
