"""merge / extract / resize, and the `dreambooth-core lora` commands, on tiny models."""
import copy

import pytest
import torch
from safetensors.torch import load_file
from test_lora_format import pipeline, random_lora, text_outputs, unet_output

from dreambooth_core.cli import main
from dreambooth_core.errors import FamilyError, UserError
from dreambooth_core.formats.lora import read_lora, write_kohya
from dreambooth_core.formats.lora_keys import lora_target_modules, model_parts, names_for_model
from dreambooth_core.formats.lora_tools import _low_rank, extract_lora, merge_loras, resize_lora
from dreambooth_core.models.load import load_base_model
from dreambooth_core.models.save import save_single_file
from dreambooth_core.models.tiny import tiny_base_model


def weights_of(model):
    return {(part, name): p.detach().clone() for part, root in model_parts(model).items() for name, p in root.named_parameters()}


# ----------------------------------------------------------------------------- merge


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_merge_adds_scaled_up_down_to_each_weight(family):
    model = tiny_base_model(family)
    before = weights_of(model)
    a, b = random_lora(model, conv=True, seed=1, vary=True), random_lora(model, seed=2)
    merge_loras(model, [(a, 0.7), (b, -0.5)])
    names = names_for_model(tiny_base_model(family))
    expected = dict(before)
    for lora, mult in ((a, 0.7), (b, -0.5)):
        for key, mod in lora.modules.items():
            part, name = names.module(key)
            w = expected[(part, f"{name}.weight")]
            product = mod.up.flatten(1) @ mod.down.flatten(1)
            expected[(part, f"{name}.weight")] = w + mult * (mod.alpha / mod.rank) * product.reshape(w.shape)
    after = weights_of(model)
    changed = 0
    for k, w in expected.items():
        assert torch.allclose(after[k], w, atol=1e-6), k
        changed += not torch.equal(after[k], before[k])
    assert changed == len(a.modules)


@pytest.mark.slow
@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
def test_merged_model_equals_peft_applied_lora(tmp_path, family):
    model = tiny_base_model(family)
    lora = random_lora(model, conv=True)
    path = write_kohya(lora, tmp_path / "l.safetensors")
    merged = merge_loras(tiny_base_model(family), [(read_lora(path), 1.0)])
    applied = tiny_base_model(family)
    pipeline(applied).load_lora_weights(str(path))
    assert not torch.allclose(unet_output(merged), unet_output(model), atol=1e-4)
    assert torch.allclose(unet_output(merged), unet_output(applied), atol=1e-5)
    for m, a in zip(text_outputs(merged), text_outputs(applied)):
        assert torch.allclose(m, a, atol=1e-5)


def test_merge_refuses_a_lora_of_another_family():
    sd1 = tiny_base_model("sd1")
    before = weights_of(sd1)
    with pytest.raises(FamilyError, match="match this Stable Diffusion 1.x model"):
        merge_loras(sd1, [(random_lora(sd1), 1.0), (random_lora(tiny_base_model("sdxl")), 1.0)])
    after = weights_of(sd1)
    assert all(torch.equal(after[k], v) for k, v in before.items())  # checked before anything is merged


# ----------------------------------------------------------------------------- extract


def low_rank_tuned(base, rank, conv=False, parts=None, seed=0):
    """A copy of `base` with a random rank-`rank` change on every targeted layer of `parts`."""
    tuned = copy.deepcopy(base)
    g = torch.Generator().manual_seed(seed)
    deltas = {}
    with torch.no_grad():
        for part, root in model_parts(tuned).items():
            if parts is not None and part not in parts:
                continue
            for name in lora_target_modules(root, conv=conv):
                w = root.get_submodule(name).weight
                delta = (torch.randn(w.shape[0], rank, generator=g) @ torch.randn(rank, w[0].numel(), generator=g)).reshape(w.shape) * 0.05
                w += delta
                deltas[(part, name)] = delta
    return tuned, deltas


