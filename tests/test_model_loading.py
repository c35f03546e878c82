"""Loading base models offline: same outputs, third-party readable folders, safe pickles, hashes."""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save, save_file

from dreambooth_core.errors import FormatError, UserError
from dreambooth_core.formats.checkpoint import ldm_state_dict
from dreambooth_core.models import configs as model_configs_module
from dreambooth_core.models import load as model_load
from dreambooth_core.models.detect import FAMILY_INDEX_KEY
from dreambooth_core.models.configs import CONFIGS_METADATA_KEY, configs_differ_from_family, empty_base_model, model_configs
from dreambooth_core.models.hashes import legacy_model_hash, model_hash
from dreambooth_core.models.load import load_base_model
from dreambooth_core.models.save import save_diffusers, save_single_file
from dreambooth_core.models.tiny import tiny_base_model


@pytest.fixture
def no_network(monkeypatch):
    """Fail loudly if anything tries to reach the hub."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)


def unet_output(model) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    cfg = model.unet.config
    sample = torch.randn(2, 4, 8, 8, generator=g)
    context = torch.randn(2, 77, cfg.cross_attention_dim, generator=g)
    kwargs = {}
    if model.family.is_sdxl:
        pooled = model.text_encoders[1].config.projection_dim
        kwargs["added_cond_kwargs"] = {"text_embeds": torch.randn(2, pooled, generator=g), "time_ids": torch.randn(2, 6, generator=g)}
    with torch.no_grad():
        return model.unet(sample, torch.tensor([10, 900]), context, **kwargs).sample


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_single_file_loads_offline_with_identical_unet_outputs(tmp_path, no_network, family):
    model = tiny_base_model(family, seed=4)
    path = save_single_file(model, tmp_path / "tiny.safetensors", dtype="fp32")
    loaded = load_base_model(path)
    assert loaded.family is model.family and loaded.source == path and loaded.name == "tiny"
    assert torch.equal(unet_output(loaded), unet_output(model))
    assert loaded.prediction_type == model.prediction_type


@pytest.mark.slow
def test_diffusers_folder_is_readable_by_diffusers_pipelines(tmp_path, no_network):
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    for family, pipeline in (("sd2-v", StableDiffusionPipeline), ("sdxl", StableDiffusionXLPipeline)):
        model = tiny_base_model(family, seed=5)
        folder = save_diffusers(model, tmp_path / family, dtype="fp32")
        pipe = pipeline.from_pretrained(folder, local_files_only=True)
        assert pipe.scheduler.config.prediction_type == model.prediction_type
        for name in ("unet", "vae", *model.family.text_encoders):
            a, b = model.components()[name].state_dict(), getattr(pipe, name).state_dict()
            assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
        assert pipe.tokenizer("a photo of zwx").input_ids == model.tokenizers[0]("a photo of zwx").input_ids


def test_only_non_standard_models_carry_their_configs(tmp_path):
    for family in ("sd1", "sd2-v", "sdxl"):
        assert not configs_differ_from_family(empty_base_model(family)), family
    tiny = tiny_base_model("sd2-v")
    assert configs_differ_from_family(tiny)
    with safe_open(str(save_single_file(tiny, tmp_path / "t.safetensors")), "pt") as f:
        meta = f.metadata()
    assert json.loads(meta[CONFIGS_METADATA_KEY]) == model_configs(tiny)
    assert meta["modelspec.architecture"] == "stable-diffusion-v2-768-v" and meta["modelspec.prediction_type"] == "v"
    assert CONFIGS_METADATA_KEY not in load_base_model(tmp_path / "t.safetensors").metadata


def test_sd2_family_from_yaml_or_explicit_override(tmp_path, caplog):
    model = tiny_base_model("sd2")
    path = tmp_path / "hintless.safetensors"
    save_file(ldm_state_dict(model), str(path), metadata={CONFIGS_METADATA_KEY: json.dumps(model_configs(model))})
    with caplog.at_level(logging.WARNING):
        assert load_base_model(path).family.name == "sd2"
    assert "--family sd2-v" in caplog.text
    explicit = load_base_model(path, family="sd2-v")
    assert explicit.family.name == "sd2-v" and explicit.prediction_type == "v_prediction"
    (tmp_path / "hintless.yaml").write_text('model:\n  params:\n    parameterization: "v"\n')
    assert load_base_model(path).noise_scheduler().config.prediction_type == "v_prediction"


@pytest.mark.slow
def test_foreign_diffusers_folder_family_from_configs(tmp_path):
    for family in ("sd1", "sd2", "sd2-v", "sdxl"):
        folder = save_diffusers(tiny_base_model(family), tmp_path / family, dtype="fp32")
        index = json.loads((folder / "model_index.json").read_text())
        del index[FAMILY_INDEX_KEY]
        (folder / "model_index.json").write_text(json.dumps(index))
        assert load_base_model(folder).family.name == family
    index["_class_name"] = "StableDiffusionXLInpaintPipeline"
    (folder / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(FormatError, match="inpainting"):
        load_base_model(folder)


def test_ckpt_is_read_without_unpickling_code(tmp_path, monkeypatch):
    model = tiny_base_model("sd1")
    ckpt = tmp_path / "model.ckpt"
    torch.save({"state_dict": ldm_state_dict(model), "global_step": 470000}, ckpt)
    with pytest.raises(FormatError, match="non-standard sizes"):  # a .ckpt cannot carry its configs
        load_base_model(ckpt)
    for module in (model_configs_module, model_load):   # the standard configs, wherever they are read
        monkeypatch.setattr(module, "shipped_configs", lambda family: model_configs(model))
    loaded = load_base_model(ckpt)
    assert torch.equal(unet_output(loaded), unet_output(model))
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": ldm_state_dict(model), "hyper_parameters": argparse.Namespace(lr=1e-4)}, evil)
    with pytest.raises(FormatError, match="--unsafe-pickle"):
        load_base_model(evil)
    assert load_base_model(evil, unsafe_pickle=True).family.name == "sd1"


def test_model_hash_is_kohyas_addnet_hash(tmp_path):
    tensors = {"a": torch.arange(600_000, dtype=torch.float32), "b": torch.ones(3)}
    first, second = tmp_path / "first.safetensors", tmp_path / "second.safetensors"
    save_file(tensors, str(first), metadata={"ss_network_dim": "4"})
    save_file(tensors, str(second), metadata={"ss_network_dim": "4", "modelspec.title": "renamed"})
    # kohya precalculates it from in-memory bytes: sha256 of everything after the header.
    raw = save(tensors, {"ss_network_dim": "4"})
    expected = hashlib.sha256(raw[8 + int.from_bytes(raw[:8], "little"):]).hexdigest()
    assert model_hash(first) == model_hash(second) == expected
    assert model_hash(first) != hashlib.sha256(first.read_bytes()).hexdigest()
    data = first.read_bytes()
    assert legacy_model_hash(first) == hashlib.sha256(data[0x100000:0x110000]).hexdigest()[:8]


def test_older_layouts_hosts_rename_are_read(tmp_path):
    """SD1 saved without the `text_model.` level, and SD2.1-Turbo's SGM-style text encoder."""
    for family, old, new in (
        ("sd1", "cond_stage_model.transformer.text_model.", "cond_stage_model.transformer."),
        ("sd2", "cond_stage_model.", "conditioner.embedders.0."),
    ):
        model = tiny_base_model(family)
        tensors = {(new + k[len(old):] if k.startswith(old) else k): v for k, v in ldm_state_dict(model).items()}
        meta = {CONFIGS_METADATA_KEY: json.dumps(model_configs(model)), "modelspec.prediction_type": "epsilon"}
        path = tmp_path / f"{family}.safetensors"
        save_file(tensors, str(path), metadata=meta)
        loaded = load_base_model(path)
        assert loaded.family.name == family and not loaded.extras
        assert torch.equal(loaded.text_encoders[0](torch.tensor([[49406, 320, 49407]]))[0], model.text_encoders[0](torch.tensor([[49406, 320, 49407]]))[0])


