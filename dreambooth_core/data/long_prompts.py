r"""Prompts longer than CLIP's 75 tokens, split into chunks the way A1111 prompts, with
A1111's emphasis syntax and BREAK.

A1111 (modules/sd_hijack_clip.py) cuts a prompt's tokens into chunks of 75, moving the
words after the last comma to the next chunk when that comma is at most 20 tokens back,
wraps each chunk in start/end tokens and pads it to 77, encodes each chunk separately and
joins the results along the sequence axis. kohya's `max_token_length` (75/150/225) caps the
prompt at 1-3 chunks. Training on the same chunks is training the way the host prompts.
A prompt of at most 75 tokens gives exactly the one row diffusers' pipelines tokenise.

With emphasis on (A1111's prompts always; training captions with kohya's
`weighted_captions`), `(words)` weighs words by 1.1, `[words]` by 1/1.1, `(words:1.5)` by
1.5, nested brackets multiply, `\(` is a literal bracket, and `BREAK` starts a new chunk.
Each token's weight scales its row of the encoder's output, and the chunk's mean is then
restored (A1111's "Original" emphasis, train/prompts.py).
"""
from __future__ import annotations

import re
from typing import NamedTuple

CHUNK = 75
MAX_TOKEN_LENGTHS = (75, 150, 225)
COMMA_BACKTRACK = 20   # A1111's default `comma_padding_backtrack`
ROUND, SQUARE = 1.1, 1 / 1.1   # A1111's multipliers for (...) and [...]
BREAK = "BREAK"

# One piece of prompt syntax: an escape, an opening bracket, ":weight)" closing a round
# bracket, a closing bracket, a run of plain text, or a lone ':'.
_SYNTAX = re.compile(r"\\[()\[\]\\]|\\|[(\[]|:([+-]?[\d.]+)\)|[)\]]|[^\\()\[\]:]+|:")
_BREAK = re.compile(r"\s*\bBREAK\b\s*", re.S)


class Chunk(NamedTuple):
    """The token ids of one chunk and each token's emphasis weight."""

    ids: list[int]
    weights: list[float]


def parse_emphasis(text: str) -> list[tuple[str, float]]:
    """`text` as (fragment, weight) pairs the way A1111's `parse_prompt_attention` reads it;
    a BREAK is (BREAK, -1.0). Unclosed brackets close at the end; a bracket or ':' that
    closes nothing is text; neighbouring fragments of equal weight are joined."""
    parts: list[list] = []
    opened: dict[str, list[int]] = {"(": [], "[": []}

    def scale(start: int, factor: float) -> None:
        for part in parts[start:]:
            part[1] *= factor

    for match in _SYNTAX.finditer(text):
        piece, weight = match.group(0), match.group(1)
        if piece.startswith("\\"):
            parts.append([piece[1:] if len(piece) > 1 else piece, 1.0])
        elif piece in opened:
            opened[piece].append(len(parts))
        elif weight is not None and opened["("]:
            scale(opened["("].pop(), float(weight))
        elif piece == ")" and opened["("]:
            scale(opened["("].pop(), ROUND)
        elif piece == "]" and opened["["]:
            scale(opened["["].pop(), SQUARE)
        else:
            for i, plain in enumerate(_BREAK.split(piece)):
                if i:
                    parts.append([BREAK, -1.0])
                parts.append([plain, 1.0])
    for bracket, factor in (("(", ROUND), ("[", SQUARE)):
        for start in opened[bracket]:
            scale(start, factor)
    merged: list[list] = []
    for part in parts or [["", 1.0]]:
        if merged and merged[-1][1] == part[1]:
            merged[-1][0] += part[0]
        else:
            merged.append(part)
    return [(t, w) for t, w in merged]


def is_plain(text: str) -> bool:
    """Whether `text` reads the same with emphasis on (no brackets, escapes or BREAK)."""
    return parse_emphasis(text) == [(text, 1.0)]


def chunk_size(tokenizer) -> int:
    """Tokens per chunk: 75, or fewer for a text encoder with fewer than 77 positions (toy models)."""
    return min(CHUNK, tokenizer.model_max_length - 2)


def split_chunks(
    pieces: list[tuple[list[int], float] | None], comma_id: int | None, max_chunks: int, size: int = CHUNK
) -> list[Chunk]:
    """Token ids (no special tokens), given as (ids, weight) pieces with None for a BREAK, in
    chunks of at most `size` (75), at most `max_chunks` of them (the rest is cut). One chunk
    is a plain cut at 75, as a 77-token tokenizer makes; a BREAK always ends a chunk."""
    backtrack = COMMA_BACKTRACK if max_chunks > 1 else 0
    chunks: list[Chunk] = []
    ids: list[int] = []
    weights: list[float] = []
    last_comma = -1

    def close(keep: int | None = None) -> None:
        """End the chunk after its first `keep` tokens (all by default); the rest starts the next."""
        nonlocal ids, weights, last_comma
        cut = len(ids) if keep is None else keep
        chunks.append(Chunk(ids[:cut], weights[:cut]))
        ids, weights, last_comma = ids[cut:], weights[cut:], -1

    for piece in pieces:
        if piece is None:
            close()
            continue
        piece_ids, weight = piece
        for token in piece_ids:
            if token == comma_id:
                last_comma = len(ids)
            elif len(ids) == size and last_comma != -1 and len(ids) - last_comma <= backtrack:
                close(last_comma + 1)
            if len(ids) == size:
                close()
            ids.append(token)
            weights.append(weight)
    if ids or not chunks:
        close()
    return chunks[:max_chunks]


def wrap_chunk(chunk: Chunk, bos: int, eos: int, pad: int, size: int = CHUNK) -> Chunk:
    """[start] + chunk + [end] + padding to `size` + 2 = 77 (SD1 pads with the end token,
    SD2/SDXL-G with '!'); the added tokens weigh 1."""
    fill = size - len(chunk.ids)
    return Chunk([bos, *chunk.ids, eos] + [pad] * fill, [1.0, *chunk.weights, 1.0] + [1.0] * fill)


def prompt_chunks(tokenizer, prompt: str, max_token_length: int, emphasis: bool = False) -> list[Chunk]:
    """The 77-token rows that encode `prompt` (one per chunk), with A1111's emphasis and
    BREAK read from it when `emphasis` is on (else the prompt is plain text)."""
    parsed = parse_emphasis(prompt) if emphasis else [(prompt, 1.0)]
    pieces = [None if (text, weight) == (BREAK, -1.0) else (_ids(tokenizer, text), weight) for text, weight in parsed]
    comma = tokenizer.get_vocab().get(",</w>")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    size = chunk_size(tokenizer)
    chunks = split_chunks(pieces, comma, max(1, max_token_length // CHUNK), size)
    return [wrap_chunk(c, tokenizer.bos_token_id, tokenizer.eos_token_id, pad, size) for c in chunks]


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False, truncation=False, verbose=False).input_ids


def token_count(tokenizer, prompt: str) -> int:
    return len(_ids(tokenizer, prompt))
