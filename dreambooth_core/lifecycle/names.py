"""The names a run's files may take in a host's folder, and the text that uses them.

A final artifact is `<name><suffix>` (its kind's suffix, from the registry); with
`publish_step_saves`, each `checkpointing_steps` save is `NAME-stepN` beside it. Every
check before a run and every placement after it derives its file names from here.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Iterable

from ..config import TrainConfig
from ..errors import UserError
from ..events import Artifact
from ..registry import KINDS

# Artifact kinds (events.Artifact.kind) that a host lists, and the suffix each is saved with.
HOST_KINDS = {name: kind.suffix for name, kind in KINDS.items()}
STEP_SAVE = re.compile(r".+-step\d+")  # the trainer's name for a checkpointing_steps save


def prompt_hint(kind: str, name: str, host: str = "a1111") -> str:
    """The text to put in a prompt (or the model to pick) to use `name` in `host`."""
    return KINDS[kind].hint(name, host) if kind in KINDS else name


def destination(kind: str, name: str, folder: str | os.PathLike) -> Path:
    if kind not in HOST_KINDS:
        raise UserError(f"a {kind} is not something a host lists")
    return Path(folder) / f"{name}{HOST_KINDS[kind]}"


def step_save_names(config: TrainConfig) -> list[str]:
    """The names of the step saves a run of `config` places in a host's folder."""
    every = config.checkpointing_steps
    if not (config.publish_step_saves and every):
        return []
    return [f"{config.name}-step{step}" for step in range(every, config.max_train_steps, every)]


def is_step_save(artifact: Artifact) -> bool:
    """An intermediate save a host could list (not a cancelled run's save, not a state)."""
    return (not artifact.final and artifact.kind in HOST_KINDS and STEP_SAVE.fullmatch(artifact.name) is not None
            and Path(artifact.path).name == f"{artifact.name}{HOST_KINDS[artifact.kind]}")


def host_artifacts(artifacts: Iterable[Artifact]) -> list[Artifact]:
    """The final artifacts a host lists: not resume states, samples or intermediate saves, and
    not extra formats (a diffusers folder, a peft `pytorch_lora_weights.safetensors`) — a
    host file is the one named after its artifact, with its kind's suffix."""
    return [a for a in artifacts if a.final and a.kind in HOST_KINDS
            and Path(a.path).name == f"{a.name}{HOST_KINDS[a.kind]}"]


def usage_prompt(config: TrainConfig, kind: str, name: str, host: str = "a1111") -> str:
    """A whole prompt that uses the result: the training prompt plus what loads the file.

    An embedding *is* a word named after its file, so it takes the token's place.
    """
    if kind == "embedding":
        word = prompt_hint(kind, name, host)
        return " ".join(word if w == config.token else w for w in config.instance_prompt_text.split())
    if kind == "checkpoint":
        return config.instance_prompt_text
    return f"{config.instance_prompt_text} {prompt_hint(kind, name, host)}".strip()