@pytest.mark.parametrize("form", ["single-file", "diffusers"])
def test_components_load_in_their_own_dtypes(tmp_path, no_network, form):
    """Frozen parts go straight to the compute dtype; the rest stays fp32 and exact."""
    model = tiny_base_model("sd1", seed=6)
    path = save_single_file(model, tmp_path / "m.safetensors", dtype="fp32") if form == "single-file" \
        else save_diffusers(model, tmp_path / "m", dtype="fp32")
    loaded = load_base_model(path, dtype={"unet": "bf16", "text_encoder": "fp16", "text_encoder_2": "bf16"})
    assert loaded.unet.dtype == torch.bfloat16 and loaded.text_encoders[0].dtype == torch.float16
    assert loaded.vae.dtype == torch.float32  # not named: fp32
    assert all(torch.equal(a, b) for a, b in zip(loaded.vae.state_dict().values(), model.vae.state_dict().values()))
    w = "conv_in.weight"
    assert torch.equal(loaded.unet.state_dict()[w], model.unet.state_dict()[w].to(torch.bfloat16))
    with pytest.raises(UserError, match="unknown model component.*unet"):
        load_base_model(path, dtype={"transformer": "bf16"})


def test_safetensors_reader_returns_every_tensor_exactly(tmp_path):
    """Plain reads (no memory map) give the same tensors as safetensors' own loader."""
    from safetensors.torch import load_file

    from dreambooth_core.fileio import SafetensorsReader

    tensors = {
        "f32": torch.randn(3, 5), "f16": torch.randn(7).half(), "bf16": torch.randn(2, 2).bfloat16(),
        "i64": torch.arange(6).reshape(2, 3), "u8": torch.tensor([0, 255], dtype=torch.uint8),
        "flag": torch.tensor([True, False]), "empty": torch.zeros(0, 4), "scalar": torch.tensor(2.5),
    }
    path = tmp_path / "t.safetensors"
    save_file(tensors, str(path), metadata={"k": "v"})
    expected = load_file(str(path))
    with SafetensorsReader(path) as reader:
        assert reader.metadata == {"k": "v"} and reader.shapes == {k: tuple(v.shape) for k, v in tensors.items()}
        for key, value in expected.items():
            got = reader.get(key)
            assert got.dtype == value.dtype and torch.equal(got, value), key
    path.write_bytes(path.read_bytes()[:-8])
    with pytest.raises(FormatError, match="truncated"):
        with SafetensorsReader(path) as reader:
            for key in reader.shapes:
                reader.get(key)


