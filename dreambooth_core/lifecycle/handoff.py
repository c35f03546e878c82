"""Handing a run to a host: the checks before it starts, the placement of its files into
the host's folders after it ends, and what the host shows of it.

A queue host (the A1111 tab) checks with `check_start` before it queues a run and calls
`deliver` when it ends. A graph host (ComfyUI), which queues the same training again after
a cancel or a restart, keeps its runs under one root (`KeptRuns`): it plans each request
(fresh, resume or reuse), checks that no file it did not place is in the way, and
publishes the result (again, when reused). With `publish_step_saves`, the saves made
every `checkpointing_steps` go to the host too, as `NAME-stepN`, so the host can compare
steps (A1111's X/Y/Z plot, ComfyUI's LoraLoader).
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Mapping

from ..config import TrainConfig
from ..errors import OutputExistsError, UserError
from ..events import Artifact
from ..registry import NETWORKS, method_kind
from ..train.run_dir import RunDir
from .names import HOST_KINDS, destination, host_artifacts, is_step_save, prompt_hint, step_save_names, usage_prompt
from .plan import FinishedRun, Published, RunPlan, placed_by_a_run, plan_run, record_finished
from .publish import check_name_free, publish


def step_saves(artifacts: Iterable[Artifact], config: TrainConfig) -> list[Artifact]:
    """The step saves of a run of `config` that go to the host (none unless `publish_step_saves`):
    those it announced, and those an earlier part of the same run (cancelled, then resumed)
    left in its outputs folder, which only this run writes."""
    announced = {a.name: a for a in artifacts if is_step_save(a)}
    kind = method_kind(config.method)
    outputs = RunDir.for_config(config).outputs
    out = []
    for name in step_save_names(config):
        left = outputs / f"{name}{HOST_KINDS[kind]}"
        if name in announced:
            out.append(announced[name])
        elif left.is_file():
            out.append(Artifact(kind=kind, path=str(left), name=name, prompt_hint=prompt_hint(kind, name), final=False))
    return out


# ---- a queue host: check, run, deliver ------------------------------------------------------

def check_destination(config: TrainConfig, folders: Mapping[str, str | os.PathLike]) -> Path:
    """Before a run: where its result will go; OutputExistsError if that (or one of its
    published step saves) would overwrite a file and the config does not say `overwrite`."""
    kind = method_kind(config.method)
    if config.overwrite:
        return Path(folders[kind]) / f"{config.name}{HOST_KINDS[kind]}"
    for name in step_save_names(config):
        check_name_free(kind, name, folders[kind])
    return check_name_free(kind, config.name, folders[kind])


def check_start(config: TrainConfig, folders: Mapping[str, str | os.PathLike]) -> Path:
    """Before a run is queued: its files will not overwrite a host's file, and a fresh run
    will not mix into an earlier run's folder. Returns where its result will go."""
    dest = check_destination(config, folders)
    if not config.resume_from:
        RunDir.for_config(config).check_fresh(config.overwrite)
    return dest


def host_note(config: TrainConfig, host: str) -> str:
    """What `host` does differently with the file this run writes ('' when it computes what was
    trained): a DoRA file in A1111, say (registry.NetworkSpec.host_notes)."""
    spec = NETWORKS.get(config.network) if config.method == "lora" else None
    return spec.note_for(host) if spec else ""


@dataclass
class Delivered:
    """One artifact as the host now has it (or why it could not be placed)."""

    kind: str
    name: str
    path: str          # where the host reads it ('' if it could not be placed)
    source: str        # the file in the run folder
    prompt_hint: str   # e.g. "<lora:zwx_dog:0.8>"
    prompt: str        # e.g. "a photo of zwx dog <lora:zwx_dog:0.8>"
    error: str = ""
    warning: str = ""  # the host loads the file but computes something else than was trained

    def to_dict(self) -> dict:
        return asdict(self)


