"""Every ComfyUI node with a name or path input refuses what would reach outside ComfyUI's
folders, with a clear message, and a canary folder outside them stays byte-identical."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from comfy_fake.harness import Host
from dreambooth_core.errors import UserError
from hostile import HOSTILE_NAMES, NOT_TEXT, Canary

BASE = "base.safetensors"


@pytest.fixture
def comfy(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("DREAMBOOTH_CORE_ANY_FOLDER", raising=False)
    host = Host(tmp_path / "ComfyUI")
    (host.folder("checkpoints") / BASE).write_bytes(b"{}")   # refusals come before anything reads it
    (host.folder("loras") / "style.safetensors").write_bytes(b"{}")
    subject = Path(host.folder_paths.get_input_directory()) / "subject"
    subject.mkdir()
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(subject / "a.png")
    host.canary = Canary(tmp_path)
    yield host
    host.close()
    host.canary.assert_intact()


def refused(host: Host, node: str, **inputs) -> str:
    with pytest.raises(UserError) as info:
        host.run(node, **inputs)
    return str(info.value)


def test_load_training_images_stays_in_comfyuis_folders(comfy):
    for value in comfy.canary.paths(Path(comfy.folder_paths.get_input_directory())):
        message = refused(comfy, "DreamBoothLoadTrainingImages", folder=value)
        assert any(w in message for w in ("outside the folders", "NUL byte", "must be text")), (value, message)
        assert "config.json" not in message, "the files of a folder outside are never listed"
    assert comfy.run("DreamBoothLoadTrainingImages", folder="subject")[1] == 1


def test_the_operator_may_open_absolute_folders(comfy, monkeypatch, tmp_path):
    elsewhere = tmp_path / "ComfyUI" / ".." / "photos"
    (tmp_path / "photos").mkdir()
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(tmp_path / "photos" / "a.png")
    comfy.canary.base_entries.append("photos")
    assert "DREAMBOOTH_CORE_ANY_FOLDER=1" in refused(comfy, "DreamBoothLoadTrainingImages", folder=str(elsewhere))
    monkeypatch.setenv("DREAMBOOTH_CORE_ANY_FOLDER", "1")
    assert comfy.run("DreamBoothLoadTrainingImages", folder=str(elsewhere))[1] == 1
    assert "outside" in refused(comfy, "DreamBoothLoadTrainingImages", folder="../../photos")


def concept(comfy, token="zwx", class_noun="dog"):
    return comfy.run("DreamBoothConcept", token=token, class_noun=class_noun, instance_prompt="a photo of {token} {class_noun}",
                     class_prompt="a photo of {class_noun}", prior_preservation=False, num_class_images=0,
                     prior_loss_weight=1.0)[0]


def train(comfy, concept_value, options=""):
    dataset = comfy.run("DreamBoothLoadTrainingImages", folder="subject")[0]
    return refused(comfy, "DreamBoothTrainLoRA", checkpoint=BASE, dataset=dataset, concept=concept_value, preset="lora",
                   steps=1, learning_rate=0.0, rank=4, alpha=0.0, train_text_encoder=False, strength=1.0, resolution=64,
                   seed=0, resume=True, options=options)


def test_the_training_nodes_refuse_names_and_path_options(comfy):
    reasons = ("plain name", "NUL byte", "characters long", "one word")
    for value in HOSTILE_NAMES:
        message = train(comfy, concept(comfy, token=value))
        assert message.startswith(("token", "the run name")) and any(r in message for r in reasons), (value, message)
        message = train(comfy, concept(comfy), options=f"output_name = {value}")
        assert message.startswith("output_name") and any(r in message for r in reasons), (value, message)
    assert "plain name" in train(comfy, concept(comfy, class_noun="a/../../x"))
    for key in ("base_model", "instance_data_dir", "class_data_dir", "output_dir", "resume_from"):
        message = train(comfy, concept(comfy), options=f"{key} = {comfy.canary.folder}")
        assert f"{key} cannot be set here" in message
    assert not (Path(comfy.folder_paths.get_output_directory()) / "dreambooth").exists()


@pytest.mark.parametrize("node, inputs", [
    ("DreamBoothConvertModel", dict(source=f"checkpoints/{BASE}", dtype="fp16")),
    ("DreamBoothConvertLoRA", dict(lora="style.safetensors", to="kohya", base_model="(none)")),
    ("DreamBoothConvertLoRA", dict(lora="style.safetensors", to="peft", base_model="(none)")),
    ("DreamBoothMergeLoRA", dict(checkpoint=BASE, lora_1="style.safetensors", strength_1=1.0, lora_2="(none)",
                                 strength_2=1.0, lora_3="(none)", strength_3=1.0, dtype="fp16")),
    ("DreamBoothExtractLoRA", dict(base=BASE, tuned="other.safetensors", rank=4, conv_rank=0)),
])
def test_the_utility_nodes_refuse_every_hostile_output_name(comfy, node, inputs):
    (comfy.folder("checkpoints") / "other.safetensors").write_bytes(b"{}")
    for value in HOSTILE_NAMES + NOT_TEXT + [str(comfy.canary.folder)]:
        for overwrite in (False, True):
            message = refused(comfy, node, **inputs, output_name=value, overwrite=overwrite)
            assert message.startswith("output_name"), (value, message)


def test_settings_past_their_bounds_are_a_node_error(comfy):
    for line in ("num_class_images = 100000", "train_batch_size = 1000", "resolution = 8192", "max_train_steps = 999999999"):
        assert "at most" in train(comfy, concept(comfy), options=line), line


def test_overwrite_never_replaces_a_model_no_run_made(comfy):
    theirs = comfy.folder("loras") / "zwx_dog.safetensors"
    theirs.write_bytes(b"someone's LoRA")
    message = train(comfy, concept(comfy), options="overwrite = true")
    assert "was not made by a DreamBooth run" in message and theirs.read_bytes() == b"someone's LoRA"
