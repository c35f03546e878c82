"""Single files whose UNet is trimmed load with the structure read from their tensors, as the
hosts load them: SD1/SD2 with fewer levels or res blocks, deeper transformers or no mid block;
SDXL with fewer transformer blocks, uneven from block to block (SSD-1B, Vega)."""
from __future__ import annotations

import copy
import json
import re

import pytest
import torch
from safetensors.torch import save_file

from dreambooth_core.errors import FamilyError
from dreambooth_core.families import get_family
from dreambooth_core.formats.checkpoint import ldm_state_dict
from dreambooth_core.models.configs import empty_base_model, shipped_configs
from dreambooth_core.models.load import load_base_model
from dreambooth_core.models.shapes import unet_config_from_shapes

TRIMMED = {   # standard SD1 widths, two levels of one res block, depth-2 transformers, no mid block
    "block_out_channels": [320, 640], "layers_per_block": 1, "transformer_layers_per_block": [2, 2],
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D"], "mid_block_type": None,
}


def configs_with(family: str, **unet) -> dict:
    configs = shipped_configs(get_family(family))
    configs["unet"] = {**configs["unet"], **unet}
    return configs


def ldm_shapes(family: str, configs: dict) -> dict[str, tuple[int, ...]]:
    """The single-file key layout and shapes of a model of `configs`, at no memory cost."""
    return {k: tuple(v.shape) for k, v in ldm_state_dict(empty_base_model(family, configs)).items()}


@pytest.mark.parametrize("family", ["sd1", "sd2-v", "sdxl"])
def test_standard_models_read_as_their_family_config(family):
    standard = shipped_configs(get_family(family))["unet"]
    assert unet_config_from_shapes(ldm_shapes(family, shipped_configs(get_family(family))), standard, get_family(family), "f") == standard


