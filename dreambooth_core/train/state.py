"""Resumable training state: `state/step-N/` holds everything an uninterrupted run would
still have in memory at step N.

- `trainable.safetensors`: exactly the trained weights (fp32), keyed by the method;
- `optimizer.pt`, `scheduler.pt`: their state dicts (tensors and plain values only, read
  back with `weights_only=True`);
- `state.json`: the step, the data position (micro-batches consumed), RNG states, and
  the settings a resumed run must share.

A state folder is written under a temporary name and renamed when complete, so an
interrupted save (cancel, crash, full disk) never leaves a half state that `latest`
would pick up; the previous state stays intact.
"""
from __future__ import annotations

import json
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import UserError
from ..fileio import UnsafePickle, atomic_folder, load_pickled, torch_save
from ..paths import is_owned

if TYPE_CHECKING:
    import torch

KEEP_STATES = 2  # full-model states are large: keep the newest two
# Settings that must match for a resumed run to continue the same trajectory.
RESUME_KEYS = ("method", "network", "train_batch_size", "gradient_accumulation_steps", "seed", "rank", "alpha", "conv_rank",
               "train_text_encoder", "num_vectors", "layer_structure", "activation", "hypernetwork_layer_norm",
               "with_prior_preservation", "optimizer", "ema_decay", "ema_start_step",
               # the data order and what each step sees (data/concepts.py, captions.py, buckets.py)
               "concepts", "enable_bucketing", "bucket_no_upscale", "shuffle_caption", "keep_tokens",
               "caption_dropout_rate", "tag_dropout_rate", "max_token_length", "clip_skip", "weighted_captions",
               "masked_loss_floor")


@dataclass
class TrainingState:
    step: int
    micro_step: int
    weights: dict[str, "torch.Tensor"]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    rng: dict[str, Any]
    settings: dict[str, Any]


