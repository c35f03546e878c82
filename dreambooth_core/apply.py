"""Apply a trained artifact to a base model, so the core can sample what a host would.

The demo and the learning tests judge each method by generating with its result the way
A1111 or ComfyUI would use the file: a checkpoint replaces the model, a LoRA is merged,
an embedding adds its token, a hypernetwork hooks the attention context.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from .errors import UserError

if TYPE_CHECKING:
    from .models.base import BaseModel


def apply_artifact(model: "BaseModel", kind: str, path: str | Path, token: str | None = None, weight: float = 1.0) -> "BaseModel":
    """Return a model that samples with the artifact at `path` (of events.Artifact `kind`).

    `model` is changed in place for LoRA, embedding and hypernetwork; a checkpoint is
    loaded anew. `token` names an embedding's prompt word (default: the file stem).
    """
    if kind == "checkpoint":
        from .models.load import load_base_model

        return load_base_model(path)
    if kind == "lora":
        from .formats.lora import read_lora
        from .formats.lora_tools import merge_loras
        from .formats.networks import merge_network, read_network_file

        network = read_network_file(path)
        if network is not None:  # LoHa/LoKr/DoRA
            return merge_network(model, network, weight)
        return merge_loras(model, [(read_lora(path, family=model.family), weight)])
    if kind == "embedding":
        from .formats.embeddings import load_embedding_into, read_embedding

        load_embedding_into(model, read_embedding(path), token=token)
        return model
    if kind == "hypernetwork":
        from .formats.hypernetwork import apply_hypernetwork, load_hypernetwork

        apply_hypernetwork(model.unet, load_hypernetwork(path), multiplier=weight)
        return model
    raise UserError(f"cannot apply a {kind!r} artifact to a model")
