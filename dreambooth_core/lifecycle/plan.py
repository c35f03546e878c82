"""Asking for the same training again: finish the interrupted run, or reuse the finished one.

Graph hosts (ComfyUI) run a node again with identical inputs after a cancel, a crash or
a restart, and users expect that to continue, not to start over or to overwrite their
result. So every distinct run gets its own folder, named after its output and a hash of
the settings that shape its weights (and of its base model and image folders); there an
interrupted run's newest state is found and resumed, and a finished run with the very
same settings is recognised from its record and reused without training.

    plan = plan_run(config, root, sources={"base_model": ..., "instance_data_dir": ...})
    plan.action            # "fresh" | "resume" | "reuse"
    run plan.config …      # output_dir, resume_from and overwrite are set for this run
    record_finished(plan, finished_run(job.result))   # KeptRuns.publish: places its files, then records
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from ..config import TrainConfig
from ..events import Artifact
from ..fileio import write_text_atomic
from ..jobs.state import RunState
from ..train.run_dir import RunDir
from ..train.state import RESUME_KEYS, state_dirs
from .names import is_step_save

RECORD_FILE = "finished.json"
# Settings that make two runs the same run. Others (steps, learning rate, number of class
# images, validation...) may change: an interrupted run then continues with the new values,
# a finished one is trained again in the same folder, reusing its cached class images.
# RESUME_KEYS are the ones the trainer itself refuses to change on resume.
IDENTITY_KEYS = RESUME_KEYS + ("family", "token", "class_noun", "instance_prompt", "class_prompt", "resolution",
                               "init_word", "conv_alpha")
# Paths and switches that say where and how a run is stored, not what it learns.
PLACEMENT_KEYS = ("base_model", "instance_data_dir", "class_data_dir", "output_dir", "resume_from", "overwrite",
                  "publish_step_saves")


def _digest(value: Any, length: int = 12) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:length]


def source_signature(path: str | os.PathLike | None, recursive: bool = True) -> str:
    """A cheap identity of a model file or an image folder: names, sizes and modification
    times (hashing gigabytes of weights on every queue would take longer than a step).
    An image folder is read flat (`recursive=False`), as training reads it."""
    if not path:
        return ""
    p = Path(path)
    if p.is_file():
        st = p.stat()
        return _digest([p.name, st.st_size, st.st_mtime_ns])
    if p.is_dir():
        entries = []
        for child in sorted(p.rglob("*") if recursive else p.iterdir()):
            if child.is_file() and not child.name.startswith("."):
                st = child.stat()
                entries.append([str(child.relative_to(p)), st.st_size, st.st_mtime_ns])
        return _digest(entries)
    return _digest(["missing", str(p)])


def identity(config: TrainConfig, sources: dict[str, str]) -> str:
    """What makes two requests the same run: its name, weight-shaping settings and inputs."""
    values = {k: getattr(config, k) for k in IDENTITY_KEYS}
    return _digest({"name": config.name, "settings": values, "sources": sources})


def settings_hash(config: TrainConfig, sources: dict[str, str]) -> str:
    """Every setting (minus where things are stored): equal means the finished result is the answer."""
    values = {k: v for k, v in config.to_dict().items() if k not in PLACEMENT_KEYS}
    return _digest({"settings": values, "sources": sources}, length=64)


@dataclass
class RunPlan:
    action: str                      # "fresh" | "resume" | "reuse"
    config: TrainConfig              # the config to run (output_dir/resume_from/overwrite set)
    folder: Path                     # this run's own folder (the config's output_dir)
    settings: str                    # settings_hash of the request
    record: dict[str, Any] | None = None   # the finished run's record, for "reuse"

    @property
    def run_dir(self) -> RunDir:
        return RunDir.for_config(self.config)


def plan_run(config: TrainConfig, root: str | os.PathLike, sources: dict[str, str], resume: bool = True) -> RunPlan:
    """Decide how to satisfy `config`: reuse a finished identical run, resume an interrupted
    one (when `resume`), or start fresh in this run's folder (clearing leftovers there).

    `sources` maps names to `source_signature`s of the inputs (base model, image folders),
    so editing a folder or replacing a checkpoint makes a new run.
    """
    folder = Path(root) / f"{config.name}-{identity(config, sources)}"
    settings = settings_hash(config, sources)
    run = replace(config, output_dir=str(folder), resume_from=None, overwrite=True)
    record = read_record(folder)
    if record and record.get("settings") == settings and all(Path(a["path"]).is_file() for a in record["artifacts"]):
        return RunPlan("reuse", run, folder, settings, record)
    states = state_dirs(RunDir.for_config(run).state)
    if resume and states and _step(states[-1]) < config.max_train_steps:
        return RunPlan("resume", replace(run, resume_from=str(states[-1]), overwrite=False), folder, settings)
    return RunPlan("fresh", run, folder, settings)


def _step(state_folder: Path) -> int:
    return int(state_folder.name.split("-", 1)[1])


@dataclass
class Published:
    """A file placed in a host's folder by a finished run."""

    kind: str
    path: str
    size: int = 0
    mtime_ns: int = 0

    @classmethod
    def of(cls, kind: str, path: str | os.PathLike) -> "Published":
        st = Path(path).stat()
        return cls(kind, str(path), st.st_size, st.st_mtime_ns)

    def intact(self) -> bool:
        """The host's copy is still the one this run placed there."""
        p = Path(self.path)
        if not p.is_file():
            return False
        st = p.stat()
        return (st.st_size, st.st_mtime_ns) == (self.size, self.mtime_ns)


@dataclass
class FinishedRun:
    """What a host shows of a completed run: its files, loss curve and last samples."""

    run_dir: str
    artifacts: list[Artifact]
    loss_plot: str | None
    samples: list[str]
    published: list[Published] = field(default_factory=list)

    def artifact(self, kind: str) -> Artifact | None:
        return next((a for a in reversed(self.artifacts) if a.kind == kind), None)


def finished_run(state: RunState) -> FinishedRun:
    """The final artifacts (and step saves a host may list), the loss curve and the newest
    validation images of a completed run."""
    finals = [a for a in state.artifacts if a.final or is_step_save(a)]
    plot = next((a.path for a in reversed(state.artifacts) if a.kind == "loss_plot"), None)
    last = max((p.step for p in state.previews), default=None)
    samples = [p.path for p in state.previews if p.step == last]
    return FinishedRun(state.run_dir, finals, plot, samples)


def record_finished(plan: RunPlan, run: FinishedRun) -> None:
    """Remember a completed run (atomically), so asking again reuses it."""
    data = {"settings": plan.settings, **asdict(run)}
    write_text_atomic(plan.folder / RECORD_FILE, json.dumps(data, indent=2) + "\n")


def placed_by_a_run(root: str | os.PathLike, path: str | os.PathLike) -> bool:
    """Whether a finished run under `root` placed the file now at `path` (so replacing it
    loses nothing: that run keeps its own copy)."""
    for record_file in Path(root).glob(f"*/{RECORD_FILE}"):
        record = read_record(record_file.parent) or {}
        if any(Published(**p).path == str(path) and Published(**p).intact() for p in record.get("published", [])):
            return True
    return False


def read_record(folder: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((folder / RECORD_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and "settings" in data else None


def recorded_run(record: dict[str, Any]) -> FinishedRun:
    return FinishedRun(
        run_dir=record["run_dir"],
        artifacts=[Artifact(**a) for a in record["artifacts"]],
        loss_plot=record.get("loss_plot"),
        samples=list(record.get("samples", [])),
        published=[Published(**p) for p in record.get("published", [])],
    )
