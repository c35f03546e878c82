"""Turning what a user or a client typed into a real path, in one place.

Every front end (CLI, A1111 tab and API, ComfyUI nodes) joins names and paths that come
from outside. A name that becomes a file name must be one plain path component; a path is
expanded once (`~`), resolved (symlinks followed) and, where a front end serves clients
over a network, must lie under the folders that front end allows. Nothing here touches a
host; the adapters pass their roots in.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Iterable

from .errors import UserError

MAX_NAME = 120                      # characters of a name (ext4 allows 255 bytes; leave room for suffixes)
MARKER = ".made_by_dreambooth_core"  # inside every folder this project may later delete
FORBIDDEN_NAME_CHARS = '/\\:*?"<>|'   # separators, and what Windows refuses in a file name


class PathRefused(UserError):
    """A name or path that is not a plain name or not a path at all."""


class OutsideRoots(PathRefused):
    """A path that would reach outside the folders allowed for it."""


def text_value(value: object, what: str) -> str:
    """`value` as text: a str (or os.PathLike) without NUL bytes; anything else is refused."""
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str):
        raise PathRefused(f"{what} must be text, not {type(value).__name__} ({value!r:.60})")
    if "\x00" in value:
        raise PathRefused(f"{what} contains a NUL byte: type the name without it")
    return value


def _filled(value: object, what: str, hint: str) -> str:
    text = text_value(value, what).strip()
    if not text:
        raise PathRefused(f"{what} is empty: {hint}")
    return text


def safe_name(value: object, what: str) -> str:
    """`value` as one plain path component: no folders, no `..`, no leading dot, sane length."""
    name = _filled(value, what, "type a name such as my_dog")
    bad = sorted({c for c in name if c in FORBIDDEN_NAME_CHARS or ord(c) < 32})
    if bad or name in (".", "..") or name.startswith("."):
        shown = f" ({' '.join(map(repr, bad))})" if bad else ""
        raise PathRefused(f"{what} {name!r} must be a plain name: no folders, no characters such as / \\ : * ? \" < > |"
                          f"{shown}, and not starting with a dot")
    if len(name) > MAX_NAME:
        raise PathRefused(f"{what} is {len(name)} characters long: use at most {MAX_NAME}")
    return name




def real_path(value: object, what: str) -> Path:
    """The path as the file system sees it: `~` expanded once, made absolute, symlinks resolved."""
    return Path(os.path.expanduser(_filled(value, what, "give a folder or file"))).resolve()


def is_inside(path: str | os.PathLike, root: str | os.PathLike) -> bool:
    """Whether resolved `path` is `root` or lies under it (both resolved here)."""
    target, base = os.path.realpath(path), os.path.realpath(root)
    try:
        return os.path.commonpath([target, base]) == base
    except ValueError:  # different drives
        return False


def contained(value: object, what: str, roots: Iterable[str | os.PathLike], base: str | os.PathLike | None = None,
              anywhere: bool = False, setting_hint: str = "") -> Path:
    """`value` resolved (relative to `base` when relative), required to lie under one of `roots`.

    `anywhere` is the operator's own switch (never a request field) that lets any absolute
    path through; relative paths and `..` still resolve under `base`.
    """
    text = _filled(value, what, "give a folder or file")
    expanded = Path(os.path.expanduser(text))
    absolute = expanded.is_absolute()
    path = (expanded if absolute or base is None else Path(base) / expanded).resolve()
    if anywhere and absolute:
        return path
    roots = [Path(r) for r in roots]
    if any(is_inside(path, root) for root in roots):
        return path
    listed = ", ".join(str(r) for r in roots) or "none"
    hint = f"; {setting_hint}" if setting_hint else ""
    raise OutsideRoots(f"{what} {text!r} is outside the folders this may use ({listed}){hint}")


# ---- folders this project made, and only those, may be deleted -------------------------------

def make_owned_folder(folder: str | os.PathLike) -> Path:
    """Create `folder` (and a marker inside it) so that `remove_owned_folder` may delete it later."""
    path = Path(folder)
    path.mkdir(parents=True, exist_ok=True)
    (path / MARKER).touch()
    return path


def is_owned(folder: str | os.PathLike) -> bool:
    path = Path(folder)
    return path.is_dir() and not path.is_symlink() and (path / MARKER).is_file()


def remove_owned_folder(folder: str | os.PathLike) -> None:
    """Delete a folder this project made; refuse (and delete nothing) for any other folder."""
    path = Path(folder)
    if not path.exists() and not path.is_symlink():
        return
    if not is_owned(path):
        raise PathRefused(f"{path} was not made by dreambooth_core, so it is not deleted or replaced: "
                          "choose another name, or move that folder away")
    shutil.rmtree(path)
