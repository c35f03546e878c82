"""LoRA files: exact round trips, metadata hosts read, and loading through diffusers/peft."""
import argparse
import contextlib
import io
import json
import logging
import re
import warnings

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from dreambooth_core.errors import FamilyError, FormatError, OutputExistsError, UserError
from dreambooth_core.formats.lora import (
    LoraModule,
    LoraWeights,
    convert_lora,
    lora_from_peft_model,
    match_report,
    read_lora,
    require_match,
    write_kohya,
    write_peft,
)
from dreambooth_core.formats.lora_keys import lora_target_modules, model_parts, names_for_family, names_for_model
from dreambooth_core.models.configs import empty_base_model
from dreambooth_core.models.hashes import model_hash
from dreambooth_core.models.tiny import tiny_base_model

FAMILIES = ["sd1", "sd2", "sd2-v", "sdxl"]


def random_lora(model, rank=2, alpha=3.0, conv=False, seed=0, vary=False) -> LoraWeights:
    """A LoRA on every kohya target of `model`, 3×3 convs at rank + 1 and alpha + 1 (like kohya's
    conv_dim/conv_alpha); `vary` mixes ranks and alphas across all modules."""
    g = torch.Generator().manual_seed(seed)
    names = names_for_model(model)
    modules = {}
    for part, root in model_parts(model).items():
        for i, name in enumerate(lora_target_modules(root, conv=conv)):
            w = root.get_submodule(name).weight
            conv3x3 = w.ndim == 4 and w.shape[2:] != (1, 1)
            r, a = (rank + i % 3, alpha + 0.5 * (i % 2)) if vary else (rank + conv3x3, alpha + conv3x3)
            down = torch.randn(r, *w.shape[1:], generator=g) * 0.3
            up = torch.randn(w.shape[0], r, *((1, 1) if w.ndim == 4 else ()), generator=g) * 0.3
            modules[names.key(part, name)] = LoraModule(down, up, a)
    return LoraWeights(modules, model.family)


def assert_same_lora(a: LoraWeights, b: LoraWeights):
    assert set(a.modules) == set(b.modules)
    for key, m in a.modules.items():
        assert torch.equal(m.down, b.modules[key].down), key
        assert torch.equal(m.up, b.modules[key].up), key
        assert m.alpha == b.modules[key].alpha, key


