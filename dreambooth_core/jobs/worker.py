"""Run training in a separate Python (`python -m dreambooth_core worker`) and follow it.

A host keeps its own pinned packages (A1111 reinstalls any pin that changes), so training
runs in a worker environment with modern diffusers/peft. The protocol is plain text:
the config as one JSON line on the worker's stdin, then `cancel` lines; the worker
answers with one JSON event per stdout line. Anything else it prints (stdout or stderr)
becomes a log line here, and a worker that dies without a Done is reported with its
last words.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path
from typing import IO, TYPE_CHECKING, Iterator, Mapping

from ..config import CONCEPT_PATH_KEYS, PATH_KEYS, TrainConfig
from ..errors import UserError
from ..events import Done, Error, Event, EventSink, Log, event_from_dict
from .state import Job

if TYPE_CHECKING:
    from ..plan.memory import MemoryPlan

PACKAGE_ROOT = Path(__file__).resolve().parents[2]   # the folder that holds dreambooth_core/
STDERR_TAIL = 20
QUOTED_LINES = 5
SETTINGS_HINT = "run install.py or set the worker Python in settings"
SILENCE_ENV = "DREAMBOOTH_CORE_WORKER_SILENCE_S"   # the host's operator may change how long a worker may be silent
DEFAULT_SILENCE_S = 1800.0                          # longer than any model load or save the worker does without a word


def silence_limit() -> float | None:
    """Seconds a worker may emit nothing before it is stopped (the env var; 0 turns it off)."""
    try:
        value = float(os.environ.get(SILENCE_ENV, DEFAULT_SILENCE_S))
    except ValueError:
        value = DEFAULT_SILENCE_S
    return value if value > 0 else None


# Progress bars would only reach us as log noise: the worker reports progress as events.
QUIET_ENV = {"TQDM_DISABLE": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}


def config_payload(config: TrainConfig) -> str:
    """The config as one JSON line, with paths made absolute so the worker's folder doesn't matter."""
    data = config.to_dict()
    for key in PATH_KEYS:
        value = data.get(key)
        if value and not (key == "resume_from" and value == "latest"):
            data[key] = str(Path(value).expanduser().resolve())
    data["concepts"] = [{k: str(Path(v).expanduser().resolve()) if k in CONCEPT_PATH_KEYS and v else v for k, v in c.items()}
                        for c in data.get("concepts", [])]
    return json.dumps(data, ensure_ascii=True)


def worker_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment plus `extra`, set up so the worker finds this very
    copy of dreambooth_core, speaks UTF-8, unbuffered, and draws no progress bars."""
    env = {**os.environ, **QUIET_ENV, **(extra or {})}
    paths = [str(PACKAGE_ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONIOENCODING"] = "utf-8"
    return env


def plan_in_worker(config: TrainConfig, python: str = sys.executable, timeout: float = 300,
                   hint: str = SETTINGS_HINT) -> "MemoryPlan":
    """The run's memory plan as the worker Python computes it (`dreambooth-core plan --here
    --json`): a host's own Python may lack the libraries that build the model tree, and the
    worker's device is the one the run will use. No weights are loaded (headers only).
    `hint` says how to give the host a working Python."""
    import tempfile

    from ..plan.memory import MemoryPlan

    with tempfile.TemporaryDirectory(prefix="dreambooth-plan-") as tmp:
        file = Path(tmp) / "config.json"
        file.write_text(config_payload(config), encoding="utf-8")
        try:
            done = subprocess.run([python, "-m", "dreambooth_core", "plan", str(file), "--here", "--json"], capture_output=True,
                                  text=True, env=worker_env(), timeout=timeout, stdin=subprocess.DEVNULL)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise UserError(f"the memory plan could not be made with {python} ({exc}); {hint}") from None
    if done.returncode != 0:
        said = [line for line in done.stderr.splitlines() if line.strip()]
        raise UserError((said[-1].removeprefix("error: ") if said else f"the worker ({python}) could not plan this run")
                        if done.returncode == 1 else f"the worker ({python}) could not plan this run: "
                        f"{said[-1] if said else 'no output'}; {hint}")
    try:
        return MemoryPlan.from_dict(json.loads(done.stdout))
    except (ValueError, KeyError, TypeError):
        raise UserError(f"the worker ({python}) answered the plan with something else: {done.stdout.strip()[-200:]!r}; "
                        f"{hint}") from None


def parse_event_line(line: str) -> Event | None:
    """The event on a worker's stdout line, or None for anything that is not one."""
    if not line.startswith("{"):
        return None
    try:
        data = json.loads(line)
        if not isinstance(data, dict) or "type" not in data:
            return None
        return event_from_dict(data)
    except (ValueError, TypeError):
        return None


class WorkerJob(Job):
    """A run in a worker process, with the same attributes as a `LocalJob`.

    `env` is added to this process's environment. `cancel_grace` is how long a cancelled
    worker may take to save its resumable state before it is terminated. A worker that
    prints nothing for `silence` seconds is hung (a deadlocked driver, a stuck file system):
    it is stopped and the run fails with that said, so the queue behind it moves on.
    """

    mode = "worker"

    def __init__(
        self,
        config: TrainConfig,
        python: str = sys.executable,
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike | None = None,
        on_event: EventSink | None = None,
        cancel_grace: float = 120.0,
        silence: float | None = None,
    ) -> None:
        super().__init__(config, on_event)
        self.silence = silence if silence is not None else silence_limit()
        self._last_output = time.monotonic()
        self._silenced = ""
        self.python = python
        self.env = dict(env or {})
        self.cwd = cwd
        self.cancel_grace = cancel_grace
        self.returncode: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._stdin_lock = threading.Lock()
        self._stderr_tail: deque[str] = deque(maxlen=STDERR_TAIL)
        self._worker_spoke = False
        self._stop_timer: threading.Timer | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    # ---- start -------------------------------------------------------------------------
    def _launch(self) -> None:
        executable = shutil.which(self.python) or (self.python if Path(self.python).is_file() else None)
        if executable is None:
            self._fail_to_start(f"worker Python not found: {self.python}; {SETTINGS_HINT}")
        try:
            self._proc = subprocess.Popen(
                [executable, "-m", "dreambooth_core", "worker"],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                env=worker_env(self.env), cwd=self.cwd,
            )
        except OSError as exc:
            self._fail_to_start(f"worker Python could not be started: {self.python} ({exc.strerror or exc}); {SETTINGS_HINT}")
        stderr_reader = threading.Thread(target=self._read_stderr, name=f"dreambooth-worker-err-{self.id}", daemon=True)
        stderr_reader.start()
        threading.Thread(target=self._read_stdout, args=(stderr_reader,), name=f"dreambooth-worker-out-{self.id}",
                         daemon=True).start()
        self._send(config_payload(self.config))
        if self.silence:
            self._last_output = time.monotonic()   # the clock starts with the process, not in the queue
            threading.Thread(target=self._watch, name=f"dreambooth-worker-watch-{self.id}", daemon=True).start()

    def _watch(self) -> None:
        """Stop the worker once it has been silent for `silence` seconds."""
        assert self._proc is not None and self.silence
        while self._proc.poll() is None:
            quiet = time.monotonic() - self._last_output
            if quiet >= self.silence:
                where = f"; its log is kept in {self._state.run_dir}" if self._state.run_dir else ""
                self._silenced = (f"the worker emitted nothing for {self.silence:g} s and was stopped as hung{where} "
                                  f"(the limit is {SILENCE_ENV})")
                self._record(Log("warning", self._silenced))
                self._stop_process()
                return
            time.sleep(min(1.0, self.silence - quiet))

    def _fail_to_start(self, message: str) -> None:
        self._record(Error(message, user_error=True))
        self._record(Done(status="failed"))
        self._finish()
        raise UserError(message)

    def _send(self, line: str) -> None:
        with self._stdin_lock:
            try:
                assert self._proc is not None and self._proc.stdin is not None
                self._proc.stdin.write(line.encode("utf-8") + b"\n")
                self._proc.stdin.flush()
            except (OSError, ValueError):
                pass  # the worker is gone; its stdout reader reports how it ended

    # ---- follow ------------------------------------------------------------------------
    def _read_stdout(self, stderr_reader: threading.Thread) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        try:
            for line in _lines(self._proc.stdout):
                self._last_output = time.monotonic()
                event = parse_event_line(line)
                if event is None:
                    self._record(Log("info", line), keep=False)
                else:
                    self._worker_spoke = True
                    self._record(event)
        finally:
            stderr_reader.join(timeout=10)
            self.returncode = self._proc.wait()
            if self._stop_timer is not None:
                self._stop_timer.cancel()
            with self._stdin_lock:
                try:
                    self._proc.stdin.close()  # type: ignore[union-attr]
                except OSError:
                    pass
            self._report_exit(self.returncode)
            self._finish()

    def _read_stderr(self) -> None:
        assert self._proc is not None and self._proc.stderr is not None
        for line in _lines(self._proc.stderr):
            self._last_output = time.monotonic()
            self._stderr_tail.append(line)
            self._record(Log("info", line), keep=False)

    def _report_exit(self, code: int) -> None:
        """A worker that exits without a Done event: say why, in words the user can act on."""
        if self._state.finished:
            return
        if self._silenced:
            self._record(Error(self._silenced, user_error=True))
            self._record(Done(status="failed", run_dir=self._state.run_dir, step=self._state.step))
            return
        if self.cancel_token.cancelled:
            self._record(Log("warning", f"the worker stopped ({_describe_exit(code)}) before confirming the cancel; "
                                        "the last resumable state may be missing"))
            self._record(Done(status="cancelled", run_dir=self._state.run_dir, step=self._state.step))
            return
        tail = list(self._stderr_tail)[-QUOTED_LINES:]
        said = " | ".join(tail) if tail else "no output"
        if self._worker_spoke:
            message = f"the worker process {_describe_exit(code)} before finishing the run; its last output: {said}"
        else:
            message = (f"the worker ({self.python}) {_describe_exit(code)} before the run started: {said}; "
                       f"check the worker Python: {SETTINGS_HINT}")
        self._record(Error(message, user_error=True))
        self._record(Done(status="failed", run_dir=self._state.run_dir, step=self._state.step))

    # ---- cancel ------------------------------------------------------------------------
    def _request_stop(self) -> None:
        self._send("cancel")
        with self._lock:
            if self._stop_timer is None:
                self._stop_timer = threading.Timer(self.cancel_grace, self._terminate)
                self._stop_timer.daemon = True
                self._stop_timer.start()

    def _terminate(self) -> None:
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        self._record(Log("warning", f"the worker did not stop within {self.cancel_grace:g} s of the cancel; terminating it"))
        self._stop_process()

    def _stop_process(self) -> None:
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


def _lines(stream: IO[bytes]) -> Iterator[str]:
    """Decoded, non-empty lines of a pipe; of a carriage-return progress line only its last state."""
    for raw in stream:
        line = raw.decode("utf-8", "replace").rstrip("\r\n").rsplit("\r", 1)[-1].rstrip()
        if line.strip():
            yield line


def _describe_exit(code: int) -> str:
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"was killed ({name})"
    return f"exited with code {code}"
