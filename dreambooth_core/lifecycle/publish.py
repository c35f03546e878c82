"""Putting a finished artifact where a host looks for it: an atomic copy into the host's
folder that never overwrites by accident."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from ..errors import OutputExistsError, UserError
from ..fileio import atomic_path, clean_stale_temps
from .names import destination


def check_name_free(kind: str, name: str, folder: str | os.PathLike) -> Path:
    """Fail before training, not after, when the result would overwrite a user's file."""
    dest = destination(kind, name, folder)
    if dest.exists():
        raise OutputExistsError(f"{dest.name} already exists in {dest.parent}: choose another output name")
    return dest


def publish(src: str | os.PathLike, kind: str, name: str, folder: str | os.PathLike, overwrite: bool = False) -> Path:
    """Copy `src` into `folder` as `<name><suffix>`, atomically: a hard link when the
    folders share a file system, a copy otherwise; never half a file in the host's list."""
    source = Path(src)
    if not source.is_file():
        raise UserError(f"artifact not found: {source}")
    dest = destination(kind, name, folder)
    clean_stale_temps(dest.parent)   # what a killed copy into the host's folder left
    with atomic_path(dest, overwrite=overwrite) as tmp:
        tmp.unlink()
        try:
            os.link(source, tmp)
        except OSError:
            shutil.copyfile(source, tmp)
    return dest
