"""`JobManager`: the one training queue a host adapter keeps for its whole session.

One run at a time (a GPU holds one), a short queue behind it, and callbacks so the
adapter can refresh the host's model lists the moment an artifact lands.
"""
from __future__ import annotations

import os
import sys
import threading
from collections import deque
from typing import Any, Callable, Mapping

from ..config import TrainConfig
from ..errors import UserError
from ..events import Event
from .local import LocalJob, Runner
from .state import Job, _safe_call
from .worker import WorkerJob

MODES = ("worker", "in_process")


class JobManager:
    """Thread-safe: submit from a UI thread, poll from an HTTP handler, finish in a job thread.

    `python`, `env` and `cwd` configure worker runs and may be changed between runs
    (e.g. when the user edits the worker Python in the host's settings); `runner`
    replaces the trainer for in-process runs. `on_finished` callbacks get each job that
    ends (completed, cancelled or failed); `on_event` callbacks get `(job, event)` for
    every event of every job, in the thread that produced it.
    """

    def __init__(
        self,
        python: str = sys.executable,
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike | None = None,
        max_queue: int = 4,
        keep_finished: int = 20,
        runner: Runner | None = None,
        silence: float | None = None,
    ) -> None:
        self.silence = silence   # seconds a worker may be silent (None: DREAMBOOTH_CORE_WORKER_SILENCE_S or 30 min)
        self.python = python
        self.env = dict(env or {})
        self.cwd = cwd
        self.max_queue = max_queue
        self.keep_finished = keep_finished
        self.runner = runner
        self.on_finished: list[Callable[[Job], None]] = []
        self.on_event: list[Callable[[Job, Event], None]] = []
        self._lock = threading.RLock()
        self._jobs: dict[str, Job] = {}
        self._queue: deque[Job] = deque()
        self._current: Job | None = None

    def submit(self, config: TrainConfig, mode: str = "worker") -> str:
        """Start `config` now, or queue it behind the running job; return its id.

        Raises UserError when the queue is full, the mode is unknown, or the worker
        cannot be started (the job then stays in the list as "failed").
        """
        if mode not in MODES:
            raise UserError(f"unknown run mode {mode!r}: use one of {', '.join(MODES)}")
        with self._lock:
            busy = self._current is not None
            if busy and len(self._queue) >= self.max_queue:
                raise UserError(f"{len(self._queue)} runs are already waiting (the limit is {self.max_queue}): "
                                "wait for one to finish or cancel one")
            job = self._make(config, mode)
            self._jobs[job.id] = job
            self._prune()
            if busy:
                self._queue.append(job)
            else:
                self._current = job
        if not busy:
            job.start()
        return job.id

    def get(self, job_id: str) -> Job:
        with self._lock:
            job = self._jobs.get(job_id)
        if job is None:
            raise UserError(f"no job with id {job_id!r} (finished jobs are kept only for the last {self.keep_finished} runs)")
        return job

    def list(self) -> list[Job]:
        """All known jobs, oldest first."""
        with self._lock:
            return list(self._jobs.values())

    @property
    def current(self) -> Job | None:
        """The running job, if any."""
        return self._current

    def cancel(self, job_id: str) -> None:
        """Cancel a running job (it saves a resumable state) or drop a queued one."""
        self.get(job_id).cancel()

    def status_dict(self, job_id: str) -> dict[str, Any]:
        job = self.get(job_id)
        with self._lock:
            position = next((i + 1 for i, queued in enumerate(self._queue) if queued is job), None)
        return {**job.status_dict(), "queue_position": position}

    # ---- internals ---------------------------------------------------------------------
    def _make(self, config: TrainConfig, mode: str) -> Job:
        job: Job
        if mode == "worker":
            job = WorkerJob(config, python=self.python, env=self.env, cwd=self.cwd, silence=self.silence)
        else:
            job = LocalJob(config, runner=self.runner)
        job.add_listener(lambda event: self._relay(job, event))
        job.add_done_callback(self._job_done)
        return job

    def _relay(self, job: Job, event: Event) -> None:
        for callback in list(self.on_event):
            _safe_call(callback, job, event)

    def _job_done(self, job: Job) -> None:
        with self._lock:
            if job in self._queue:
                self._queue.remove(job)
            following = None
            if self._current is job:
                self._current = following = self._queue.popleft() if self._queue else None
        for callback in list(self.on_finished):
            _safe_call(callback, job)
        if following is not None:
            try:
                following.start()
            except UserError:
                pass  # recorded on the job as "failed"; its done callback has started the next one

    def _prune(self) -> None:
        finished = [j for j in self._jobs.values() if j.wait(0)]
        for job in finished[: max(0, len(finished) - self.keep_finished)]:
            del self._jobs[job.id]
