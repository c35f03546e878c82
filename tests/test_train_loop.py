"""The loop's contracts: the objective (prior term, v target), events, cancel and resume,
run-folder contents, memory freeing and failures that must lose nothing."""
from __future__ import annotations

import errno
import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from test_train_support import Recorder, make_images, train, tiny_config

from dreambooth_core.errors import OutputExistsError, UserError
from dreambooth_core.fileio import read_safetensors_metadata


def class_dir(tmp_path, n=2):
    return str(make_images(tmp_path / "class", n=n, size=(64, 64), seed=7))


def trained_weights(result, step):
    return load_file(str(result.run_dir / "state" / f"step-{step}" / "trainable.safetensors"))


# ---- the public entry point ----------------------------------------------------------------
def test_run_training_loads_the_base_model_file(tmp_path):
    from dreambooth_core.models.hashes import file_sha256
    from dreambooth_core.models.save import save_single_file
    from dreambooth_core.models.tiny import tiny_base_model
    from dreambooth_core.train import RunResult, run_training

    base = tmp_path / "tiny-sd1.safetensors"
    save_single_file(tiny_base_model("sd1"), base, dtype="fp32")
    rec = Recorder()
    result = run_training(tiny_config(tmp_path, base_model=str(base), max_train_steps=1), rec, rec.cancel)
    assert isinstance(result, RunResult) and result.status == "completed" and result.step == 1
    saved = json.loads((result.run_dir / "config.json").read_text())["resolved"]
    assert saved["base_model_name"] == "tiny-sd1.safetensors" and saved["base_model_hash"] == file_sha256(base)


# ---- the objective ------------------------------------------------------------------------
@pytest.mark.slow
def test_prior_loss_weight_scales_exactly_the_class_term(tmp_path):
    """With plain SGD one step moves the weights by -lr·(g_instance + λ·g_class): the update
    must be affine in λ with a non-zero slope, and the loss must be instance + λ·prior."""
    deltas, rows = {}, {}
    for lam in (0.5, 1.0, 1.5):
        cfg = tiny_config(tmp_path / str(lam), max_train_steps=1, optimizer="sgd", adam_weight_decay=0.0, max_grad_norm=0.0,
                          with_prior_preservation=True, prior_loss_weight=lam, class_data_dir=class_dir(tmp_path))
        result, rec, _ = train(cfg)
        deltas[lam] = trained_weights(result, 1)
        (rows[lam],) = [e for e in rec.of("progress") if e.phase == "train"]
        row = result.run_dir.joinpath("loss.csv").read_text().splitlines()[1].split(",")
        instance, prior = float(row[2]), float(row[3])
        assert rows[lam].loss == pytest.approx(instance + lam * prior, rel=1e-6)
    # same examples, noise and timesteps in every run: identical instance and prior losses
    lora_b = [k for k in deltas[1.0] if "lora_B" in k]
    assert lora_b
    for k in lora_b:
        step_small = deltas[1.0][k] - deltas[0.5][k]
        step_large = deltas[1.5][k] - deltas[1.0][k]
        torch.testing.assert_close(step_small, step_large, atol=1e-7, rtol=1e-4)
    assert max((deltas[1.0][k] - deltas[0.5][k]).abs().max().item() for k in lora_b) > 1e-6


def test_v_prediction_models_train_on_the_velocity(tmp_path, monkeypatch):
    import dreambooth_core.train.loop as loop

    seen = []
    real = loop.training_target

    def spy(scheduler, latents, noise, timesteps):
        target = real(scheduler, latents, noise, timesteps)
        seen.append((scheduler.config.prediction_type, torch.allclose(target, noise)))
        return target

    monkeypatch.setattr(loop, "training_target", spy)
    train(tiny_config(tmp_path, max_train_steps=1), "sd2-v")
    assert seen == [("v_prediction", False)]


