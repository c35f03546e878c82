"""Prompt encoding for training, validation and class images, the way the hosts prompt.

SD1/SD2: the last hidden state of the one text encoder (or, with `clip_skip` k > 1, the
k-th from last through the final layer norm, as A1111 and kohya do). SDXL: the penultimate
hidden states of both encoders, concatenated, plus the second encoder's pooled projection
(of the first chunk, as A1111 and kohya take it). Prompts over 75 tokens are encoded in
77-token chunks joined along the sequence axis (data.long_prompts); a batch whose prompts
have fewer chunks than its longest is padded with empty chunks, as A1111 does. With
emphasis (A1111's `(word:1.2)`), each token's output row is scaled by its weight and the
chunk's mean restored, per prompt (A1111's "Original" emphasis).
"""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from ..data.long_prompts import Chunk, chunk_size, prompt_chunks, wrap_chunk

if TYPE_CHECKING:
    import torch

    from ..families import Family


@dataclass
class PromptEmbeds:
    hidden: "torch.Tensor"                 # [N, 77 x chunks, context_dim]
    pooled: "torch.Tensor | None" = None   # [N, projection_dim] (SDXL)

    def to(self, device, dtype) -> "PromptEmbeds":
        return PromptEmbeds(self.hidden.to(device, dtype), None if self.pooled is None else self.pooled.to(device, dtype))


@dataclass(frozen=True)
class TextEncoding:
    """How prompts become embeddings: the longest prompt kept, the CLIP layer used, and
    whether A1111's emphasis syntax and BREAK are read (else brackets are plain text)."""

    max_token_length: int = 225
    clip_skip: int = 1
    emphasis: bool = False


Rows = list[list[Chunk]]   # per tokenizer: the prompt's 77-token chunk rows


def tokenize(tokenizers: list, prompt: str, encoding: TextEncoding) -> Rows:
    return [prompt_chunks(tok, prompt, encoding.max_token_length, encoding.emphasis) for tok in tokenizers]


def _final_layer_norm(te):
    return (te.text_model if hasattr(te, "text_model") else te).final_layer_norm


def _encode_rows(te, rows: "torch.Tensor", family: "Family", clip_skip: int):
    """One chunk row per prompt [N, 77] through one encoder: (hidden, pooled or None)."""
    out = te(rows.to(te.device), output_hidden_states=True)
    pooled = out[0] if out[0].ndim == 2 else None  # CLIPTextModelWithProjection: text_embeds
    if family.is_sdxl:
        return out.hidden_states[-max(2, clip_skip)], pooled
    if clip_skip > 1:
        return _final_layer_norm(te)(out.hidden_states[-clip_skip]), pooled
    return out[0], pooled


def emphasize(hidden: "torch.Tensor", weights: "torch.Tensor") -> "torch.Tensor":
    """A1111's "Original" emphasis on one chunk [N, 77, C]: each token's row times its weight
    [N, 77], then rescaled so each prompt's mean is what it was."""
    before = hidden.mean(dim=(1, 2), keepdim=True)
    scaled = hidden * weights.to(hidden)[..., None]
    return scaled * (before / scaled.mean(dim=(1, 2), keepdim=True))


def encode_rows(text_encoders: list, tokenizers: list, family: "Family", rows: list[Rows], clip_skip: int = 1) -> PromptEmbeds:
    """Embeddings of a batch of tokenised prompts (`rows[i]` from `tokenize`)."""
    import torch

    n_chunks = max(len(r[0]) for r in rows)
    hidden_per_encoder, pooled = [], None
    for k, (te, tok) in enumerate(zip(text_encoders, tokenizers)):
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        empty = wrap_chunk(Chunk([], []), tok.bos_token_id, tok.eos_token_id, pad, chunk_size(tok))
        pieces = []
        for c in range(n_chunks):
            chunks = [r[k][c] if c < len(r[k]) else empty for r in rows]
            hidden, pool = _encode_rows(te, torch.tensor([ch.ids for ch in chunks]), family, clip_skip)
            if any(w != 1.0 for ch in chunks for w in ch.weights):   # decided in Python: no host sync, plannable
                hidden = emphasize(hidden, torch.tensor([ch.weights for ch in chunks]))
            pieces.append(hidden)
            if c == 0 and pool is not None:
                pooled = pool
        hidden_per_encoder.append(torch.cat(pieces, dim=1))
    return PromptEmbeds(torch.cat(hidden_per_encoder, dim=-1), pooled)


