"""LoHa, LoKr, DoRA and OFT networks: trained through peft (OFT: a peft method of our own),
written in the LyCORIS layout, and read by the hosts' network code (our fakes of it) to
exactly the weight change peft applies (DoRA: in ComfyUI and Forge; A1111 computes another
weight, which the test shows; OFT: in ComfyUI and A1111)."""
import json
import logging
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from dreambooth_core.config import TrainConfig
from dreambooth_core.errors import ConfigError, FormatError
from dreambooth_core.formats.lora_keys import lora_target_modules, model_parts, names_for_model
from dreambooth_core.formats.networks import lycoris_delta, lycoris_from_peft_model, network_type, write_lycoris
from dreambooth_core.methods.lora import LoraMethod
from dreambooth_core.models.tiny import tiny_base_model
from dreambooth_core.registry import NETWORKS

sys.path.insert(0, str(Path(__file__).parent))
from a1111_fake import fake_network_math as a1111  # noqa: E402
from comfy_fake import fake_weight_adapter as comfy  # noqa: E402

LYCORIS = [n for n, spec in NETWORKS.items() if spec.lycoris_algo]


def trained_network(family: str, network: str, conv_rank: int = 3, seed: int = 0):
    """A tiny model with a `network` adapter on the UNet (3×3 convs too) and text encoders,
    set up by LoraMethod as training does, its weights randomised as if trained."""
    model = tiny_base_model(family)
    cfg = TrainConfig(network=network, rank=4, alpha=2.0, conv_rank=conv_rank, conv_alpha=1.5, train_text_encoder=True)
    method = LoraMethod(cfg, model)
    method.setup(torch.float32)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in method.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return model, method


def peft_deltas(model, network: str) -> dict[str, torch.Tensor]:
    """{kohya key: the change peft's own merge makes} of every adapted layer."""
    layer_cls = network_type(network).layer_class.split(":")
    import importlib

    cls = getattr(importlib.import_module(layer_cls[0]), layer_cls[1])
    names = names_for_model(tiny_base_model(model.family))  # the plain module tree's names
    out = {}
    with torch.no_grad():
        for part, root in model_parts(model).items():
            for name, layer in root.named_modules():
                if isinstance(layer, cls):
                    base = layer.get_base_layer().weight
                    before = base.detach().clone()
                    layer.merge(adapter_names=["default"])
                    out[names.key(part, name.removeprefix("base_model.model."))] = base.detach() - before
                    base.copy_(before)
                    layer.merged_adapters.clear()
    return out


