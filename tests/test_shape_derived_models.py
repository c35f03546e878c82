"""SD1/SD2 single files whose UNet is trimmed (fewer levels or res blocks, deeper transformers,
no mid block) load with the structure read from their tensors, as the hosts load them."""
from __future__ import annotations

import copy

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


@pytest.mark.parametrize("family", ["sd1", "sd2-v"])
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