def test_diffusers_component_in_an_older_key_layout_goes_through_the_library(tmp_path, no_network):
    """A text encoder saved with the position_ids buffer (older transformers) still loads."""
    from safetensors.torch import load_file

    model = tiny_base_model("sd1", seed=8)
    folder = save_diffusers(model, tmp_path / "m", dtype="fp32")
    weights = folder / "text_encoder" / "model.safetensors"
    state = load_file(str(weights))
    state["text_model.embeddings.position_ids"] = torch.arange(77).unsqueeze(0)
    save_file(state, str(weights), metadata={"format": "pt"})
    loaded = load_base_model(folder)
    ids = torch.tensor([[49406, 320, 1125, 49407]])
    with torch.no_grad():
        assert torch.equal(loaded.text_encoders[0](ids)[0], model.text_encoders[0](ids)[0])


def short_text_model(seed: int = 0):
    """A tiny SD1 model whose text encoder has 24 positions (CLIP's is 77), as toy models have."""
    from transformers import CLIPTextModel

    model = tiny_base_model("sd1", seed=seed)
    config = model.text_encoders[0].config
    config.max_position_embeddings = 24
    torch.manual_seed(seed)
    model.text_encoders[0] = CLIPTextModel(config).eval()
    model.tokenizers[0].model_max_length = 24
    return model