def text_outputs_of(model, prompt: str = "a photo of zwx dog") -> list[torch.Tensor]:
    out = []
    for tok, te in zip(model.tokenizers, model.text_encoders):
        ids = tok(prompt, padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt").input_ids
        with torch.no_grad():
            out.append(te(ids)[0])
    return out


def base_weights(family: str) -> dict[str, torch.Tensor]:
    base = tiny_base_model(family)
    names = names_for_model(base)
    parts = model_parts(base)
    out = {}
    for part, root in parts.items():
        for name in lora_target_modules(root, conv=True):
            out[names.key(part, name)] = root.get_submodule(name).weight.detach()
    return out


@pytest.mark.parametrize("network", LYCORIS)
@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
def test_hosts_compute_peft_delta(tmp_path, family, network, caplog):
    model, method = trained_network(family, network)
    modules = lycoris_from_peft_model(network_type(network), model.unet, model.text_encoders, model.family)
    path = write_lycoris(network_type(network), modules, tmp_path / "net.safetensors", model.family, 4, 2.0, (3, 1.5))
    state = load_file(path)
    expected = peft_deltas(model, network)
    weights = base_weights(family)
    # every adapted layer is in the file under the kohya key a LoRA of it has (the names the hosts map)
    assert set(expected) == set(modules) and set(expected) <= set(weights)
    assert any(w.ndim == 4 and w.shape[2:] == (3, 3) for k, w in weights.items() if k in expected)  # conv layers too
    assert any(k.startswith("lora_te") for k in expected)

    with caplog.at_level(logging.WARNING):
        patches, left = comfy.load_lora(state, sorted(modules))
    assert not left and "lora key not loaded" not in caplog.text
    for key, delta in expected.items():
        slots = {k.split(".", 1)[1]: v for k, v in state.items() if k.split(".", 1)[0] == key}
        assert a1111.module_type(slots) == {"loha": "hada", "lokr": "lokr", "dora": "lora", "oft": "oft"}[network]
        w = weights[key]
        assert delta.abs().max() > 1e-3, key
        # ComfyUI's arithmetic (Forge's is the same), and ours for lora merge
        torch.testing.assert_close(comfy.calculate_weight(patches[key], w) - w, delta, atol=1e-5, rtol=1e-4)
        half = 0.25 if network == "oft" else 0.5  # ComfyUI applies an OFT's strength twice
        torch.testing.assert_close(comfy.calculate_weight(patches[key], w, 0.5) - w, half * delta, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(lycoris_delta(slots, w), delta, atol=1e-5, rtol=1e-4)
        if network == "dora":  # A1111 normalises per input column: it loads the file and computes another weight
            assert not torch.allclose(a1111.calc_updown(slots, w), delta, atol=1e-2, rtol=1e-2), key
            continue
        torch.testing.assert_close(a1111.calc_updown(slots, w), delta, atol=1e-5, rtol=1e-4)
        # strength is linear, as for LoRA
        torch.testing.assert_close(a1111.calc_updown(slots, w, 0.5), 0.5 * delta, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("network", LYCORIS)
def test_metadata_as_lycoris_writes_it(tmp_path, network):
    model, _ = trained_network("sd1", network)
    modules = lycoris_from_peft_model(network_type(network), model.unet, model.text_encoders, model.family)
    path = write_lycoris(network_type(network), modules, tmp_path / "zwx.safetensors", model.family, 4, 2.0, (3, 1.5),
                         {"ss_steps": "8"})
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    assert meta["ss_network_module"] == "lycoris.kohya"
    extra = {"lokr": {"factor": "-1"}, "dora": {"dora_wd": "True", "wd_on_output": "True"}}.get(network, {})
    assert json.loads(meta["ss_network_args"]) == {"algo": NETWORKS[network].lycoris_algo, "conv_dim": "3", "conv_alpha": "1.5", **extra}
    assert (meta["ss_network_dim"], meta["ss_network_alpha"], meta["ss_steps"]) == ("4", "2.0", "8")
    assert meta["ss_base_model_version"] == "sd_v1" and meta["ss_output_name"] == "zwx"
    assert meta["sshs_model_hash"]


def test_network_choice_is_checked():
    with pytest.raises(ConfigError, match="network must be one of lora, loha, lokr, dora, oft"):
        TrainConfig(network="boft").validate(check_paths=False)
    TrainConfig(network="oft").validate(check_paths=False)
    with pytest.raises(ConfigError, match="LyCORIS layout"):
        TrainConfig(network="loha", save_formats=["peft"]).validate(check_paths=False)


@pytest.mark.parametrize("network", LYCORIS)
def test_lycoris_file_is_refused_by_plain_lora_tools(tmp_path, network):
    from dreambooth_core.formats.lora import read_lora

    model, _ = trained_network("sd1", network, conv_rank=0)
    modules = lycoris_from_peft_model(network_type(network), model.unet, model.text_encoders, model.family)
    path = write_lycoris(network_type(network), modules, tmp_path / "n.safetensors", model.family, 4, 2.0)
    with pytest.raises(FormatError, match="LoHa|LoKr|DoRA|OFT"):
        read_lora(path)


@pytest.mark.parametrize("network", LYCORIS)
def test_trained_network_file_reproduces_the_trained_model(tmp_path, network):
    """A real run (text encoders and 3×3 convs on): the file, merged as the hosts apply it,
    gives the trained model's outputs; it differs from the base; resume refuses another type."""
    from test_train_support import tiny_config, train, unet_output

    from dreambooth_core.apply import apply_artifact
    from dreambooth_core.errors import UserError

    cfg = tiny_config(tmp_path, network=network, train_text_encoder=True, conv_rank=2, conv_alpha=1.0, learning_rate=1e-2)
    result, _, trained = train(cfg, "sd1")
    (artifact,) = [a for a in result.outputs if a.kind == "lora"]
    assert artifact.prompt_hint == "<lora:zwx_dog:0.8>"
    state = load_file(artifact.path)
    assert any(k.endswith((".hada_w1_a", ".lokr_w1", ".dora_scale", ".oft_blocks")) for k in state) and any(k.startswith("lora_te_") for k in state)
    base = tiny_base_model("sd1")
    before = unet_output(base)
    merged = apply_artifact(base, "lora", artifact.path)
    assert not torch.allclose(before, unet_output(merged), atol=1e-4)
    torch.testing.assert_close(unet_output(merged), unet_output(trained), atol=1e-4, rtol=1e-4)
    for a, b in zip(text_outputs_of(merged), text_outputs_of(trained)):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)

    other = "lokr" if network != "lokr" else "loha"
    with pytest.raises(UserError, match=f"network was '{network}' and is now '{other}'"):
        train(tiny_config(tmp_path, network=other, train_text_encoder=True, conv_rank=2, conv_alpha=1.0,
                          max_train_steps=4, resume_from="latest"), "sd1")


@pytest.mark.parametrize("network", LYCORIS)
def test_file_reads_back_into_peft(tmp_path, network):
    """The written file, injected into a fresh model as a peft adapter, gives the trained outputs."""
    from test_train_support import unet_output

    from dreambooth_core.formats.networks import network_into_peft, read_network_file

    model, _ = trained_network("sd1", network)
    modules = lycoris_from_peft_model(network_type(network), model.unet, model.text_encoders, model.family)
    path = write_lycoris(network_type(network), modules, tmp_path / "n.safetensors", model.family, 4, 2.0, (3, 1.5))
    fresh = network_into_peft(tiny_base_model("sd1"), read_network_file(path))
    assert not torch.allclose(unet_output(tiny_base_model("sd1")), unet_output(model), atol=1e-4)
    torch.testing.assert_close(unet_output(fresh), unet_output(model), atol=1e-5, rtol=1e-4)
    for a, b in zip(text_outputs_of(fresh), text_outputs_of(model)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_resize_and_convert_refuse_networks_clearly(tmp_path, capsys):
    from dreambooth_core.cli import main

    model, _ = trained_network("sd1", "loha", conv_rank=0)
    modules = lycoris_from_peft_model(network_type("loha"), model.unet, model.text_encoders, model.family)
    path = write_lycoris(network_type("loha"), modules, tmp_path / "n.safetensors", model.family, 4, 2.0)
    assert main(["lora", "resize", str(path), str(tmp_path / "r.safetensors"), "--rank", "2"]) == 1
    assert main(["lora", "convert", str(path), str(tmp_path / "c.safetensors"), "--to", "peft"]) == 1
    err = capsys.readouterr().err
    assert err.count("is a LoHa/LoKr/DoRA/OFT network: lora") == 2 and "Hadamard/Kronecker" in err
    assert not (tmp_path / "r.safetensors").exists() and not (tmp_path / "c.safetensors").exists()


def test_lora_merge_takes_networks_and_keeps_the_base_precision(tmp_path, capsys):
    from test_train_support import unet_output

    from dreambooth_core.cli import main
    from dreambooth_core.formats.networks import merge_network, read_network_file
    from dreambooth_core.models.load import load_base_model
    from dreambooth_core.models.save import save_single_file

    model, _ = trained_network("sd1", "lokr")
    modules = lycoris_from_peft_model(network_type("lokr"), model.unet, model.text_encoders, model.family)
    path = write_lycoris(network_type("lokr"), modules, tmp_path / "n.safetensors", model.family, 4, 2.0, (3, 1.5))
    base = save_single_file(tiny_base_model("sd1"), tmp_path / "base.safetensors", dtype="fp32")
    out = tmp_path / "merged.safetensors"
    assert main(["lora", "merge", "--base", str(base), "--lora", f"{path}:0.5", str(out)]) == 0
    assert "fp32, as the base is stored" in capsys.readouterr().out
    assert {t.dtype for t in load_file(out).values()} == {torch.float32}
    expected = merge_network(load_base_model(base), read_network_file(path), 0.5)
    torch.testing.assert_close(unet_output(load_base_model(out)), unet_output(expected), atol=0, rtol=0)
    assert not torch.allclose(unet_output(expected), unet_output(load_base_model(base)), atol=1e-4)


@pytest.mark.parametrize("network", ["dora", "loha", "oft"])
def test_a_dora_file_delivered_to_a1111_comes_with_a_warning(tmp_path, network):
    """A1111 computes another weight from a DoRA file (test_hosts_compute_peft_delta shows it),
    and Forge, which runs the same WebUI adapter, skips an OFT file: its delivery, and the CLI's
    summary, say so; ComfyUI's does not, nor does any LoHa's."""
    from dreambooth_core.cli.train import summary
    from dreambooth_core.lifecycle import deliver
    from dreambooth_core.events import Artifact
    from dreambooth_core.jobs.state import RunState

    cfg = TrainConfig(network=network, output_name="zwx")
    src = tmp_path / "run" / "zwx.safetensors"
    src.parent.mkdir()
    src.write_bytes(b"x")
    art = Artifact(kind="lora", path=str(src), name="zwx", final=True)
    (a1111_item,) = deliver([art], cfg, {"lora": tmp_path / "Lora"}, host="a1111")
    (comfy_item,) = deliver([art], cfg, {"lora": tmp_path / "loras"}, host="comfyui")
    assert a1111_item.path and comfy_item.path and not comfy_item.warning
    said = summary(RunState(status="completed", artifacts=[art]), cfg)
    if network == "dora":
        assert "A1111 v1.10 scales a DoRA file per input column" in a1111_item.warning
        assert "ComfyUI and Forge compute the trained weight" in said
    elif network == "oft":
        assert "Forge f2.0.1 has no OFT" in a1111_item.warning and "note for A1111/Forge: Forge f2.0.1 has no OFT" in said
    else:
        assert not a1111_item.warning and "note for A1111" not in said


def test_oft_keeps_what_the_hosts_keep_and_peft_s_own_oft_does_not():
    """Why OFT is a peft method of our own: every host OFT (R·W per block of output rows, R an
    exact Cayley rotation) keeps the input Gram matrix WᵀW, and so does the trained layer
    here, while peft's built-in OFT (the input features rotated) changes it: no `oft_blocks`
    file could give peft's weight."""
    from peft import OFTConfig, inject_adapter_in_model

    torch.manual_seed(0)
    x = torch.randn(4, 8)
    for config in (network_type("oft").config(["0"], 4, 0.0, {}), OFTConfig(r=0, oft_block_size=4, target_modules=["0"])):
        layer = torch.nn.Sequential(torch.nn.Linear(8, 8, bias=False))
        w = layer[0].weight.detach().clone()
        inject_adapter_in_model(config, layer)
        with torch.no_grad():
            for name, p in layer.named_parameters():
                if "oft_" in name:
                    p.copy_(torch.randn(p.shape) * 0.3)
        trained = layer(x)
        layer[0].merge()
        merged = layer[0].get_base_layer().weight.detach()
        torch.testing.assert_close(x @ merged.T, trained, atol=1e-4, rtol=1e-4)  # what the layer computes
        keeps_gram = torch.allclose(merged.T @ merged, w.T @ w, atol=1e-4, rtol=1e-4)
        assert keeps_gram == isinstance(config, type(network_type("oft").config(["0"], 4, 0.0, {}))), type(config)


def test_oft_constraint_is_in_the_file_so_both_hosts_compute_the_trained_rotation(tmp_path, caplog):
    """Trained with a norm constraint that binds (alpha, as LyCORIS: ‖Q‖ ≤ alpha · rows): the file
    holds the clamped blocks and alpha 0, so A1111 (alpha · rows) and ComfyUI (alpha), whose
    constraints differ, both compute peft's weight; a file that leaves the clamp to the hosts
    would get two different weights from them."""
    model = tiny_base_model("sd1")
    method = LoraMethod(TrainConfig(network="oft", rank=4, alpha=0.01, train_text_encoder=False), model)
    method.setup(torch.float32)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in method.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    modules = lycoris_from_peft_model(network_type("oft"), model.unet, [], model.family)
    path = write_lycoris(network_type("oft"), modules, tmp_path / "n.safetensors", model.family, 4, 0.01)
    state, expected, weights = load_file(path), peft_deltas(model, "oft"), base_weights("sd1")
    patches, left = comfy.load_lora(state, sorted(modules))
    assert not left and set(expected) == set(modules)
    names = names_for_model(tiny_base_model("sd1"))
    for key, delta in expected.items():
        slots = {k.split(".", 1)[1]: v for k, v in state.items() if k.split(".", 1)[0] == key}
        raw = model.unet.get_submodule(names.module(key)[1]).oft_blocks["default"].detach()
        assert float(slots["alpha"]) == 0 and not torch.allclose(slots["oft_blocks"], raw)  # the clamp is in the blocks
        w = weights[key]
        torch.testing.assert_close(comfy.calculate_weight(patches[key], w) - w, delta, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(a1111.calc_updown(slots, w), delta, atol=1e-5, rtol=1e-4)
        # the same rotation left to the hosts' constraints: they disagree
        left_to_hosts = {"oft_blocks": raw, "alpha": torch.tensor(0.01)}
        comfy_w = comfy.calculate_weight({"type": "oft", "oft_blocks": raw, "alpha": 0.01}, w) - w
        assert not torch.allclose(a1111.calc_updown(left_to_hosts, w), comfy_w, atol=1e-4), key
        torch.testing.assert_close(a1111.calc_updown(left_to_hosts, w), delta, atol=1e-5, rtol=1e-4)  # LyCORIS's reading
