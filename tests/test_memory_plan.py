"""The memory planner against real steps, memory="auto"'s choices, and refusing before loading."""
from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from test_train_support import Recorder, tiny_config

from dreambooth_core.config import config_from_dict
from dreambooth_core.errors import UserError
from dreambooth_core.plan.live_bytes import LiveBytes, storage_bytes
from dreambooth_core.plan.memory import plan_memory

METHODS = ("lora", "dreambooth", "textual_inversion", "hypernetwork")


def measured_step(config, model) -> int:
    """Bytes the loop's second step holds at its peak: what lives on the device when it
    starts (weights, optimizer state) plus the peak of what the step allocates, counted on
    real tensors by the same dispatch mode the planner uses (deterministic, unlike RSS,
    which the allocator's caching and other processes blur)."""
    from dreambooth_core.train.loop import Trainer

    peaks: list[int] = []
    rec = Recorder()
    trainer = Trainer(config, rec, rec.cancel, model=model)
    real_step = trainer._optimizer_step

    def counted_step():
        if trainer.step == 0:
            return real_step()  # the first step creates the optimizer state
        m = trainer.model
        held = [t for mod in (m.unet, m.vae, *m.text_encoders, *trainer.method.trainable_modules().values())
                for t in (*mod.parameters(), *mod.buffers())]
        before = storage_bytes([held, trainer.optimizer.state_dict()["state"]])
        with LiveBytes() as live:
            out = real_step()
        peaks.append(before + live.peak)
        return out

    trainer._optimizer_step = counted_step
    trainer.run()
    return peaks[0]


def step_bytes(plan) -> int:
    """The plan's device total without host caches and the CPU packing copy (switched off here)."""
    return plan.total_bytes - plan.parts["caches"] - plan.parts["packed_convolutions"]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("checkpointing", [False, True])
def test_plan_is_within_15_percent_of_a_real_step(tmp_path, method, checkpointing):
    from dreambooth_core.models.tiny import tiny_base_model

    cfg = tiny_config(tmp_path, method=method, memory="manual", pack_frozen_convolutions=False, max_train_steps=2,
                      gradient_checkpointing=checkpointing, learning_rate=1e-4)
    model = tiny_base_model("sd1")
    planned = step_bytes(plan_memory(cfg, model=model))
    measured = measured_step(cfg, model)
    assert planned == pytest.approx(measured, rel=0.15), (planned, measured)


@pytest.mark.parametrize("bf16_weights", [False, True])
def test_plan_with_the_step_fused_into_backward_is_within_15_percent_of_a_real_step(tmp_path, bf16_weights):
    """Full fine-tuning with Adafactor stepping each weight inside backward (no full set of
    gradients), with fp32 or (full_bf16) bf16 trained weights."""
    from dreambooth_core.models.tiny import tiny_base_model

    cfg = tiny_config(tmp_path, method="dreambooth", memory="manual", pack_frozen_convolutions=False, max_train_steps=2,
                      optimizer="adafactor", fused_optimizer_step=True, full_bf16=bf16_weights,
                      mixed_precision="bf16" if bf16_weights else "no", learning_rate=1e-4)
    model = tiny_base_model("sd1")
    plan = plan_memory(cfg, model=model)
    measured = measured_step(cfg, model)
    assert step_bytes(plan) == pytest.approx(measured, rel=0.15), (step_bytes(plan), measured)
    assert plan.parts["gradients"] < plan.parts["trainable_weights"] / 4


@pytest.mark.slow
def test_plan_of_a_lora_step_on_the_full_sd15_architecture(tmp_path):
    """One LoRA step of the real SD1.5 module tree (random weights) at 128 px."""
    model = random_sd15()
    cfg = tiny_config(tmp_path, method="lora", memory="manual", pack_frozen_convolutions=False, resolution=128, rank=16, max_train_steps=2)
    planned = step_bytes(plan_memory(cfg, model=model))
    measured = measured_step(cfg, model)
    assert planned == pytest.approx(measured, rel=0.15), (planned, measured)


