"""CLIP tokenizers built from the BPE files shipped in the package (never from the hub)."""
from __future__ import annotations

import copy
import functools
import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from ..families import CLIP_BPE_DIR, Family

if TYPE_CHECKING:
    from transformers import CLIPTokenizer


def clip_tokenizer(pad_token: str = "<|endoftext|>") -> "CLIPTokenizer":
    """The real CLIP BPE tokenizer (49408 tokens, 77 positions). SD2/SDXL-G pad with '!'.

    A fresh copy each call, because Textual Inversion adds tokens to it; building from
    the BPE files is the slow part, so that happens once per pad token.
    """
    return copy.deepcopy(_clip_tokenizer_template(pad_token))


@functools.lru_cache(maxsize=None)
def _clip_tokenizer_template(pad_token: str) -> "CLIPTokenizer":
    from transformers import CLIPTokenizer

    return CLIPTokenizer(
        str(CLIP_BPE_DIR / "vocab.json"),
        str(CLIP_BPE_DIR / "merges.txt"),
        pad_token=pad_token,
        model_max_length=77,
    )


def family_tokenizers(family: Family) -> list["CLIPTokenizer"]:
    out = []
    for name in family.tokenizers:
        cfg = json.loads((family.config_dir / name / "tokenizer_config.json").read_text())
        out.append(clip_tokenizer(cfg["pad_token"]))
    return out


def write_tokenizer_folder(family: Family, dest: Path, tokenizers: "list[CLIPTokenizer] | None" = None) -> None:
    """Write complete tokenizer folders (for a diffusers folder, or a host that wants them):
    `tokenizers` (a model's, with its `model_max_length`), else the family's.

    The BPE files are copied too: newer transformers saves only tokenizer.json, which
    the older transformers that hosts pin (A1111: 4.30) cannot read.
    """
    for name, tok in zip(family.tokenizers, tokenizers or family_tokenizers(family)):
        tok.save_pretrained(str(dest / name))
        for bpe_file in ("vocab.json", "merges.txt"):
            shutil.copyfile(CLIP_BPE_DIR / bpe_file, dest / name / bpe_file)
