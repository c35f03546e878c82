"""Hypernetworks: A1111's exact layout and file, and their effect on a real diffusers UNet."""
import io
import pickle
import warnings
import zipfile

import pytest
import torch

from dreambooth_core.errors import FamilyError, FormatError, OutputExistsError, UserError
from dreambooth_core.formats.hypernetwork import (
    Hypernetwork,
    HypernetworkModule,
    apply_hypernetwork,
    attention_widths,
    check_host_compatible,
    family_from_dims,
    load_hypernetwork,
    save_hypernetwork,
)
from dreambooth_core.models.tiny import tiny_base_model

D = 8
# Read off A1111's HypernetworkModule: per layer_structure step a Linear, then the activation
# (not after the last Linear unless activate_output), then LayerNorm, then Dropout if p > 0.
A1111_LAYOUTS = [
    # (layer_structure, activation, layer_norm, dropout_structure, activate_output) -> {key: shape}
    (([1, 2, 1], "linear", False, None, False),
     {"linear.0.weight": (2 * D, D), "linear.0.bias": (2 * D,), "linear.1.weight": (D, 2 * D), "linear.1.bias": (D,)}),
    (([1, 2, 1], "relu", False, None, False),
     {"linear.0.weight": (2 * D, D), "linear.0.bias": (2 * D,), "linear.2.weight": (D, 2 * D), "linear.2.bias": (D,)}),
    (([1, 2, 1], "relu", True, None, False),
     {"linear.0.weight": (2 * D, D), "linear.0.bias": (2 * D,), "linear.2.weight": (2 * D,), "linear.2.bias": (2 * D,),
      "linear.3.weight": (D, 2 * D), "linear.3.bias": (D,), "linear.4.weight": (D,), "linear.4.bias": (D,)}),
    (([1, 2, 1], "linear", True, None, False),
     {"linear.0.weight": (2 * D, D), "linear.0.bias": (2 * D,), "linear.1.weight": (2 * D,), "linear.1.bias": (2 * D,),
      "linear.2.weight": (D, 2 * D), "linear.2.bias": (D,), "linear.3.weight": (D,), "linear.3.bias": (D,)}),
    (([1, 2, 1], "swish", False, [0, 0.3, 0], False),
     {"linear.0.weight": (2 * D, D), "linear.0.bias": (2 * D,), "linear.3.weight": (D, 2 * D), "linear.3.bias": (D,)}),
    (([1, 1], "linear", False, None, False),
     {"linear.0.weight": (D, D), "linear.0.bias": (D,)}),
    (([1, 1], "relu", True, None, False),
     {"linear.0.weight": (D, D), "linear.0.bias": (D,), "linear.1.weight": (D,), "linear.1.bias": (D,)}),
    (([1, 1], "relu", True, None, True),
     {"linear.0.weight": (D, D), "linear.0.bias": (D,), "linear.2.weight": (D,), "linear.2.bias": (D,)}),
]


@pytest.mark.parametrize("settings,expected", A1111_LAYOUTS)
def test_state_dict_keys_match_a1111(settings, expected):
    layer_structure, activation, layer_norm, dropout, activate_output = settings
    module = HypernetworkModule(D, layer_structure, activation, layer_norm, dropout, activate_output)
    got = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    assert list(got) == list(expected)  # order matters: ComfyUI pairs Linear and LayerNorm by position
    assert got == expected


def test_forward_is_residual_times_multiplier():
    torch.manual_seed(0)
    module = HypernetworkModule(D, [1, 2, 1], "relu")
    x = torch.randn(3, D)
    delta = module.linear(x)
    assert torch.equal(module(x), x + delta)
    assert torch.allclose(module(x, 0.5), x + 0.5 * delta)
    # A1111 "Normal": small weights, zero biases
    assert torch.count_nonzero(module.linear[0].bias) == 0
    assert 0.003 < module.linear[0].weight.std() < 0.03


def test_bad_settings_are_user_errors():
    with pytest.raises(UserError, match="start and end with 1"):
        HypernetworkModule(D, [2, 1])
    with pytest.raises(UserError, match="gelu"):
        HypernetworkModule(D, [1, 2, 1], "gelu")