def random_sd15():
    from dreambooth_core.families import get_family
    from dreambooth_core.models.base import BaseModel
    from dreambooth_core.models.configs import _empty_components, shipped_configs
    from dreambooth_core.models.tokenizers import family_tokenizers

    fam = get_family("sd1")
    configs = shipped_configs(fam)
    modules = _empty_components(fam, configs, empty=False)
    return BaseModel(fam, modules["unet"], modules["vae"], [modules["text_encoder"]], family_tokenizers(fam), configs["scheduler"], name="sd1-random")


@pytest.mark.slow
def test_plan_of_a_fused_bf16_full_fine_tuning_step_on_the_full_sd15_architecture(tmp_path):
    """The savings that make SD1.5 DreamBooth fit a small card (bf16 weights, Adafactor fused
    into backward, checkpointing), one real step of the whole UNet at 128 px."""
    cfg = tiny_config(tmp_path, method="dreambooth", memory="manual", pack_frozen_convolutions=False, resolution=128, max_train_steps=2,
                      mixed_precision="bf16", optimizer="adafactor", fused_optimizer_step=True, full_bf16=True,
                      gradient_checkpointing=True, learning_rate=1e-5)
    model = random_sd15()
    planned = step_bytes(plan_memory(cfg, model=model))
    measured = measured_step(cfg, model)
    assert planned == pytest.approx(measured, rel=0.15), (planned, measured)


def test_auto_takes_savings_in_order_until_the_run_fits(tmp_path):
    """A table of free-memory cases for DreamBooth on a CPU: each case has just the memory the
    plan after n savings needs, and gets exactly those n (packing saves nothing when the UNet trains)."""
    from dreambooth_core.models.tiny import tiny_base_model
    from dreambooth_core.plan.auto import MARGIN, choose

    model = tiny_base_model("sd1")
    cfg = tiny_config(tmp_path, method="dreambooth")
    table = [
        ({}, []),
        ({"mixed_precision": "bf16"}, ["bf16 mixed precision"]),
        ({"mixed_precision": "bf16", "gradient_checkpointing": True}, ["bf16 mixed precision", "gradient checkpointing"]),
        ({"mixed_precision": "bf16", "gradient_checkpointing": True, "optimizer": "adafactor"},
         ["bf16 mixed precision", "gradient checkpointing", "adafactor optimizer"]),
        ({"mixed_precision": "bf16", "gradient_checkpointing": True, "optimizer": "adafactor", "fused_optimizer_step": True},
         ["bf16 mixed precision", "gradient checkpointing", "adafactor optimizer", "adafactor step fused into backward"]),
        ({"mixed_precision": "bf16", "gradient_checkpointing": True, "optimizer": "adafactor", "fused_optimizer_step": True, "full_bf16": True},
         ["bf16 mixed precision", "gradient checkpointing", "adafactor optimizer", "adafactor step fused into backward",
          "bf16 trained weights (full_bf16: costs precision)"]),
    ]
    totals = []
    for changes, names in table:
        expected = dataclasses.replace(cfg, **changes)
        total = plan_memory(expected, model=model, device="cpu").total_bytes
        chosen, plan = choose(cfg, int(total / (1 - MARGIN)) + 1, "cpu", model=model)
        assert plan.choices == names and plan.total_bytes == total
        assert dataclasses.asdict(chosen) == dataclasses.asdict(expected)
        totals.append(total)
    assert totals == sorted(totals, reverse=True) and len(set(totals)) == len(totals)  # every saving saves
    with pytest.raises(UserError, match="even with every saving"):
        choose(cfg, int(totals[-1] * 0.5), "cpu", model=model)


