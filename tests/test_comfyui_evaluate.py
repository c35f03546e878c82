"""The ComfyUI Evaluate node against the fake ComfyUI: a hand-written kohya LoRA for the
toy model, scored in the worker's Python by a CLIP file found in models/clip_vision."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from comfy_fake.harness import Host
from dreambooth_core.toy.model import TOY_INSTANCE_DIR, TOY_MODEL_PATH

from evaluate_helpers import tiny_clip
from test_evaluate_cli import kohya_lora


@pytest.fixture
def comfy(tmp_path):
    host = Host(tmp_path / "ComfyUI")
    os.link(TOY_MODEL_PATH, host.folder("checkpoints") / "toy.safetensors")
    shutil.copytree(TOY_INSTANCE_DIR, Path(host.folder_paths.get_input_directory()) / "ball")
    yield host
    host.close()


def test_the_node_is_registered_with_the_host_lists(comfy) -> None:
    tiny_clip(comfy.folder("clip_vision") / "clip.safetensors")
    info = comfy.nodes["DreamBoothEvaluate"].GET_SCHEMA().get_v1_info(comfy.nodes["DreamBoothEvaluate"])
    assert info["input"]["required"]["encoder"][1]["options"][1:] == ["clip.safetensors"]
    assert info["output_name"] == ["report", "subject_fidelity", "prompt_fidelity", "prior_drift"]


@pytest.mark.slow
def test_evaluate_a_kohya_lora_with_the_clip_vision_file(comfy) -> None:
    tiny_clip(comfy.folder("clip_vision") / "clip.safetensors")
    kohya_lora(comfy.folder("loras") / "ball.safetensors", scale=0.5)
    out = comfy.run("DreamBoothEvaluate", artifact="loras/ball.safetensors", base_model="toy.safetensors",
                    instance_folder="ball", token="", class_noun="", encoder="(first in clip_vision)", images=2, steps=2)
    report, fidelity, prompt, drift = out[:4]
    assert "ball.safetensors (lora), scored by clip" in report
    assert -1.0 <= fidelity <= 1.0 and -1.0 <= prompt <= 1.0 and abs(drift) > 1e-4
