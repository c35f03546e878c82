"""Handing a finished run to a host: which folder kind it fills, the copy into that folder,
and the exact text the user types to use it.

Both host adapters do the same three things after a run, so they live here: check
before training that the result will not overwrite a user's file, place each final
artifact into the host's folder for its kind (`publish`), and say how to use it.
With `publish_step_saves`, the saves made every `checkpointing_steps` go there too, as
`NAME-stepN`, so the host can compare steps (A1111's X/Y/Z plot, ComfyUI's LoraLoader).
"""
from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Mapping

from .config import TrainConfig
from .errors import UserError
from .events import Artifact
from .publish import HOST_KINDS, check_name_free, prompt_hint, publish
from .registry import NETWORKS, method_kind


def host_kind(method: str) -> str:
    """The artifact kind a host lists for `method`."""
    return method_kind(method)


STEP_SAVE = re.compile(r".+-step\d+")  # the trainer's name for a checkpointing_steps save


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


def step_saves(artifacts: Iterable[Artifact], config: TrainConfig) -> list[Artifact]:
    """The step saves of a run of `config` that go to the host (none unless `publish_step_saves`):
    those it announced, and those an earlier part of the same run (cancelled, then resumed)
    left in its outputs folder, which only this run writes."""
    from .train.run_dir import RunDir

    announced = {a.name: a for a in artifacts if is_step_save(a)}
    kind = host_kind(config.method)
    outputs = RunDir.for_config(config).outputs
    out = []
    for name in step_save_names(config):
        left = outputs / f"{name}{HOST_KINDS[kind]}"
        if name in announced:
            out.append(announced[name])
        elif left.is_file():
            out.append(Artifact(kind=kind, path=str(left), name=name, prompt_hint=prompt_hint(kind, name), final=False))
    return out


def check_destination(config: TrainConfig, folders: Mapping[str, str | os.PathLike]) -> Path:
    """Before a run: where its result will go; OutputExistsError if that (or one of its
    published step saves) would overwrite a file and the config does not say `overwrite`."""
    kind = host_kind(config.method)
    if config.overwrite:
        return Path(folders[kind]) / f"{config.name}{HOST_KINDS[kind]}"
    for name in step_save_names(config):
        check_name_free(kind, name, folders[kind])
    return check_name_free(kind, config.name, folders[kind])


def host_note(config: TrainConfig, host: str) -> str:
    """What `host` does differently with the file this run writes ('' when it computes what was
    trained): a DoRA file in A1111, say (registry.NetworkSpec.host_notes)."""
    spec = NETWORKS.get(config.network) if config.method == "lora" else None
    return spec.note_for(host) if spec else ""


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


@dataclass
class Delivered:
    """One artifact as the host now has it (or why it could not be placed)."""

    kind: str
    name: str
    path: str          # where the host reads it ('' if it could not be placed)
    source: str        # the file in the run folder
    prompt_hint: str   # e.g. "<lora:zwx_dog:0.8>"
    prompt: str        # e.g. "a photo of zwx dog <lora:zwx_dog:0.8>"
    error: str = ""
    warning: str = ""  # the host loads the file but computes something else than was trained

    def to_dict(self) -> dict:
        return asdict(self)


def host_artifacts(artifacts: Iterable[Artifact]) -> list[Artifact]:
    """The final artifacts a host lists: not resume states, samples or intermediate saves, and
    not extra formats (a diffusers folder, a peft `pytorch_lora_weights.safetensors`) — a
    host file is the one named after its artifact, with its kind's suffix."""
    return [a for a in artifacts if a.final and a.kind in HOST_KINDS
            and Path(a.path).name == f"{a.name}{HOST_KINDS[a.kind]}"]


def deliver(
    artifacts: Iterable[Artifact],
    config: TrainConfig,
    folders: Mapping[str, str | os.PathLike],
    host: str = "a1111",
) -> list[Delivered]:
    """Publish each final host artifact of a completed run into `folders[kind]` (and its
    step saves, when the config says `publish_step_saves`).

    Never raises for one artifact: a file that cannot be placed is reported with its
    reason and stays safe in the run folder.
    """
    out = []
    artifacts = list(artifacts)
    for art in [*step_saves(artifacts, config), *host_artifacts(artifacts)]:
        name = art.name or config.name
        hint = prompt_hint(art.kind, name, host)
        item = Delivered(art.kind, name, "", art.path, hint, usage_prompt(config, art.kind, name, host),
                         warning=host_note(config, host) if art.kind == "lora" else "")
        try:
            item.path = str(publish(art.path, art.kind, name, folders[art.kind], overwrite=config.overwrite))
        except (UserError, OSError) as exc:
            item.error = f"{exc}; the file is still at {art.path}"
        out.append(item)
    return out
