"""Derive the Hugging Face CLIP tokenizer files (vocab.json, merges.txt) from the
CLIP BPE table that open-clip-torch ships (bpe_simple_vocab_16e6.txt.gz).

Run once when the shipped files need rebuilding:
    pip install open-clip-torch --no-deps
    python tools/build_tokenizer_files.py dreambooth_core/configs/clip_bpe

The vocabulary is fully determined by the merge table: 256 byte symbols, the same
256 with the end-of-word marker, one entry per merge, then the two special tokens.
"""
from __future__ import annotations

import gzip
import importlib.util
import json
import sys
from pathlib import Path

NUM_MERGES = 49152 - 256 - 2  # the part of the table CLIP actually uses


def byte_symbols() -> list[str]:
    """CLIP's byte-level stand-in characters, in CLIP's vocabulary order: the printable
    bytes first (as themselves), then the rest mapped above U+0100."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    codes = list(printable)
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + extra)
            extra += 1
    return [chr(c) for c in codes]


def build(bpe_gz: Path) -> tuple[dict[str, int], list[str]]:
    lines = gzip.open(bpe_gz).read().decode("utf-8").split("\n")
    merges = lines[1 : NUM_MERGES + 1]
    symbols = byte_symbols()
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m.split()) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {t: i for i, t in enumerate(tokens)}, merges


def main(out_dir: str) -> None:
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("open-clip-torch is not installed: pip install open-clip-torch --no-deps")
    bpe = Path(list(spec.submodule_search_locations)[0]) / "bpe_simple_vocab_16e6.txt.gz"
    vocab, merges = build(bpe)
    assert len(vocab) == 49408, len(vocab)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    print(f"wrote {len(vocab)} tokens and {len(merges)} merges to {out}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "dreambooth_core/configs/clip_bpe")
