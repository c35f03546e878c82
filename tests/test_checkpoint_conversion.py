"""Single-file LDM ⇄ diffusers: real key names, exact round trips, clear refusals."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from diffusers.loaders.single_file_utils import (
    convert_ldm_clip_checkpoint,
    convert_ldm_unet_checkpoint,
    convert_ldm_vae_checkpoint,
    convert_open_clip_checkpoint,
    infer_diffusers_model_type,
)
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from dreambooth_core.cli import main
from dreambooth_core.errors import FamilyError, FormatError, OutputExistsError
from dreambooth_core.formats.checkpoint import component_rules, ldm_state_dict, model_components, text_encoder_layouts
from dreambooth_core.formats.unet_layout import diffusers_to_ldm_unet_key, ldm_to_diffusers_unet_key, unet_module_map
from dreambooth_core.models.detect import detect_family
from dreambooth_core.models.configs import CONFIGS_METADATA_KEY, empty_base_model, model_configs
from dreambooth_core.models.load import load_base_model
from dreambooth_core.models.save import save_diffusers, save_single_file
from dreambooth_core.models.tiny import tiny_base_model
from dreambooth_core.toy.model import build_toy_model

# sd1 is the fast case; the other families repeat the same mechanics at a few seconds each.
FAMILIES = ["sd1", *(pytest.param(f, marks=pytest.mark.slow) for f in ("sd2", "sd2-v", "sdxl"))]
LAYOUTS = ["sd1", "sd2", "sdxl"]


@pytest.fixture(scope="module")
def tiny():
    cache: dict = {}
    return lambda name: cache.setdefault(name, tiny_base_model(name, seed=1))


@pytest.fixture(scope="module")
def full():
    """Full-size models on the meta device (no weights)."""
    cache: dict = {}
    return lambda name: cache.setdefault(name, empty_base_model(name))


def shapes_of(model) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in ldm_state_dict(model).items()}


def assert_same_components(a, b) -> None:
    comps_b = model_components(b)
    for name, module in model_components(a).items():
        sa, sb = module.state_dict(), comps_b[name].state_dict()
        assert sa.keys() == sb.keys(), name
        for k in sa:
            assert sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]), f"{name}.{k}"


def with_text_model(key: str) -> str:
    return key if key.startswith(("text_model.", "text_projection")) else f"text_model.{key}"


# ------------------------------------------------------------ key layout, full size (meta)

@pytest.mark.parametrize("family", LAYOUTS)
def test_full_size_unet_map_is_bijective_and_agrees_with_diffusers(full, family):
    unet = full(family).unet
    sd = unet.state_dict()
    to_ldm = {diffusers_to_ldm_unet_key(k, unet.config): k for k in sd}
    assert len(to_ldm) == len(sd)
    assert {ldm_to_diffusers_unet_key(k, unet.config) for k in to_ldm} == set(sd)
    # diffusers' own LDM→diffusers converter is an independent reading of the real layout.
    converted = convert_ldm_unet_checkpoint({f"model.diffusion_model.{k}": sd[v] for k, v in to_ldm.items()}, dict(unet.config))
    assert set(converted) == set(sd)
    assert all(converted[k].shape == sd[k].shape for k in sd)


@pytest.mark.parametrize("family", LAYOUTS)
def test_full_size_single_file_keys_are_unique_and_recognised_by_diffusers(full, family):
    model = full(family)
    for name, module in model_components(model).items():  # every tensor in exactly one rule
        sources = [s for rule in component_rules(name, module, model.family) for s in rule.sources]
        assert sorted(sources) == sorted(module.state_dict()), name
    n_tensors = sum(len(m.state_dict()) for m in model_components(model).values())
    shapes = shapes_of(model)
    fused = sum(1 for k in shapes if k.endswith(("in_proj_weight", "in_proj_bias")))
    assert len(shapes) == n_tensors - 2 * fused  # one key per tensor, q/k/v fused in threes
    expected = {"sd1": "v1", "sd2": "v2", "sdxl": "xl_base"}[family]
    assert infer_diffusers_model_type({k: torch.empty(s, device="meta") for k, s in shapes.items()}) == expected


REAL_KEYS = {
    "sd1": {
        "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": (320, 768),
        "model.diffusion_model.input_blocks.1.0.in_layers.2.weight": (320, 320, 3, 3),
        "model.diffusion_model.input_blocks.1.0.emb_layers.1.weight": (320, 1280),
        "model.diffusion_model.input_blocks.3.0.op.weight": (320, 320, 3, 3),
        "model.diffusion_model.input_blocks.4.0.skip_connection.weight": (640, 320, 1, 1),
        "model.diffusion_model.middle_block.1.proj_in.weight": (1280, 1280, 1, 1),
        "model.diffusion_model.middle_block.2.out_layers.3.weight": (1280, 1280, 3, 3),
        "model.diffusion_model.output_blocks.2.1.conv.weight": (1280, 1280, 3, 3),
        "model.diffusion_model.output_blocks.5.2.conv.weight": (1280, 1280, 3, 3),
        "model.diffusion_model.output_blocks.8.2.conv.weight": (640, 640, 3, 3),
        "model.diffusion_model.output_blocks.11.1.transformer_blocks.0.ff.net.0.proj.weight": (2560, 320),
        "model.diffusion_model.time_embed.0.weight": (1280, 320),
        "model.diffusion_model.out.0.weight": (320,),
        "model.diffusion_model.out.2.weight": (4, 320, 3, 3),
        "first_stage_model.encoder.down.0.downsample.conv.weight": (128, 128, 3, 3),
        "first_stage_model.encoder.mid.attn_1.q.weight": (512, 512, 1, 1),
        "first_stage_model.encoder.norm_out.weight": (512,),
        "first_stage_model.decoder.up.3.block.0.conv1.weight": (512, 512, 3, 3),
        "first_stage_model.decoder.up.3.upsample.conv.weight": (512, 512, 3, 3),
        "first_stage_model.decoder.up.0.block.0.nin_shortcut.weight": (128, 256, 1, 1),
        "first_stage_model.decoder.mid.attn_1.proj_out.weight": (512, 512, 1, 1),
        "first_stage_model.quant_conv.weight": (8, 8, 1, 1),
        "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight": (49408, 768),
        "cond_stage_model.transformer.text_model.encoder.layers.11.self_attn.q_proj.weight": (768, 768),
        "cond_stage_model.transformer.text_model.final_layer_norm.weight": (768,),
    },
    "sd2": {
        "model.diffusion_model.input_blocks.1.1.proj_in.weight": (320, 320),
        "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": (320, 1024),
        "cond_stage_model.model.token_embedding.weight": (49408, 1024),
        "cond_stage_model.model.positional_embedding": (77, 1024),
        "cond_stage_model.model.transformer.resblocks.0.ln_1.weight": (1024,),
        "cond_stage_model.model.transformer.resblocks.22.attn.in_proj_weight": (3072, 1024),
        "cond_stage_model.model.transformer.resblocks.22.attn.in_proj_bias": (3072,),
        "cond_stage_model.model.transformer.resblocks.22.attn.out_proj.weight": (1024, 1024),
        "cond_stage_model.model.transformer.resblocks.22.mlp.c_fc.weight": (4096, 1024),
        "cond_stage_model.model.transformer.resblocks.22.mlp.c_proj.weight": (1024, 4096),
        "cond_stage_model.model.ln_final.bias": (1024,),
    },
    "sdxl": {
        "model.diffusion_model.label_emb.0.0.weight": (1280, 2816),
        "model.diffusion_model.label_emb.0.2.weight": (1280, 1280),
        "model.diffusion_model.input_blocks.3.0.op.weight": (320, 320, 3, 3),
        "model.diffusion_model.input_blocks.4.1.transformer_blocks.1.attn1.to_q.weight": (640, 640),
        "model.diffusion_model.input_blocks.7.1.transformer_blocks.9.attn2.to_k.weight": (1280, 2048),
        "model.diffusion_model.middle_block.1.transformer_blocks.9.ff.net.2.weight": (1280, 5120),
        "model.diffusion_model.output_blocks.2.2.conv.weight": (1280, 1280, 3, 3),
        "model.diffusion_model.output_blocks.5.2.conv.weight": (640, 640, 3, 3),
        "model.diffusion_model.output_blocks.6.0.skip_connection.weight": (320, 960, 1, 1),
        "first_stage_model.decoder.up.3.block.0.conv1.weight": (512, 512, 3, 3),
        "conditioner.embedders.0.transformer.text_model.encoder.layers.11.mlp.fc2.weight": (768, 3072),
        "conditioner.embedders.1.model.text_projection": (1280, 1280),
        "conditioner.embedders.1.model.positional_embedding": (77, 1280),
        "conditioner.embedders.1.model.transformer.resblocks.31.attn.in_proj_weight": (3840, 1280),
        "conditioner.embedders.1.model.ln_final.weight": (1280,),
    },
}


@pytest.mark.parametrize("family", LAYOUTS)
def test_full_size_names_and_shapes_match_real_checkpoints(full, family):
    shapes = shapes_of(full(family))
    for key, shape in REAL_KEYS[family].items():
        assert shapes.get(key) == shape, key
    # Levels without attention put the upsampler at .1, never at .2 (and vice versa).
    assert "model.diffusion_model.output_blocks.2.2.conv.weight" not in shapes or family == "sdxl"
    if family == "sd2":  # diffusers keeps 23 of OpenCLIP-H's 24 layers; the 24th is an extra.
        assert not any(".resblocks.23." in k for k in shapes)


def test_module_map_serves_kohya_sdxl_module_names(full):
    cfg = full("sdxl").unet.config
    assert unet_module_map(cfg)["down_blocks.1.attentions.0"] == "input_blocks.4.1"
    name = diffusers_to_ldm_unet_key("down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q", cfg)
    assert "lora_unet_" + name.replace(".", "_") == "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q"
    assert diffusers_to_ldm_unet_key("up_blocks.0.resnets.2.conv_shortcut", cfg) == "output_blocks.2.0.skip_connection"
    assert diffusers_to_ldm_unet_key("mid_block.resnets.1.time_emb_proj.bias", cfg) == "middle_block.2.emb_layers.1.bias"
    assert ldm_to_diffusers_unet_key("output_blocks.2.2.conv", cfg) == "up_blocks.0.upsamplers.0.conv"
    with pytest.raises(KeyError):
        diffusers_to_ldm_unet_key("not_a_block.0", cfg)


# ------------------------------------------------------------ values, tiny models (diffusers as oracle)

def oracle_check(model) -> None:
    """diffusers' own single-file converters put every tensor of our LDM dict where it came from."""
    sd = ldm_state_dict(model)
    unet = convert_ldm_unet_checkpoint(sd, dict(model.unet.config))
    vae = convert_ldm_vae_checkpoint({k: v for k, v in sd.items() if k.startswith("first_stage_model.")}, dict(model.vae.config))
    for ours, theirs in ((model.unet.state_dict(), unet), (model.vae.state_dict(), vae)):
        assert ours.keys() == theirs.keys()
        assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    for te, (prefix, layout) in zip(model.text_encoders, text_encoder_layouts(model.family)):
        theirs = convert_open_clip_checkpoint(te, sd, prefix) if layout == "openclip" else convert_ldm_clip_checkpoint(sd)
        ours = {with_text_model(k): v for k, v in te.state_dict().items()}
        assert ours.keys() == theirs.keys()
        assert all(torch.equal(ours[k], theirs[k]) for k in ours)