@pytest.mark.parametrize("family, unet", [
    ("sd1", TRIMMED),
    ("sd1", {"layers_per_block": [2, 1, 1, 2]}),                               # BK-SDM style: res blocks removed
    ("sd1", {"block_out_channels": [320, 640, 1280], "down_block_types": ["CrossAttnDownBlock2D"] * 2 + ["DownBlock2D"],
             "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 2}),
    ("sd2-v", {"block_out_channels": [320, 640], "attention_head_dim": [5, 10],
               "down_block_types": ["CrossAttnDownBlock2D"] * 2, "up_block_types": ["CrossAttnUpBlock2D"] * 2}),
])
def test_trimmed_unets_are_read_from_their_shapes(family, unet):
    configs = configs_with(family, **unet)
    derived = unet_config_from_shapes(ldm_shapes(family, configs), shipped_configs(get_family(family))["unet"],
                                      get_family(family), "f")
    assert derived == configs["unet"]


SSD1B_LIKE = {   # ComfyUI's SSD-1B depths [0, 0, 2, 2, 4, 4] on the down side, another order going up, one res block mid
    "mid_block_type": "UNetMidBlock2D", "transformer_layers_per_block": [[1, 1], [2, 2], [4, 4]],
    "reverse_transformer_layers_per_block": [[4, 4, 10], [2, 1, 1], [1, 1, 1]],
}
VEGA_LIKE = {"transformer_layers_per_block": [1, 1, 2]}   # ComfyUI's Segmind Vega: [0, 0, 1, 1, 2, 2]


@pytest.mark.parametrize("unet", [SSD1B_LIKE, VEGA_LIKE], ids=["ssd-1b", "vega"])
def test_trimmed_sdxl_unets_are_read_from_their_shapes(unet):
    configs = configs_with("sdxl", **unet)
    derived = unet_config_from_shapes(ldm_shapes("sdxl", configs), shipped_configs(get_family("sdxl"))["unet"],
                                      get_family("sdxl"), "f")
    assert derived == configs["unet"]


def test_a_mid_block_diffusers_cannot_build_is_refused_naming_its_depth():
    shapes = ldm_shapes("sdxl", shipped_configs(get_family("sdxl")))
    shapes = {k: v for k, v in shapes.items() if ".middle_block.1.transformer_blocks.9." not in k}
    with pytest.raises(FamilyError, match=r"mid block's transformer depth 9 differs from the depth 10"):
        unet_config_from_shapes(shapes, shipped_configs(get_family("sdxl"))["unet"], get_family("sdxl"), "f")


def test_what_diffusers_cannot_build_is_refused_naming_what_was_found():
    shapes = ldm_shapes("sd1", configs_with("sd1", **TRIMMED))
    # drop the last up block: the up side no longer mirrors the down side
    shapes = {k: v for k, v in shapes.items() if not k.startswith("model.diffusion_model.output_blocks.3.")}
    with pytest.raises(FamilyError, match=r"3 up blocks .*level 0: 1 res blocks of 320 channels, transformer depths \[2\]"):
        unet_config_from_shapes(shapes, shipped_configs(get_family("sd1"))["unet"], get_family("sd1"), "f")


def write_checkpoint(path, configs, seed=0) -> None:
    """A full-width SD1 single file (real CLIP-L and VAE sizes) in the LDM layout, random
    weights in fp16, no configs in its metadata: what a trimmed model from elsewhere looks like."""
    model = empty_base_model("sd1", configs)
    g = torch.Generator().manual_seed(seed)
    for module in (model.unet, model.vae, *model.text_encoders):
        module.to_empty(device="cpu")
        for p in module.parameters():
            p.data.copy_(torch.randn(p.shape, generator=g) * 0.02)
    for module in model.text_encoders:  # positions are a buffer: 0..76
        for name, buffer in module.named_buffers():
            if name.endswith("position_ids"):
                buffer.copy_(torch.arange(buffer.shape[-1]).expand_as(buffer))
    save_file({k: v.to(torch.float16).contiguous() for k, v in ldm_state_dict(model).items()}, str(path))


@pytest.mark.slow
@pytest.mark.parametrize("method", ["lora", "dreambooth", "textual_inversion", "hypernetwork"])
def test_a_trimmed_sd1_checkpoint_trains_with_every_method(tmp_path_factory, method):
    from test_train_support import tiny_config, train

    root = tmp_path_factory.getbasetemp() / "trimmed"
    path = root / "trimmed_sd1.safetensors"
    if not path.exists():
        root.mkdir(exist_ok=True)
        write_checkpoint(path, configs_with("sd1", **TRIMMED))
    model = load_base_model(path)
    assert model.family.name == "sd1" and list(model.unet.config.block_out_channels) == [320, 640]
    assert model.unet.mid_block is None and not [k for k in model.extras if k.startswith("model.diffusion_model.")]
    before = copy.deepcopy(model.unet.state_dict()) if method == "dreambooth" else None
    tmp = tmp_path_factory.mktemp(method)
    cfg = tiny_config(tmp, method=method, max_train_steps=1, learning_rate=1e-3, save_dtype="fp32")
    result, _, trained = train(cfg, model=model)
    assert result.status == "completed" and result.outputs
    if method == "dreambooth":
        saved = load_base_model(result.outputs[0].path)
        assert list(saved.unet.config.block_out_channels) == [320, 640]
        changed = [k for k, v in trained.unet.state_dict().items() if not torch.equal(v, before[k])]
        assert changed


# ---- an SSD-1B-like tiny SDXL, its UNet written in the LDM layout by this test's own mapping ----
_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1", "norm2": "out_layers.0",
           "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
_FIXED = {"conv_in": "input_blocks.0.0", "time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
          "add_embedding.linear_1": "label_emb.0.0", "add_embedding.linear_2": "label_emb.0.2", "conv_norm_out": "out.0",
          "conv_out": "out.2", "mid_block.resnets.0": "middle_block.0", "mid_block.attentions.0": "middle_block.1",
          "mid_block.resnets.1": "middle_block.2"}


def ldm_unet_name(name: str, per_level: int, attention_up: list[bool]) -> str:
    """The original SGM name of a diffusers UNet parameter, by the numbering of ComfyUI's
    `unet_to_diffusers` (every level holds `per_level` res blocks): independent of our converter."""
    n = per_level + 1
    for src, dst in _FIXED.items():
        if name.startswith(src + "."):
            name = dst + name[len(src):]
    name = re.sub(r"^down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)",
                  lambda m: f"input_blocks.{1 + int(m[1]) * n + int(m[3])}.{0 if m[2] == 'resnets' else 1}", name)
    name = re.sub(r"^down_blocks\.(\d+)\.downsamplers\.0\.conv", lambda m: f"input_blocks.{(int(m[1]) + 1) * n}.0.op", name)
    name = re.sub(r"^up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)",
                  lambda m: f"output_blocks.{int(m[1]) * n + int(m[3])}.{0 if m[2] == 'resnets' else 1}", name)
    name = re.sub(r"^up_blocks\.(\d+)\.upsamplers\.0\.conv",
                  lambda m: f"output_blocks.{int(m[1]) * n + per_level}.{2 if attention_up[int(m[1])] else 1}.conv", name)
    parts = name.split(".")
    cut = 2 if parts[0] == "middle_block" else 3   # where a res block's own layer name sits
    if len(parts) > cut and parts[cut] in _RESNET and (cut == 2 or parts[2] == "0"):
        parts[cut] = _RESNET[parts[cut]]
    return "model.diffusion_model." + ".".join(parts)


SSD1B_TINY = {"mid_block_type": "UNetMidBlock2D", "transformer_layers_per_block": [[1, 1], [2, 1]], "reverse_transformer_layers_per_block": [[1, 2, 2], [1, 1, 1]]}


def write_ssd1b_like(path, seed=0):
    """A tiny SDXL single file whose UNet has SSD-1B-like uneven transformer depths. The
    UNet keys come from `ldm_unet_name`; the metadata records the tiny family's configs
    (a text encoder's or VAE's widths cannot be read from shapes), the plain tiny UNet's
    among them, so the file's tensors alone tell its UNet apart. Returns that UNet."""
    from diffusers import UNet2DConditionModel

    from dreambooth_core.models.configs import CONFIGS_METADATA_KEY, model_configs
    from dreambooth_core.models.tiny import tiny_base_model, tiny_configs

    plain = tiny_base_model("sdxl", seed=seed)
    config = {**tiny_configs(get_family("sdxl"))["unet"], **SSD1B_TINY}
    torch.manual_seed(seed + 1)
    unet = UNet2DConditionModel(**config).eval()
    attention_up = ["Attn" in t for t in config["up_block_types"]]
    tensors = {k: v for k, v in ldm_state_dict(plain).items() if not k.startswith("model.diffusion_model.")}
    tensors.update({ldm_unet_name(k, config["layers_per_block"], attention_up): v for k, v in unet.state_dict().items()})
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path),
              metadata={CONFIGS_METADATA_KEY: json.dumps(model_configs(plain))})
    return unet


