"""Utility nodes (convert a model; convert, merge and extract LoRAs) against the fake ComfyUI:
each runs the dreambooth-core command in a separate Python and puts its file in ComfyUI's lists."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from comfy_fake.harness import Host

BASE, TUNED = "base.safetensors", "tuned.safetensors"


@pytest.fixture(scope="module")
def tiny_pair(tmp_path_factory) -> tuple[Path, Path]:
    """Two tiny SD1 checkpoints of the same architecture with different weights."""
    from dreambooth_core.models.save import save_single_file
    from dreambooth_core.models.tiny import tiny_base_model

    folder = tmp_path_factory.mktemp("models")
    save_single_file(tiny_base_model("sd1", seed=0), folder / BASE, dtype="fp32")
    save_single_file(tiny_base_model("sd1", seed=1), folder / TUNED, dtype="fp32")
    return folder / BASE, folder / TUNED


@pytest.fixture
def comfy(tmp_path, tiny_pair):
    host = Host(tmp_path / "ComfyUI")
    for path in tiny_pair:
        os.link(path, host.folder("checkpoints") / path.name)
    yield host
    host.close()


def keys(path: Path) -> list[str]:
    from safetensors import safe_open

    with safe_open(path, framework="pt") as f:
        return list(f.keys())


@pytest.mark.slow
def test_extract_convert_and_merge_loras(comfy):
    name = comfy.run("DreamBoothExtractLoRA", base=BASE, tuned=TUNED, rank=4, conv_rank=0, output_name="", overwrite=False)[0]
    assert name == "tuned-extracted.safetensors" and comfy.folder_paths.get_filename_list("loras") == [name]
    extracted = keys(comfy.folder("loras") / name)
    assert extracted and all(k.startswith(("lora_unet_", "lora_te_")) for k in extracted)

    peft = comfy.run("DreamBoothConvertLoRA", lora=name, to="peft", base_model="(none)", output_name="", overwrite=False)[0]
    peft_path = Path(comfy.folder_paths.get_output_directory()) / "dreambooth" / "peft" / peft
    assert peft == "tuned-extracted-peft.safetensors" and any(".lora_A." in k for k in keys(peft_path))
    assert comfy.folder_paths.get_filename_list("loras") == [name], "peft files stay out of ComfyUI's LoRA list"

    merged = comfy.run("DreamBoothMergeLoRA", checkpoint=BASE, lora_1=name, strength_1=1.0, lora_2="(none)", strength_2=1.0,
                       lora_3="(none)", strength_3=1.0, dtype="fp32", output_name="with_lora", overwrite=False)[0]
    assert merged == "with_lora.safetensors" and merged in comfy.folder_paths.get_filename_list("checkpoints")
    assert any(k.startswith("model.diffusion_model.") for k in keys(comfy.folder("checkpoints") / merged))


@pytest.mark.slow
def test_convert_model_to_diffusers_and_back(comfy):
    folder = comfy.run("DreamBoothConvertModel", source=f"checkpoints/{BASE}", dtype="fp32", output_name="", overwrite=False)[0]
    assert folder == "base" and (comfy.folder("diffusers") / "base" / "model_index.json").is_file()
    options = {i.id: i for i in comfy.nodes["DreamBoothConvertModel"].GET_SCHEMA().inputs}["source"].options
    assert "diffusers/base" in options
    back = comfy.run("DreamBoothConvertModel", source="diffusers/base", dtype="fp32", output_name="roundtrip", overwrite=False)[0]
    assert back == "roundtrip.safetensors"
    assert sorted(keys(comfy.folder("checkpoints") / back)) == sorted(keys(comfy.folder("checkpoints") / BASE))


@pytest.mark.slow
def test_command_error_becomes_the_nodes_error(comfy):
    from dreambooth_core.errors import UserError

    (comfy.folder("loras") / "broken.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(UserError) as info:
        comfy.run("DreamBoothMergeLoRA", checkpoint=BASE, lora_1="broken.safetensors", strength_1=1.0, lora_2="(none)",
                  strength_2=1.0, lora_3="(none)", strength_3=1.0, dtype="fp16", output_name="", overwrite=False)
    assert "broken.safetensors" in str(info.value)
    assert comfy.folder_paths.get_filename_list("checkpoints") == [BASE, TUNED]


def test_existing_output_is_refused_before_running(comfy):
    from dreambooth_core.errors import OutputExistsError

    (comfy.folder("loras") / "tuned-extracted.safetensors").write_bytes(b"mine")
    with pytest.raises(OutputExistsError, match="choose another output_name or turn on overwrite"):
        comfy.run("DreamBoothExtractLoRA", base=BASE, tuned=TUNED, rank=4, conv_rank=0, output_name="", overwrite=False)
    assert (comfy.folder("loras") / "tuned-extracted.safetensors").read_bytes() == b"mine"


def test_cancel_stops_the_command_and_writes_nothing(comfy):
    comfy.interrupt()
    with pytest.raises(comfy.mm.InterruptProcessingException):
        comfy.run("DreamBoothExtractLoRA", base=BASE, tuned=TUNED, rank=4, conv_rank=0, output_name="", overwrite=False)
    assert os.listdir(comfy.folder("loras")) == []


def test_same_model_twice_is_refused(comfy):
    from dreambooth_core.errors import UserError

    with pytest.raises(UserError, match="same checkpoint"):
        comfy.run("DreamBoothExtractLoRA", base=BASE, tuned=BASE, rank=4, conv_rank=0, output_name="", overwrite=False)