@pytest.mark.parametrize("family", LAYOUTS)
def test_tiny_ldm_tensors_agree_with_diffusers_converters(tiny, family):
    oracle_check(tiny(family))


def test_toy_model_with_other_levels_agrees_with_diffusers_and_round_trips(tmp_path):
    toy = build_toy_model(seed=3)  # three levels, one resnet per level, three-level VAE
    oracle_check(toy)
    path = save_single_file(toy, tmp_path / "toy.safetensors", dtype="fp32")
    assert_same_components(toy, load_base_model(path))


# ------------------------------------------------------------ exact round trips through files

@pytest.mark.parametrize("family", FAMILIES)
def test_diffusers_to_single_file_to_diffusers_is_exact(tiny, tmp_path, family):
    first = save_diffusers(tiny(family), tmp_path / "first", dtype="fp32")
    single = save_single_file(load_base_model(first), tmp_path / "model.safetensors", dtype="fp32")
    loaded = load_base_model(single)
    assert loaded.family.name == family
    second = save_diffusers(loaded, tmp_path / "second", dtype="fp32")
    assert_same_components(tiny(family), load_base_model(second))
    for weights in sorted(first.glob("*/*.safetensors")):
        a, b = load_file(weights), load_file(second / weights.relative_to(first))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), weights


