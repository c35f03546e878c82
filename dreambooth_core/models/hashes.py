"""The hashes hosts and trainers give a model file (kohya, A1111), read without loading it."""
from __future__ import annotations

import hashlib
import os

from ..fileio import require_file


def model_hash(path: str | os.PathLike) -> str:
    """kohya / sd-webui-additional-networks hash (`sshs_model_hash`): sha256 of a
    safetensors file's bytes after its header, so editing metadata does not change it."""
    p = require_file(path, "safetensors file")
    h = hashlib.sha256()
    with open(p, "rb") as f:
        header_len = int.from_bytes(f.read(8), "little")
        f.seek(8 + header_len)
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def legacy_model_hash(path: str | os.PathLike) -> str:
    """A1111's old 8-hex model hash (kohya `ss_sd_model_hash`): sha256 of 64 KiB at offset 1 MiB."""
    with open(require_file(path, "model file"), "rb") as f:
        f.seek(0x100000)
        return hashlib.sha256(f.read(0x10000)).hexdigest()[:8]


def file_sha256(path: str | os.PathLike) -> str:
    """A1111's current model hash (kohya `ss_new_sd_model_hash`); its short form is the first 10 hex digits."""
    h = hashlib.sha256()
    with open(require_file(path, "model file"), "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
