"""Running one training for a node: the core's lifecycle (`KeptRuns`) plans it (reuse /
resume / fresh) and publishes its result into ComfyUI's folder; here the GPU is freed, the
run goes through the jobs layer while the node's progress bar follows, and Cancel stops
it with a resumable state.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from dreambooth_core.config import TrainConfig
from dreambooth_core.errors import UserError
from dreambooth_core.events import Artifact, Done, Error, Event, Log, Preview, Progress, Started
from dreambooth_core.jobs import Job, JobManager, RunState
from dreambooth_core.lifecycle import FinishedRun, KeptRuns, RunPlan, finished_run, recorded_run
from dreambooth_core.plan.memory import MemoryPlan

from . import host

POLL_SECONDS = 0.2
CANCEL_WAIT_SECONDS = 900   # a worker that ignores the cancel is terminated by the jobs layer after 120 s
LOSS_POINTS = 200           # recent loss values sent to the web extension's chart
RENAME_HINT = "add the line output_name=another_name to the node's options"
PHASES = {"class_images": "class images", "caching": "caching latents", "train": "training",
          "validation": "sampling previews", "evaluation": "evaluating", "saving": "saving"}

log = logging.getLogger("dreambooth_core.comfyui")
_manager: JobManager | None = None


def manager() -> JobManager:
    """One queue for this ComfyUI process: one run at a time."""
    global _manager
    if _manager is None:
        _manager = JobManager()
    _manager.python = host.worker_python()
    return _manager


@dataclass
class Trained:
    """A finished run and its file in ComfyUI's folder."""

    config: TrainConfig
    path: Path          # the published file
    run: FinishedRun

    @property
    def file_name(self) -> str:
        return self.path.name


def train(config: TrainConfig, kind: str, sources: dict[str, str], node_id: str | None, resume: bool) -> Trained:
    """Give ComfyUI a trained `kind` file for `config`: reused, resumed or trained anew."""
    runs = KeptRuns(host.runs_root(), RENAME_HINT)
    plan = runs.plan(config, sources, resume=resume)
    folder = host.publish_folder(kind)

    def publish(run: FinishedRun) -> Trained:
        return Trained(config, runs.publish(plan, run, kind, folder), run)

    if plan.action == "reuse":
        log.info("DreamBooth: %s was already trained with these settings (%s)", config.name, plan.folder)
        return publish(recorded_run(plan.record))
    runs.check_free(config, kind, folder)
    host.free_memory()
    progress = host.NodeProgress(node_id, config.max_train_steps)
    verb = "resuming" if plan.action == "resume" else "starting"
    progress.status(f"{verb} {config.method} run {config.name}", force=True)
    state = _follow(plan, progress, on_completed=lambda s: publish(finished_run(s)))
    return publish(finished_run(state))


def _follow(plan: RunPlan, progress: "host.NodeProgress", on_completed: Callable[[RunState], object]) -> RunState:
    """Run the plan's config and relay its events until it ends; Cancel stops it resumably."""
    mgr = manager()
    mode = host.run_mode()
    try:
        job = mgr.get(mgr.submit(plan.config, mode))
    except UserError as exc:  # the worker could not even start
        raise UserError(f"{exc} ({host.SETUP_HINT})" if mode == "worker" else str(exc)) from exc
    relay = EventRelay(progress)
    seen = 0
    try:
        while True:
            finished = job.wait(POLL_SECONDS)
            events = job.events_since(seen)
            seen += len(events)
            for event in events:
                relay(event)
            host.check_interrupted()
            if finished:
                break
    except BaseException as exc:
        _stop(job, progress)
        if job.status == "completed":  # the cancel came during the final save: keep the result
            try:
                on_completed(job.result)
            except Exception:
                log.exception("DreamBooth: could not place the finished result of %s", plan.config.name)
        if host.is_interrupt(exc):
            log.info("DreamBooth: %s cancelled at step %d; queue the same graph again to resume", plan.config.name, job.result.step)
        raise
    state = job.result
    if state.status == "completed":
        return state
    if state.status == "cancelled":
        raise UserError(f"the run was cancelled at step {state.step}; queue the graph again to resume it")
    raise _failure(job, state)