@pytest.mark.slow
@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_extract_recovers_a_low_rank_difference(family):
    base = tiny_base_model(family)
    parts = ("unet", "text_encoder")  # SDXL's second text encoder stays unchanged
    tuned, deltas = low_rank_tuned(base, rank=3, conv=True, parts=parts)
    lora = extract_lora(base, tuned, rank=3, conv_rank=3, clamp_quantile=1.0)
    names = names_for_model(base)
    assert {names.module(k) for k in lora.modules} == set(deltas)
    assert not any(k.startswith("lora_te2_") for k in lora.modules)
    for key, mod in lora.modules.items():
        delta = deltas[names.module(key)]
        assert mod.alpha == mod.rank == 3
        assert torch.allclose(mod.delta(), delta, atol=1e-5 * delta.abs().max()), key
    merged = merge_loras(copy.deepcopy(base), [(lora, 1.0)])
    assert torch.allclose(unet_output(merged), unet_output(tuned), atol=1e-4)


def test_clamp_cuts_only_outlying_factor_values():
    torch.manual_seed(0)
    mat = torch.randn(320, 8) @ torch.randn(8, 768) * 0.01
    exact_up, exact_down = _low_rank(mat, 8, clamp_quantile=1.0)
    up, down = _low_rank(mat, 8, clamp_quantile=0.99)
    for clamped, exact in ((up, exact_up), (down, exact_down)):
        limit = torch.quantile(exact.abs().flatten(), 0.99)
        assert clamped.abs().max() == pytest.approx(float(limit))
        assert torch.equal(clamped[exact.abs() <= limit], exact[exact.abs() <= limit])
    assert torch.linalg.norm(up @ down - mat) < 0.1 * torch.linalg.norm(mat)


def test_extract_at_lower_rank_is_the_best_approximation():
    torch.manual_seed(0)
    mat = torch.randn(40, 24)
    up, down = _low_rank(mat, 5, clamp_quantile=1.0)
    u, s, vh = torch.linalg.svd(mat, full_matrices=False)
    best = (u[:, :5] * s[:5]) @ vh[:5]
    assert torch.allclose(up @ down, best, atol=1e-5)
    up, down = _low_rank(mat.T.contiguous(), 5, clamp_quantile=1.0)  # the wide case
    assert torch.allclose(up @ down, best.T, atol=1e-5)


def test_randomized_svd_of_large_layers_is_near_optimal_and_reproducible():
    torch.manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(600, 300))
    p, _ = torch.linalg.qr(torch.randn(400, 300))
    mat = (q * torch.arange(1, 301) ** -0.5) @ p.T  # a flat spectrum, the hardest case
    up, down = _low_rank(mat, 16, clamp_quantile=1.0)
    s = torch.linalg.svdvals(mat)
    optimal = torch.sqrt((s[16:] ** 2).sum())
    assert torch.linalg.norm(mat - up @ down) < 1.001 * optimal
    again_up, again_down = _low_rank(mat, 16, clamp_quantile=1.0)
    assert torch.equal(up, again_up) and torch.equal(down, again_down)


def test_extract_of_identical_or_mismatched_models_is_refused():
    base = tiny_base_model("sd1")
    with pytest.raises(UserError, match="nothing to extract"):
        extract_lora(base, copy.deepcopy(base), rank=4)
    with pytest.raises(FamilyError):
        extract_lora(base, tiny_base_model("sdxl"), rank=4)


# ----------------------------------------------------------------------------- resize


def test_resize_keeps_the_top_directions_and_the_scale():
    model = tiny_base_model("sd1")
    lora = random_lora(model, rank=6, alpha=3.0, conv=True, vary=True)  # ranks 6..8
    small = resize_lora(lora, 4)
    assert small.modules.keys() == lora.modules.keys()
    for key, new in small.modules.items():
        mod = lora.modules[key]
        assert new.rank == 4 and new.scale == pytest.approx(mod.scale)
        assert new.down.shape[1:] == mod.down.shape[1:] and new.up.shape[0] == mod.up.shape[0]
    for key in [k for k in lora.modules if "conv" in k][:3] + list(lora.modules)[::20]:  # SVDs are slow on a busy CPU
        mod, new = lora.modules[key], small.modules[key]
        full = mod.delta().flatten(1)
        u, s, vh = torch.linalg.svd(full, full_matrices=False)
        best = (u[:, :4] * s[:4]) @ vh[:4]
        assert torch.allclose(new.delta().flatten(1), best, atol=1e-5 * s[0]), key
        assert torch.allclose(torch.linalg.svdvals(new.delta().flatten(1))[:4], s[:4], rtol=1e-4)
    assert resize_lora(small, 8).modules == small.modules  # never grows