def encode_prompts(model, prompts: list[str], encoding: TextEncoding) -> PromptEmbeds:
    """Embeddings of `prompts` with the model's own tokenizers and encoders."""
    rows = [tokenize(model.tokenizers, p, encoding) for p in prompts]
    return encode_rows(model.text_encoders, model.tokenizers, model.family, rows, encoding.clip_skip)


class PromptCache:
    """Token rows of every training prompt; their embeddings too once `freeze()` has run.

    `transform` rewrites a prompt before tokenising (Textual Inversion expands its token);
    lookups stay by the original prompt. A prompt not seen before (a shuffled or thinned
    caption) is tokenised when asked for, and encoded then: caching every variant of a
    shuffled caption would cost more encodes than it saves (each variant is drawn about once)."""

    def __init__(self, tokenizers: list, prompts: list[str], transform: Callable[[str], str] | None = None,
                 encoding: TextEncoding = TextEncoding()):
        self.tokenizers = tokenizers
        self.transform = transform
        self.encoding = encoding
        self.prompts = list(dict.fromkeys(prompts))
        self.ids: dict[str, Rows] = {}
        for p in self.prompts:
            self._rows(p)
        self.embeds: dict[str, PromptEmbeds] | None = None
        self.empty: "torch.Tensor | None" = None
        self.frozen = False

    def _rows(self, prompt: str) -> Rows:
        if prompt not in self.ids:
            self.ids[prompt] = tokenize(self.tokenizers, self.transform(prompt) if self.transform else prompt, self.encoding)
        return self.ids[prompt]

    def freeze(self, text_encoders: list, family: "Family", chunk: int = 8, precompute: bool = True) -> None:
        """The text encoders no longer train: encode without gradients from now on, and with
        `precompute`, encode every known prompt now so the encoders are no longer needed."""
        import torch

        self.frozen = True
        if not precompute:
            return
        self.embeds = {}
        with torch.no_grad():
            self.empty = self._encode(text_encoders, family, [""]).hidden[0].cpu()  # pads shorter prompts
            for start in range(0, len(self.prompts), chunk):
                batch = self.prompts[start : start + chunk]
                out = self._encode(text_encoders, family, batch)
                for i, p in enumerate(batch):
                    self.embeds[p] = PromptEmbeds(out.hidden[i].cpu(), None if out.pooled is None else out.pooled[i].cpu())

    def _encode(self, text_encoders: list, family: "Family", prompts: list[str]) -> PromptEmbeds:
        rows = [self._rows(p) for p in prompts]
        return encode_rows(text_encoders, self.tokenizers, family, rows, self.encoding.clip_skip)

    def get(self, prompts: list[str], text_encoders: list, family: "Family") -> PromptEmbeds:
        """Embeddings for a batch: from the cache, or through the text encoders."""
        import torch

        if self.embeds is None:
            with torch.no_grad() if self.frozen else nullcontext():
                return self._encode(text_encoders, family, prompts)
        cached = [self.embeds[p] for p in prompts]
        width = max(e.hidden.shape[0] for e in cached)
        chunks = len(self.empty)
        hidden = torch.stack([torch.cat([e.hidden, *[self.empty] * ((width - e.hidden.shape[0]) // chunks)]) for e in cached])
        pooled = torch.stack([e.pooled for e in cached]) if family.is_sdxl else None
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