# ---- events, run folder, validation ---------------------------------------------------------
def test_events_and_run_folder(tmp_path):
    cfg = tiny_config(tmp_path, max_train_steps=3, checkpointing_steps=2, validation_steps=2, num_validation_images=1,
                      validation_prompts=["a photo of zwx dog"], validation_scheduler="euler_a")
    result, rec, _ = train(cfg)
    events = rec.events
    assert events[0].type == "started" and events[0].total_steps == 3 and events[0].start_step == 0
    assert events[-1].type == "done" and events[-1].status == "completed" and events[-1].step == 3
    train_steps = [e.step for e in rec.of("progress") if e.phase == "train"]
    assert train_steps == [1, 2, 3]
    assert all(e.loss is not None and math.isfinite(e.loss) and e.lr == cfg.learning_rate and e.eta_seconds >= 0
               for e in rec.of("progress") if e.phase == "train")
    # validation before training, at the validation step, and after training
    assert [p.step for p in rec.of("preview")] == [0, 2, 3]
    assert all(p.path.startswith(str(result.run_dir / "samples")) and p.prompt == "a photo of zwx dog" for p in rec.of("preview"))
    kinds = [(a.kind, a.name, a.final) for a in rec.of("artifact")]
    assert ("state", "step-2", False) in kinds and ("state", "step-3", False) in kinds
    assert ("lora", "zwx_dog-step2", False) in kinds and ("lora", "zwx_dog", True) in kinds and ("loss_plot", "loss.png", False) in kinds
    assert [a.name for a in result.outputs] == ["zwx_dog"]

    rd = result.run_dir
    assert sorted(p.name for p in (rd / "outputs").iterdir()) == ["zwx_dog-step2.safetensors", "zwx_dog.safetensors"]
    assert (rd / "samples" / "step-000002-grid.png").is_file() and (rd / "loss.png").is_file()
    saved = json.loads((rd / "config.json").read_text())
    assert saved["max_train_steps"] == 3 and saved["resolved"]["family"] == "sd1" and saved["resolved"]["resolution"] == 64
    assert len((rd / "loss.csv").read_text().splitlines()) == 4
    assert "saved lora" in (rd / "log.txt").read_text()


def test_common_word_token_warns(tmp_path):
    _, rec, _ = train(tiny_config(tmp_path, token="dog", max_train_steps=1))
    assert any("common word" in e.message for e in rec.of("log") if e.level == "warning")


@pytest.mark.slow
def test_frozen_parts_are_freed_when_nothing_needs_them(tmp_path):
    _, _, model = train(tiny_config(tmp_path, max_train_steps=1))
    assert next(model.vae.parameters()).device.type == "meta"
    assert next(model.text_encoders[0].parameters()).device.type == "meta"
    # a checkpoint needs the whole model
    _, _, model = train(tiny_config(tmp_path / "db", method="dreambooth", max_train_steps=1, learning_rate=1e-4))
    assert next(model.vae.parameters()).device.type == "cpu"


def test_the_optimizer_state_is_let_go_before_the_final_saves_once_it_is_saved(tmp_path):
    """Full fine-tuning: the final save's copy of the model must not stack on the optimizer's
    state, which the last saved state already holds (a resume reads it from there)."""
    from dreambooth_core.models.tiny import tiny_base_model
    from dreambooth_core.train.loop import Trainer

    rec = Recorder()
    trainer = Trainer(tiny_config(tmp_path, method="dreambooth", max_train_steps=1, learning_rate=1e-4), rec, rec.cancel,
                      model=tiny_base_model("sd1"))
    held_when_saving = []
    save = trainer._save_artifacts
    trainer._save_artifacts = lambda *a, **k: (held_when_saving.append(len(trainer.optimizer.state)), save(*a, **k))[1]
    result = trainer.run()
    assert result.status == "completed" and held_when_saving == [0]
    saved = torch.load(result.run_dir / "state" / "step-1" / "optimizer.pt", weights_only=True)
    assert len(saved["state"]) == len(trainer.params) > 0


@pytest.mark.slow
def test_every_option_together(tmp_path):
    """Bucketing (instance and class images in different buckets, so separate UNet passes),
    captions, no latent cache, flips, min-SNR, offset noise, checkpointing, accumulation."""
    cfg = tiny_config(
        tmp_path, method="dreambooth", learning_rate=1e-4, instance_data_dir=str(make_images(tmp_path / "wide", size=(128, 64), captions=True)),
        enable_bucketing=True, cache_latents=False, random_flip=True, snr_gamma=5.0, noise_offset=0.1, gradient_checkpointing=True,
        gradient_accumulation_steps=2, train_batch_size=2, with_prior_preservation=True, class_data_dir=class_dir(tmp_path, 3),
        max_train_steps=2, lr_scheduler="cosine", lr_warmup_steps=1,
    )
    result, rec, _ = train(cfg, "sdxl")
    assert result.status == "completed"
    losses = [e.loss for e in rec.of("progress") if e.phase == "train"]
    assert len(losses) == 2 and all(math.isfinite(x) for x in losses)
    assert [e.lr for e in rec.of("progress") if e.phase == "train"][0] == 0.0  # warm-up starts at 0


