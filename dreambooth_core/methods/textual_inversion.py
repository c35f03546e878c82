"""Textual Inversion (Gal et al. 2022): learn only the vectors of a new token.

The new token's rows live in a small trainable parameter that a forward hook substitutes
into the token embedding's output. Every other row is never touched by the optimizer, so
it stays bit-identical whatever the weight decay or optimizer, and optimizer state holds
n×d numbers rather than a copy of the whole 49408-row vocabulary.

A run with several concepts learns one embedding per concept token (each initialised from
its own class noun) and saves one file per token, `<name>_<token>.safetensors`: hosts hold
one embedding per file and name it after the file, so each token is its own prompt word.
"""
from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import torch

from .base import Method, SaveInfo

if TYPE_CHECKING:
    from ..config import TrainConfig
    from ..events import Artifact


def concept_tokens(config: "TrainConfig") -> dict[str, str]:
    """{token: init word} of the concepts that train (not class-image sets), in their order;
    concepts that share a token share its embedding (initialised from the first's class)."""
    from ..data.concepts import concept_runs

    tokens: dict[str, str] = {}
    for run in concept_runs(config):
        if not run.concept.is_reg:
            tokens.setdefault(run.config.token, run.config.effective_init_word)
    return tokens


class TokenRows(torch.nn.Module):
    """Trainable rows for `ids` of an embedding, swapped into its output by a forward hook."""

    def __init__(self, embedding: torch.nn.Embedding, ids: list[int]):
        super().__init__()
        self.register_buffer("ids", torch.tensor(ids), persistent=False)
        lookup = torch.full((embedding.num_embeddings,), -1, dtype=torch.long)
        lookup[self.ids] = torch.arange(len(ids))
        self.register_buffer("lookup", lookup, persistent=False)
        self.weight = torch.nn.Parameter(embedding.weight[self.ids].detach().clone().float())
        self.embedding = [embedding]  # a list, so it is not a submodule (and not in state_dict)
        self.handle = embedding.register_forward_hook(self._substitute)

    def _substitute(self, _module, args, output):
        sel = self.lookup.to(args[0].device)[args[0]]
        mask = sel >= 0  # no early exit when it is all False: no host sync, and plannable on fake tensors
        rows = self.weight.to(output.dtype)[sel.clamp(min=0)]
        return torch.where(mask.unsqueeze(-1), rows, output)

    def write_back(self) -> None:
        """Copy the learned rows into the embedding matrix and remove the hook."""
        emb = self.embedding[0]
        with torch.no_grad():
            emb.weight[self.ids] = self.weight.detach().to(emb.weight.dtype)
        self.handle.remove()


class TextualInversionMethod(Method):
    name = "textual_inversion"

    @property
    def trains_text_encoder(self) -> bool:
        return True  # in the graph (frozen, but the gradient must flow through it)

    def prepare(self) -> None:
        from ..formats.embeddings import add_tokens

        cfg = self.config
        self.tokens = concept_tokens(cfg)
        self.rows: dict[str, TokenRows] = {}
        for name, tok, te in zip(self.model.family.text_encoders, self.model.tokenizers, self.model.text_encoders):
            # one block of num_vectors rows per token, in the order of self.tokens
            ids = [i for token, init in self.tokens.items() for i in add_tokens(tok, te, token, cfg.num_vectors, init)]
            te.get_input_embeddings().requires_grad_(False)  # resizing made a new, trainable matrix
            self.rows[name] = TokenRows(te.get_input_embeddings(), ids)

    def trainable_modules(self) -> dict[str, torch.nn.Module]:
        return dict(self.rows)

    def prompt(self, text: str) -> str:
        from ..formats.embeddings import expand_prompt

        for token in self.tokens:
            text = expand_prompt(text, token, self.config.num_vectors)
        return text

    def trigger(self, info: SaveInfo) -> str:
        return info.stem  # hosts name an embedding after its file

    def finish(self) -> None:
        """Leave the learned vectors in the model itself (for anything that uses it next)."""
        for rows in self.rows.values():
            rows.write_back()

    def save(self, info: SaveInfo) -> list["Artifact"]:
        """One embedding file per token: the run's name for a single token, else `<name>_<token>`."""
        from ..formats.embeddings import Embedding, write_embedding

        family = self.model.family
        n = self.config.num_vectors
        artifacts = []
        for i, (token, init_word) in enumerate(self.tokens.items()):
            own = info if len(self.tokens) == 1 else dataclasses.replace(info, stem=f"{info.stem}_{token}")
            rows = [self.rows[e].weight.detach()[i * n : (i + 1) * n].float().cpu() for e in family.text_encoders]
            path = self.host_path(own)
            write_embedding(
                Embedding.from_encoders(own.stem, family, rows), path, family,
                {**self.common_metadata(own), "dreambooth_core.token": token}, own.overwrite,
                init_word=init_word, step=own.step, base_model=own.base_model, base_model_hash=own.base_model_hash,
            )
            artifacts.append(self.host_artifact(path, own))
        return artifacts