def source_with_extras(model) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """A single file as the wild has them: tensors no diffusers component holds, fp16 weights."""
    g = torch.Generator().manual_seed(0)
    sd = {k: v.clone() for k, v in ldm_state_dict(model, torch.float16).items()}
    extras = {
        "alphas_cumprod": torch.rand(1000, generator=g),
        "model_ema.decay": torch.tensor(0.9999),
        "model_ema.num_updates": torch.tensor(1234, dtype=torch.int32),
        "model_ema.diffusion_modelinput_blocks00weight": torch.rand(32, 4, 3, 3, generator=g).half(),
    }
    if model.family.is_v2:  # OpenCLIP-H's last layer, which SD2 never uses, plus its projection
        layers = model.text_encoders[0].config.num_hidden_layers
        for k in [k for k in sd if ".resblocks.0." in k]:
            extras[k.replace(".resblocks.0.", f".resblocks.{layers}.")] = torch.rand(sd[k].shape, generator=g).half()
        extras["cond_stage_model.model.text_projection"] = torch.rand(32, 16, generator=g).half()
        extras["cond_stage_model.model.logit_scale"] = torch.tensor(4.6052)
    elif model.family.is_sdxl:
        extras["conditioner.embedders.1.model.logit_scale"] = torch.tensor(4.6052)
        extras["conditioner.embedders.0.transformer.text_model.embeddings.position_ids"] = torch.arange(77)[None]
    else:
        extras["cond_stage_model.transformer.text_model.embeddings.position_ids"] = torch.arange(77)[None]
    assert not extras.keys() & sd.keys()
    metadata = {
        CONFIGS_METADATA_KEY: json.dumps(model_configs(model), sort_keys=True),
        "modelspec.architecture": model.family.modelspec_arch,
        "modelspec.title": "wild model",
        "merged_from": "somebody's recipe",
    }
    return {**sd, **extras}, metadata