def test_a_memory_limit_below_the_free_memory_is_what_auto_fits(tmp_path, monkeypatch):
    """memory_limit_gb (a shared machine, a host that needs room): auto fits the run under it
    although the device has more free; unset, the free memory decides; a limit of 0 is refused."""
    from dreambooth_core.config import ConfigError
    from dreambooth_core.models.tiny import tiny_base_model
    from dreambooth_core.plan import memory
    from dreambooth_core.plan.auto import MARGIN, plan_for_run

    model = tiny_base_model("sd1")
    cfg = tiny_config(tmp_path, method="dreambooth")
    bf16 = plan_memory(dataclasses.replace(cfg, mixed_precision="bf16"), model=model, device="cpu").total_bytes
    monkeypatch.setattr(memory, "free_memory", lambda device: 64 * memory.GiB)
    monkeypatch.setattr(memory, "run_device", lambda: "cpu")
    assert plan_for_run(cfg, model=model)[1].choices == []
    limited, plan = plan_for_run(dataclasses.replace(cfg, memory_limit_gb=(bf16 / (1 - MARGIN) + 1) / memory.GiB), model=model)
    assert plan.choices == ["bf16 mixed precision"] and limited.mixed_precision == "bf16" and plan.total_bytes == bf16
    with pytest.raises(UserError, match="memory_limit_gb allows 0.0 GiB"):
        plan_for_run(dataclasses.replace(cfg, memory_limit_gb=0.01), model=model)
    with pytest.raises(ConfigError, match="memory_limit_gb"):
        dataclasses.replace(cfg, memory_limit_gb=0.0).validate(check_paths=False)


def test_a_saving_that_saved_nothing_is_taken_once_a_later_one_makes_it_pay(tmp_path, monkeypatch):
    """Full fine-tuning: while a full set of gradients sets the peak (after backward), gradient
    checkpointing saves nothing; once the optimizer step is fused into backward it does."""
    from dreambooth_core.plan import auto
    from dreambooth_core.plan.memory import GiB, MemoryPlan

    def peak(cfg, device="cpu", arch=None):   # weights, then the larger of gradients and activations
        gradients = 0 if cfg.fused_optimizer_step else 10
        activations = 2 if cfg.gradient_checkpointing else 6
        return MemoryPlan(parts={"all": (10 + max(gradients, activations)) * GiB}, settings={}, device=device)

    monkeypatch.setattr(auto, "plan_memory", peak)
    monkeypatch.setattr(auto, "architecture", lambda config, model=None: None)
    cfg = tiny_config(tmp_path, method="dreambooth")
    chosen, plan = auto.choose(cfg, int(12 * GiB / (1 - auto.MARGIN)) + 1, "cpu")
    assert plan.choices == ["adafactor step fused into backward", "gradient checkpointing"]
    assert chosen.fused_optimizer_step and chosen.gradient_checkpointing and chosen.mixed_precision == "no"


def test_a_pinned_setting_that_cannot_fit_is_refused_before_the_model_loads(tmp_path, monkeypatch):
    from dreambooth_core.models import load as model_load
    from dreambooth_core.models.save import save_single_file
    from dreambooth_core.models.tiny import tiny_base_model
    from dreambooth_core.plan import memory
    from dreambooth_core.plan.auto import MARGIN
    from dreambooth_core.train.loop import Trainer

    base = tmp_path / "tiny.safetensors"
    save_single_file(tiny_base_model("sd1"), base, dtype="fp32")
    all_savings = plan_memory(tiny_config(tmp_path, method="dreambooth", base_model=str(base), pack_frozen_convolutions=False,
                                          mixed_precision="bf16", gradient_checkpointing=True, optimizer="adafactor",
                                          fused_optimizer_step=True, full_bf16=True), device="cpu")
    monkeypatch.setattr(memory, "free_memory", lambda device: int(all_savings.total_bytes / (1 - MARGIN)) + 1)
    monkeypatch.setattr(memory, "run_device", lambda: "cpu")
    monkeypatch.setattr(model_load, "load_base_model", lambda *a, **k: pytest.fail("the model was loaded"))
    pinned = config_from_dict({"mixed_precision": "no"}, tiny_config(tmp_path, method="dreambooth", base_model=str(base)))
    assert pinned.pinned == ["mixed_precision"]
    rec = Recorder()
    with pytest.raises(UserError, match="mixed_precision='bf16'"):
        Trainer(pinned, rec, rec.cancel).run()


