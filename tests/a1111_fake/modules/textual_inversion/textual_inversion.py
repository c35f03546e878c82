"""Fake of modules/textual_inversion/textual_inversion.py: the embedding database.

Like the real one, a reload asks `shared.sd_model` for the embedding width (which loads a
model if none is loaded), reads .pt/.bin/.safetensors files of each directory (recursively),
registers a file whose single tensor (or `string_to_param`/`emb_params`) has that width and
skips the others."""
import json
import os
import struct

from modules import shared


def _safetensors_shapes(path):
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    return {k: v["shape"] for k, v in header.items() if k != "__metadata__"}


class DirWithTextualInversionEmbeddings:
    def __init__(self, path):
        self.path = path
        self.mtime = None

    def has_changed(self):
        if not os.path.isdir(self.path):
            return False
        return os.path.getmtime(self.path) != self.mtime

    def update(self):
        if os.path.isdir(self.path):
            self.mtime = os.path.getmtime(self.path)


class EmbeddingDatabase:
    def __init__(self):
        self.word_embeddings = {}
        self.skipped_embeddings = {}
        self.expected_shape = -1
        self.embedding_dirs = {}

    def add_embedding_dir(self, path):
        self.embedding_dirs[path] = DirWithTextualInversionEmbeddings(path)

    def clear_embedding_dirs(self):
        self.embedding_dirs.clear()

    def get_expected_shape(self):
        return shared.sd_model.embedding_width if hasattr(shared.sd_model, "embedding_width") else 768

    def load_from_file(self, path, filename):
        name, ext = os.path.splitext(filename)
        if ext.lower() != ".safetensors":
            self.skipped_embeddings[name] = path  # the fake only reads safetensors
            return
        shapes = _safetensors_shapes(path)
        if len(shapes) != 1:
            raise ValueError(f"Couldn't identify {filename} as neither textual inversion embedding nor diffuser concept.")
        (shape,) = shapes.values()
        if shape[-1] == self.expected_shape:
            self.word_embeddings[name] = path
        else:
            self.skipped_embeddings[name] = path

    def load_from_dir(self, embdir):
        if not os.path.isdir(embdir.path):
            return
        for root, _, fns in os.walk(embdir.path, followlinks=True):
            for fn in fns:
                fullfn = os.path.join(root, fn)
                if os.stat(fullfn).st_size == 0:
                    continue
                self.load_from_file(fullfn, fn)

    def load_textual_inversion_embeddings(self, force_reload=False):
        if not force_reload:
            if not any(embdir.has_changed() for embdir in self.embedding_dirs.values()):
                return
        self.word_embeddings.clear()
        self.skipped_embeddings.clear()
        self.expected_shape = self.get_expected_shape()
        for embdir in self.embedding_dirs.values():
            self.load_from_dir(embdir)
            embdir.update()