def generates_with_a_plain_pipeline(folder) -> None:
    """What a user does with a folder: from_pretrained with no dtype, then one tiny image."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(folder, local_files_only=True)
    assert {pipe.unet.dtype, pipe.vae.dtype, pipe.text_encoder.dtype} == {torch.float32}
    image = pipe("a photo of zwx", num_inference_steps=2, height=32, width=32, output_type="np").images
    assert image.shape == (1, 32, 32, 3) and np.isfinite(image).all()


def write_diffusers_base(tiny, folder) -> None:
    """`tiny` as diffusers itself writes a pipeline, with a PNDM scheduler (ours writes DDPM)."""
    from diffusers import PNDMScheduler, StableDiffusionPipeline

    scheduler = PNDMScheduler.from_config(tiny.scheduler_config, skip_prk_steps=True, steps_offset=1)
    StableDiffusionPipeline(
        vae=tiny.vae, unet=tiny.unet, text_encoder=tiny.text_encoders[0], tokenizer=tiny.tokenizers[0], scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    ).save_pretrained(folder)


def assert_faithful_to(base, out) -> None:
    """`out` carries `base`'s tokenizer files and scheduler config unchanged, and its text
    encoder loads in fp32 as its UNet and VAE do."""
    theirs = sorted(p.name for p in (base / "tokenizer").iterdir())
    assert sorted(p.name for p in (out / "tokenizer").iterdir()) == theirs
    for name in theirs:
        assert (out / "tokenizer" / name).read_bytes() == (base / "tokenizer" / name).read_bytes(), name
    scheduler_file = "scheduler/scheduler_config.json"
    assert json.loads((out / scheduler_file).read_text()) == json.loads((base / scheduler_file).read_text())
    text_config = json.loads((out / "text_encoder" / "config.json").read_text())
    assert text_config.get("dtype", text_config.get("torch_dtype")) == "float32"


def test_diffusers_folder_carries_the_base_tokenizer_and_scheduler_and_loads_plainly(tmp_path, no_network):
    """A diffusers save from a diffusers base: the base's tokenizer files and scheduler config
    unchanged, and fp16 weights that a plain from_pretrained loads and runs."""
    write_diffusers_base(short_text_model(), tmp_path / "base")
    base = load_base_model(tmp_path / "base")
    assert base.tokenizers[0].model_max_length == 24
    out = save_diffusers(base, tmp_path / "ours", dtype="fp16")
    assert_faithful_to(tmp_path / "base", out)
    with safe_open(str(out / "text_encoder" / "model.safetensors"), "pt") as f:
        assert f.get_tensor(next(iter(f.keys()))).dtype == torch.float16  # stored as asked
    generates_with_a_plain_pipeline(out)


def test_converted_single_file_with_a_short_text_encoder_loads_plainly(tmp_path, no_network):
    """convert --to diffusers from a single file (no tokenizer inside): the tokenizer written
    stops where the text encoder's positions do."""
    from dreambooth_core.cli import main

    src = save_single_file(short_text_model(seed=1), tmp_path / "short.safetensors", dtype="fp16")
    assert load_base_model(src).tokenizers[0].model_max_length == 24
    assert main(["convert", str(src), str(tmp_path / "folder"), "--to", "diffusers"]) == 0
    config = json.loads((tmp_path / "folder" / "tokenizer" / "tokenizer_config.json").read_text())
    assert config["model_max_length"] == 24
    generates_with_a_plain_pipeline(tmp_path / "folder")


def test_dreambooth_diffusers_folder_from_a_short_tokenizer_base_loads_plainly(tmp_path, no_network):
    """DreamBooth (`save_formats = ["diffusers"]`, default fp16) on a diffusers base whose text
    encoder has 24 positions: it trains, and its folder is faithful to the base and generates."""
    from test_train_support import tiny_config, train

    write_diffusers_base(short_text_model(seed=2), tmp_path / "base")
    cfg = tiny_config(tmp_path, method="dreambooth", learning_rate=1e-3, save_formats=["diffusers"], train_text_encoder=True)
    result, _, _ = train(cfg, model=load_base_model(tmp_path / "base"))
    (artifact,) = [a for a in result.outputs if a.kind == "diffusers"]
    assert_faithful_to(tmp_path / "base", Path(artifact.path))
    generates_with_a_plain_pipeline(artifact.path)
