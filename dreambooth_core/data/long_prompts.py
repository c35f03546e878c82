"""Prompts longer than CLIP's 75 tokens, split into chunks the way A1111 prompts.

A1111 (modules/sd_hijack_clip.py) cuts a prompt's tokens into chunks of 75, moving the
words after the last comma to the next chunk when that comma is at most 20 tokens back,
wraps each chunk in start/end tokens and pads it to 77, encodes each chunk separately and
joins the results along the sequence axis. kohya's `max_token_length` (75/150/225) caps the
prompt at 1-3 chunks. Training on the same chunks is training the way the host prompts.
A prompt of at most 75 tokens gives exactly the one row diffusers' pipelines tokenise.
"""
from __future__ import annotations

CHUNK = 75
MAX_TOKEN_LENGTHS = (75, 150, 225)
COMMA_BACKTRACK = 20   # A1111's default `comma_padding_backtrack`


def chunk_size(tokenizer) -> int:
    """Tokens per chunk: 75, or fewer for a text encoder with fewer than 77 positions (toy models)."""
    return min(CHUNK, tokenizer.model_max_length - 2)


def split_chunks(ids: list[int], comma_id: int | None, max_chunks: int, size: int = CHUNK) -> list[list[int]]:
    """`ids` (no special tokens) in chunks of at most `size` (75), at most `max_chunks` of them
    (the rest is cut). One chunk is a plain cut at 75, as a 77-token tokenizer does."""
    if max_chunks == 1 or len(ids) <= size:
        return [ids[:size]]
    chunks: list[list[int]] = []
    current: list[int] = []
    last_comma = -1
    for token in ids:
        if token == comma_id:
            last_comma = len(current)
        elif len(current) == size and last_comma != -1 and len(current) - last_comma <= COMMA_BACKTRACK:
            moved = current[last_comma + 1 :]
            chunks.append(current[: last_comma + 1])
            current, last_comma = moved, -1
        if len(current) == size:
            chunks.append(current)
            current, last_comma = [], -1
        current.append(token)
    if current:
        chunks.append(current)
    return chunks[:max_chunks]


def wrap_chunk(chunk: list[int], bos: int, eos: int, pad: int, size: int = CHUNK) -> list[int]:
    """[start] + chunk + [end] + padding to `size` + 2 = 77 (SD1 pads with the end token, SD2/SDXL-G with '!')."""
    return [bos, *chunk, eos] + [pad] * (size - len(chunk))


def prompt_chunks(tokenizer, prompt: str, max_token_length: int) -> list[list[int]]:
    """The 77-token rows that encode `prompt` (one per chunk)."""
    ids = tokenizer(prompt, add_special_tokens=False, truncation=False, verbose=False).input_ids
    comma = tokenizer.get_vocab().get(",</w>")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    size = chunk_size(tokenizer)
    chunks = split_chunks(ids, comma, max(1, max_token_length // CHUNK), size)
    return [wrap_chunk(c, tokenizer.bos_token_id, tokenizer.eos_token_id, pad, size) for c in chunks]


def token_count(tokenizer, prompt: str) -> int:
    return len(tokenizer(prompt, add_special_tokens=False, truncation=False, verbose=False).input_ids)