def test_settings_that_comfyui_runs_differently_are_refused():
    # read from ComfyUI's nodes_hypernetwork.py: "last layer" counts LayerNorms, and dropout is never put in eval mode
    with pytest.raises(UserError, match="ComfyUI"):
        check_host_compatible("relu", True, False, None)
    with pytest.raises(UserError, match="dropout"):
        check_host_compatible("linear", False, False, [0, 0.3, 0])
    for ok in (("relu", True, True, None), ("linear", True, False, None), ("swish", False, False, [0, 0, 0])):
        check_host_compatible(*ok)


class _A1111Allowlist(pickle.Unpickler):
    """The globals A1111's RestrictedUnpickler (modules/safe.py) permits, as read from its source."""

    allowed = {
        ("collections", "OrderedDict"),
        ("torch._utils", "_rebuild_tensor_v2"), ("torch._utils", "_rebuild_parameter"),
        *(("torch", n) for n in ("FloatStorage", "HalfStorage", "IntStorage", "LongStorage", "DoubleStorage", "ByteStorage", "float32", "BFloat16Storage")),
    }

    def find_class(self, module, name):
        if (module, name) not in self.allowed:
            raise pickle.UnpicklingError(f"global {module}/{name} is forbidden")
        return super().find_class(module, name)

    def persistent_load(self, pid):
        assert pid[0] == "storage"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # typed storages are deprecated, but A1111 builds them
            return pid[1](pid[4])


def _hn(dims=(32, 64), **kw):
    torch.manual_seed(1)
    return Hypernetwork(dims, name="zwx_style", **kw)


def test_save_load_round_trip_legacy_format(tmp_path):
    hn = _hn(layer_structure=[1, 1.5, 1], activation="mish", layer_norm=True, dropout_structure=[0, 0.1, 0], step=42,
             sd_checkpoint="abcd1234", sd_checkpoint_name="base", metadata={"dreambooth_core.family": "sd1"})
    path = save_hypernetwork(hn, tmp_path / "zwx_style.pt", metadata={"dreambooth_core.step": "42"})

    raw = path.read_bytes()
    assert not zipfile.is_zipfile(path) and raw[:2] == b"\x80\x02"  # legacy pickle, protocol 2
    unpickler = _A1111Allowlist(io.BytesIO(raw))
    magic, _protocol, _sys_info, obj, storage_keys = (unpickler.load() for _ in range(5))
    assert isinstance(magic, int) and isinstance(storage_keys, list)
    assert sorted(k for k in obj if isinstance(k, int)) == [32, 64]

    plain = torch.load(path, weights_only=True)
    assert plain["layer_structure"] == [1, 1.5, 1] and plain["activation_func"] == "mish"
    assert plain["is_layer_norm"] is True and plain["use_dropout"] is True and plain["last_layer_dropout"] is True
    assert plain["dropout_structure"] == [0.0, 0.1, 0.0] and plain["activate_output"] is False
    assert plain["weight_initialization"] == "Normal" and plain["name"] == "zwx_style" and plain["step"] == 42
    assert isinstance(plain[32], tuple) and list(plain[32][0]) == list(hn.pair(32)[0].state_dict())

    back = load_hypernetwork(path)
    assert back.dims == [32, 64] and back.layer_structure == hn.layer_structure and back.activation == "mish"
    assert back.layer_norm and back.dropout_structure == [0.0, 0.1, 0.0] and back.step == 42
    assert (back.sd_checkpoint, back.sd_checkpoint_name, back.name) == ("abcd1234", "base", "zwx_style")
    assert back.metadata == {"dreambooth_core.family": "sd1", "dreambooth_core.step": "42"}
    for a, b in zip(hn.state_dict().items(), back.state_dict().items()):
        assert a[0] == b[0] and torch.equal(a[1], b[1])

    with pytest.raises(OutputExistsError):
        save_hypernetwork(hn, path)