def _stop(job: Job, progress: "host.NodeProgress") -> None:
    if job.wait(0):
        return
    progress.status("cancelling: saving a resumable state ...", force=True)
    job.cancel()
    if not job.wait(CANCEL_WAIT_SECONDS):
        log.warning("DreamBooth: the run did not stop within %d s", CANCEL_WAIT_SECONDS)
    state = job.result
    text = f"cancelled at step {state.step}: queue again to resume" if state.status == "cancelled" else \
        f"{state.status} at step {state.step} (while cancelling): queue again to use it"
    progress.status(text, force=True, step=state.step, total=state.total_steps)


def _failure(job: Job, state: RunState) -> Exception:
    """The run's own error, with what to do about it."""
    error = state.error
    message = error.message if error else "the training run failed without a message"
    if not state.run_dir and job.mode == "worker":   # the worker never started the run
        message = f"{message} ({host.SETUP_HINT})"
    elif state.run_dir:
        message = f"{message} (run folder: {state.run_dir})"
    if error is not None and not error.user_error:
        log.error("DreamBooth: training failed:\n%s", error.traceback or message)
        return RuntimeError(message)
    return UserError(message)


class EventRelay:
    """Turns the run's events into the node's progress bar, previews and status line."""

    def __init__(self, progress: "host.NodeProgress"):
        self.progress = progress
        self.losses: list[tuple[int, float]] = []
        self.preview = None
        self.step = self.total = 0
        self.phase = ""

    def __call__(self, event: Event) -> None:
        if isinstance(event, Progress):
            self._progress(event)
        elif isinstance(event, Preview):
            self._preview(event)
        elif isinstance(event, Started):
            self.step, self.total = event.start_step, event.total_steps
            resumed = f" (resumed at step {event.start_step})" if event.start_step else ""
            self.progress.update(self.step, self.total)
            self._status(f"{event.method}: {event.total_steps} steps{resumed}", force=True)
        elif isinstance(event, Log):
            (log.warning if event.level == "warning" else log.info)("DreamBooth: %s", event.message)
            plan = MemoryPlan.summary_of(event.message)   # the run's memory plan, before its first step
            if event.level == "warning" or plan:
                self._status(plan or f"warning: {event.message}", force=True)
        elif isinstance(event, Error):
            log.error("DreamBooth: %s", event.message)
        elif isinstance(event, Artifact) and event.kind == "state":
            self._status(f"saved a resumable state at step {self.step}", force=True)
        elif isinstance(event, Done):
            self._status(f"{event.status} at step {event.step}", force=True)

    def _progress(self, event: Progress) -> None:
        label = PHASES.get(event.phase, event.phase)
        new_phase, self.phase = event.phase != self.phase, event.phase  # a phase change is always shown
        if event.phase == "train":
            self.step, self.total = event.step, event.total
            if event.loss is not None:
                self.losses = (self.losses + [(event.step, event.loss)])[-LOSS_POINTS:]
            text = f"{label} {event.step}/{event.total}"
            if event.loss is not None:
                text += f"  loss {event.loss:.4f}"
            if event.eta_seconds is not None:
                text += f"  ETA {_duration(event.eta_seconds)}"
            self.progress.update(event.step, event.total, self._take_preview())
            self._status(text, force=new_phase)
        else:
            self.progress.update(event.step, event.total, self._take_preview())
            self._status(f"{label} {event.step}/{event.total}" if event.phase in ("class_images", "caching") else label, force=new_phase)

    def _preview(self, event: Preview) -> None:
        try:
            from PIL import Image

            with Image.open(event.path) as picture:
                self.preview = picture.convert("RGB")
        except OSError:
            return
        self.progress.update(self.step, self.total or 1, self._take_preview())

    def _take_preview(self):
        preview, self.preview = self.preview, None
        return preview

    def _status(self, text: str, force: bool = False) -> None:
        self.progress.status(text, force=force, step=self.step, total=self.total, losses=self.losses)


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s"
