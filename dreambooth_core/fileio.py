"""Safe reading and atomic writing of model files.

Writes go to a temporary file in the destination folder and are renamed into place,
so a host that lists the folder never sees a half-written file and a failed write
(full disk, cancel) leaves any previous file intact. Reads never unpickle arbitrary
objects unless the caller explicitly opts in.
"""
from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

from .errors import FormatError, OutputExistsError, UserError

if TYPE_CHECKING:
    import torch

PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")


def check_output(path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Validate an output path before any expensive work starts."""
    out = Path(path)
    if out.exists() and not overwrite:
        raise OutputExistsError(f"{out} already exists: choose another name or pass --overwrite")
    if not out.parent.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
    return out


# Errors of a write that ran out of room or permission. safetensors and torch.save report them
# as SafetensorError / RuntimeError with the OS's words in the text, so the text counts too.
_WRITE_ERRNOS = {errno.ENOSPC: "disk full", errno.EFBIG: "disk full (file size limit)",
                 errno.EROFS: "read-only folder", errno.EACCES: "no permission to write"}
if hasattr(errno, "EDQUOT"):
    _WRITE_ERRNOS[errno.EDQUOT] = "disk quota exceeded"
_WRITE_WORDS = {"No space left": "disk full", "File too large": "disk full (file size limit)",
                "Read-only file system": "read-only folder", "Disk quota": "disk quota exceeded",
                "file write failed": "disk full", "Permission denied": "no permission to write"}
TMP_SUFFIX = ".tmp"


def write_failure(exc: BaseException, path: str | os.PathLike, kept: str = "the previous file is intact") -> UserError | None:
    """A one-sentence UserError when `exc` means the disk or folder refused the write, else None."""
    if isinstance(exc, UserError):
        return None
    reason = None
    seen: BaseException | None = exc
    while seen is not None and reason is None:  # torch reports a failed write, then a second error over it
        reason = _WRITE_ERRNOS.get(getattr(seen, "errno", None) or 0)
        if reason is None and not isinstance(seen, OSError):
            reason = next((why for words, why in _WRITE_WORDS.items() if words in str(seen)), None)
        seen = seen.__cause__ or seen.__context__
    if reason is None:
        return None
    return UserError(f"{reason} at {path}; {kept}: free space or fix the folder's permissions and try again")


def temp_name(out: Path) -> Path:
    """A hidden name beside `out` that says which process writes it (so a later start can tell
    a killed writer's leftover from a live one's file), ending in .tmp so no host lists it."""
    return out.with_name(f".{out.name}.{os.getpid()}.{secrets.token_hex(4)}{TMP_SUFFIX}")


def clean_stale_temps(folder: str | os.PathLike) -> list[Path]:
    """Remove the temporary files and folders that killed writers left in `folder`."""
    removed = []
    root = Path(folder)
    if not root.is_dir():
        return removed
    for entry in root.iterdir():
        parts = entry.name.split(".")
        if not (entry.name.startswith(".") and entry.name.endswith(TMP_SUFFIX) and len(parts) >= 4 and parts[-3].isdigit()):
            continue
        if _alive(int(parts[-3])):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry)
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # someone else's process: alive
        return True
    return True


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success rename it onto `path`.

    The temporary file is made with mode 0666 less the process umask (the kernel applies
    it; the umask itself is never changed, so no other thread sees it altered). Its name
    starts with '.' and ends in '.tmp', so neither A1111 nor ComfyUI lists it.
    """
    out = check_output(path, overwrite)
    tmp = temp_name(out)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        mode = os.fstat(fd).st_mode & 0o777   # 0666 less the umask, as the kernel applied it
        os.close(fd)
        yield tmp
        if tmp.exists():   # a writer that replaced the file (safetensors makes 0600 files) gets the usual mode
            os.chmod(tmp, mode)
        if out.exists() and not overwrite:
            raise OutputExistsError(f"{out} appeared while writing: choose another name or pass --overwrite")
        os.replace(tmp, out)
    except Exception as exc:
        failure = write_failure(exc, out)
        if failure is not None:
            raise failure from exc
        raise
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_folder(folder: Path, kept: str = "the previous folder is intact",
                  make: Callable[[Path], Any] = Path.mkdir) -> Iterator[Path]:
    """Yield a hidden temporary folder beside `folder` (created by `make`); on success it
    replaces `folder`, so a reader sees the old folder or the whole new one, never a part.
    A write the disk refused becomes a UserError that says what was kept."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temps(folder.parent)
    tmp = temp_name(folder)
    try:
        make(tmp)
        yield tmp
        old = None
        if folder.exists():
            old = folder.with_name(f".{folder.name}.{os.getpid()}.old")
            os.replace(folder, old)
        os.replace(tmp, folder)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except Exception as exc:
        failure = write_failure(exc, folder, kept=kept)
        if failure is not None:
            raise failure from exc
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_bytes_atomic(path: str | os.PathLike, data: bytes, overwrite: bool = False) -> Path:
    with atomic_path(path, overwrite) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text_atomic(path: str | os.PathLike, text: str, overwrite: bool = True) -> Path:
    return write_bytes_atomic(path, text.encode("utf-8"), overwrite)


def save_safetensors(
    tensors: dict[str, "torch.Tensor"],
    path: str | os.PathLike,
    metadata: dict[str, str] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a safetensors file atomically (contiguous CPU tensors, string metadata)."""
    from safetensors.torch import save_file

    clean = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    meta = {str(k): str(v) for k, v in (metadata or {}).items()}
    with atomic_path(path, overwrite) as tmp:
        save_file(clean, str(tmp), metadata=meta)
    return Path(path)


def save_torch_atomic(obj: Any, path: str | os.PathLike, overwrite: bool = False, legacy: bool = False) -> Path:
    """torch.save atomically; `legacy=True` writes the pre-zip format A1111's safe loader accepts."""
    with atomic_path(path, overwrite) as tmp:
        torch_save(obj, tmp, legacy)
    return Path(path)


def torch_save(obj: Any, path: Path, legacy: bool = False) -> None:
    """torch.save through a Python file, so a failed write raises the OS's error (ENOSPC, EFBIG)
    rather than torch's "iostream error" that names no cause."""
    import torch

    with open(path, "wb") as f:
        torch.save(obj, f, _use_new_zipfile_serialization=not legacy)


def require_file(path: str | os.PathLike, what: str = "file") -> Path:
    p = Path(path)
    if not p.exists():
        raise FormatError(f"{what} not found: {p}")
    if p.is_dir():
        raise FormatError(f"expected a {what} but {p} is a folder")
    return p


def read_safetensors_metadata(path: str | os.PathLike) -> dict[str, str]:
    from safetensors import safe_open

    p = require_file(path, "safetensors file")
    try:
        with safe_open(str(p), framework="pt") as f:
            return dict(f.metadata() or {})
    except Exception as exc:  # safetensors raises several types for a bad header
        raise FormatError(f"{p} is not a readable safetensors file ({exc}); it may be truncated: re-download or re-save it") from exc


def read_shapes(path: str | os.PathLike) -> dict[str, tuple[int, ...]]:
    """Tensor shapes of a safetensors file without reading the tensors."""
    from safetensors import safe_open

    p = require_file(path, "safetensors file")
    try:
        with safe_open(str(p), framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as exc:
        raise FormatError(f"{p} is not a readable safetensors file ({exc}); it may be truncated: re-download or re-save it") from exc


_SAFETENSORS_DTYPES = {
    "F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64", "I32": "int32",
    "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool", "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2",
}


class SafetensorsReader:
    """The tensors of a .safetensors file, each read on request with plain file reads.

    safetensors' own loaders memory-map the file, and every page a map touches counts in
    the process's resident set until the map is closed: loading a 3.4 GB fp32 UNet into
    bf16 that way peaks at 3.4 + 1.7 GB. Reading one tensor at a time into its own buffer
    peaks at the converted copies plus one tensor. safetensors itself validates the header
    first; this class only uses its offsets.
    """

    def __init__(self, path: str | os.PathLike):
        import json
        import struct

        self.path = require_file(path, "safetensors file")
        self.metadata = read_safetensors_metadata(self.path)  # validates the file's header
        self._file = open(self.path, "rb")
        try:
            (size,) = struct.unpack("<Q", self._file.read(8))
            header = json.loads(self._file.read(size))
        except Exception:
            self._file.close()
            raise
        header.pop("__metadata__", None)
        self._entries: dict[str, dict[str, Any]] = header
        self._data_start = 8 + size
        self.shapes = {k: tuple(v["shape"]) for k, v in header.items()}

    def get(self, key: str) -> "torch.Tensor":
        import torch

        entry = self._entries[key]
        dtype = getattr(torch, _SAFETENSORS_DTYPES[entry["dtype"]])
        begin, end = entry["data_offsets"]
        if end == begin:
            return torch.empty(entry["shape"], dtype=dtype)
        buf = bytearray(end - begin)
        self._file.seek(self._data_start + begin)
        if self._file.readinto(buf) != len(buf):
            raise FormatError(f"{self.path}: tensor {key} is cut short; the file is truncated: re-download or re-save it")
        return torch.frombuffer(buf, dtype=dtype).reshape(entry["shape"])

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> "SafetensorsReader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


SAFE_WEIGHTS_ONLY = (2, 6)   # torch releases from which weights_only=True cannot be made to run code
# How `train --unsafe-pickle` reaches the process that loads the base model (its own or a worker's).
UNSAFE_PICKLE_ENV = "DREAMBOOTH_CORE_UNSAFE_PICKLE"


def unsafe_pickle_requested() -> bool:
    return os.environ.get(UNSAFE_PICKLE_ENV) == "1"


def weights_only_is_safe(version: str) -> bool:
    """Whether torch `version` (e.g. "2.1.2+cu121") loads pickles with weights_only=True safely."""
    from packaging.version import Version

    return Version(version.split("+")[0]).release[:2] >= SAFE_WEIGHTS_ONLY


class UnsafePickle(FormatError):
    """A pickle this torch cannot read safely, refused unread."""


def load_pickled(path: str | os.PathLike, what: str = "file", device: str = "cpu", unsafe: bool = False,
                 written_here: bool = False) -> Any:
    """torch.load with weights_only=True (tensors and plain containers; legacy or zip format).

    `unsafe` (the user's explicit --unsafe-pickle) allows arbitrary objects, because
    unpickling runs code. Before torch 2.6 weights_only can be bypassed, so there a pickle
    is refused unless `unsafe`, or `written_here` (a file this project wrote in its own folder).
    """
    import torch

    p = require_file(path, what)
    if not unsafe and not written_here and not weights_only_is_safe(torch.__version__):
        raise UnsafePickle(
            f"{p} is a pickle, and this torch ({torch.__version__}) cannot read pickles safely: before 2.6 its "
            "weights_only loader can be made to run code (CVE-2025-32434). Convert the file to .safetensors where a "
            "newer torch runs (e.g. `python -m dreambooth_core convert` for checkpoints, or load and save it with "
            "safetensors.torch.save_file), or pass --unsafe-pickle on the command line if you trust its source")
    try:
        return torch.load(p, map_location=device, weights_only=not unsafe)
    except Exception as exc:
        if not unsafe and ("weights_only" in str(exc) or "Unsupported global" in str(exc)):
            raise FormatError(
                f"{p} contains pickled Python objects beyond tensors and was not loaded (unpickling can run code): "
                "convert it to .safetensors, or pass --unsafe-pickle if you trust its source"
            ) from exc
        raise FormatError(f"{p} could not be read as a torch file ({exc.__class__.__name__}: {exc}); it may be truncated or not a {what}") from exc


def load_state_dict(
    path: str | os.PathLike,
    device: str = "cpu",
    unsafe_pickle: bool = False,
    keep: Callable[[str], bool] | None = None,
) -> dict[str, "torch.Tensor"]:
    """Load tensors from .safetensors (memory-mapped) or a pickle with weights_only=True.

    `keep` filters keys before they are read, so a caller that needs part of a large
    file never materialises the rest. Pickled checkpoints that need arbitrary objects
    are refused unless `unsafe_pickle` is set, because unpickling runs code.
    """
    import torch

    p = require_file(path, "model file")
    if p.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            out = {}
            with safe_open(str(p), framework="pt", device=device) as f:
                for k in f.keys():
                    if keep is None or keep(k):
                        out[k] = f.get_tensor(k)
            return out
        except Exception as exc:
            raise FormatError(f"{p} is not a readable safetensors file ({exc}); it may be truncated: re-download or re-save it") from exc
    if p.suffix.lower() not in PICKLE_SUFFIXES:
        raise FormatError(f"{p}: unknown model file type {p.suffix!r}; use .safetensors (or .ckpt/.pt/.bin)")
    obj = load_pickled(p, "model file", device=device, unsafe=unsafe_pickle)
    sd = obj.get("state_dict", obj) if isinstance(obj, dict) else obj
    if not isinstance(sd, dict):
        raise FormatError(f"{p} holds a {type(sd).__name__}, not a dictionary of tensors")
    return {k: v for k, v in sd.items() if isinstance(v, torch.Tensor) and (keep is None or keep(k))}