def test_reads_old_a1111_file_with_defaults(tmp_path):
    """An early A1111 file: only {dim: (k, v)} with linear1/linear2 names; defaults fill the rest."""
    torch.manual_seed(2)
    def old_sd():
        return {"linear1.weight": torch.randn(2 * D, D), "linear1.bias": torch.randn(2 * D),
                "linear2.weight": torch.randn(D, 2 * D), "linear2.bias": torch.randn(D)}
    k, v = old_sd(), old_sd()
    path = tmp_path / "old.pt"
    torch.save({D: (k, v)}, path, _use_new_zipfile_serialization=False)
    hn = load_hypernetwork(path)
    assert hn.name == "old" and hn.layer_structure == [1, 2, 1] and hn.activation == "linear"
    assert torch.equal(hn.pair(D)[0].linear[1].weight, k["linear2.weight"])
    assert torch.equal(hn.pair(D)[1].linear[0].bias, v["linear1.bias"])


def test_load_errors(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a pickle at all")
    with pytest.raises(FormatError):
        load_hypernetwork(bad)
    mismatched = tmp_path / "mismatch.pt"
    torch.save({D: (HypernetworkModule(D, [1, 2, 1], "relu").state_dict(),) * 2, "layer_structure": [1, 2, 1], "activation_func": "linear"},
               mismatched, _use_new_zipfile_serialization=False)
    with pytest.raises(FormatError, match="do not match"):
        load_hypernetwork(mismatched)
    with pytest.raises(FormatError, match="not found"):
        load_hypernetwork(tmp_path / "missing.pt")


@pytest.fixture(scope="module")
def unet_inputs():
    model = tiny_base_model("sd1", seed=0)
    torch.manual_seed(3)
    sample = torch.randn(1, 4, 8, 8)
    context = torch.randn(1, 7, model.unet.config.cross_attention_dim)
    return model.unet, (sample, torch.tensor([10]), context)


def _run(unet, inputs):
    with torch.no_grad():
        return unet(*inputs).sample


def test_apply_changes_output_and_removal_restores_it(unet_inputs):
    unet, inputs = unet_inputs
    assert attention_widths(unet) == [32, 64]
    base = _run(unet, inputs)
    hn = _hn(dims=attention_widths(unet), activation="relu", weight_init="XavierNormal")
    with apply_hypernetwork(unet, hn) as handle:
        assert len(handle.attention_layers) == len([n for n, _ in unet.named_modules() if n.endswith((".attn1", ".attn2"))])
        changed = _run(unet, inputs)
        handle.multiplier = 0.0
        assert torch.equal(_run(unet, inputs), base)
    assert not torch.allclose(changed, base, atol=1e-4)
    assert torch.equal(_run(unet, inputs), base)


def test_zero_last_layer_leaves_output_unchanged(unet_inputs):
    unet, inputs = unet_inputs
    base = _run(unet, inputs)
    hn = _hn(dims=[32, 64], activation="relu")
    with torch.no_grad():
        for p in hn.parameters():
            p.add_(0.5)  # nothing small about the hidden layers …
        for dim in hn.dims:
            for mlp in hn.pair(dim):
                mlp.linear[-1].weight.zero_()  # … but the last Linear outputs exactly 0
                mlp.linear[-1].bias.zero_()
    with apply_hypernetwork(unet, hn):
        assert torch.equal(_run(unet, inputs), base)


def test_gradients_reach_hypernetwork(unet_inputs):
    unet, (sample, t, context) = unet_inputs
    unet.requires_grad_(False)  # as in training: only the hypernetwork learns
    hn = _hn(dims=[32, 64]).train()
    with apply_hypernetwork(unet, hn):
        loss = unet(sample, t, context).sample.pow(2).mean()
        loss.backward()
    for name, p in hn.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_apply_refuses_a_hypernetwork_for_another_family(unet_inputs):
    unet, _ = unet_inputs
    with pytest.raises(FamilyError, match="match no attention"):
        apply_hypernetwork(unet, _hn(dims=[768]))


def test_family_from_dims():
    assert family_from_dims([768, 320, 640, 1280]) == ["sd1"]
    assert family_from_dims([1024, 320]) == ["sd2", "sd2-v"]
    assert family_from_dims([2048, 640, 1280]) == ["sdxl", "sdxl-v"]
    assert family_from_dims([320, 640]) == []
