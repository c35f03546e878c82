"""kohya LoRA key names against the real full-size module trees (meta device) and peft."""
import pytest
import torch

from dreambooth_core.formats.lora_keys import (
    kohya_name,
    lora_target_modules,
    model_parts,
    module_name_from_kohya,
    names_for_family,
    names_for_model,
)
from dreambooth_core.models.configs import empty_base_model
from dreambooth_core.models.tiny import tiny_base_model

# (UNet, each text encoder) module counts of kohya's default LoRA; LoCon adds resnet and sampler layers.
EXPECTED = {
    "sd1": ((192, 72), 278),   # kohya's SD1.5 LoRA: 192 UNet + 72 TE = 264
    "sd2": ((192, 138), 278),  # SD2's text encoder runs 23 of OpenCLIP's 24 layers
    "sdxl": ((722, 72, 192), 788),  # kohya: "create LoRA for U-Net: 722 modules", TE 72 + 192
}


@pytest.fixture(scope="module", params=sorted(EXPECTED))
def full_model(request):
    return empty_base_model(request.param)


def test_every_target_has_one_key_that_maps_back(full_model):
    fam = full_model.family
    names = names_for_model(full_model)
    expected_default, expected_unet_conv = EXPECTED[fam.name]
    seen_keys = set()
    for i, (part, root) in enumerate(model_parts(full_model).items()):
        default = lora_target_modules(root)
        with_conv = lora_target_modules(root, conv=True)
        assert len(default) == expected_default[i], part
        if part == "unet":
            assert len(with_conv) == expected_unet_conv
            assert set(default) < set(with_conv)
        for name in with_conv:
            assert isinstance(root.get_submodule(name), (torch.nn.Linear, torch.nn.Conv2d))
            key = names.key(part, name)
            assert key not in seen_keys
            seen_keys.add(key)
            assert names.module(key) == (part, name)
            assert key == kohya_name(name, part, fam, full_model.unet.config)
    # Every key of the map (aliases included) names a real Linear/Conv2d of the tree.
    parts = model_parts(full_model)
    for key, (part, name) in names.to_module.items():
        assert isinstance(parts[part].get_submodule(name), (torch.nn.Linear, torch.nn.Conv2d)), key


def test_family_map_equals_model_map(full_model):
    fam = full_model.family
    assert names_for_family(fam.name).to_module == names_for_model(full_model).to_module


@pytest.mark.parametrize(
    "family, key, part, module",
    [
        ("sd1", "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q", "unet", "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"),
        ("sd1", "lora_unet_up_blocks_3_attentions_2_transformer_blocks_0_ff_net_0_proj", "unet", "up_blocks.3.attentions.2.transformer_blocks.0.ff.net.0.proj"),
        ("sd1", "lora_unet_mid_block_attentions_0_proj_in", "unet", "mid_block.attentions.0.proj_in"),
        ("sd1", "lora_unet_down_blocks_1_resnets_0_conv_shortcut", "unet", "down_blocks.1.resnets.0.conv_shortcut"),
        ("sd1", "lora_unet_up_blocks_0_upsamplers_0_conv", "unet", "up_blocks.0.upsamplers.0.conv"),
        ("sd1", "lora_te_text_model_encoder_layers_11_mlp_fc2", "text_encoder", "encoder.layers.11.mlp.fc2"),
        ("sd2", "lora_te_text_model_encoder_layers_22_self_attn_out_proj", "text_encoder", "encoder.layers.22.self_attn.out_proj"),
        ("sdxl", "lora_unet_input_blocks_4_1_transformer_blocks_1_attn2_to_k", "unet", "down_blocks.1.attentions.0.transformer_blocks.1.attn2.to_k"),
        ("sdxl", "lora_unet_output_blocks_5_1_proj_out", "unet", "up_blocks.1.attentions.2.proj_out"),
        ("sdxl", "lora_unet_middle_block_1_transformer_blocks_9_ff_net_2", "unet", "mid_block.attentions.0.transformer_blocks.9.ff.net.2"),
        ("sdxl", "lora_unet_input_blocks_1_0_in_layers_2", "unet", "down_blocks.0.resnets.0.conv1"),
        ("sdxl", "lora_unet_input_blocks_3_0_op", "unet", "down_blocks.0.downsamplers.0.conv"),
        ("sdxl", "lora_te1_text_model_encoder_layers_0_self_attn_q_proj", "text_encoder", "encoder.layers.0.self_attn.q_proj"),
        ("sdxl", "lora_te2_text_model_encoder_layers_31_self_attn_out_proj", "text_encoder_2", "text_model.encoder.layers.31.self_attn.out_proj"),
    ],
)
def test_real_kohya_names(family, key, part, module):
    # The text-encoder path is the installed transformers' own (CLIPTextModel may lack `text_model.`).
    got_part, got_module = module_name_from_kohya(key, family)
    assert got_part == part
    assert got_module.removeprefix("text_model.") == module.removeprefix("text_model.")
    assert kohya_name(got_module, part, family) == key


def test_other_unet_naming_resolves_to_the_same_module():
    # ComfyUI accepts SD1 LoRAs named by LDM blocks and SDXL LoRAs named by diffusers blocks.
    assert module_name_from_kohya("lora_unet_input_blocks_1_1_proj_in", "sd1") == ("unet", "down_blocks.0.attentions.0.proj_in")
    assert module_name_from_kohya("lora_unet_output_blocks_2_1_conv", "sd1") == ("unet", "up_blocks.0.upsamplers.0.conv")
    assert module_name_from_kohya("lora_unet_output_blocks_5_2_conv", "sd1") == ("unet", "up_blocks.1.upsamplers.0.conv")
    assert module_name_from_kohya("lora_unet_down_blocks_1_attentions_0_proj_in", "sdxl") == ("unet", "down_blocks.1.attentions.0.proj_in")


def test_text_keys_have_text_model_level_in_both_transformers_layouts():
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    cfg = CLIPTextConfig(hidden_size=8, intermediate_size=16, num_attention_heads=2, num_hidden_layers=1)
    with torch.device("meta"):
        plain, projected = CLIPTextModel(cfg), CLIPTextModelWithProjection(cfg)
    for model in (plain, projected):
        for fam, part, prefix in (("sd1", "text_encoder", "lora_te_"), ("sdxl", "text_encoder_2", "lora_te2_")):
            keys = [kohya_name(n, part, fam) for n in lora_target_modules(model)]
            assert len(keys) == 6
            assert all(k.startswith(f"{prefix}text_model_encoder_layers_0_") for k in keys)


def test_part_name_form_builds_the_family_tree():
    unet = empty_base_model("sd1").unet
    assert lora_target_modules("unet", "sd1") == lora_target_modules(unet)
    assert len(lora_target_modules("text_encoder_2", "sdxl")) == 192


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
def test_targets_go_straight_into_peft(family):
    from peft import LoraConfig, inject_adapter_in_model
    from peft.tuners.lora import LoraLayer

    for conv in (False, True):
        for root in model_parts(tiny_base_model(family)).values():
            targets = lora_target_modules(root, conv=conv)
            injected = inject_adapter_in_model(LoraConfig(r=2, target_modules=targets), root)
            assert {n for n, m in injected.named_modules() if isinstance(m, LoraLayer)} == set(targets)
