"""Handing a finished run to a host: which folder kind it fills, the copy into that folder,
and the exact text the user types to use it.

Both host adapters do the same three things after a run, so they live here: check
before training that the result will not overwrite a user's file, place each final
artifact into the host's folder for its kind (`publish`), and say how to use it.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Mapping

from .config import TrainConfig
from .errors import UserError
from .events import Artifact
from .publish import HOST_KINDS, check_name_free, prompt_hint, publish
from .registry import method_kind


def host_kind(method: str) -> str:
    """The artifact kind a host lists for `method`."""
    return method_kind(method)


def check_destination(config: TrainConfig, folders: Mapping[str, str | os.PathLike]) -> Path:
    """Before a run: where its result will go; OutputExistsError if that would overwrite
    a file and the config does not say `overwrite`."""
    kind = host_kind(config.method)
    if config.overwrite:
        return Path(folders[kind]) / f"{config.name}{HOST_KINDS[kind]}"
    return check_name_free(kind, config.name, folders[kind])


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
    """Publish each final host artifact of a completed run into `folders[kind]`.

    Never raises for one artifact: a file that cannot be placed is reported with its
    reason and stays safe in the run folder.
    """
    out = []
    for art in host_artifacts(artifacts):
        name = art.name or config.name
        hint = prompt_hint(art.kind, name, host)
        item = Delivered(art.kind, name, "", art.path, hint, usage_prompt(config, art.kind, name, host))
        try:
            item.path = str(publish(art.path, art.kind, name, folders[art.kind], overwrite=config.overwrite))
        except (UserError, OSError) as exc:
            item.error = f"{exc}; the file is still at {art.path}"
        out.append(item)
    return out