# ---- cancel and resume ----------------------------------------------------------------------
RESUME_SETTINGS = dict(
    max_train_steps=4, train_batch_size=2, gradient_accumulation_steps=2, random_flip=True, noise_offset=0.05, snr_gamma=5.0,
    lr_scheduler="cosine", lr_warmup_steps=1, adam_weight_decay=0.1, with_prior_preservation=True,
)


@pytest.mark.slow
def test_cancel_then_resume_equals_an_uninterrupted_run(tmp_path):
    classes = class_dir(tmp_path)
    full, _, _ = train(tiny_config(tmp_path / "a", class_data_dir=classes, **RESUME_SETTINGS))

    cfg = tiny_config(tmp_path / "b", class_data_dir=classes, **RESUME_SETTINGS)
    first, rec, _ = train(cfg, recorder=Recorder(cancel_after=2))
    assert first.status == "cancelled" and first.step == 2
    assert rec.events[-1].type == "done" and rec.events[-1].status == "cancelled"
    (cancelled,) = [a for a in rec.of("artifact") if a.kind == "lora"]
    assert cancelled.name == "zwx_dog-step2-cancelled" and not cancelled.final and cancelled.path.endswith(".safetensors")
    assert (first.run_dir / "state" / "step-2" / "state.json").is_file()

    cfg.resume_from = "latest"
    second, rec2, _ = train(cfg)
    assert rec2.events[0].type == "started" and rec2.events[0].start_step == 2
    assert [e.step for e in rec2.of("progress") if e.phase == "train"] == [3, 4]
    a, b = trained_weights(full, 4), trained_weights(second, 4)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed run differs from the uninterrupted one"
    assert load_file(full.outputs[0].path).keys() == load_file(second.outputs[0].path).keys()
    # the loss history continues where the state was saved
    steps = [int(line.split(",")[0]) for line in (second.run_dir / "loss.csv").read_text().splitlines()[1:]]
    assert steps == [1, 2, 3, 4]


def test_finished_run_continued_with_more_steps_equals_a_longer_run(tmp_path):
    """8 steps, then resumed to 16: bit for bit the 16-step run, and the run's own artifact is
    replaced (nothing else); a file of that name the run did not write is still refused."""
    settings = dict(train_batch_size=2, random_flip=True, noise_offset=0.05, adam_weight_decay=0.1)
    full, _, _ = train(tiny_config(tmp_path / "a", max_train_steps=16, **settings))
    cfg = tiny_config(tmp_path / "b", max_train_steps=8, **settings)
    first, _, _ = train(cfg)
    artifact = Path(first.outputs[0].path)
    assert first.status == "completed" and read_safetensors_metadata(artifact)["ss_steps"] == "8"

    cfg.max_train_steps, cfg.resume_from = 16, "latest"
    second, rec, _ = train(cfg)
    assert rec.events[0].start_step == 8 and second.step == 16
    a, b = trained_weights(full, 16), trained_weights(second, 16)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), "continued run differs from the longer one"
    assert Path(second.outputs[0].path) == artifact and read_safetensors_metadata(artifact)["ss_steps"] == "16"
    assert sorted(p.name for p in artifact.parent.iterdir()) == [artifact.name]
    full_file, continued = load_file(full.outputs[0].path), load_file(str(artifact))
    assert all(torch.equal(full_file[k], continued[k]) for k in full_file)

    # a state that is not the one the final artifact was written at: that file is not this state's result
    cfg.max_train_steps = 20
    (second.run_dir / "final.json").write_text('{"step": 12, "outputs": ["zwx_dog.safetensors"]}')
    with pytest.raises(OutputExistsError, match="zwx_dog.safetensors already exists"):
        train(cfg)


@pytest.mark.slow
def test_resume_passes_over_a_damaged_state_to_the_one_before(tmp_path):
    cfg = tiny_config(tmp_path, max_train_steps=4, checkpointing_steps=1)
    first, _, _ = train(cfg, recorder=Recorder(cancel_after=2))
    assert first.status == "cancelled" and first.step == 2
    damaged = first.run_dir / "state" / "step-2" / "optimizer.pt"
    damaged.write_bytes(b"garbage" * 20)
    cfg.resume_from = "latest"
    second, rec, _ = train(cfg)
    assert second.status == "completed" and rec.events[0].start_step == 1
    assert any(str(damaged) in e.message and "resuming from the state saved before it" in e.message
               for e in rec.of("log") if e.level == "warning")


