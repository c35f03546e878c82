"""`dreambooth-core evaluate` on a kohya LoRA written by hand for the bundled toy model."""
from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import save_file

from dreambooth_core.cli import main
from dreambooth_core.toy.model import TOY_INSTANCE_DIR, TOY_MODEL_PATH, load_toy_model

from evaluate_helpers import tiny_clip

FAST = ["--images", "2", "--steps", "4", "--guidance-scale", "6"]


def kohya_lora(path, scale: float, rank: int = 2):
    """kohya's layout: lora_unet_<diffusers module path>.lora_down/.lora_up/.alpha on the
    cross-attention key/value projections."""
    tensors = {}
    g = torch.Generator().manual_seed(0)
    for name, module in load_toy_model().unet.named_modules():
        if name.endswith(("attn2.to_k", "attn2.to_v")):
            key = "lora_unet_" + name.replace(".", "_")
            tensors[f"{key}.lora_down.weight"] = torch.randn(rank, module.in_features, generator=g)
            tensors[f"{key}.lora_up.weight"] = torch.randn(module.out_features, rank, generator=g) * scale
            tensors[f"{key}.alpha"] = torch.tensor(float(rank))
    save_file(tensors, str(path), metadata={"ss_network_module": "networks.lora", "ss_network_dim": str(rank),
                                            "ss_network_alpha": str(rank), "modelspec.trigger_phrase": "sks ball"})
    return path


def evaluate(capsys, *args) -> dict:
    code = main(["evaluate", *map(str, args), "--base", str(TOY_MODEL_PATH), "--instance", str(TOY_INSTANCE_DIR), *FAST, "--json"])
    out = capsys.readouterr()
    assert code == 0, out.err
    return json.loads(out.out)


def test_a_kohya_lora_is_scored_with_a_clip_file(tmp_path, capsys) -> None:
    encoder = tiny_clip(tmp_path / "clip.safetensors")
    report = evaluate(capsys, kohya_lora(tmp_path / "k.safetensors", scale=0.5), "--encoder", encoder)
    assert report["kind"] == "lora" and report["prompt"] == "a photo of sks ball"   # the trigger phrase read from the file
    scores = report["scores"]
    assert set(scores) == {"subject_fidelity", "prompt_fidelity", "prior_drift", "diversity"}
    assert all(math.isfinite(v) for v in scores.values())
    assert abs(scores["prior_drift"]) > 1e-4   # the LoRA changed the plain class's images

    # a LoRA whose up weights are zero changes nothing: its class images are the base's own
    still = evaluate(capsys, kohya_lora(tmp_path / "zero.safetensors", scale=0.0), "--encoder", encoder)["scores"]
    assert still["prior_drift"] == pytest.approx(0.0, abs=1e-6)


def test_the_toy_model_is_scored_by_the_toy_world_without_an_encoder(tmp_path, capsys) -> None:
    scores = evaluate(capsys, kohya_lora(tmp_path / "zero.safetensors", scale=0.0))["scores"]
    assert scores["prior_drift"] == pytest.approx(0.0, abs=1e-9) and 0.0 <= scores["prior_preservation"] <= 1.0
    assert scores["subject_fidelity"] < 0.1   # the base cannot draw the subject


def test_missing_trigger_words_and_encoder_are_asked_for(tmp_path, capsys) -> None:
    lora = tmp_path / "k.safetensors"
    save_file({"lora_unet_x.lora_down.weight": torch.zeros(2, 4), "lora_unet_x.lora_up.weight": torch.zeros(4, 2)}, str(lora))
    assert main(["evaluate", str(lora), "--base", str(TOY_MODEL_PATH), "--instance", str(TOY_INSTANCE_DIR)]) == 1
    assert "--token and --class-noun" in capsys.readouterr().err