@pytest.mark.parametrize("family", FAMILIES)
def test_single_file_to_diffusers_to_single_file_reproduces_every_tensor(tiny, tmp_path, family):
    tensors, metadata = source_with_extras(tiny(family))
    src = tmp_path / "wild.safetensors"
    save_file(tensors, str(src), metadata=metadata)
    assert main(["convert", str(src), str(tmp_path / "wild_diffusers")]) == 0
    assert (tmp_path / "wild_diffusers" / "ldm_extras.safetensors").is_file()
    assert main(["convert", str(tmp_path / "wild_diffusers"), str(tmp_path / "back.safetensors")]) == 0
    back = load_file(tmp_path / "back.safetensors")
    assert back.keys() == tensors.keys()
    for k, v in tensors.items():
        assert back[k].dtype == v.dtype and torch.equal(back[k], v), k
    with safe_open(str(tmp_path / "back.safetensors"), "pt") as f:
        meta = f.metadata()
    for k, v in metadata.items():
        assert (json.loads(meta[k]) == json.loads(v)) if k == CONFIGS_METADATA_KEY else meta[k] == v, k


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_convert_keeps_the_source_precision_unless_told(tiny, tmp_path, family, capsys):
    """fp32 single file → diffusers → single file, no --dtype: every tensor bit for bit and in
    fp32; an fp16 source stays fp16; --dtype still chooses."""
    src = save_single_file(tiny(family), tmp_path / "full.safetensors", dtype="fp32")
    assert main(["convert", str(src), str(tmp_path / "folder")]) == 0
    assert "fp32, as stored in the source" in capsys.readouterr().out
    assert main(["convert", str(tmp_path / "folder"), str(tmp_path / "back.safetensors")]) == 0
    assert "fp32, as stored in the source" in capsys.readouterr().out
    original, back = load_file(src), load_file(tmp_path / "back.safetensors")
    assert back.keys() == original.keys()
    for k, v in original.items():
        assert back[k].dtype == v.dtype and torch.equal(back[k], v), k
    assert main(["convert", str(src), str(tmp_path / "half.safetensors"), "--dtype", "fp16"]) == 0
    assert "fp16)" in capsys.readouterr().out
    assert main(["convert", str(tmp_path / "half.safetensors"), str(tmp_path / "half_folder")]) == 0
    assert "fp16, as stored" in capsys.readouterr().out
    assert load_file(tmp_path / "half_folder" / "unet" / "diffusion_pytorch_model.safetensors")["conv_in.weight"].dtype == torch.float16