@pytest.mark.slow
def test_resume_refuses_changed_settings(tmp_path):
    cfg = tiny_config(tmp_path, max_train_steps=2)
    train(cfg, recorder=Recorder(cancel_after=1))
    cfg.resume_from = "latest"
    cfg.rank = 8
    with pytest.raises(UserError, match="rank was 4 and is now 8"):
        train(cfg)


@pytest.mark.parametrize("prior", [True, False])  # stops while making class images / caching latents
def test_cancel_before_training_leaves_no_state(tmp_path, prior):
    rec = Recorder()
    rec.cancel.cancel()
    result, rec, _ = train(tiny_config(tmp_path, with_prior_preservation=prior), recorder=rec)
    assert result.status == "cancelled" and rec.events[-1].status == "cancelled" and result.step == 0
    assert not list((result.run_dir / "state").iterdir()) and not list((result.run_dir / "outputs").iterdir())
    assert not [e for e in rec.of("progress") if e.phase == "train"]


# ---- failures that must lose nothing ----------------------------------------------------------
@pytest.mark.slow
def test_a_fresh_run_refuses_an_existing_run_folder(tmp_path):
    cfg = tiny_config(tmp_path, max_train_steps=1)
    train(cfg)
    with pytest.raises(OutputExistsError):
        _, rec, _ = train(cfg, recorder=(rec := Recorder()))
    assert rec.events[-2].type == "error" and rec.events[-2].user_error
    assert rec.events[-1].type == "done" and rec.events[-1].status == "failed"


@pytest.mark.slow
def test_full_disk_while_saving_keeps_the_previous_artifact(tmp_path, monkeypatch):
    import safetensors.torch

    cfg = tiny_config(tmp_path, max_train_steps=1)
    first, _, _ = train(cfg)
    path = first.outputs[0].path
    before = open(path, "rb").read()

    real = safetensors.torch.save_file

    def full_disk(tensors, filename, metadata=None):
        if "outputs" in str(filename):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(tensors, filename, metadata=metadata)

    monkeypatch.setattr(safetensors.torch, "save_file", full_disk)
    cfg.overwrite = True
    rec = Recorder()
    with pytest.raises(UserError, match="disk full"):
        train(cfg, recorder=rec)
    assert rec.events[-1].type == "done" and rec.events[-1].status == "failed"
    assert open(path, "rb").read() == before
    assert sorted(p.name for p in (first.run_dir / "outputs").iterdir()) == ["zwx_dog.safetensors"]


# ---- class images and several processes ----------------------------------------------------------
@pytest.mark.slow
def test_prior_preservation_generates_class_images_once(tmp_path):
    cfg = tiny_config(tmp_path, max_train_steps=1, with_prior_preservation=True, num_class_images=2, class_sampler="ddim")
    _, rec, _ = train(cfg)
    made = [e.step for e in rec.of("progress") if e.phase == "class_images"]
    assert made == [0, 1, 2]
    (folder,) = (tmp_path / "runs" / "class_images").iterdir()
    assert sorted(p.name for p in folder.glob("*.png")) == ["class-00000.png", "class-00001.png"]
    # another concept of the same class, same model and settings: the images are reused
    _, rec, _ = train(tiny_config(tmp_path, max_train_steps=1, with_prior_preservation=True, num_class_images=2,
                                  class_sampler="ddim", token="sks"))
    assert [e.step for e in rec.of("progress") if e.phase == "class_images"] == []


DRIVER = """
import sys, torch
torch.set_num_threads(1)
sys.path.insert(0, {tests!r})
from pathlib import Path
from test_train_support import tiny_config, train
from dreambooth_core.train.loop import Trainer
Trainer._average_gradients.__defaults__ = (5000,)  # many small buckets: exercise the bucketing
out, batch = Path(sys.argv[1]), int(sys.argv[2])
cfg = tiny_config(out, train_batch_size=batch, max_train_steps=3, random_flip=True, with_prior_preservation=True,
                  instance_data_dir={instance!r}, class_data_dir={classes!r}, **{extra!r})
train(cfg)
"""
# full fine-tuning with the optimizer step fused into backward: each gradient is averaged in its hook
FUSED = dict(method="dreambooth", optimizer="adafactor", fused_optimizer_step=True, pack_frozen_convolutions=False, memory="manual")


