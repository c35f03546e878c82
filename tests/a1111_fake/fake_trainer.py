"""Stands in for `train.run_training` inside the worker process
(DREAMBOOTH_CORE_FAKE_RUNNER=fake_trainer:run): the same events, a real file of the
method's kind, a sample image and a resumable state, at toy speed.
FAKE_TRAINER_DELAY sets the seconds per step (default 0.001)."""
from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from dreambooth_core.events import Artifact, Done, Evaluation, Preview, Progress, Started
from dreambooth_core.lifecycle.names import HOST_KINDS, prompt_hint
from dreambooth_core.registry import method_kind
from dreambooth_core.train.run_dir import RunDir


def write_result(kind: str, path: Path, name: str) -> None:
    from safetensors.numpy import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "embedding":
        save_file({"emb_params": np.zeros((1, 768), np.float32)}, str(path))
    elif kind == "lora":
        save_file({"lora_unet_down_blocks_0_attentions_0_proj_in.alpha": np.ones((), np.float32)}, str(path),
                  metadata={"ss_output_name": name, "ss_base_model_version": "sd_v1"})
    elif kind == "checkpoint":
        save_file({"model.diffusion_model.out.2.bias": np.zeros(4, np.float32)}, str(path))
    else:
        path.write_bytes(b"hypernetwork")


def run(config, emit, cancel) -> None:
    run = RunDir.for_config(config)
    state = run.resume_folder(config.resume_from)
    start = int(state.name[5:]) if state else 0
    run.create(clear=state is None)
    total = config.max_train_steps
    delay = float(os.environ.get("FAKE_TRAINER_DELAY", "0.001"))
    emit(Started(run_dir=str(run.root), method=config.method, total_steps=total, start_step=start))
    for step in range(start + 1, total + 1):
        if cancel.cancelled:
            import torch

            from dreambooth_core.train.state import TrainingState, save_state

            folder = save_state(run.state, TrainingState(step - 1, step - 1, {"w": torch.zeros(1)}, {}, {}, {}, {}))
            run.append_loss({"step": step - 1, "loss": 1.0 / max(1, step - 1)})
            emit(Artifact(kind="state", path=str(folder), name=folder.name, final=False))
            emit(Done(status="cancelled", run_dir=str(run.root), step=step - 1))
            return
        time.sleep(delay)
        emit(Progress(phase="train", step=step, total=total, eta_seconds=(total - step) * delay, loss=1.0 / step,
                      lr=config.learning_rate))
        if step % max(1, total // 2) == 0 or step == total:   # as train.loop's evaluations (eval_every_n_steps)
            emit(Evaluation(step=step, scores={"subject_fidelity": step / total, "prompt_fidelity": 0.8, "prior_drift": 0.1,
                                               "diversity": 0.3}, best_step=step))
        kind = method_kind(config.method)
        every = config.checkpointing_steps
        if every and step < total and step % every == 0 and kind != "checkpoint":  # as train.loop: no full checkpoint per step
            name = f"{config.name}-step{step}"
            path = run.outputs / f"{name}{HOST_KINDS[kind]}"
            write_result(kind, path, name)
            emit(Artifact(kind=kind, path=str(path), name=name, prompt_hint=prompt_hint(kind, name), final=False))
        if step == min(2, total):
            from PIL import Image

            sample = run.samples / f"{step:04d}.png"
            Image.new("RGB", (8, 8), (200, 30, 30)).save(sample)
            emit(Preview(step=step, path=str(sample), prompt=config.instance_prompt_text))
    kind = method_kind(config.method)
    path = run.outputs / f"{config.name}{HOST_KINDS[kind]}"
    write_result(kind, path, config.name)
    emit(Artifact(kind=kind, path=str(path), name=config.name, prompt_hint=prompt_hint(kind, config.name)))
    emit(Done(status="completed", run_dir=str(run.root), step=total))