def test_fp16_and_bf16_output_cast_weights_but_keep_extras(tiny, tmp_path):
    model = tiny("sd2")
    model.extras = {"alphas_cumprod": torch.rand(1000, dtype=torch.float64)}
    try:
        for dtype, torch_type in (("fp16", torch.float16), ("bf16", torch.bfloat16)):
            out = load_file(save_single_file(model, tmp_path / f"{dtype}.safetensors", dtype=dtype))
            reference = ldm_state_dict(model)
            assert out["alphas_cumprod"].dtype == torch.float64
            for k, v in reference.items():
                if k != "alphas_cumprod":
                    assert out[k].dtype == torch_type and torch.equal(out[k], v.to(torch_type)), k
        loaded = load_base_model(tmp_path / "fp16.safetensors", dtype="fp16")
        assert {p.dtype for m in model_components(loaded).values() for p in m.parameters()} == {torch.float16}
    finally:
        model.extras = {}


# ------------------------------------------------------------ detection and refusals

@pytest.fixture(scope="module")
def full_shapes(full):
    cache: dict = {}
    return lambda name: dict(cache.setdefault(name, shapes_of(full(name))))


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_detects_sd1_and_sdxl_from_layout(full_shapes, family):
    assert detect_family(full_shapes(family), {}, None).name == family


def test_sd2_prediction_type_comes_from_hints(full_shapes, tmp_path, caplog):
    shapes = full_shapes("sd2")
    with caplog.at_level(logging.WARNING):
        assert detect_family(shapes, {}, None).name == "sd2"
    assert "assuming epsilon" in caplog.text
    assert detect_family(shapes, {"modelspec.prediction_type": "v"}, None).name == "sd2-v"
    assert detect_family(shapes, {"modelspec.architecture": "stable-diffusion-v2-768-v"}, None).name == "sd2-v"
    yaml = tmp_path / "model.yaml"
    yaml.write_text('model:\n  params:\n    parameterization: "v"\n    linear_start: 0.00085\n')
    assert detect_family(shapes, {}, yaml).name == "sd2-v"
    yaml.write_text("model:\n  params:\n    linear_start: 0.00085\n")
    caplog.clear()
    assert detect_family(shapes, {}, yaml).name == "sd2"
    assert not caplog.text
    assert detect_family(shapes, {}, None, requested="sd2-v").name == "sd2-v"