def deliver(
    artifacts: Iterable[Artifact],
    config: TrainConfig,
    folders: Mapping[str, str | os.PathLike],
    host: str = "a1111",
) -> list[Delivered]:
    """Publish each final host artifact of a completed run into `folders[kind]` (and its
    step saves, when the config says `publish_step_saves`).

    Never raises for one artifact: a file that cannot be placed is reported with its
    reason and stays safe in the run folder.
    """
    out = []
    artifacts = list(artifacts)
    for art in [*step_saves(artifacts, config), *host_artifacts(artifacts)]:
        name = art.name or config.name
        hint = prompt_hint(art.kind, name, host)
        item = Delivered(art.kind, name, "", art.path, hint, usage_prompt(config, art.kind, name, host),
                         warning=host_note(config, host) if art.kind == "lora" else "")
        try:
            item.path = str(publish(art.path, art.kind, name, folders[art.kind], overwrite=config.overwrite))
        except (UserError, OSError) as exc:
            item.error = f"{exc}; the file is still at {art.path}"
        out.append(item)
    return out


def filled_lists(delivered: Iterable[Delivered]) -> list[tuple[str, Path]]:
    """Each (kind, folder) that received a file, once: the host lists to refresh, however
    many step saves went there."""
    return list(dict.fromkeys((item.kind, Path(item.path).parent) for item in delivered if item.path))


def loss_history(run_dir: str | os.PathLike, up_to: int) -> list[tuple[int, float]]:
    """A resumed run's earlier losses, from its loss.csv."""
    try:
        rows = RunDir(Path(run_dir)).read_loss()
        return [(int(r["step"]), float(r["loss"])) for r in rows if r.get("loss") and int(r["step"]) <= up_to]
    except (OSError, ValueError, KeyError):
        return []


# ---- a graph host: the same request again resumes or reuses its run ---------------------------

@dataclass(frozen=True)
class KeptRuns:
    """The runs a graph host keeps under `root`, and the files they place in its folders.

    A file in a host's folder that no run of ours placed is never replaced (one of ours may
    be: its run folder keeps a copy), whatever `overwrite` says: a workflow anyone on the
    network can queue never replaces another model. `rename_hint` says how to choose
    another name in that host.
    """

    root: Path
    rename_hint: str

    def plan(self, config: TrainConfig, sources: dict[str, str], resume: bool = True) -> RunPlan:
        return plan_run(config, self.root, sources, resume=resume)

    def check_free(self, config: TrainConfig, kind: str, folder: str | os.PathLike) -> None:
        """Before training: the result and its step saves may go to `folder`."""
        dest = destination(kind, config.name, folder)
        self._check_free(dest)
        for name in step_save_names(config):
            self._check_free(destination(kind, name, folder))

    def publish(self, plan: RunPlan, run: FinishedRun, kind: str, folder: str | os.PathLike) -> Path:
        """Place the run's file (and its step saves, with `publish_step_saves`) in `folder`,
        and record the run as finished; returns the file's place there."""
        dest = destination(kind, plan.config.name, folder)
        artifact = next((a for a in run.artifacts if a.kind == kind and Path(a.path).name == dest.name), None)
        if artifact is None:
            raise UserError(f"the run finished without a {kind} file named {dest.name}; see {run.run_dir}/log.txt")
        steps = [(a.path, dest.with_name(Path(a.path).name)) for a in step_saves(run.artifacts, plan.config)]
        run.published = [self._place(run, source, kind, target) for source, target in [*steps, (artifact.path, dest)]]
        record_finished(plan, run)
        return dest

    def _check_free(self, dest: Path) -> None:
        if dest.exists() and not placed_by_a_run(self.root, dest):
            raise OutputExistsError(f"{dest.name} already exists in {dest.parent} and was not made by a DreamBooth run: "
                                    f"{self.rename_hint}")

    def _place(self, run: FinishedRun, source: str, kind: str, dest: Path) -> Published:
        """`source` at `dest` (atomically), unless the copy this run placed there is intact."""
        ours = next((p for p in run.published if p.path == str(dest) and p.intact()), None)
        if ours is not None:
            return ours
        self._check_free(dest)
        publish(source, kind, dest.stem, dest.parent, overwrite=True)
        return Published.of(kind, dest)
