"""`dreambooth-core inspect`: the right kind and family for every file we and the hosts use."""
import json

import pytest
import torch
from safetensors.torch import save_file

from dreambooth_core.cli import main
from dreambooth_core.formats.embeddings import Embedding, write_embedding
from dreambooth_core.formats.hypernetwork import Hypernetwork, save_hypernetwork
from dreambooth_core.formats.inspect import inspect_path, key_prefix


def _run(capsys, *argv):
    code = main(["inspect", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def _json(capsys, path):
    code, out, err = _run(capsys, path, "--json")
    assert code == 0, err
    return json.loads(out)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """One file of every kind: our writers where we have them, hand-made host layouts otherwise."""
    from dreambooth_core.models.save import save_diffusers, save_single_file
    from dreambooth_core.models.tiny import tiny_base_model

    d = tmp_path_factory.mktemp("inspect")
    sd1 = tiny_base_model("sd1", seed=0)
    out = {
        "sd1_ckpt": save_single_file(sd1, d / "tiny_sd1.safetensors", dtype="fp32"),
        "sdxl_ckpt": save_single_file(tiny_base_model("sdxl", seed=0), d / "tiny_sdxl.safetensors"),
        "diffusers": save_diffusers(sd1, d / "tiny_sd1_diffusers", dtype="fp32"),
        "emb_sd1": write_embedding(Embedding.from_encoders("zwx", "sd1", [torch.randn(2, 768)]), d / "zwx.safetensors", "sd1"),
        "emb_sdxl": write_embedding(Embedding.from_encoders("zwx_xl", "sdxl", [torch.randn(1, 768), torch.randn(1, 1280)]),
                                    d / "zwx_xl.safetensors", "sdxl"),
        "hypernet": save_hypernetwork(Hypernetwork([768, 320, 640, 1280], name="style"), d / "style.pt"),
    }
    a1111 = d / "old_style.pt"
    torch.save({"string_to_param": {"*": torch.randn(4, 1024)}, "name": "old_style", "step": 10}, a1111, _use_new_zipfile_serialization=False)
    out["emb_a1111"] = a1111
    kohya_xl = d / "xl_lora.safetensors"
    save_file({"lora_unet_input_blocks_4_1_proj_in.lora_down.weight": torch.zeros(4, 640),
               "lora_unet_input_blocks_4_1_proj_in.lora_up.weight": torch.zeros(640, 4),
               "lora_unet_input_blocks_4_1_proj_in.alpha": torch.tensor(4.0),
               "lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": torch.zeros(4, 768)},
              str(kohya_xl), {"ss_base_model_version": "sdxl_base_v1-0", "ss_network_module": "networks.lora"})
    out["lora_sdxl"] = kohya_xl
    bare_sd2 = d / "sd2_lora.safetensors"  # no metadata: the family must come from the cross-attention width
    save_file({"lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight": torch.zeros(8, 1024).half(),
               "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_up.weight": torch.zeros(320, 8).half()},
              str(bare_sd2))
    out["lora_sd2"] = bare_sd2
    return out


@pytest.mark.slow
@pytest.mark.parametrize("name,kind,family,families", [
    ("sd1_ckpt", "checkpoint", "sd1", ["sd1"]),
    ("sdxl_ckpt", "checkpoint", "sdxl", ["sdxl"]),
    ("diffusers", "diffusers", "sd1", ["sd1"]),
    ("emb_sd1", "embedding", "sd1", ["sd1"]),
    ("emb_sdxl", "embedding", "sdxl", ["sdxl", "sdxl-v"]),   # v-prediction SDXL shares the encoders and UNet shapes
    ("emb_a1111", "embedding", "sd2", ["sd2", "sd2-v"]),
    ("hypernet", "hypernetwork", "sd1", ["sd1"]),
    ("lora_sdxl", "lora", "sdxl", ["sdxl", "sdxl-v"]),
    ("lora_sd2", "lora", "sd2", ["sd2", "sd2-v"]),
])
def test_kind_and_family(files, capsys, name, kind, family, families):
    report = _json(capsys, files[name])
    assert (report["kind"], report["family"], report["families"]) == (kind, family, families)
    assert report["tensors"] > 0 and report["parameters"] > 0
    code, text, _ = _run(capsys, files[name])
    assert code == 0 and f"kind:       {kind}" in text and f"family:     {family}" in text


@pytest.mark.slow
def test_summaries_and_details(files, capsys):
    ckpt = _json(capsys, files["sd1_ckpt"])
    assert set(ckpt["prefixes"]) == {"model.diffusion_model", "first_stage_model", "cond_stage_model.transformer"}
    assert ckpt["dtypes"] == {"float32": ckpt["tensors"]} and ckpt["storage"] == "safetensors"
    assert ckpt["metadata"]["modelspec.architecture"] == "stable-diffusion-v1"

    emb = _json(capsys, files["emb_sd1"])
    assert emb["details"] == {"trigger": "zwx", "vectors": 2, "widths": {"emb_params": 768}}
    assert emb["parameters"] == 2 * 768 and emb["metadata"]["modelspec.trigger_phrase"] == "zwx"

    old = _json(capsys, files["emb_a1111"])
    assert old["storage"] == "torch legacy pickle" and old["metadata"]["step"] == "10"

    hn = _json(capsys, files["hypernet"])
    assert hn["storage"] == "torch legacy pickle" and hn["details"]["dims"] == [768, 320, 640, 1280]
    assert hn["details"]["layer_structure"] == [1.0, 2.0, 1.0] and hn["details"]["name"] == "style"
    assert hn["prefixes"] == {"1280": 8, "320": 8, "640": 8, "768": 8}  # (k, v) × 2 Linears × (weight, bias)

    lora = _json(capsys, files["lora_sdxl"])
    assert lora["prefixes"] == {"lora_te1": 1, "lora_unet": 3}
    assert lora["details"]["ranks"] == [4] and lora["details"]["format"] == "kohya" and lora["details"]["modules"] == 2
    assert _json(capsys, files["lora_sd2"])["dtypes"] == {"float16": 2}

    folder = _json(capsys, files["diffusers"])
    assert {"unet", "vae", "text_encoder"} <= set(folder["details"]["components"])


def test_key_prefix():
    assert key_prefix("model.diffusion_model.input_blocks.0.0.weight") == "model.diffusion_model"
    assert key_prefix("conditioner.embedders.1.model.ln_final.weight") == "conditioner.embedders.1"
    assert key_prefix("lora_te2_text_model_encoder_layers_0_mlp_fc1.alpha") == "lora_te2"
    assert key_prefix("emb_params") == "emb_params"


def test_unknown_but_readable_file(tmp_path):
    save_file({"encoder.conv_in.weight": torch.zeros(8, 3, 3, 3), "decoder.conv_out.weight": torch.zeros(3, 8, 3, 3)}, str(tmp_path / "vae.safetensors"))
    report = inspect_path(tmp_path / "vae.safetensors")
    assert report.kind == "unknown" and report.family is None and report.tensors == 2 and report.notes


@pytest.mark.parametrize("make,message", [
    (lambda p: p.write_bytes(b"\x20\x00\x00\x00\x00\x00\x00\x00{\"a\": {\"dtype\": \"F32\", \"sha"), "not a readable safetensors"),
    (lambda p: p.write_bytes(b""), "empty"),
    (lambda p: None, "not found"),
])
def test_corrupt_or_missing_file_is_a_one_line_error(tmp_path, capsys, make, message):
    path = tmp_path / "model.safetensors"
    make(path)
    code, out, err = _run(capsys, path)
    assert code == 1 and out == ""
    assert err.startswith("error: ") and message in err and err.count("\n") == 1


def test_pickle_with_code_is_refused(tmp_path, capsys):
    torch.save({"state_dict": {"w": torch.zeros(1)}, "callback": ValueError("x")}, tmp_path / "model.ckpt")
    code, _, err = _run(capsys, tmp_path / "model.ckpt")
    assert code == 1 and "pickled Python objects" in err and err.count("\n") == 1
    code, _, err = _run(capsys, tmp_path)
    assert code == 1 and "model_index.json" in err
