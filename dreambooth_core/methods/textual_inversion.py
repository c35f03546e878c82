"""Textual Inversion (Gal et al. 2022): learn only the vectors of a new token.

The new token's rows live in a small trainable parameter that a forward hook substitutes
into the token embedding's output. Every other row is never touched by the optimizer, so
it stays bit-identical whatever the weight decay or optimizer, and optimizer state holds
n×d numbers rather than a copy of the whole 49408-row vocabulary.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from .base import Method, SaveInfo

if TYPE_CHECKING:
    from ..events import Artifact


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
        self.rows: dict[str, TokenRows] = {}
        for name, tok, te in zip(self.model.family.text_encoders, self.model.tokenizers, self.model.text_encoders):
            ids = add_tokens(tok, te, cfg.token, cfg.num_vectors, cfg.effective_init_word)
            te.get_input_embeddings().requires_grad_(False)  # resizing made a new, trainable matrix
            self.rows[name] = TokenRows(te.get_input_embeddings(), ids)

    def trainable_modules(self) -> dict[str, torch.nn.Module]:
        return dict(self.rows)

    def prompt(self, text: str) -> str:
        from ..formats.embeddings import expand_prompt

        return expand_prompt(text, self.config.token, self.config.num_vectors)

    def trigger(self, info: SaveInfo) -> str:
        return info.stem  # hosts name an embedding after its file

    def finish(self) -> None:
        """Leave the learned vectors in the model itself (for anything that uses it next)."""
        for rows in self.rows.values():
            rows.write_back()

    def save(self, info: SaveInfo) -> list["Artifact"]:
        from ..formats.embeddings import Embedding, write_embedding

        family = self.model.family
        emb = Embedding.from_encoders(info.stem, family, [self.rows[n].weight.detach().float().cpu() for n in family.text_encoders])
        path = self.host_path(info)
        write_embedding(
            emb, path, family, self.common_metadata(info), info.overwrite,
            init_word=self.config.effective_init_word, step=info.step,
            base_model=info.base_model, base_model_hash=info.base_model_hash,
        )
        return [self.host_artifact(path, info)]
