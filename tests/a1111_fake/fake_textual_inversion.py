"""modules.textual_inversion.textual_inversion: `EmbeddingDatabase`, the WebUI's list of
embeddings. What the adapter can observe of the real one:

- `embedding_dirs` is keyed by folder path; `add_embedding_dir(path)` adds one.
- `load_textual_inversion_embeddings(force_reload=False)` rereads every folder (any depth)
  when forced or when a folder changed since the last read; otherwise it does nothing.
- A reread first asks `shared.sd_model` for its embedding width — which loads a model if
  none is loaded — and files of that width go to `word_embeddings`, others to
  `skipped_embeddings`, both keyed by file stem.

The fake reads only .safetensors headers (a file with exactly one tensor is an embedding);
any other file, or one it cannot make sense of, counts as skipped.
"""
import json
import os
import struct
from pathlib import Path

from modules import shared

_DEFAULT_WIDTH = 768   # SD1's text encoder


def _tensor_widths(file):
    """The last dimension of each tensor in a .safetensors file, read from its header."""
    with open(file, "rb") as stream:
        size = struct.unpack("<Q", stream.read(8))[0]
        header = json.loads(stream.read(size))
    return [entry["shape"][-1] for key, entry in header.items() if key != "__metadata__" and entry["shape"]]


def _stamp(folder):
    return os.path.getmtime(folder) if os.path.isdir(folder) else None


class EmbeddingDatabase:
    def __init__(self):
        self.word_embeddings = {}
        self.skipped_embeddings = {}
        self.embedding_dirs = {}   # folder -> its modification time at the last read (None: never read)
        self.expected_shape = -1

    def add_embedding_dir(self, path):
        self.embedding_dirs[path] = None

    def clear_embedding_dirs(self):
        self.embedding_dirs.clear()

    def load_textual_inversion_embeddings(self, force_reload=False):
        stale = [folder for folder, seen in self.embedding_dirs.items() if _stamp(folder) not in (None, seen)]
        if not force_reload and not stale:
            return
        self.word_embeddings.clear()
        self.skipped_embeddings.clear()
        self.expected_shape = getattr(shared.sd_model, "embedding_width", _DEFAULT_WIDTH)
        for folder in self.embedding_dirs:
            for here, _, names in os.walk(folder, followlinks=True):
                for file in (Path(here, name) for name in sorted(names)):
                    if file.stat().st_size:
                        self._sort_in(file)
            self.embedding_dirs[folder] = _stamp(folder)

    def _sort_in(self, file):
        widths = None
        if file.suffix.lower() == ".safetensors":
            try:
                widths = _tensor_widths(file)
            except (OSError, ValueError, KeyError, struct.error):
                widths = None
        fits = widths is not None and len(widths) == 1 and widths[0] == self.expected_shape
        (self.word_embeddings if fits else self.skipped_embeddings)[file.stem] = str(file)
