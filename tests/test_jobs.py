"""The jobs layer as the host adapters use it: in-process, thread and worker runs, the queue,
cancel, and every way a run can end — always with one Done and a status a UI can show."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest

from dreambooth_core.config import TrainConfig
from dreambooth_core.errors import Cancelled, UserError
from dreambooth_core.events import (Artifact, CancelToken, Done, Error, Event, Log, Preview, Progress, Started,
                                    event_from_json)
from dreambooth_core.jobs import JobManager, LocalJob, WorkerJob, config_payload, run_in_process
from dreambooth_core.jobs.worker import parse_event_line, worker_env

TESTS_DIR = Path(__file__).resolve().parent
FAKE_ENV = {"DREAMBOOTH_CORE_FAKE_RUNNER": "test_jobs:fake_runner", "PYTHONPATH": str(TESTS_DIR)}


def fake_runner(config: TrainConfig, emit, cancel: CancelToken) -> None:
    """Stands in for train.run_training at toy scale; `config.token` picks the behaviour."""
    behaviour = config.token
    run_dir = Path(config.output_dir) / config.name
    total = config.max_train_steps
    emit(Started(run_dir=str(run_dir), method=config.method, total_steps=total))
    if behaviour == "usererror":
        raise UserError("no usable image in /photos: add some")
    if behaviour == "crash":
        raise RuntimeError("boom")
    if behaviour == "hang":   # a deadlocked driver: alive, silent, deaf to cancel
        time.sleep(3600)
    if behaviour == "chatty":
        print("library chatter on stdout", flush=True)
        os.write(1, b"C-level chatter on fd 1\n")
        print("to stderr", file=sys.stderr, flush=True)
        warnings.warn("a library warning")
    delay = {"slow": 0.02, "stubborn": 0.02, "die": 0.02}.get(behaviour, 0.001)
    for step in range(1, total + 1):
        if behaviour == "die" and step == 3:
            print("fatal: out of memory", file=sys.stderr, flush=True)
            os._exit(3)
        if behaviour == "raisecancel":
            cancel.check()
        if cancel.cancelled and behaviour != "stubborn":
            print("saving a resumable state", file=sys.stderr, flush=True)
            state = run_dir / "state" / f"step-{step - 1}"
            state.mkdir(parents=True)
            emit(Artifact(kind="state", path=str(state), final=False))
            emit(Done(status="cancelled", run_dir=str(run_dir), step=step - 1))
            return
        time.sleep(delay)
        emit(Progress(phase="train", step=step, total=total, loss=1.0 / step, lr=config.learning_rate,
                      eta_seconds=(total - step) * delay))
        if step == 2:
            emit(Preview(step=step, path=str(run_dir / "previews" / "0002.png"), prompt="a photo of zwx dog"))
    if behaviour == "noresult":
        return
    emit(Artifact(kind="lora", path=str(run_dir / f"{config.name}.safetensors"), name=config.name,
                  prompt_hint=f"<lora:{config.name}:0.8>"))
    emit(Done(status="completed", run_dir=str(run_dir), step=total))


@pytest.fixture
def make_config(tmp_path):
    base = tmp_path / "base.safetensors"
    base.write_bytes(b"")
    images = tmp_path / "images"
    images.mkdir()

    def make(token: str = "zwx", steps: int = 5, **kw) -> TrainConfig:
        return TrainConfig(method="lora", base_model=str(base), instance_data_dir=str(images), token=token,
                           class_noun="dog", output_dir=str(tmp_path / "runs"), max_train_steps=steps, **kw).validate()
    return make


def wait_for(predicate, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def is_training(job) -> bool:
    return job.progress is not None and job.progress.step >= 1


# ---- events across a process boundary --------------------------------------------------------

def test_every_event_round_trips_through_a_json_line():
    events: list[Event] = [
        Started(run_dir="/r", method="lora", total_steps=10, start_step=4),
        Progress(phase="train", step=5, total=10, eta_seconds=1.5, loss=0.25, lr=1e-4, elapsed_seconds=3.0),
        Preview(step=5, path="/r/p.png", prompt="a photo of zwx dog"),
        Artifact(kind="lora", path="/r/zwx_dog.safetensors", name="zwx_dog", prompt_hint="<lora:zwx_dog:0.8>"),
        Log(level="warning", message="tiny image: ünïcode ok"),
        Error(message="bad", user_error=False, traceback="Traceback ..."),
        Done(status="completed", run_dir="/r", step=10, artifacts=[{"kind": "lora", "path": "/r/x"}]),
    ]
    for event in events:
        line = event.to_json()
        assert "\n" not in line
        assert parse_event_line(line) == event
    assert parse_event_line("Loading pipeline components...") is None
    assert parse_event_line('{"no": "type"}') is None
    assert parse_event_line('{"type": "progress", "unexpected": 1}') is None
    assert parse_event_line("{not json") is None


def test_config_payload_is_absolute_and_round_trips(make_config, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = make_config()
    config.output_dir = "runs"
    config.resume_from = "latest"
    data = json.loads(config_payload(config))
    assert data["output_dir"] == str(tmp_path / "runs")
    assert data["resume_from"] == "latest"
    assert TrainConfig(**data).to_dict() == {**config.to_dict(), "output_dir": str(tmp_path / "runs")}

    env = worker_env({"PYTHONPATH": "/extra"})
    first, second = env["PYTHONPATH"].split(os.pathsep)[:2]
    assert (Path(first) / "dreambooth_core" / "__init__.py").is_file() and second == "/extra"
    assert env["TQDM_DISABLE"] == "1"


# ---- run_in_process --------------------------------------------------------------------------

def collect(config, runner=fake_runner, cancel=None):
    seen: list[Event] = []
    state = run_in_process(config, on_event=seen.append, cancel=cancel, runner=runner)
    return state, seen


def test_run_in_process_completes(make_config):
    state, seen = collect(make_config())
    assert isinstance(seen[0], Started) and isinstance(seen[-1], Done)
    assert [e.step for e in seen if isinstance(e, Progress)] == [1, 2, 3, 4, 5]
    assert state.status == "completed" and state.step == 5 and state.error is None
    assert [a.prompt_hint for a in state.artifacts] == ["<lora:zwx_dog:0.8>"]
    assert state.run_dir.endswith("zwx_dog") and len(state.previews) == 1


@pytest.mark.parametrize("token, user_error, message", [("usererror", True, "no usable image"), ("crash", False, "RuntimeError: boom")])
def test_run_in_process_turns_exceptions_into_error_and_failed(make_config, token, user_error, message):
    state, seen = collect(make_config(token))
    errors = [e for e in seen if isinstance(e, Error)]
    assert len(errors) == 1 and message in errors[0].message and errors[0].user_error is user_error
    assert bool(errors[0].traceback) is not user_error
    assert seen[-1] == Done(status="failed", run_dir=state.run_dir, step=0)
    assert sum(isinstance(e, Done) for e in seen) == 1 and state.status == "failed"


def test_run_in_process_cancel_paths_end_with_one_done(make_config):
    token = CancelToken()
    token.cancel()
    state, seen = collect(make_config(), cancel=token)
    assert state.status == "cancelled" and [a.kind for a in state.artifacts] == ["state"]

    state, seen = collect(make_config("raisecancel"), cancel=token)  # Cancelled escaping the runner
    assert state.status == "cancelled" and isinstance(seen[-1], Done) and seen[-1].status == "cancelled"

    state, seen = collect(make_config("noresult"))                  # a runner that forgot its Done
    assert state.status == "completed" and sum(isinstance(e, Done) for e in seen) == 1


def test_run_in_process_ignores_events_after_done(make_config):
    def chatty_after_done(config, emit, cancel):
        emit(Done(status="completed"))
        emit(Error("late"))
        raise Cancelled()

    state, seen = collect(make_config(), runner=chatty_after_done)
    assert seen == [Done(status="completed")] and state.error is None


def test_run_in_process_trains_with_gradients_even_inside_inference_mode(make_config):
    torch = pytest.importorskip("torch")
    observed = {}

    def runner(config, emit, cancel):
        observed["inference"] = torch.is_inference_mode_enabled()
        observed["grad"] = torch.is_grad_enabled()

    with torch.inference_mode():
        run_in_process(make_config(), runner=runner)
    with torch.no_grad():
        run_in_process(make_config(), runner=runner)
        assert not torch.is_grad_enabled()
    assert observed == {"inference": False, "grad": True}


# ---- LocalJob ----------------------------------------------------------------------------------

def test_local_job_runs_in_a_thread_with_readable_state(make_config):
    seen: list[Event] = []
    job = LocalJob(make_config(), on_event=seen.append, runner=fake_runner)
    assert job.status == "queued" and job.progress is None
    job.start()
    assert job.wait(20)
    assert job.status == "completed" and job.error is None
    assert job.progress.step == 5 and job.progress.total == 5
    assert [a.name for a in job.artifacts] == ["zwx_dog"] and job.run_dir.endswith("zwx_dog")
    assert [p.step for p in job.previews] == [2]
    assert job.events == seen
    assert job.events_since(len(seen) - 1) == [seen[-1]]
    assert json.loads(json.dumps(job.status_dict()))["status"] == "completed"


def test_local_job_cancel_saves_state_and_ends_cancelled(make_config):
    job = LocalJob(make_config("slow", steps=100_000), runner=fake_runner)
    job.start()
    wait_for(lambda: is_training(job))
    job.cancel()
    assert job.wait(20)
    assert job.status == "cancelled"
    assert [a.kind for a in job.artifacts] == ["state"] and not job.artifacts[0].final


def test_queued_job_cancels_at_once_and_never_starts(make_config):
    calls = []
    job = LocalJob(make_config(), runner=lambda *a: calls.append(a))
    job.cancel()
    assert job.wait(0) and job.status == "cancelled"
    job.start()
    time.sleep(0.05)
    assert calls == [] and job.status == "cancelled"


def test_a_broken_listener_does_not_break_the_run(make_config):
    def bad_listener(event):
        raise ValueError("UI bug")

    job = LocalJob(make_config(), on_event=bad_listener, runner=fake_runner)
    job.start()
    assert job.wait(20) and job.status == "completed"


# ---- WorkerJob ----------------------------------------------------------------------------------

def worker_job(config, **kw) -> WorkerJob:
    return WorkerJob(config, env=FAKE_ENV, **kw)


def test_worker_job_streams_the_same_events_as_an_in_process_run(make_config):
    config = make_config()
    _, in_process = collect(config)
    job = worker_job(config)
    job.start()
    assert job.wait(60), job.log
    assert job.status == "completed", job.log
    assert job.events == in_process
    assert job.returncode == 0
    assert job.artifacts[0].prompt_hint == "<lora:zwx_dog:0.8>"


def test_worker_stdout_stays_pure_json_and_chatter_lands_in_the_log(make_config):
    job = worker_job(make_config("chatty"))
    job.start()
    assert job.wait(60) and job.status == "completed", job.log
    assert not any(isinstance(e, Log) for e in job.events)            # chatter is not an event...
    log = "\n".join(job.log)
    for text in ("library chatter on stdout", "C-level chatter on fd 1", "to stderr", "a library warning"):
        assert text in log                                            # ...but nothing is lost


def test_worker_cancel_through_stdin_leaves_cancelled(make_config):
    job = worker_job(make_config("slow", steps=100_000))
    job.start()
    wait_for(lambda: is_training(job), 60)
    job.cancel()
    assert job.wait(30)
    assert job.status == "cancelled", job.log
    assert job.returncode == 0                      # it stopped by itself, not by terminate()
    assert [a.kind for a in job.artifacts] == ["state"]


def test_worker_that_ignores_cancel_is_terminated_after_the_grace_period(make_config):
    job = worker_job(make_config("stubborn", steps=100_000), cancel_grace=0.5)
    job.start()
    wait_for(lambda: is_training(job), 60)
    job.cancel()
    assert job.wait(30)
    assert job.status == "cancelled" and job.returncode != 0
    assert any("did not stop within 0.5 s" in line for line in job.log)


def test_worker_killed_from_outside_fails_with_a_clear_error(make_config):
    job = worker_job(make_config("slow", steps=100_000))
    job.start()
    wait_for(lambda: is_training(job), 60)
    os.kill(job.pid, signal.SIGKILL)
    assert job.wait(30)
    assert job.status == "failed"
    assert "was killed (SIGKILL) before finishing the run" in job.error
    assert isinstance(job.events[-1], Done) and job.events[-1].status == "failed"


def test_worker_dying_quotes_its_last_stderr_lines(make_config):
    job = worker_job(make_config("die", steps=100))
    job.start()
    assert job.wait(60)
    assert job.status == "failed" and job.returncode == 3
    assert "exited with code 3 before finishing the run" in job.error and "fatal: out of memory" in job.error


@pytest.mark.parametrize("token, code, user_error", [("usererror", 1, True), ("crash", 2, False)])
def test_worker_errors_and_exit_codes(make_config, token, code, user_error):
    job = worker_job(make_config(token))
    job.start()
    assert job.wait(60)
    assert job.status == "failed" and job.returncode == code
    errors = [e for e in job.events if isinstance(e, Error)]
    assert len(errors) == 1 and errors[0].user_error is user_error
    assert ("RuntimeError: boom" in errors[0].traceback) is not user_error


def test_missing_worker_python_is_a_clear_user_error(make_config, tmp_path):
    job = WorkerJob(make_config(), python=str(tmp_path / "venv" / "bin" / "python"))
    with pytest.raises(UserError, match=r"worker Python not found: .*venv/bin/python; run install.py or set the worker Python in settings"):
        job.start()
    assert job.wait(0) and job.status == "failed" and "not found" in job.error


def test_broken_worker_python_fails_before_start_with_a_hint(make_config, tmp_path):
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\necho 'No module named dreambooth_core' >&2\nexit 1\n")
    fake.chmod(0o755)
    job = WorkerJob(make_config(), python=str(fake))
    job.start()
    assert job.wait(30)
    assert job.status == "failed"
    assert "exited with code 1 before the run started: No module named dreambooth_core" in job.error
    assert "set the worker Python in settings" in job.error

    not_executable = tmp_path / "python3"
    not_executable.write_text("")
    with pytest.raises(UserError, match="could not be started"):
        WorkerJob(make_config(), python=str(not_executable)).start()


def start_worker_process(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "dreambooth_core", "worker", *args], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=worker_env(FAKE_ENV))


def test_orphaned_worker_cancels_when_its_stdin_closes(make_config):
    proc = start_worker_process()
    proc.stdin.write(config_payload(make_config("slow", steps=100_000)).encode() + b"\n")
    proc.stdin.flush()
    lines = []
    while not any('"progress"' in line for line in lines):
        lines.append(proc.stdout.readline().decode())
    proc.stdin.close()                                 # the parent has gone
    rest = proc.stdout.read().decode().splitlines()
    assert proc.wait(30) == 0
    assert json.loads(rest[-1])["type"] == "done" and json.loads(rest[-1])["status"] == "cancelled"


def test_worker_process_stdout_carries_only_events(make_config):
    proc = start_worker_process()
    proc.stdin.write(config_payload(make_config("chatty")).encode() + b"\n")
    proc.stdin.flush()                                  # and keep stdin open: closing it would cancel
    out, err = proc.stdout.read(), proc.stderr.read()
    assert proc.wait(30) == 0, err
    events = [json.loads(line) for line in out.decode().splitlines()]   # every line is an event
    assert events[0]["type"] == "started" and events[-1] == {**events[-1], "type": "done", "status": "completed"}
    for text in (b"library chatter on stdout", b"C-level chatter on fd 1", b"to stderr", b"a library warning"):
        assert text in err


def test_worker_whose_parent_died_still_saves_its_state(make_config):
    config = make_config("slow", steps=100_000)
    proc = start_worker_process()
    proc.stdin.write(config_payload(config).encode() + b"\n")
    proc.stdin.flush()
    while b'"progress"' not in proc.stdout.readline():
        pass
    for pipe in (proc.stderr, proc.stdout, proc.stdin):   # all three pipes break, as when the host is killed
        pipe.close()
    assert proc.wait(30) == 0
    assert list((Path(config.output_dir) / config.name / "state").iterdir())


def test_worker_refuses_a_bad_config_line_with_exit_1(tmp_path):
    for payload, message in ((b"not json\n", "not valid JSON"), (b'{"max_train_step": 5}\n', "unknown config key"),
                             (b"", "expects the training config")):
        proc = start_worker_process()
        out, err = proc.communicate(payload, timeout=60)
        events = [event_from_json(line) for line in out.decode().splitlines()]
        assert proc.returncode == 1, err
        assert isinstance(events[0], Error) and message in events[0].message
        assert events[-1] == Done(status="failed")


def test_worker_reads_a_config_file(make_config, tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(make_config().to_dict()))
    proc = start_worker_process("--config", str(path))
    out, err = proc.communicate(b"", timeout=60)      # stdin closed at once: with --config that does not cancel
    events = [event_from_json(line) for line in out.decode().splitlines()]
    assert proc.returncode == 0, err
    assert events[-1].status == "completed"


# ---- JobManager ----------------------------------------------------------------------------------

def test_manager_runs_one_at_a_time_queues_and_refuses_past_max_queue(make_config):
    started: list[str] = []
    finished: list[tuple[str, str]] = []
    manager = JobManager(max_queue=2, runner=fake_runner)
    manager.on_event.append(lambda job, e: isinstance(e, Started) and started.append(job.id))
    manager.on_finished.append(lambda job: finished.append((job.id, job.status)))

    first = manager.submit(make_config("slow", steps=100_000), mode="in_process")
    second = manager.submit(make_config(), mode="in_process")
    third = manager.submit(make_config(), mode="in_process")
    with pytest.raises(UserError, match="2 runs are already waiting"):
        manager.submit(make_config(), mode="in_process")
    assert [manager.get(i).status for i in (first, second, third)] == ["running", "queued", "queued"]
    assert manager.status_dict(third)["queue_position"] == 2
    assert manager.current is manager.get(first)

    manager.cancel(second)                                      # drop a queued one
    assert manager.get(second).status == "cancelled"
    assert manager.status_dict(third)["queue_position"] == 1
    wait_for(lambda: is_training(manager.get(first)))
    manager.cancel(first)                                       # the running one saves state; the queue moves on
    assert manager.get(third).wait(30)
    assert [manager.get(i).status for i in (first, second, third)] == ["cancelled", "cancelled", "completed"]
    assert started == [first, third]
    wait_for(lambda: len(finished) == 3)
    assert finished == [(second, "cancelled"), (first, "cancelled"), (third, "completed")]
    assert [j.id for j in manager.list()] == [first, second, third]
    assert manager.current is None


def test_manager_status_dict_is_json_safe_for_an_http_api(make_config):
    manager = JobManager(runner=fake_runner)
    job_id = manager.submit(make_config(), mode="in_process")
    manager.get(job_id).wait(20)
    status = json.loads(json.dumps(manager.status_dict(job_id), allow_nan=False))
    assert status["id"] == job_id and status["status"] == "completed" and status["queue_position"] is None
    assert (status["step"], status["total"], status["phase"], status["loss"]) == (5, 5, "completed", 0.2)
    assert status["artifacts"][0]["prompt_hint"] == "<lora:zwx_dog:0.8>"
    assert status["previews"][0]["path"].endswith("0002.png")
    assert status["run_dir"].endswith("zwx_dog") and status["error"] is None

    nan_loss = JobManager(runner=lambda c, emit, t: emit(Progress(phase="train", step=1, total=2, loss=float("nan"))))
    job_id = nan_loss.submit(make_config(), mode="in_process")
    nan_loss.get(job_id).wait(20)
    assert nan_loss.status_dict(job_id)["loss"] is None
    json.dumps(nan_loss.status_dict(job_id), allow_nan=False)


def test_manager_worker_mode_and_bad_requests(make_config, tmp_path):
    manager = JobManager(python=str(tmp_path / "missing-python"), env=FAKE_ENV)
    with pytest.raises(UserError, match="worker Python not found"):
        manager.submit(make_config())
    assert [j.status for j in manager.list()] == ["failed"] and manager.current is None

    manager.python = sys.executable                    # the user fixed the setting
    job_id = manager.submit(make_config())
    assert manager.get(job_id).wait(60) and manager.get(job_id).status == "completed"
    assert manager.status_dict(job_id)["mode"] == "worker"

    with pytest.raises(UserError, match="unknown run mode"):
        manager.submit(make_config(), mode="thread")
    with pytest.raises(UserError, match="no job with id"):
        manager.get("nope")


def test_manager_keeps_only_recent_finished_jobs(make_config):
    manager = JobManager(runner=fake_runner, keep_finished=2)
    ids = []
    for _ in range(4):
        ids.append(manager.submit(make_config(), mode="in_process"))
        manager.get(ids[-1]).wait(20)
    ids.append(manager.submit(make_config(), mode="in_process"))
    assert [j.id for j in manager.list()] == ids[2:]


# ---- end to end with the real trainer and a tiny model ----------------------------------------

@pytest.mark.slow
def test_real_training_in_a_worker_cancels_through_stdin_and_resumes(tmp_path):
    """The whole host path: JobManager → worker process → trainer → events; cancel leaves a
    resumable state on disk, and a second run continues from it to a LoRA file."""
    import numpy as np
    from PIL import Image

    from dreambooth_core.models.save import save_single_file
    from dreambooth_core.models.tiny import tiny_base_model

    base = save_single_file(tiny_base_model("sd1"), tmp_path / "tiny.safetensors", dtype="fp32")
    images = tmp_path / "images"
    images.mkdir()
    for i in range(2):
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (64, 64, 3), np.uint8)).save(images / f"{i}.png")
    settings = dict(method="lora", base_model=str(base), instance_data_dir=str(images), class_noun="dog",
                    resolution=64, rank=2, alpha=2.0, num_validation_images=0, output_dir=str(tmp_path / "runs"))

    manager = JobManager()
    job = manager.get(manager.submit(TrainConfig(**settings, max_train_steps=10_000).validate()))
    wait_for(lambda: job.progress is not None and job.progress.phase == "train" or job.wait(0), 300)
    manager.cancel(job.id)
    assert job.wait(300), job.log
    assert job.status == "cancelled" and job.returncode == 0, job.log
    stopped_at = job.result.step
    assert 1 <= stopped_at < 10_000
    states = [a for a in job.artifacts if a.kind == "state"]
    assert states and Path(states[-1].path).is_dir() and not states[-1].final

    resumed = manager.get(manager.submit(TrainConfig(**settings, max_train_steps=stopped_at + 1, resume_from="latest").validate()))
    assert resumed.wait(300), resumed.log
    assert resumed.status == "completed", resumed.error
    started = next(e for e in resumed.events if isinstance(e, Started))
    assert started.start_step == stopped_at and started.run_dir == job.run_dir
    (lora,) = [a for a in resumed.artifacts if a.kind == "lora" and a.final]
    assert Path(lora.path).is_file() and lora.prompt_hint == "<lora:zwx_dog:0.8>"


@pytest.mark.slow
def test_a_silent_worker_is_stopped_and_the_next_queued_run_starts(make_config):
    manager = JobManager(env=FAKE_ENV, silence=15)   # longer than a worker's start on a busy 2-core machine
    hung = manager.submit(make_config(token="hang"))
    after = manager.submit(make_config(token="zwx"))
    assert manager.get(after).wait(120)
    job = manager.get(hung)
    assert job.status == "failed" and job.returncode is not None and job.returncode < 0
    assert "emitted nothing for 15 s and was stopped as hung" in job.result.error.message
    assert str(Path(make_config().output_dir) / "hang_dog") in job.result.error.message   # where its log is kept
    assert manager.get(after).status == "completed"