# ----------------------------------------------------------------------------- command line


@pytest.fixture()
def files(tmp_path):
    base = tiny_base_model("sd1")
    base_file = save_single_file(base, tmp_path / "base.safetensors", dtype="fp32")
    lora = random_lora(base, conv=True)
    lora_file = write_kohya(lora, tmp_path / "zwx.safetensors")
    return tmp_path, base_file, lora_file, lora


@pytest.mark.slow
def test_cli_merge_writes_the_merged_checkpoint(files, capsys):
    tmp, base_file, lora_file, lora = files
    out = tmp / "merged.safetensors"
    assert main(["lora", "merge", "--base", str(base_file), "--lora", f"{lora_file}:0.5", str(out), "--dtype", "fp32"]) == 0
    expected = merge_loras(load_base_model(base_file), [(lora, 0.5)])
    got = load_base_model(out)
    for part, root in model_parts(expected).items():
        for name, p in root.named_parameters():
            assert torch.allclose(model_parts(got)[part].get_parameter(name), p, atol=1e-6), name
    assert "wrote" in capsys.readouterr().out


def test_cli_merge_refuses_bad_input_without_output(files, capsys):
    tmp, base_file, lora_file, _ = files
    sdxl_lora = write_kohya(random_lora(tiny_base_model("sdxl")), tmp / "xl.safetensors")
    out = tmp / "merged.safetensors"
    cases = {
        "the LoRA looks like Stable Diffusion XL": ["--lora", str(sdxl_lora), str(out)],
        "not found": ["--lora", str(tmp / "missing.safetensors"), str(out)],
        "same path": ["--lora", str(lora_file), str(lora_file)],
    }
    for message, args in cases.items():
        assert main(["lora", "merge", "--base", str(base_file), *args]) == 1
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and message in err and "\n" not in err, err
        assert not out.exists()
    assert sorted(p.name for p in tmp.iterdir()) == ["base.safetensors", "xl.safetensors", "zwx.safetensors"]


@pytest.mark.slow
def test_cli_extract_resize_convert(files, capsys):
    tmp, base_file, lora_file, lora = files
    base = load_base_model(base_file)
    tuned, _ = low_rank_tuned(base, rank=2)
    tuned_file = save_single_file(tuned, tmp / "tuned.safetensors", dtype="fp32")
    extracted = tmp / "extracted.safetensors"
    assert main(["lora", "extract", "--base", str(base_file), "--tuned", str(tuned_file), "--rank", "2", str(extracted)]) == 0
    got = read_lora(extracted)
    assert got.family.name == "sd1" and {m.rank for m in got.modules.values()} == {2}
    assert len(got.modules) == sum(len(lora_target_modules(r)) for r in model_parts(base).values())

    resized = tmp / "resized.safetensors"
    assert main(["lora", "resize", str(lora_file), str(resized), "--rank", "1"]) == 0
    assert {m.rank for m in read_lora(resized).modules.values()} == {1}
    assert main(["lora", "resize", str(lora_file), str(resized), "--rank", "1"]) == 1  # exists
    assert "--overwrite" in capsys.readouterr().err

    peft_file, back = tmp / "peft.safetensors", tmp / "back.safetensors"
    assert main(["lora", "convert", str(lora_file), str(peft_file), "--to", "peft", "--base", str(base_file)]) == 0
    assert main(["lora", "convert", str(peft_file), str(back), "--to", "kohya"]) == 0
    a, b = load_file(lora_file), load_file(back)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