def state_dirs(root: Path) -> list[Path]:
    """Complete `step-N` folders under `root`, oldest first."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith("step-") and p.name[5:].isdigit() and (p / "state.json").is_file()]
    return sorted(found, key=lambda p: int(p.name[5:]))


def rng_states() -> dict[str, Any]:
    import numpy as np
    import torch

    np_state = np.random.get_state()
    out = {
        "python": _jsonable(random.getstate()),
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
        "torch": torch.get_rng_state().tolist(),
    }
    if torch.cuda.is_available():
        out["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return out


def restore_rng(states: dict[str, Any]) -> None:
    import numpy as np
    import torch

    random.setstate(_tupled(states["python"]))
    kind, keys, *rest = states["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), *rest))
    torch.set_rng_state(torch.tensor(states["torch"], dtype=torch.uint8))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in states["cuda"]])


def _jsonable(value: Any) -> Any:
    return [_jsonable(v) for v in value] if isinstance(value, (tuple, list)) else value


def _tupled(value: Any) -> Any:
    return tuple(_tupled(v) for v in value) if isinstance(value, list) else value


def save_state(root: Path, state: TrainingState) -> Path:
    """Write `root/step-N/` atomically and prune older states; returns the folder."""
    from safetensors.torch import save_file

    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{state.step}"
    if final.exists():  # e.g. a checkpoint step that is also the last step
        return final
    with atomic_folder(final, kept="the previous state is intact") as tmp:
        save_file({k: v.detach().to("cpu").contiguous() for k, v in state.weights.items()}, str(tmp / "trainable.safetensors"))
        torch_save(state.optimizer, tmp / "optimizer.pt")
        torch_save(state.scheduler, tmp / "scheduler.pt")
        meta = {"step": state.step, "micro_step": state.micro_step, "rng": state.rng, "settings": state.settings}
        (tmp / "state.json").write_text(json.dumps(meta), encoding="utf-8")
    for old in state_dirs(root)[:-KEEP_STATES]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def saved_step(folder: Path) -> int:
    """The step a state folder was saved at (without loading its tensors)."""
    try:
        return int(json.loads((folder / "state.json").read_text(encoding="utf-8"))["step"])
    except (OSError, ValueError, KeyError) as exc:
        raise UserError(f"{folder} is not a readable training state ({exc}): give a state/step-N folder or 'latest'") from exc


def load_state(folder: Path) -> TrainingState:
    """The state in `folder`; a UserError naming the damaged file if any part cannot be read."""
    from safetensors.torch import load_file

    if not (folder / "state.json").is_file():
        raise UserError(f"{folder} is not a training state folder (no state.json): give a state/step-N folder or 'latest'")
    parts = {"state.json": lambda p: _read_meta(p), "trainable.safetensors": lambda p: load_file(str(p)),
             "optimizer.pt": lambda p: load_pickled(p, "training state file", written_here=_ours(folder)),
             "scheduler.pt": lambda p: load_pickled(p, "training state file", written_here=_ours(folder))}
    read = {}
    for name, reader in parts.items():
        try:
            read[name] = reader(folder / name)
        except UnsafePickle:
            raise
        except Exception as exc:  # safetensors, pickle and torch each raise their own types for a damaged file
            raise DamagedState(f"{folder / name} is damaged ({type(exc).__name__}: {str(exc)[:200]}); resume from "
                               "an earlier state or start a new run") from exc
    meta = read["state.json"]
    return TrainingState(meta["step"], meta["micro_step"], read["trainable.safetensors"], read["optimizer.pt"],
                         read["scheduler.pt"], meta["rng"], meta["settings"])


def _ours(folder: Path) -> bool:
    """A state inside a run folder this project made may be read even by an old torch: we
    wrote its pickles (tensors and plain values only), nobody handed them in."""
    return is_owned(folder.parent.parent)


class DamagedState(UserError):
    """A state folder with a file that cannot be read back."""


STATE_KEYS = ("step", "micro_step", "rng", "settings")


def damage(folder: Path) -> str | None:
    """Why the state in `folder` cannot be resumed (its damaged file named), or None, without
    loading its tensors: state.json's keys, the safetensors header against the file's size,
    and the zip records of the torch files."""
    import struct
    import zipfile

    name = "state.json"
    try:
        _read_meta(folder / name)
        name = "trainable.safetensors"
        path = folder / name
        with open(path, "rb") as f:
            (size,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(size))
        end = max([v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"], default=0)
        if path.stat().st_size != 8 + size + end:
            raise ValueError(f"{path.stat().st_size} bytes where the header says {8 + size + end}: cut short")
        for name in ("optimizer.pt", "scheduler.pt"):
            with zipfile.ZipFile(folder / name) as z:
                bad = z.testzip()
            if bad is not None:
                raise ValueError(f"record {bad} is corrupt")
    except Exception as exc:  # any of json, struct, zipfile, OS errors: the file is not what was saved
        return f"{folder / name} is damaged ({type(exc).__name__}: {str(exc)[:200]})"
    return None


def _read_meta(path: Path) -> dict[str, Any]:
    meta = json.loads(path.read_text(encoding="utf-8"))
    missing = [k for k in STATE_KEYS if not isinstance(meta, dict) or k not in meta]
    if missing or not isinstance(meta["step"], int) or not isinstance(meta["settings"], dict):
        raise ValueError(f"missing or wrong keys: {', '.join(missing) or 'step/settings'}")
    return meta


def resume_settings(config) -> dict[str, Any]:
    return {k: getattr(config, k) for k in RESUME_KEYS}


def check_compatible(state: TrainingState, config, folder: Path) -> None:
    """A resumed run must share the settings that shape the trained weights and the data order."""
    now = resume_settings(config)
    changed = [k for k in RESUME_KEYS if k in state.settings and state.settings[k] != now[k]]
    if changed:
        k = changed[0]
        raise UserError(f"cannot resume from {folder}: {k} was {state.settings[k]!r} and is now {now[k]!r}; "
                        "use the original settings or start a new run")