def test_cli_plan_reads_only_the_header_and_prints_json(tmp_path, capsys):
    from dreambooth_core.cli import main
    from dreambooth_core.models.save import save_single_file
    from dreambooth_core.models.tiny import tiny_base_model

    base = tmp_path / "tiny.safetensors"
    save_single_file(tiny_base_model("sd2"), base, dtype="fp32")
    assert main(["plan", "--json", "--device", "cpu", "--set", f"base_model={base}", "--set", "method=lora"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["settings"]["family"] == "sd2" and out["total_bytes"] == sum(out["parts"].values())
    assert set(out["parts"]) >= {"frozen_weights", "trainable_weights", "gradients", "optimizer_state", "activations", "caches"}
    assert out["fits"] == {"6": True, "8": True, "12": True, "16": True, "24": True}


# ---- out of memory mid-run -------------------------------------------------------------
def inject_out_of_memory(monkeypatch, at_step: int, error: BaseException) -> list[int]:
    """Step `at_step` fails once with `error` (before changing any weight); returns the steps tried."""
    from dreambooth_core.train.loop import Trainer

    tried: list[int] = []
    real = Trainer._optimizer_step

    def step(self):
        tried.append(self.step + 1)
        if self.step + 1 == at_step and tried.count(at_step) == 1:
            raise error
        return real(self)

    monkeypatch.setattr(Trainer, "_optimizer_step", step)
    return tried


def test_out_of_memory_keeps_the_last_step_and_auto_resumes_once_with_the_next_saving(tmp_path, monkeypatch):
    from safetensors.torch import load_file

    from dreambooth_core.models.save import save_single_file
    from dreambooth_core.models.tiny import tiny_base_model
    from dreambooth_core.train import run_training

    base = tmp_path / "tiny.safetensors"
    save_single_file(tiny_base_model("sd1"), base, dtype="fp32")
    tried = inject_out_of_memory(monkeypatch, 3, torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    rec = Recorder()
    cfg = tiny_config(tmp_path, base_model=str(base), max_train_steps=4, checkpointing_steps=0)
    result = run_training(cfg, rec, rec.cancel)
    assert result.status == "completed" and result.step == 4
    assert tried == [1, 2, 3, 3, 4]  # step 3 again, after resuming from step 2's state
    warning = [e.message for e in rec.events if e.type == "log" and "out of memory" in e.message]
    assert len(warning) == 1 and "state of step 2 is saved" in warning[0] and "Resuming once with" in warning[0]
    assert load_file(str(result.run_dir / "state" / "step-2" / "trainable.safetensors"))
    plan = json.loads((result.run_dir / "memory_plan.json").read_text())
    assert plan["settings"]["pack_frozen_convolutions"] is False  # the next saving on a CPU
    assert not [e for e in rec.events if e.type == "done" and e.status == "failed"]


def test_out_of_memory_with_manual_memory_stops_with_what_to_change(tmp_path, monkeypatch):
    from dreambooth_core.errors import OutOfMemory

    inject_out_of_memory(monkeypatch, 2, RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: you tried to allocate 123 bytes"))
    cfg = tiny_config(tmp_path, memory="manual", max_train_steps=3)
    rec = Recorder()
    with pytest.raises(OutOfMemory, match=r"out of memory at step 2 .*state of step 1 is saved.*set pack_frozen_convolutions=False"):
        from test_train_support import train

        train(cfg, recorder=rec)
    assert (tmp_path / "runs" / "zwx_dog" / "state" / "step-1").is_dir()
    assert [e.status for e in rec.events if e.type == "done"] == ["failed"]


def test_a_config_sent_whole_keeps_what_was_pinned():
    """The worker gets the config as to_dict(): memory settings left to auto must stay unpinned there."""
    from dreambooth_core.config import config_from_dict

    chosen = config_from_dict({"method": "lora", "optimizer": "adafactor"})
    assert chosen.pinned == ["optimizer"]
    again = config_from_dict(chosen.to_dict())
    assert again.pinned == ["optimizer"] and again.pinned_memory_keys == {"optimizer"}


# ---- frozen weights stored in fp8 ------------------------------------------------------
def lora_step(cfg, family: str):
    """A tiny model set up for `cfg` (LoRA) and one forward/backward of its UNet: (output, LoRA gradients, model)."""
    from dreambooth_core.methods import get_method
    from dreambooth_core.models.tiny import tiny_base_model

    model = tiny_base_model(family)
    torch.manual_seed(0)
    method = get_method(cfg.method)(cfg, model)
    method.setup(torch.float32)
    gen = torch.Generator().manual_seed(1)
    noisy = torch.randn(2, 4, 8, 8, generator=gen)
    hidden = torch.randn(2, 77, model.unet.config.cross_attention_dim, generator=gen)
    extra = {}
    if model.family.is_sdxl:
        extra["added_cond_kwargs"] = {"text_embeds": torch.randn(2, 24, generator=gen), "time_ids": torch.zeros(2, 6)}
    out = model.unet(noisy, torch.tensor([10, 500]), encoder_hidden_states=hidden, **extra).sample
    out.pow(2).mean().backward()
    grads = torch.cat([p.grad.flatten() for p in method.parameters()])
    return out.detach(), grads, model


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_fp8_stored_frozen_unet_trains_a_lora_step_close_to_the_compute_dtype(tmp_path, family):
    from dreambooth_core.train.fp8_weights import Fp8StoredConv2d, Fp8StoredLinear

    cfg = tiny_config(tmp_path, method="lora", conv_rank=4)
    out, grads, _ = lora_step(cfg, family)
    out8, grads8, model = lora_step(dataclasses.replace(cfg, frozen_weights_dtype="fp8"), family)
    stored = [m for m in model.unet.modules() if isinstance(m, (Fp8StoredLinear, Fp8StoredConv2d))]
    assert len(stored) > 20 and all(m.weight.dtype == torch.float8_e4m3fn for m in stored)
    names = dict((id(m), n) for n, m in model.unet.named_modules())
    assert not any("norm" in names[id(m)] for m in stored)  # diffusers' skip patterns are kept
    assert model.unet.dtype == torch.float32  # what pipelines make their latents in
    lora = [p for n, p in model.unet.named_parameters() if "lora_" in n]
    assert lora and all(p.dtype == torch.float32 and p.requires_grad for p in lora)  # peft's layers stay as they are
    assert (out8 - out).norm() / out.norm() < 0.15
    assert torch.nn.functional.cosine_similarity(grads8, grads, dim=0) > 0.95
    assert (grads8 - grads).abs().max() > 0  # fp8 really was used


def test_fp8_stored_frozen_weights_train_every_frozen_weight_method(tmp_path):
    """A whole run (bf16 autocast, checkpointing: the backward re-casts) for the methods whose base stays frozen."""
    from test_train_support import train

    for method in ("lora", "textual_inversion", "hypernetwork"):
        cfg = tiny_config(tmp_path / method, method=method, memory="manual", frozen_weights_dtype="fp8", mixed_precision="bf16",
                          gradient_checkpointing=True, max_train_steps=2, pack_frozen_convolutions=False)
        result, _, model = train(cfg, family="sdxl")
        assert result.status == "completed"
        assert model.text_encoders[1].text_model.encoder.layers[0].mlp.fc1.weight.dtype == torch.float8_e4m3fn


@pytest.mark.parametrize("method", ["lora", "textual_inversion", "hypernetwork"])
def test_plan_with_fp8_frozen_weights_is_within_15_percent_of_a_real_step(tmp_path, method):
    from dreambooth_core.models.tiny import tiny_base_model

    cfg = tiny_config(tmp_path, method=method, memory="manual", pack_frozen_convolutions=False, max_train_steps=2,
                      frozen_weights_dtype="fp8", mixed_precision="bf16", learning_rate=1e-4)
    model = tiny_base_model("sd1")
    plan = plan_memory(cfg, model=model)
    planned = step_bytes(plan)
    compute = step_bytes(plan_memory(dataclasses.replace(cfg, frozen_weights_dtype="compute"), model=tiny_base_model("sd1")))
    measured = measured_step(cfg, model)
    assert planned == pytest.approx(measured, rel=0.15), (planned, measured)
    assert plan.parts["frozen_weights"] < compute - planned + plan.parts["frozen_weights"]  # it saves


def test_auto_stores_frozen_weights_in_fp8_last_and_only_when_needed(tmp_path):
    """A LoRA run on a GPU: just enough memory for every other saving takes no fp8; less takes it, last."""
    from dreambooth_core.models.tiny import tiny_base_model
    from dreambooth_core.plan.auto import FP8_COST, MARGIN, choose

    model = tiny_base_model("sdxl")
    cfg = tiny_config(tmp_path, method="lora")
    others = dataclasses.replace(cfg, mixed_precision="bf16", cache_latents=True, gradient_checkpointing=True, optimizer="adafactor")
    without = plan_memory(others, model=model, device="cuda").total_bytes
    with_fp8 = plan_memory(dataclasses.replace(others, frozen_weights_dtype="fp8"), model=model, device="cuda").total_bytes
    assert with_fp8 < without
    chosen, plan = choose(cfg, int(without / (1 - MARGIN)) + 1, "cuda", model=model)
    assert chosen.frozen_weights_dtype == "compute" and FP8_COST not in plan.choices
    chosen, plan = choose(cfg, int(with_fp8 / (1 - MARGIN)) + 1, "cuda", model=model)
    assert chosen.frozen_weights_dtype == "fp8" and plan.choices[-1] == FP8_COST and plan.total_bytes == with_fp8
    pinned = config_from_dict({"frozen_weights_dtype": "compute"}, cfg)
    with pytest.raises(UserError, match="frozen_weights_dtype='fp8'"):
        choose(pinned, int(with_fp8 / (1 - MARGIN)) + 1, "cuda", model=model)


def test_cached_away_components_leave_a_gpu_even_with_previews(tmp_path):
    """On a GPU the VAE (latents cached) and text encoders (outputs cached) are off the device
    during steps; with previews the plan says what bringing them back costs."""
    from dreambooth_core.models.tiny import tiny_base_model

    model = tiny_base_model("sd1")
    cfg = tiny_config(tmp_path, method="lora", cache_latents=True, num_validation_images=1)
    gpu, cpu = plan_memory(cfg, model=model, device="cuda"), plan_memory(cfg, model=model, device="cpu")
    parked = sum(t.numel() * t.element_size() for m in (model.vae, *model.text_encoders) for t in (*m.parameters(), *m.buffers()))
    assert cpu.parts["frozen_weights"] - gpu.parts["frozen_weights"] == pytest.approx(parked, rel=0.01)
    assert gpu.preview_bytes == pytest.approx(parked, rel=0.01) and "validation previews" in gpu.describe()
    assert plan_memory(dataclasses.replace(cfg, num_validation_images=0), model=model, device="cuda").preview_bytes == 0


def test_fp8_stored_frozen_weights_draw_a_preview(tmp_path):
    """Validation previews and class images run the pipeline on the fp8-stored model (no gradients)."""
    from dreambooth_core.methods import get_method
    from dreambooth_core.models.tiny import tiny_base_model
    from dreambooth_core.sample import generate

    model = tiny_base_model("sdxl")
    cfg = tiny_config(tmp_path, method="lora", frozen_weights_dtype="fp8")
    get_method("lora")(cfg, model).setup(torch.float32)
    images = generate(model, ["a photo of zwx dog"], steps=2, width=64, height=64)
    assert len(images) == 1 and images[0].size == (64, 64)