@pytest.mark.slow
@pytest.mark.parametrize("extra", [{}, FUSED], ids=["plain", "fused"])
def test_two_processes_equal_one_process_with_the_doubled_batch(tmp_path, extra):
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = tmp_path / "driver.py"
    script.write_text(DRIVER.format(tests=str(Path(__file__).parent), instance=str(make_images(tmp_path / "inst", n=5)),
                                    classes=class_dir(tmp_path, 3), extra=extra))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1]), "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, str(script), str(tmp_path / "one"), "2"], check=True, env=env, capture_output=True)
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script),
                    str(tmp_path / "two"), "1"], check=True, env=env, capture_output=True, timeout=600)
    one = load_file(str(tmp_path / "one" / "runs" / "zwx_dog" / "state" / "step-3" / "trainable.safetensors"))
    two = load_file(str(tmp_path / "two" / "runs" / "zwx_dog" / "state" / "step-3" / "trainable.safetensors"))
    assert one.keys() == two.keys()
    for k in one:
        torch.testing.assert_close(one[k], two[k], atol=1e-4, rtol=1e-3)
    assert json.loads((tmp_path / "two" / "runs" / "zwx_dog" / "config.json").read_text())["resolved"]["num_processes"] == 2


# ---- memory options and optimizers ----------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("method", ["lora", "hypernetwork", "textual_inversion"])
def test_gradient_checkpointing_changes_memory_not_results(tmp_path, method):
    plain, _, _ = train(tiny_config(tmp_path / "plain", method=method))
    ckpt, _, model = train(tiny_config(tmp_path / "ckpt", method=method, gradient_checkpointing=True))
    assert model.unet.is_gradient_checkpointing
    a, b = trained_weights(plain, 2), trained_weights(ckpt, 2)
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("optimizer, package", [("adamw8bit", "bitsandbytes"), ("prodigy", "prodigyopt")])
def test_optional_optimizers_explain_what_to_install(tmp_path, optimizer, package):
    import importlib.util

    if importlib.util.find_spec(package) is not None:
        pytest.skip(f"{package} is installed")
    with pytest.raises(UserError, match=f"pip install {package}"):
        train(tiny_config(tmp_path, optimizer=optimizer))


# ---- weight average (EMA) -----------------------------------------------------------------------
def test_weight_average_is_what_is_saved_and_left_in_the_model(tmp_path):
    from dreambooth_core.formats.lora import read_lora
    from dreambooth_core.formats.lora_tools import merge_loras
    from dreambooth_core.methods.lora import LoraMethod
    from dreambooth_core.models.tiny import tiny_base_model
    from test_train_support import unet_output

    cfg = tiny_config(tmp_path, max_train_steps=3, checkpointing_steps=1, ema_decay=0.9)
    result, _, trained = train(cfg)
    names = list(LoraMethod(cfg, trained).state_dict())  # the order the average keeps the weights in
    s2, s3 = trained_weights(result, 2), trained_weights(result, 3)
    decay = min((1 + 2) / (10 + 2), 0.9)  # diffusers' warm-up at the third update
    for i, name in enumerate(names):
        torch.testing.assert_close(s3[f"ema/{i}"], decay * s2[f"ema/{i}"] + (1 - decay) * s3[name])
    assert any(not torch.allclose(s3[f"ema/{i}"], s3[n]) for i, n in enumerate(names))
    live = LoraMethod(cfg, trained).state_dict()
    assert all(torch.equal(live[n], s3[f"ema/{i}"]) for i, n in enumerate(names))
    merged = merge_loras(tiny_base_model("sd1"), [(read_lora(result.outputs[0].path), 1.0)])
    torch.testing.assert_close(unet_output(merged), unet_output(trained), atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_weight_average_continues_across_a_resume(tmp_path):
    settings = dict(ema_decay=0.8, ema_start_step=1)
    full, _, _ = train(tiny_config(tmp_path / "a", max_train_steps=4, **settings))
    cfg = tiny_config(tmp_path / "b", max_train_steps=2, **settings)
    train(cfg)
    cfg.max_train_steps, cfg.resume_from = 4, "latest"
    second, _, _ = train(cfg)
    a, b = load_file(full.outputs[0].path), load_file(second.outputs[0].path)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    cfg.max_train_steps, cfg.ema_decay = 6, None
    with pytest.raises(UserError, match="ema_decay was 0.8 and is now None"):
        train(cfg)
