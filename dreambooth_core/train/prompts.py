"""Prompt encoding for training, identical to what the diffusers pipelines do at inference.

SD1/SD2: the last hidden state of the one text encoder. SDXL: the penultimate hidden
states of both encoders, concatenated, plus the second encoder's pooled projection. Each
distinct prompt is tokenised once; when no text encoder trains, it is encoded once too.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    import torch

    from ..families import Family


@dataclass
class PromptEmbeds:
    hidden: "torch.Tensor"                 # [N, 77, context_dim]
    pooled: "torch.Tensor | None" = None   # [N, projection_dim] (SDXL)

    def to(self, device, dtype) -> "PromptEmbeds":
        return PromptEmbeds(self.hidden.to(device, dtype), None if self.pooled is None else self.pooled.to(device, dtype))


def tokenize(tokenizers: list, prompts: list[str]) -> list["torch.Tensor"]:
    """Token ids [N, 77] per tokenizer (padded to the max length, truncated)."""
    return [
        tok(prompts, padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt").input_ids
        for tok in tokenizers
    ]


def encode_tokens(text_encoders: list, family: "Family", ids: list["torch.Tensor"]) -> PromptEmbeds:
    import torch

    if not family.is_sdxl:
        te = text_encoders[0]
        return PromptEmbeds(te(ids[0].to(te.device))[0])
    hidden, pooled = [], None
    for te, tok_ids in zip(text_encoders, ids):
        out = te(tok_ids.to(te.device), output_hidden_states=True)
        if out[0].ndim == 2:  # CLIPTextModelWithProjection: text_embeds
            pooled = out[0]
        hidden.append(out.hidden_states[-2])
    return PromptEmbeds(torch.cat(hidden, dim=-1), pooled)


class PromptCache:
    """Token ids of every training prompt; their embeddings too once `freeze()` has run.

    `transform` rewrites a prompt before tokenising (Textual Inversion expands its token);
    lookups stay by the original prompt."""

    def __init__(self, tokenizers: list, prompts: list[str], transform: Callable[[str], str] | None = None):
        self.prompts = list(dict.fromkeys(prompts))
        ids = tokenize(tokenizers, [transform(p) for p in self.prompts] if transform else self.prompts)
        self.ids = {p: [t[i] for t in ids] for i, p in enumerate(self.prompts)}
        self.embeds: dict[str, PromptEmbeds] | None = None

    def freeze(self, text_encoders: list, family: "Family", chunk: int = 8) -> None:
        """Encode every prompt now, so the frozen text encoders are no longer needed."""
        import torch

        self.embeds = {}
        with torch.no_grad():
            for start in range(0, len(self.prompts), chunk):
                batch = self.prompts[start : start + chunk]
                out = self._encode(text_encoders, family, batch)
                for i, p in enumerate(batch):
                    self.embeds[p] = PromptEmbeds(out.hidden[i].cpu(), None if out.pooled is None else out.pooled[i].cpu())

    def _encode(self, text_encoders: list, family: "Family", prompts: list[str]) -> PromptEmbeds:
        import torch

        n = len(self.ids[prompts[0]])
        ids = [torch.stack([self.ids[p][k] for p in prompts]) for k in range(n)]
        return encode_tokens(text_encoders, family, ids)

    def get(self, prompts: list[str], text_encoders: list, family: "Family") -> PromptEmbeds:
        """Embeddings for a batch: from the cache, or through the (training) text encoders."""
        import torch

        if self.embeds is None:
            return self._encode(text_encoders, family, prompts)
        hidden = torch.stack([self.embeds[p].hidden for p in prompts])
        pooled = torch.stack([self.embeds[p].pooled for p in prompts]) if family.is_sdxl else None
        return PromptEmbeds(hidden, pooled)


# CLIP's BPE merges are ordered by frequency: a whole word below this id is a word the
# model already knows well (dog 1929, person 2533), while rare tokens sit far above
# (sks 48136, ohwx 47993).
COMMON_TOKEN_ID = 20000
COMMON_WORDS = frozenset(
    "a an the man woman person people boy girl child baby dog cat bird car house photo picture image "
    "style art painting portrait face one two red blue green black white big small new old".split()
)


def common_word_warning(tokenizer, token: str) -> str | None:
    """A warning when `token` is a word the text encoder already means something by: the
    subject would then fight the word's meaning (and the word would lose it)."""
    ids = tokenizer(token, add_special_tokens=False).input_ids
    if len(ids) != 1:
        return None
    piece = tokenizer.convert_ids_to_tokens(ids[0])
    whole_word = piece.endswith("</w>")
    if token.lower() in COMMON_WORDS or (whole_word and ids[0] < COMMON_TOKEN_ID):
        return (f"token {token!r} is a common word the model already knows (CLIP token {ids[0]}); "
                "a rare token such as 'sks' or 'ohwx' learns the subject without changing the word's meaning")
    return None