def unet_output(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    cfg = model.unet.config
    sample = torch.randn(1, cfg.in_channels, 8, 8, generator=g)
    context = torch.randn(1, 5, cfg.cross_attention_dim, generator=g)
    extra = {}
    if model.family.is_sdxl:
        extra["added_cond_kwargs"] = {
            "text_embeds": torch.randn(1, model.text_encoders[1].config.projection_dim, generator=g),
            "time_ids": torch.randn(1, 6, generator=g),
        }
    with torch.no_grad():
        return model.unet(sample, 10, encoder_hidden_states=context, **extra).sample


def text_outputs(model):
    outs = []
    with torch.no_grad():
        for tok, te in zip(model.tokenizers, model.text_encoders):
            ids = tok("a photo of zwx dog", return_tensors="pt").input_ids
            outs.append(te(ids)[0])
    return outs


def pipeline(model):
    from diffusers import DDIMScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline

    scheduler = DDIMScheduler.from_config(model.scheduler_config)
    if model.family.is_sdxl:
        return StableDiffusionXLPipeline(scheduler=scheduler, **model.components())
    return StableDiffusionPipeline(scheduler=scheduler, **model.components(), safety_checker=None, feature_extractor=None, requires_safety_checker=False)


@contextlib.contextmanager
def captured_library_logs():
    """Everything diffusers, transformers and peft log or warn while loading."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    loggers = [logging.getLogger(n) for n in ("diffusers", "transformers", "peft")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.addHandler(handler)
        lg.setLevel(logging.INFO)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield stream
    for lg, level in zip(loggers, levels):
        lg.removeHandler(handler)
        lg.setLevel(level)
    stream.write("\n".join(str(w.message) for w in caught))


def lora_key_problems(log_text: str) -> list[str]:
    """Log lines reporting missing/unexpected LoRA keys or LoRA keys that found no module."""
    return [
        line for line in log_text.splitlines()
        if (re.search(r"unexpected|missing", line, re.I) and "lora" in line.lower()) or "No LoRA keys" in line or "not loaded" in line
    ]


def check_loaded_like(model, lora: LoraWeights, adapter: str):
    """Every LoRA module is injected by peft with our tensors and scale; nothing else is."""
    from peft.tuners.lora import LoraLayer

    names = names_for_model_cached(model)
    injected = {}
    for part, root in model_parts(model).items():
        for name, layer in root.named_modules():
            if isinstance(layer, LoraLayer) and adapter in layer.lora_A:
                injected[names.key(part, name)] = layer
    assert set(injected) == set(lora.modules)
    for key, mod in lora.modules.items():
        layer = injected[key]
        assert torch.equal(layer.lora_A[adapter].weight, mod.down), key
        assert torch.equal(layer.lora_B[adapter].weight, mod.up), key
        assert layer.scaling[adapter] == pytest.approx(mod.scale, rel=1e-12), key


def names_for_model_cached(model):
    # Names of the unwrapped tree: peft keeps module paths, so compute them on a fresh copy.
    return names_for_model(tiny_base_model(model.family))


# ----------------------------------------------------------------------------- kohya files


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("conv", [False, True])
def test_kohya_round_trip_is_exact(tmp_path, family, conv):
    model = tiny_base_model(family)
    lora = random_lora(model, conv=conv, vary=True)
    path = write_kohya(lora, tmp_path / "zwx.safetensors", metadata={"ss_steps": 500, "modelspec.trigger_phrase": "zwx dog"})
    back = read_lora(path)
    assert_same_lora(lora, back)
    assert back.family == model.family
    tensors = load_file(path)
    assert all(t.shape == () and t.dtype == torch.float32 for k, t in tensors.items() if k.endswith(".alpha"))


def test_kohya_metadata(tmp_path):
    model = tiny_base_model("sd2-v")
    lora = random_lora(model, rank=4, alpha=2.0, conv=True)
    path = write_kohya(lora, tmp_path / "zwx_dog.safetensors", metadata={"ss_steps": 500, "ss_learning_rate": 1e-4, "modelspec.trigger_phrase": "zwx dog"})
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    assert meta["ss_network_module"] == "networks.lora"
    assert meta["ss_network_dim"] == "4" and meta["ss_network_alpha"] == "2.0"
    assert json.loads(meta["ss_network_args"]) == {"conv_dim": "5", "conv_alpha": "3.0"}
    assert meta["ss_base_model_version"] == "sd_v2_v" and meta["ss_v2"] == "True"
    assert meta["ss_output_name"] == "zwx_dog" and meta["modelspec.title"] == "zwx_dog"
    assert meta["ss_steps"] == "500" and meta["ss_learning_rate"] == "0.0001"
    assert meta["modelspec.sai_model_spec"] == "1.0.1"
    assert meta["modelspec.architecture"] == "stable-diffusion-v2-768-v/lora"
    assert meta["modelspec.implementation"] == "diffusers"
    assert meta["modelspec.resolution"] == "768x768" and meta["modelspec.prediction_type"] == "v"
    assert meta["modelspec.trigger_phrase"] == "zwx dog"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", meta["modelspec.date"])
    # The hash A1111 shows for the LoRA: sha256 of the tensor data, recomputed from the file.
    assert meta["sshs_model_hash"] == model_hash(path)
    assert re.fullmatch(r"[0-9a-f]{8}", meta["sshs_legacy_hash"])
    assert all(isinstance(v, str) for v in meta.values())


def test_sdxl_metadata(tmp_path):
    path = write_kohya(random_lora(tiny_base_model("sdxl")), tmp_path / "x.safetensors")
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    assert meta["ss_base_model_version"] == "sdxl_base_v1-0" and meta["ss_v2"] == "False"
    assert meta["modelspec.architecture"] == "stable-diffusion-xl-v1-base/lora"
    assert meta["modelspec.implementation"] == "https://github.com/Stability-AI/generative-models"
    assert meta["modelspec.resolution"] == "1024x1024"
    assert "ss_network_args" not in meta


def test_write_is_atomic_and_never_overwrites(tmp_path):
    model = tiny_base_model("sd1")
    path = write_kohya(random_lora(model, seed=1), tmp_path / "a.safetensors")
    before = path.read_bytes()
    with pytest.raises(OutputExistsError):
        write_kohya(random_lora(model, seed=2), path)
    assert path.read_bytes() == before
    write_kohya(random_lora(model, seed=2), path, overwrite=True)
    assert path.read_bytes() != before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.safetensors"]
    with pytest.raises(UserError, match="safetensors"):
        write_kohya(random_lora(model), tmp_path / "a.pt")


def test_family_needed_and_checked(tmp_path):
    model = tiny_base_model("sd1")
    lora = random_lora(model)
    lora.family = None
    with pytest.raises(UserError, match="--family"):
        write_kohya(lora, tmp_path / "a.safetensors")
    with pytest.raises(FamilyError, match="lora_te_"):
        write_kohya(lora, tmp_path / "a.safetensors", family="sdxl")


def test_pt_file_is_read_weights_only(tmp_path):
    model = tiny_base_model("sd1")
    lora = random_lora(model)
    path = write_kohya(lora, tmp_path / "a.safetensors")
    torch.save(load_file(path), tmp_path / "a.pt")
    assert_same_lora(lora, read_lora(tmp_path / "a.pt", family="sd1"))
    torch.save({"x": argparse.Namespace(code="runs on unpickling")}, tmp_path / "evil.pt")
    with pytest.raises(FormatError, match="pickled"):
        read_lora(tmp_path / "evil.pt")


def test_other_files_are_refused(tmp_path):
    save_file({"lora_unet_x.hada_w1_a": torch.zeros(2, 2), "lora_unet_x.hada_w1_b": torch.zeros(2, 2)}, tmp_path / "loha.safetensors")
    with pytest.raises(FormatError, match="LoHa"):
        read_lora(tmp_path / "loha.safetensors")
    save_file({"model.diffusion_model.out.2.weight": torch.zeros(4, 4)}, tmp_path / "checkpoint.safetensors")
    with pytest.raises(FormatError, match="is not a LoRA"):
        read_lora(tmp_path / "checkpoint.safetensors")
    save_file({"lora_unet_x.lora_down.weight": torch.zeros(2, 4)}, tmp_path / "half.safetensors")
    with pytest.raises(FormatError, match="no up weight"):
        read_lora(tmp_path / "half.safetensors")


# ----------------------------------------------------------------------------- peft layout


@pytest.mark.parametrize("family", FAMILIES)
def test_kohya_peft_kohya_is_exact(tmp_path, family):
    model = tiny_base_model(family)
    lora = random_lora(model, conv=True, vary=True)  # alpha ≠ rank, mixed per module
    first = write_kohya(lora, tmp_path / "a.safetensors", metadata={"ss_steps": 42})
    peft_file = convert_lora(first, tmp_path / "b.safetensors", to="peft", base=model)
    keys = load_file(peft_file).keys()
    assert all(re.match(r"(unet|text_encoder|text_encoder_2)\..+\.lora_[AB]\.weight$", k) for k in keys)
    assert any(k.startswith("text_encoder.text_model.encoder.layers.0.") for k in keys)
    second = convert_lora(peft_file, tmp_path / "c.safetensors", to="kohya", base=model)
    a, b = load_file(first), load_file(second)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert_same_lora(lora, read_lora(second))
    with safe_open(str(second), "pt") as f:
        assert f.metadata()["ss_steps"] == "42"


def test_peft_without_base_uses_family_architecture(tmp_path):
    # A full-size SD1 LoRA (rank 1 keeps it small) converts with the shipped architecture alone.
    full = empty_base_model("sd1")
    names = names_for_family("sd1")
    g = torch.Generator().manual_seed(0)
    modules = {}
    for part, root in model_parts(full).items():
        for name in lora_target_modules(root):
            w = root.get_submodule(name).weight
            modules[names.key(part, name)] = LoraModule(torch.randn(1, *w.shape[1:], generator=g), torch.randn(w.shape[0], 1, *w.shape[2:], generator=g), 0.5)
    lora = LoraWeights(modules, full.family)
    kohya = write_kohya(lora, tmp_path / "a.safetensors")
    peft_file = convert_lora(kohya, tmp_path / "b.safetensors", to="peft")
    back = read_lora(peft_file)
    assert back.family.name == "sd1"
    assert_same_lora(lora, back)
    assert len(back.modules) == 264


def test_bare_sdxl_unet_peft_file_is_recognised_and_named_like_kohya(tmp_path):
    # No metadata, no text encoders: the deep transformer blocks say SDXL, whose kohya
    # names are LDM names.
    model = tiny_base_model("sdxl")
    lora = random_lora(model)
    lora.modules = {k: m for k, m in lora.modules.items() if k.startswith("lora_unet_")}
    tensors = load_file(write_peft(lora, tmp_path / "full.safetensors", base=model))
    save_file({k.removeprefix("unet."): v for k, v in tensors.items()}, tmp_path / "bare.safetensors")
    back = read_lora(tmp_path / "bare.safetensors")
    assert back.family.name == "sdxl"
    assert any(k.startswith("lora_unet_input_blocks_4_1_transformer_blocks_1_") for k in back.modules)
    assert set(back.modules) == set(lora.modules)
    assert all(m.alpha == m.rank for m in back.modules.values())  # no alpha anywhere: diffusers' scale 1


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_peft_file_loads_in_diffusers_with_exact_alphas(tmp_path, family):
    model = tiny_base_model(family)
    lora = random_lora(model, conv=True, vary=True)
    path = write_peft(lora, tmp_path / "pytorch_lora_weights.safetensors", base=model)
    pipe = pipeline(model)
    with captured_library_logs() as logs:
        pipe.load_lora_weights(str(path), adapter_name="x")
    assert lora_key_problems(logs.getvalue()) == []
    check_loaded_like(model, lora, "x")


def test_peft_save_pretrained_folder_is_read_with_its_config(tmp_path):
    from peft import LoraConfig, get_peft_model

    model = tiny_base_model("sd1")
    te = model.text_encoders[0]
    targets = lora_target_modules(te)
    config = LoraConfig(r=4, lora_alpha=6, target_modules=targets, rank_pattern={targets[0]: 2}, alpha_pattern={targets[1]: 1.0})
    peft_model = get_peft_model(te, config)
    with torch.no_grad():
        for p in peft_model.parameters():
            if p.requires_grad:
                p.normal_()
    peft_model.save_pretrained(tmp_path / "adapter")
    lora = read_lora(tmp_path / "adapter" / "adapter_model.safetensors", family="sd1")
    assert len(lora.modules) == 12
    from peft.tuners.lora import LoraLayer

    for name, layer in peft_model.named_modules():
        if isinstance(layer, LoraLayer):
            key = "lora_te_text_model_" + name.removeprefix("base_model.model.").removeprefix("text_model.").replace(".", "_")
            mod = lora.modules[key]
            assert mod.scale == pytest.approx(layer.scaling["default"])
            assert torch.allclose(mod.delta(), layer.get_delta_weight("default"))


# ----------------------------------------------------------------------------- diffusers loads our kohya files


@pytest.mark.slow
@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
@pytest.mark.parametrize("conv", [False, True])
def test_kohya_file_loads_in_diffusers_and_changes_outputs(tmp_path, family, conv):
    # One rank/alpha for linear layers (diffusers 0.42 drops per-layer alphas of attention
    # layers in kohya files; A1111 and ComfyUI read them), another for 3×3 convs.
    model = tiny_base_model(family)
    lora = random_lora(model, conv=conv)
    path = write_kohya(lora, tmp_path / "zwx.safetensors")
    unet_before, text_before = unet_output(model), text_outputs(model)
    pipe = pipeline(model)
    with captured_library_logs() as logs:
        pipe.load_lora_weights(str(path), adapter_name="zwx")
    assert lora_key_problems(logs.getvalue()) == []
    check_loaded_like(model, lora, "zwx")
    assert not torch.allclose(unet_output(model), unet_before, atol=1e-4)
    for after, before in zip(text_outputs(model), text_before):
        assert not torch.allclose(after, before, atol=1e-4)


# ----------------------------------------------------------------------------- from a peft-trained model


@pytest.mark.slow
@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_lora_from_peft_model_saves_what_peft_applies(tmp_path, family):
    from peft import LoraConfig, inject_adapter_in_model
    from peft.tuners.lora import LoraLayer

    trained = tiny_base_model(family)
    for i, root in enumerate(model_parts(trained).values()):
        targets = lora_target_modules(root, conv=True)
        config = LoraConfig(r=4, lora_alpha=8, target_modules=targets, rank_pattern={targets[0]: 2}, alpha_pattern={targets[-1]: 3}, use_rslora=i == 1)
        inject_adapter_in_model(config, root)
    torch.manual_seed(1)
    with torch.no_grad():
        for root in model_parts(trained).values():
            for layer in root.modules():
                if isinstance(layer, LoraLayer):
                    layer.lora_B["default"].weight.normal_(std=0.3)
    lora = lora_from_peft_model(trained.unet, trained.text_encoders, family)
    names = names_for_model_cached(trained)
    count = 0
    for part, root in model_parts(trained).items():
        for name, layer in root.named_modules():
            if isinstance(layer, LoraLayer):
                count += 1
                mod = lora.modules[names.key(part, name)]
                assert torch.allclose(mod.delta(), layer.get_delta_weight("default"), atol=1e-6)
    assert count == len(lora.modules)

    # Mixed alphas (alpha_pattern, rsLoRA) survive: merged from the kohya file, and loaded
    # by diffusers from the peft file, both reproduce the peft-trained outputs.
    from dreambooth_core.formats.lora_tools import merge_loras

    kohya = write_kohya(lora, tmp_path / "trained.safetensors")
    merged = merge_loras(tiny_base_model(family), [(read_lora(kohya), 1.0)])
    loaded = tiny_base_model(family)
    pipeline(loaded).load_lora_weights(str(write_peft(read_lora(kohya), tmp_path / "peft.safetensors", base=merged)))
    for other in (merged, loaded):
        assert torch.allclose(unet_output(other), unet_output(trained), atol=1e-5)
        for a, b in zip(text_outputs(other), text_outputs(trained)):
            assert torch.allclose(a, b, atol=1e-5)


# ----------------------------------------------------------------------------- wrong family


def test_lora_for_another_family_is_a_clear_error():
    sd1 = tiny_base_model("sd1")
    sdxl_lora = random_lora(tiny_base_model("sdxl"))
    matched, unmatched = match_report(sdxl_lora, sd1)
    # The SDXL mid block has the LDM name and (in these tiny models) the shapes of SD1's.
    assert matched and all(k.startswith("lora_unet_middle_block_1_") for k in matched)
    assert len(matched) + len(unmatched) == len(sdxl_lora.modules)
    n = len(sdxl_lora.modules)
    with pytest.raises(FamilyError, match=rf"{len(matched)} of {n} LoRA modules match this Stable Diffusion 1.x model; the LoRA looks like Stable Diffusion XL"):
        require_match(sdxl_lora, sd1)
    sd1_lora = random_lora(sd1)
    with pytest.raises(FamilyError, match=rf"0 of {len(sd1_lora.modules)} LoRA modules match this Stable Diffusion XL base model; the LoRA looks like Stable Diffusion 1.x"):
        require_match(sd1_lora, tiny_base_model("sdxl"))


def test_full_size_sd2_lora_on_sd1_counts_the_matches():
    # Same key names, different widths: only layers whose shapes also fit count as matches.
    sd1, sd2 = empty_base_model("sd1"), empty_base_model("sd2")
    names = names_for_model(sd2)
    modules = {}
    for part, root in model_parts(sd2).items():
        for name in lora_target_modules(root):
            w = root.get_submodule(name).weight
            modules[names.key(part, name)] = LoraModule(torch.zeros(1, *w.shape[1:]), torch.zeros(w.shape[0], 1, *w.shape[2:]), 1.0)
    lora = LoraWeights(modules, None)  # family guessed from the tensors
    matched, unmatched = match_report(lora, sd1)
    # SD2's proj_in/out are Linear where SD1 has 1×1 convs of the same width: those still fit.
    assert len(matched) == 160 and len(unmatched) == 170
    assert all("_attn2_to_k" in k or "_attn2_to_v" in k or k.startswith("lora_te_") for k in unmatched)
    with pytest.raises(FamilyError, match=rf"{len(matched)} of 330 LoRA modules match this Stable Diffusion 1.x model; the LoRA looks like Stable Diffusion 2.x"):
        require_match(lora, sd1)


def test_partial_match_within_the_family_warns(caplog):
    model = tiny_base_model("sd1")
    lora = random_lora(model)
    lora.modules["lora_unet_no_such_layer"] = next(iter(lora.modules.values()))
    with caplog.at_level(logging.WARNING, logger="dreambooth_core.formats.lora"):
        matched = require_match(lora, model)
    assert len(matched) == len(lora.modules) - 1
    assert f"{len(matched)} of {len(lora.modules)} LoRA modules match" in caplog.text
    assert "lora_unet_no_such_layer" in caplog.text
