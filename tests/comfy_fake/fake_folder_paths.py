"""Our stand-in for ComfyUI's `folder_paths` module.

Host facts modelled: each model kind has a list of folders, the first being where new
files belong; a kind's file list holds paths relative to its folder, found recursively,
limited to model-file extensions, sorted, and current on every call (a file written a
moment ago is listed); `get_full_path` answers None for a name that is not there and
follows a listed symlink wherever it leads; the
input, output and temp directories; `get_save_image_path` and its file counter.
The real module takes its base folder from the command line; here the test-only
`reset(base)` builds a fresh ComfyUI tree under `base`.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

_MODEL_SUFFIXES = frozenset({".safetensors", ".sft", ".ckpt", ".pt", ".pt2", ".pth", ".bin", ".pkl"})
_FILE_KINDS = ("checkpoints", "loras", "embeddings", "hypernetworks", "vae", "upscale_models", "clip_vision")
_FOLDER_KINDS = ("diffusers",)  # kinds whose entries are folders, not files

_kinds: dict[str, list[Path]] = {}
_special: dict[str, Path] = {}


def reset(base: str) -> None:
    """Test-only: a fresh tree under `base`: models/<kind>/ plus input/, output/ and temp/."""
    root = Path(base).resolve()
    _kinds.clear()
    for kind in _FILE_KINDS + _FOLDER_KINDS:
        _kinds[kind] = [root / "models" / kind]
    _special.clear()
    _special.update({name: root / name for name in ("input", "output", "temp")})
    for folder in [*(f[0] for f in _kinds.values()), *_special.values()]:
        folder.mkdir(parents=True, exist_ok=True)


def get_input_directory() -> str:
    return str(_special["input"])


def get_output_directory() -> str:
    return str(_special["output"])


def get_temp_directory() -> str:
    return str(_special["temp"])


def get_folder_paths(folder_name: str) -> list[str]:
    """The kind's folders (a new list each call); KeyError for an unknown kind."""
    return [str(p) for p in _kinds[folder_name]]


def get_full_path(folder_name: str, filename: str) -> str | None:
    """As ComfyUI: the name is made relative to "/" first (so `..` cannot climb out of the
    folder), then `folder/name` if it is a file - a symlink to a file elsewhere included (the
    path is returned as joined, not resolved; ComfyUI 0.3.64 `folder_paths.get_full_path`)."""
    name = os.path.relpath(os.path.join("/", filename), "/")
    for folder in _kinds.get(folder_name, []):
        candidate = os.path.join(folder, name)
        if os.path.isfile(candidate):
            return candidate
    return None


def _model_files(folder: Path) -> set[str]:
    if not folder.is_dir():
        return set()
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*")
            if p.is_file() and p.suffix.lower() in _MODEL_SUFFIXES and ".git" not in p.relative_to(folder).parts}


def get_filename_list(folder_name: str) -> list[str]:
    names: set[str] = set()
    for folder in _kinds[folder_name]:
        names |= _model_files(folder)
    return sorted(names)


_NUMBERED = re.compile(r"_(\d+)")


def get_save_image_path(filename_prefix: str, output_dir: str, image_width=0, image_height=0) -> tuple[str, str, int, str, str]:
    """(folder, file stem, next free number, subfolder, prefix) for saving images under `output_dir`."""
    prefix = Path(filename_prefix)
    subfolder = "" if str(prefix.parent) == "." else str(prefix.parent)
    folder = Path(output_dir) / subfolder
    folder.mkdir(parents=True, exist_ok=True)
    used = [int(m.group(1)) for f in folder.iterdir() if f.name.startswith(prefix.name)
            and (m := _NUMBERED.match(f.name[len(prefix.name):]))]
    return str(folder), prefix.name, max(used, default=0) + 1, subfolder, filename_prefix