def test_requested_family_must_match_layout(full_shapes):
    with pytest.raises(FamilyError, match="XL base model, but the family 'sd1' was requested"):
        detect_family(full_shapes("sdxl"), {}, None, requested="sd1")
    assert detect_family(full_shapes("sdxl"), {"modelspec.prediction_type": "v"}, None).name == "sdxl-v"
    assert detect_family({**full_shapes("sdxl"), "v_pred": (0,)}, {}, None).name == "sdxl-v"   # ComfyUI's marker
    with pytest.raises(FamilyError, match="v-prediction Stable Diffusion 1.x model, which is not supported"):
        detect_family(full_shapes("sd1"), {"modelspec.prediction_type": "v"}, None)


def test_refuses_variants_we_cannot_train(full_shapes):
    inpaint = full_shapes("sd1")
    inpaint["model.diffusion_model.input_blocks.0.0.weight"] = (320, 9, 3, 3)
    with pytest.raises(FamilyError, match="inpainting"):
        detect_family(inpaint, {}, None)
    inpaint["model.diffusion_model.input_blocks.0.0.weight"] = (320, 8, 3, 3)
    with pytest.raises(FamilyError, match="instruct-pix2pix"):
        detect_family(inpaint, {}, None)
    depth = full_shapes("sd2")
    depth["depth_model.model.pretrained.act_postprocess3.0.project.0.bias"] = (256,)
    with pytest.raises(FamilyError, match="depth"):
        detect_family(depth, {}, None)
    refiner = {
        k.replace("conditioner.embedders.1.", "conditioner.embedders.0."): v
        for k, v in full_shapes("sdxl").items() if not k.startswith("conditioner.embedders.0.")
    }
    with pytest.raises(FamilyError, match="SDXL refiner"):
        detect_family(refiner, {}, None)


def test_refuses_files_that_are_not_checkpoints(full_shapes):
    with pytest.raises(FormatError, match="not a Stable Diffusion checkpoint: found keys like alpha, beta.weight"):
        detect_family({"beta.weight": (3,), "alpha": (1,)}, {}, None)
    lora = {"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": (4, 320), "lora_unet_down_blocks_0_attentions_0_proj_in.alpha": ()}
    with pytest.raises(FormatError, match="is a LoRA, not a checkpoint"):
        detect_family(lora, {}, None)
    with pytest.raises(FormatError, match="is a LoRA, not a checkpoint"):
        detect_family({"unet.down_blocks.0.attentions.0.proj_in.lora_A.weight": (4, 320)}, {}, None)
    with pytest.raises(FormatError, match="embedding"):
        detect_family({"emb_params": (2, 768)}, {}, None)
    unet_only = {k: v for k, v in full_shapes("sd1").items() if k.startswith(("model.", "first_stage_model."))}
    with pytest.raises(FormatError, match="no text encoder"):
        detect_family(unet_only, {}, None)


# ------------------------------------------------------------ bad files, outputs, CLI

