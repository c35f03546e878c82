"""A run's lifecycle, from request to host, in one place both host adapters call:

- names:   the file names a run may take in a host's folder (NAME, NAME-stepN) and the prompt that uses them
- plan:    fresh, resume or reuse, in a run folder named after what the run learns; the record of a finished run
- publish: the atomic placement of one file into a host's folder
- handoff: the checks before a run, and its files placed and described for the host after it

The adapters only translate: host folders and objects in, the core's answers and events out.
"""
from .handoff import Delivered, KeptRuns, check_destination, check_start, deliver, filled_lists, loss_history, step_saves
from .names import HOST_KINDS, destination, host_artifacts, is_step_save, prompt_hint, step_save_names, usage_prompt
from .plan import FinishedRun, Published, RunPlan, finished_run, plan_run, record_finished, recorded_run, source_signature
from .publish import check_name_free, publish

__all__ = ["Delivered", "KeptRuns", "check_destination", "check_start", "deliver", "filled_lists", "loss_history", "step_saves",
           "HOST_KINDS", "destination", "host_artifacts", "is_step_save", "prompt_hint", "step_save_names", "usage_prompt",
           "FinishedRun", "Published", "RunPlan", "finished_run", "plan_run", "record_finished", "recorded_run",
           "source_signature", "check_name_free", "publish"]
