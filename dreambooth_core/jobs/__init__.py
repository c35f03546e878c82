"""Run a TrainConfig for a front end: in this process, in a thread, or in a worker process.

This is what the CLI and the host adapters call. Importing it stays light (no torch):
the trainer is imported only when an in-process run starts, and a worker run imports
it in the worker's own Python.

    manager = JobManager(python=worker_python)
    job_id = manager.submit(config)             # or mode="in_process"
    manager.status_dict(job_id)                 # poll from a UI or an HTTP route
    manager.cancel(job_id)                      # the run saves a resumable state
"""
from .local import LocalJob, default_runner, run_in_process
from .manager import JobManager
from .state import Job, RunState
from .worker import WorkerJob, config_payload

__all__ = ["Job", "JobManager", "LocalJob", "RunState", "WorkerJob", "config_payload", "default_runner", "run_in_process"]