def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_truncated_or_garbage_file_is_a_format_error_and_writes_nothing(tiny, tmp_path, capsys):
    good = save_single_file(tiny("sd1"), tmp_path / "good.safetensors", dtype="fp32")
    data = good.read_bytes()
    cases = {"truncated.safetensors": data[: len(data) // 2], "garbage.safetensors": b"\x00\xff" * 100, "empty.safetensors": b""}
    for name, content in cases.items():
        bad = tmp_path / name
        bad.write_bytes(content)
        with pytest.raises(FormatError):
            load_base_model(bad)
        for out in ("out.safetensors", "out_folder"):
            assert main(["convert", str(bad), str(tmp_path / out)]) == 1
            err = capsys.readouterr().err.strip()
            assert err.startswith("error: ") and "\n" not in err, err
            assert not (tmp_path / out).exists()
    assert leftovers(tmp_path) == []


def test_lora_file_and_incomplete_diffusers_folder_are_refused(tiny, tmp_path):
    lora = tmp_path / "zwx.safetensors"
    save_file({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 32)}, str(lora))
    with pytest.raises(FormatError, match="is a LoRA, not a checkpoint"):
        load_base_model(lora)
    folder = save_diffusers(tiny("sd1"), tmp_path / "folder", dtype="fp32")
    text_weights = folder / "text_encoder" / "model.safetensors"
    text_weights.write_bytes(text_weights.read_bytes()[:1000])
    with pytest.raises(FormatError, match="text_encoder cannot be loaded"):
        load_base_model(folder)
    (folder / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(FormatError, match="no diffusion_pytorch_model"):
        load_base_model(folder)
    assert main(["convert", str(folder), str(tmp_path / "x.safetensors")]) == 1
    assert not (tmp_path / "x.safetensors").exists()


def test_existing_outputs_are_kept_unless_overwrite(tiny, tmp_path):
    model = tiny("sd1")
    src = save_single_file(model, tmp_path / "src.safetensors", dtype="fp32")
    out = tmp_path / "out.safetensors"
    out.write_bytes(b"precious")
    with pytest.raises(OutputExistsError):
        save_single_file(model, out)
    assert main(["convert", str(src), str(out)]) == 1
    assert out.read_bytes() == b"precious"
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "keep.txt").write_text("x")
    with pytest.raises(OutputExistsError):
        save_diffusers(model, folder)
    assert main(["convert", str(src), str(folder)]) == 1
    assert [p.name for p in folder.iterdir()] == ["keep.txt"]
    assert main(["convert", str(src), str(out), "--overwrite"]) == 0
    assert main(["convert", str(src), str(folder), "--overwrite"]) == 1   # not a folder we wrote: never replaced
    assert [p.name for p in folder.iterdir()] == ["keep.txt"]
    ours = tmp_path / "ours"
    assert main(["convert", str(src), str(ours)]) == 0
    (ours / "stale.txt").write_text("x")
    assert main(["convert", str(src), str(ours), "--overwrite"]) == 0
    assert (ours / "model_index.json").is_file() and not (ours / "stale.txt").exists()
    assert_same_components(load_base_model(out), load_base_model(ours))
    assert leftovers(tmp_path) == []


def test_cli_exit_codes_and_target_inference(tiny, tmp_path, capsys):
    src = save_single_file(tiny("sdxl"), tmp_path / "src.safetensors", dtype="fp32")
    assert main(["convert", str(src), str(tmp_path / "as_folder"), "--dtype", "fp32"]) == 0
    assert "wrote" in capsys.readouterr().out
    assert (tmp_path / "as_folder" / "text_encoder_2" / "model.safetensors").is_file()
    assert main(["convert", str(src), str(tmp_path / "explicit"), "--to", "diffusers"]) == 0
    assert main(["convert", str(src), str(tmp_path / "model.ckpt")]) == 1
    assert main(["convert", str(src), str(tmp_path / "x.safetensors"), "--family", "sd1"]) == 1
    assert main(["convert", str(tmp_path / "missing.safetensors"), str(tmp_path / "y.safetensors")]) == 1
    assert main(["convert", str(src), str(src), "--overwrite"]) == 1
    with pytest.raises(SystemExit) as usage:
        main(["convert", str(src)])
    assert usage.value.code == 2
    assert not (tmp_path / "x.safetensors").exists() and not (tmp_path / "model.ckpt").exists()
