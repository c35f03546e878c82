"""Adafactor's step fused into the backward pass, and bf16 trained weights (issue 14: full
fine-tuning on small cards): the same training as the plain step, resumable, refused where
it cannot work."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from test_train_support import Recorder, tiny_config, train

from dreambooth_core.errors import ConfigError

# a DreamBooth run whose optimizer is Adafactor; the learning rate changes every step
FULL = dict(method="dreambooth", optimizer="adafactor", memory="manual", pack_frozen_convolutions=False,
            lr_scheduler="linear", lr_warmup_steps=1, learning_rate=1e-3, adam_weight_decay=0.01, seed=3)


def trained_weights(result, step: int) -> dict[str, torch.Tensor]:
    return load_file(str(result.run_dir / "state" / f"step-{step}" / "trainable.safetensors"))


def test_fused_step_trains_the_same_weights_as_the_plain_adafactor_step(tmp_path):
    """Without clipping (the one thing fusing changes) both give the same weights after 3 steps."""
    from dreambooth_core.models.tiny import tiny_base_model

    plain, _, _ = train(tiny_config(tmp_path / "plain", max_train_steps=3, max_grad_norm=0.0, **FULL))
    fused, rec, model = train(tiny_config(tmp_path / "fused", max_train_steps=3, max_grad_norm=0.0, fused_optimizer_step=True, **FULL))
    a, b = trained_weights(plain, 3), trained_weights(fused, 3)
    start = {f"unet/{k}": v for k, v in tiny_base_model("sd1").unet.state_dict().items()}
    assert a.keys() == b.keys()
    assert any(not torch.equal(b[k], start[k]) for k in b)   # it trained
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-6, msg=k)
    # the hooks are gone with the run: the host's model is not stepped by a later backward
    assert all(not p._post_accumulate_grad_hooks for p in model.unet.parameters())


def test_fused_step_clips_each_weights_gradient_on_its_own(tmp_path):
    from dreambooth_core.train.fused_step import FusedOptimizerStep
    from transformers.optimization import Adafactor

    w = torch.nn.Parameter(torch.ones(4, 4))
    seen: list[float] = []
    opt = Adafactor([w], lr=0.1, scale_parameter=False, relative_step=False)
    real_step = opt.step
    opt.step = lambda: (seen.append(float(w.grad.norm())), real_step())[1]
    fused = FusedOptimizerStep(opt, max_grad_norm=0.5)
    (w * 100).sum().backward()
    assert seen == [pytest.approx(0.5)] and w.grad is None and not torch.equal(w, torch.ones(4, 4))
    fused.remove()
    (w * 1).sum().backward()
    assert w.grad is not None and len(seen) == 1


@pytest.mark.slow
def test_resumed_fused_run_equals_an_unbroken_one(tmp_path):
    settings = dict(max_train_steps=4, fused_optimizer_step=True, **FULL)
    full, _, _ = train(tiny_config(tmp_path / "a", **settings))
    cfg = tiny_config(tmp_path / "b", **settings)
    first, _, _ = train(cfg, recorder=Recorder(cancel_after=2))
    assert first.status == "cancelled" and first.step == 2
    cfg.resume_from = "latest"
    second, _, _ = train(cfg)
    a, b = trained_weights(full, 4), trained_weights(second, 4)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), "resumed run differs from the unbroken one"


def test_full_bf16_trains_bf16_weights_and_keeps_frozen_parts_in_the_compute_dtype(tmp_path):
    cfg = tiny_config(tmp_path, max_train_steps=2, fused_optimizer_step=True, full_bf16=True, mixed_precision="bf16", **FULL)
    result, _, model = train(cfg)
    weights = trained_weights(result, 2)
    assert result.status == "completed" and {v.dtype for v in weights.values()} == {torch.bfloat16}
    assert all(torch.isfinite(v.float()).all() for v in weights.values())
    assert model.vae.dtype == torch.bfloat16 and model.text_encoders[0].dtype == torch.bfloat16


@pytest.mark.parametrize("changes, message", [
    (dict(method="lora", optimizer="adafactor"), "full fine-tuning"),
    (dict(method="dreambooth", optimizer="adamw"), "optimizer='adafactor'"),
    (dict(method="dreambooth", optimizer="adafactor", gradient_accumulation_steps=2), "gradient_accumulation_steps=1"),
    (dict(method="dreambooth", optimizer="adafactor", mixed_precision="fp16"), "loss scaling"),
])
def test_fused_step_is_refused_where_it_cannot_work(tmp_path, changes, message):
    with pytest.raises(ConfigError, match=message):
        tiny_config(tmp_path, fused_optimizer_step=True, **changes).validate()


def test_full_bf16_needs_bf16_mixed_precision(tmp_path):
    with pytest.raises(ConfigError, match="mixed_precision='bf16'"):
        tiny_config(tmp_path, method="dreambooth", full_bf16=True, mixed_precision="no").validate()


@pytest.mark.parametrize("changes, fp32", [
    (dict(), {"unet"}),                                            # frozen VAE and text encoder in bf16
    (dict(train_text_encoder=True), {"unet", "text_encoder", "text_encoder_2"}),
    (dict(save_dtype="fp32"), {"unet", "vae", "text_encoder", "text_encoder_2"}),  # a full-precision file asked for
    (dict(full_bf16=True), set()),
])
def test_dreambooth_loads_what_does_not_train_in_the_compute_dtype(tmp_path, changes, fp32):
    from dreambooth_core.methods.dreambooth import DreamBoothMethod

    cfg = tiny_config(tmp_path, method="dreambooth", mixed_precision="bf16", **changes)
    dtypes = DreamBoothMethod.load_dtypes(cfg, torch.bfloat16)
    assert {c for c, d in dtypes.items() if d == torch.float32} == fp32
    assert {d for c, d in dtypes.items() if c not in fp32} <= {torch.bfloat16}


def test_out_of_memory_inside_a_fused_backward_keeps_no_half_stepped_state(tmp_path, monkeypatch):
    """Some weights of step 3 were already stepped when memory ran out: the state saved at step 1
    is what a resume continues from, not the half-stepped weights."""
    from transformers.optimization import Adafactor

    from dreambooth_core.errors import OutOfMemory

    calls = {"n": 0}
    real = Adafactor.step
    from dreambooth_core.models.tiny import tiny_base_model

    per_step = len(list(tiny_base_model("sd1").unet.parameters()))

    def step(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 2 * per_step + 5:   # the 5th weight of step 3
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(self, *a, **k)

    monkeypatch.setattr(Adafactor, "step", step)
    cfg = tiny_config(tmp_path, max_train_steps=4, checkpointing_steps=1, fused_optimizer_step=True, **FULL)
    rec = Recorder()
    with pytest.raises(OutOfMemory, match="already updated 4 weights.*state of step 2 is kept") as info:
        train(cfg, recorder=rec)
    assert info.value.step == 2
    states = sorted(p.name for p in (tmp_path / "runs" / "zwx_dog" / "state").iterdir())
    assert states == ["step-1", "step-2"]
