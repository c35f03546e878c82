"""The WebUI's one training queue, and what became of each run's results.

One `Session` lives as long as the WebUI process: it outlasts "Reload UI" (this module
stays imported), so a run keeps training and the rebuilt tab finds it again. Runs go
through the core's `JobManager` in worker mode — one at a time, a short queue behind it —
so training never shares the WebUI's Python packages or its memory. Before the first run
the WebUI's model leaves the GPU; after the last one it comes back; each finished run's
file is published into the WebUI's folder for its kind by the core's lifecycle
(`check_start` before, `deliver` after) and that list is refreshed.
"""
from __future__ import annotations

import logging
import shutil
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dreambooth_core.config import TrainConfig
from dreambooth_core.environment import FIX_HINT_ENV
from dreambooth_core.errors import UserError
from dreambooth_core.events import Evaluation, Event, Progress, Started
from dreambooth_core.jobs import Job, JobManager
from dreambooth_core.lifecycle import Delivered, check_start, deliver, filled_lists, loss_history

from . import host

log = logging.getLogger(__name__)
VIEW_LOG_LINES = 200
VIEW_PREVIEWS = 8


@dataclass
class RunRecord:
    """What the adapter adds to a job: the loss curve so far, and where its files went."""

    losses: list[tuple[int, float]] = field(default_factory=list)
    evaluations: list[tuple[int, dict[str, float]]] = field(default_factory=list)   # (step, measures)
    best_step: int | None = None   # select_best's choice so far
    delivered: list[Delivered] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    settled: bool = False   # the run has ended and its files are published and listed


class Session:
    def __init__(self) -> None:
        # a worker whose packages fell out of range says how this host fixes that
        self.manager = JobManager(python=host.worker_python(), env={
            FIX_HINT_ENV: f"fix: restart the WebUI (its install.py updates the worker), or run `python install.py` in {host.EXT_ROOT}"})
        self.manager.on_event.append(self._on_event)
        self.manager.on_finished.append(self._on_finished)
        self.focus: str | None = None      # the run the tab shows
        self._records: dict[str, RunRecord] = {}
        self._held: Any = None             # the WebUI's model, moved off the GPU while runs train
        self._lock = threading.RLock()

    # ---- control -----------------------------------------------------------------------------
    def start(self, config: TrainConfig) -> str:
        """Queue `config` (it starts now if nothing is training); returns its run id.

        Raises UserError before anything starts when the result would overwrite a file, a
        fresh run would mix into an earlier run's folder, or the training environment is missing.
        """
        check_start(config, host.output_folders())
        python = host.worker_python()
        if not Path(python).is_file() and shutil.which(python) is None:
            raise UserError(f"the training environment is not set up ({python} is missing): restart the WebUI so that "
                            f"the extension's install.py creates it, run `python install.py` in {host.EXT_ROOT}, "
                            "or set a Python in Settings → DreamBooth")
        self.manager.python = python
        with self._lock:
            if self.manager.current is None and self._held is None:
                self._held = host.free_model()
        try:
            job_id = self.manager.submit(config, mode="worker")
        finally:
            if self.manager.current is None:
                self._restore_model()
        self.focus = job_id
        return job_id

    def cancel(self, job_id: str | None = None) -> str:
        """Cancel a run (the focused one by default); it saves a state that Resume continues."""
        job_id = job_id or self.focus
        if job_id is None:
            raise UserError("there is no run to cancel")
        self.manager.cancel(job_id)
        return job_id

    def job(self, job_id: str) -> Job:
        return self.manager.get(job_id)

    def record(self, job_id: str) -> RunRecord:
        with self._lock:
            return self._records.setdefault(job_id, RunRecord())

    # ---- what the tab and the API read -------------------------------------------------------
    def view(self, job_id: str | None = None) -> dict[str, Any] | None:
        """The run's JSON-safe status, plus its loss curve, samples, log and results."""
        job_id = job_id or self.focus
        if job_id is None:
            return None
        job = self.job(job_id)
        rec = self.record(job_id)
        with self._lock:
            losses, delivered, notes = list(rec.losses), [d.to_dict() for d in rec.delivered], list(rec.notes)
            evaluations, best_step, settled = list(rec.evaluations), rec.best_step, rec.settled
        return {**self.manager.status_dict(job_id), "settled": settled, "losses": losses, "delivered": delivered, "notes": notes,
                "evaluations": evaluations, "best_step": best_step,
                "samples": [p.path for p in job.previews][-VIEW_PREVIEWS:], "log": job.log[-VIEW_LOG_LINES:]}

    # ---- job callbacks (in the job's thread) ---------------------------------------------------
    def _on_event(self, job: Job, event: Event) -> None:
        rec = self.record(job.id)
        if isinstance(event, Started) and event.start_step:
            earlier = loss_history(event.run_dir, event.start_step)
            with self._lock:
                rec.losses[:0] = earlier
        elif isinstance(event, Progress) and event.phase == "train" and event.loss is not None:
            with self._lock:
                rec.losses.append((event.step, event.loss))
        elif isinstance(event, Evaluation):
            with self._lock:
                rec.evaluations.append((event.step, dict(event.scores)))
                rec.best_step = event.best_step

    def _on_finished(self, job: Job) -> None:
        rec = self.record(job.id)
        if job.status == "completed":
            delivered = deliver(job.artifacts, job.config, host.output_folders())
            with self._lock:
                rec.delivered = delivered
                rec.notes.extend(dict.fromkeys(f"warning: {d.warning}" for d in delivered if d.warning))
                if not delivered:
                    rec.notes.append(f"the run finished but reported no file for the WebUI: look in {job.run_dir}")
        if self.manager.current is None:
            self._restore_model()
        for kind, folder in filled_lists(rec.delivered):
            self._note(rec, _refresh(kind, folder))
        with self._lock:
            rec.settled = True

    def _note(self, rec: RunRecord, text: str) -> None:
        with self._lock:
            rec.notes.append(text)

    def _restore_model(self) -> None:
        with self._lock:
            model, self._held = self._held, None
        try:
            host.restore_model(model)
        except Exception:  # the WebUI's own loader reports its errors; training results are unaffected
            log.exception("dreambooth_core: could not move the WebUI's model back")


def _refresh(kind: str, folder: Path) -> str:
    try:
        said = host.refresh(kind)
    except Exception as exc:
        return f"could not refresh the WebUI's {kind} list ({exc}): use its refresh button"
    if not host.is_scanned(kind, folder):
        said += f"; but the WebUI does not list {kind} files from {folder}: move the file or change Settings → DreamBooth"
    return said


_session: Session | None = None
_session_lock = threading.Lock()


def get_session() -> Session:
    global _session
    with _session_lock:
        if _session is None:
            _session = Session()
        return _session
