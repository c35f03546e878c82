"""Frozen convolutions on packed oneDNN weights: the same outputs and input gradients as plain
convolutions, the plain weights released while packed and given back bit for bit."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from dreambooth_core.models.tiny import tiny_base_model
from dreambooth_core.train.packed_convs import available, packable, packed_frozen_convolutions

pytestmark = pytest.mark.skipif(not available(), reason="this torch cannot run convolutions on packed weights")


def frozen_unet(dtype: torch.dtype) -> torch.nn.Module:
    unet = tiny_base_model("sd1").unet.to(dtype)
    unet.requires_grad_(False)
    return unet


def output_and_gradients(unet: torch.nn.Module, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    """The UNet's output and the gradients reaching its inputs (what TI and LoRA train through)."""
    g = torch.Generator().manual_seed(1)
    latents = torch.randn(2, 4, 8, 8, generator=g).to(dtype).requires_grad_()
    context = torch.randn(2, 77, unet.config.cross_attention_dim, generator=g).to(dtype).requires_grad_()
    out = unet(latents, torch.tensor([10, 500]), encoder_hidden_states=context).sample
    out.float().square().mean().backward()
    return out.detach(), latents.grad, context.grad


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((b.float() - a.float()).norm() / a.float().norm()).item()


def test_packed_convolutions_match_plain_ones_forward_and_backward():
    unet = frozen_unet(torch.float32)
    plain = output_and_gradients(unet, torch.float32)
    with packed_frozen_convolutions(unet) as count:
        packed = output_and_gradients(unet, torch.float32)
    stride1 = [m for m in unet.modules() if isinstance(m, torch.nn.Conv2d) and m.stride == (1, 1)]
    assert count == len(stride1) > 0
    for a, b in zip(plain, packed):
        assert a.abs().max() > 0 and relative_error(a, b) < 1e-5


def test_packed_bf16_convolutions_are_as_close_to_fp32_as_plain_bf16_ones():
    exact = output_and_gradients(frozen_unet(torch.bfloat16).float(), torch.float32)  # the same weights, fp32 maths
    unet = frozen_unet(torch.bfloat16)
    plain = output_and_gradients(unet, torch.bfloat16)
    with packed_frozen_convolutions(unet):
        packed = output_and_gradients(unet, torch.bfloat16)
    for e, a, b in zip(exact, plain, packed):
        assert relative_error(e, b) < 1.5 * relative_error(e, a) + 1e-3


def test_plain_weights_are_released_while_packed_and_come_back_bit_for_bit():
    unet = frozen_unet(torch.bfloat16)
    before = {k: v.clone() for k, v in unet.state_dict().items()}
    convs = [m for m in unet.modules() if packable(m)]
    with packed_frozen_convolutions(unet):
        output_and_gradients(unet, torch.bfloat16)
        assert all(m.weight.numel() == 0 for m in convs)  # the memory went with them
    after = unet.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], v) for k, v in before.items())
    assert not any("forward" in vars(m) for m in unet.modules())


def test_trainable_and_strided_convolutions_stay_plain():
    unet = frozen_unet(torch.float32)
    trained = unet.conv_in.requires_grad_(True)
    strided = unet.down_blocks[0].downsamplers[0].conv
    assert strided.stride == (2, 2)
    with packed_frozen_convolutions(unet):
        assert "forward" not in vars(trained) and "forward" not in vars(strided)
        assert "forward" in vars(unet.conv_out)
        out = output_and_gradients(unet, torch.float32)
    assert trained.weight.grad is not None and trained.weight.grad.abs().sum() > 0
    assert torch.isfinite(out[0]).all()


def test_an_error_inside_the_block_still_restores_the_weights():
    unet = frozen_unet(torch.float32)
    weight = unet.conv_out.weight.detach().clone()
    with pytest.raises(RuntimeError, match="stop"):
        with packed_frozen_convolutions(unet):
            output_and_gradients(unet, torch.float32)
            raise RuntimeError("stop")
    assert torch.equal(unet.conv_out.weight, weight) and "forward" not in vars(unet.conv_out)


def test_packing_for_sampling_needs_no_frozen_weights_and_refuses_gradients():
    unet = tiny_base_model("sd1").unet  # trainable, as loaded
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([10, 500])
    context = torch.randn(2, 77, unet.config.cross_attention_dim)
    with torch.no_grad():
        plain = unet(x, t, encoder_hidden_states=context).sample
    with packed_frozen_convolutions(unet, gradients=False) as count:
        assert count > 0
        with torch.no_grad():
            packed = unet(x, t, encoder_hidden_states=context).sample
        with pytest.raises(RuntimeError, match="sampling only"):
            unet(x, t, encoder_hidden_states=context.requires_grad_()).sample.sum().backward()
    assert relative_error(plain, packed) < 1e-5


def test_under_autocast_to_another_dtype_convolutions_stay_plain():
    """fp32 weights under bf16 autocast (DreamBooth's trainable UNet): packing them in fp32
    would compute in fp32, slower than autocast's bf16."""
    unet = frozen_unet(torch.float32)
    with packed_frozen_convolutions(unet), torch.autocast("cpu", dtype=torch.bfloat16):
        output_and_gradients(unet, torch.float32)
        assert unet.conv_out.weight.numel() > 0  # never packed


def test_training_packs_when_the_copy_fits_in_memory_and_learns_the_same(tmp_path, monkeypatch):
    import psutil
    from test_train_support import train, tiny_config, unet_output

    real_memory = psutil.virtual_memory
    outputs, messages = {}, {}
    # "tight": settings as given (memory="auto" would refuse a run with 1 MiB free before it loads)
    for name, overrides, free in [("packed", {}, None), ("tight", {"memory": "manual"}, 1 << 20),
                                  ("off", {"pack_frozen_convolutions": False}, None)]:
        monkeypatch.setattr(psutil, "virtual_memory", (lambda: SimpleNamespace(available=free)) if free else real_memory)
        _, rec, model = train(tiny_config(tmp_path / name, **overrides))
        messages[name] = " | ".join(e.message for e in rec.of("log"))
        outputs[name] = unet_output(model)
    assert "frozen convolutions will run on weights packed" in messages["packed"]
    assert "frozen convolutions stay plain" in messages["tight"] and "packed for oneDNN" not in messages["tight"]
    assert "frozen convolutions" not in messages["off"]
    torch.testing.assert_close(outputs["packed"], outputs["off"], atol=1e-4, rtol=1e-4)
    assert torch.equal(outputs["tight"], outputs["off"])  # both plain all the way
    assert not torch.allclose(outputs["off"], unet_output(tiny_base_model("sd1")), atol=1e-4)  # it trained