def test_an_ssd1b_like_sdxl_file_is_detected_from_its_tensors(tmp_path):
    unet = write_ssd1b_like(tmp_path / "ssd.safetensors")
    model = load_base_model(tmp_path / "ssd.safetensors")
    assert model.family.name == "sdxl"
    assert model.unet.config.transformer_layers_per_block == SSD1B_TINY["transformer_layers_per_block"]
    assert model.unet.config.reverse_transformer_layers_per_block == SSD1B_TINY["reverse_transformer_layers_per_block"]
    assert [len(a.transformer_blocks) for b in model.unet.up_blocks for a in getattr(b, "attentions", [])] == [1, 2, 2]
    assert model.unet.config.mid_block_type == "UNetMidBlock2D" and len(model.unet.mid_block.resnets) == 1
    expected = unet.state_dict()
    assert all(torch.equal(v, expected[k]) for k, v in model.unet.state_dict().items())
    assert not [k for k in model.extras if k.startswith("model.diffusion_model.")]


@pytest.mark.slow
@pytest.mark.parametrize("method", ["lora", "dreambooth", "textual_inversion", "hypernetwork"])
def test_an_ssd1b_like_sdxl_checkpoint_trains_with_every_method(tmp_path_factory, method):
    from test_train_support import tiny_config, train

    path = tmp_path_factory.getbasetemp() / "ssd1b_like.safetensors"
    if not path.exists():
        write_ssd1b_like(path)
    model = load_base_model(path)
    before = copy.deepcopy(model.unet.state_dict()) if method == "dreambooth" else None
    tmp = tmp_path_factory.mktemp(method)
    cfg = tiny_config(tmp, method=method, max_train_steps=1, learning_rate=1e-3, save_dtype="fp32")
    result, _, trained = train(cfg, family="sdxl", model=model)
    assert result.status == "completed" and result.outputs
    if method == "dreambooth":
        saved = load_base_model(result.outputs[0].path)
        assert saved.unet.config.reverse_transformer_layers_per_block == SSD1B_TINY["reverse_transformer_layers_per_block"]
        assert [k for k, v in trained.unet.state_dict().items() if not torch.equal(v, before[k])]


def test_the_memory_planner_reads_the_same_structure_from_the_header(tmp_path):
    from test_train_support import tiny_config

    from dreambooth_core.plan.memory import architecture

    write_ssd1b_like(tmp_path / "ssd.safetensors")
    family, configs = architecture(tiny_config(tmp_path, base_model=str(tmp_path / "ssd.safetensors")))
    assert family.name == "sdxl"
    assert configs["unet"]["reverse_transformer_layers_per_block"] == SSD1B_TINY["reverse_transformer_layers_per_block"]
