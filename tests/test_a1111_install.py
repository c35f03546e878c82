"""install.py and the environment plan: nothing the host pins is ever installed, upgraded or
downgraded, torch is never touched; in A1111 training gets its own venv over the WebUI's
Python; `--check` changes nothing; a second start does nothing, fast."""
from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from a1111_fake import fake_webui
from dreambooth_core import environment as env

REPO = Path(__file__).resolve().parents[1]
# The versions A1111 v1.10.1 pins, in its requirements file's own format.
A1111_REQUIREMENTS = """setuptools==69.5.1  # temp fix
Pillow==9.5.0
accelerate==0.21.0
gradio==3.41.2
numpy==1.26.2
safetensors==0.4.2
torch
transformers==4.30.2
"""


def load_install():
    spec = importlib.util.spec_from_file_location("dbc_install", REPO / "install.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def python_env(executable: str, prefix: str, base: str | None = None, **versions: str) -> env.PythonEnv:
    return env.PythonEnv(executable=executable, prefix=prefix, base_prefix=base or prefix,
                         site_packages=[f"{prefix}/lib/python3.10/site-packages"],
                         versions={env.canonical(k): v for k, v in versions.items()},
                         markers={"python_version": "3.10", "python_full_version": "3.10.6", "os_name": "posix",
                                  "sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64",
                                  "platform_release": "", "platform_version": "", "implementation_name": "cpython",
                                  "platform_python_implementation": "CPython", "implementation_version": "3.10.6"})


# An A1111 venv as installed: its pins, its CUDA torch, no diffusers or peft.
A1111_HOST = python_env("/webui/venv/bin/python", "/webui/venv", "/usr", torch="2.1.2+cu121", torchvision="0.16.2+cu121",
                        xformers="0.0.23.post1", transformers="4.30.2", accelerate="0.21.0", safetensors="0.4.2",
                        numpy="1.26.2", pillow="9.5.0", tqdm="4.66.1", pyyaml="6.0.1", tomli="2.0.1", gradio="3.41.2",
                        psutil="5.9.5")


class Recorder:
    def __init__(self, code: int = 0):
        self.commands: list[list[str]] = []
        self.code = code

    def __call__(self, argv: list[str]) -> int:
        self.commands.append(list(argv))
        return self.code


@pytest.fixture
def a1111(tmp_path, monkeypatch):
    """install.py as A1111 runs it: `launch` importable, the WebUI's requirements file present."""
    with fake_webui.installed():
        webui = fake_webui.setup(tmp_path / "webui")
        (webui.root / "requirements_versions.txt").write_text(A1111_REQUIREMENTS)
        recorder = Recorder()
        monkeypatch.setattr(env, "run_command", recorder)
        webui.recorder = recorder
        webui.ext = tmp_path / "webui" / "extensions" / "dreambooth_core"
        webui.ext.mkdir(parents=True)
        webui.install = load_install()
        yield webui


def pip_commands(commands):
    return [c for c in commands if c[1:4] == ["-m", "pip", "install"]]


def test_worker_requirements_are_pyprojects_dependencies():
    import tomllib

    assert tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"] == list(env.WORKER_REQUIREMENTS)


def test_pins_are_read_from_the_hosts_own_file(tmp_path):
    (tmp_path / "r.txt").write_text(A1111_REQUIREMENTS)
    assert env.read_pins(tmp_path / "r.txt") == {"setuptools": "69.5.1", "pillow": "9.5.0", "accelerate": "0.21.0",
                                                 "gradio": "3.41.2", "numpy": "1.26.2", "safetensors": "0.4.2",
                                                 "transformers": "4.30.2"}
    assert env.read_pins(tmp_path / "absent.txt") == {}


def test_a1111_first_start_makes_a_worker_venv_and_installs_only_there(a1111, monkeypatch):
    monkeypatch.setattr(env, "probe", lambda python=None: A1111_HOST if python is None else pytest.fail("no venv yet"))
    assert a1111.install.main([], root=a1111.ext) == 0
    venv = a1111.ext / "worker-venv"
    worker = str(env.venv_python(venv))
    create, install, verify = a1111.recorder.commands
    assert create == ["/webui/venv/bin/python", "-m", "venv", "--system-site-packages", str(venv)]
    assert install[:5] == [worker, "-m", "pip", "install", "--prefer-binary"]
    assert install[5:] == ["diffusers>=0.30", "transformers>=4.44", "peft>=0.13", "accelerate>=0.33",
                           "numpy==1.26.2", "torch==2.1.2+cu121", "torchvision==0.16.2+cu121", "xformers==0.0.23.post1"]
    assert verify[0] == worker and "import torch, diffusers, transformers, peft" in verify[-1]
    # the venv sees the WebUI venv's packages (torch) after its own
    (pth,) = venv.glob("lib/python3.10/site-packages/dreambooth_core_host.pth")
    assert pth.read_text() == "import site; site.addsitedir('/webui/venv/lib/python3.10/site-packages')\n"
    assert json.loads((venv / env.STAMP_NAME).read_text())["host_owned"]["torch"] == "2.1.2+cu121"
    import launch
    assert launch.run_pip is not None and sys.modules["modules.launch_utils"].recorded == []  # nothing into the WebUI


def test_a1111_later_starts_do_nothing_and_are_fast(a1111, monkeypatch):
    probes = []
    monkeypatch.setattr(env, "probe", lambda python=None: probes.append(python) or A1111_HOST)
    venv = a1111.ext / "worker-venv"
    env.venv_python(venv).parent.mkdir(parents=True)
    env.venv_python(venv).write_text("")
    (venv / env.STAMP_NAME).write_text(json.dumps(env.stamp_data(A1111_HOST, env.WORKER_REQUIREMENTS)))
    assert a1111.install.main([], root=a1111.ext) == 0
    assert a1111.recorder.commands == [] and probes == [None]      # only the host, in-process
    # a changed host torch (the user upgraded CUDA) is noticed: the venv is checked again
    newer = dataclasses.replace(A1111_HOST, versions={**A1111_HOST.versions, "torch": "2.3.0+cu121"})
    monkeypatch.setattr(env, "probe", lambda python=None: newer)
    assert a1111.install.main([], root=a1111.ext) == 0
    assert a1111.recorder.commands[0][0] == str(env.venv_python(venv))


def test_check_reports_and_changes_nothing(a1111, monkeypatch, capsys):
    monkeypatch.setattr(env, "probe", lambda python=None: A1111_HOST)
    assert a1111.install.main(["--check"], root=a1111.ext) == 1
    out = capsys.readouterr().out
    assert "missing: diffusers>=0.30, transformers>=4.44, peft>=0.13, accelerate>=0.33" in out
    assert "would run: /webui/venv/bin/python -m venv --system-site-packages" in out
    assert a1111.recorder.commands == [] and not (a1111.ext / "worker-venv").exists()


def test_a_worker_python_that_is_the_webuis_own_is_never_changed(a1111, monkeypatch, capsys):
    (a1111.root / "config.json").write_text(json.dumps({"dreambooth_core_worker_python": "/webui/venv/bin/python"}))
    monkeypatch.setattr(env, "probe", lambda python=None: A1111_HOST)
    assert a1111.install.main([], root=a1111.ext) == 1
    out = capsys.readouterr().out
    assert a1111.recorder.commands == []
    assert "transformers>=4.44 is needed but transformers==4.30.2 is pinned by the host" in out
    assert "accelerate>=0.33 is needed but accelerate==0.21.0 is pinned by the host" in out


def test_a_configured_separate_python_gets_only_what_it_lacks(a1111, monkeypatch):
    other = python_env("/opt/kohya/bin/python", "/opt/kohya", "/usr", torch="2.4.0", numpy="1.26.4", diffusers="0.31.0",
                       transformers="4.46.0", accelerate="1.0.0", safetensors="0.4.5", pillow="10.4.0", tqdm="4.66",
                       pyyaml="6.0", tomli="2.0.1", psutil="6.0.0")
    (a1111.root / "config.json").write_text(json.dumps({"dreambooth_core_worker_python": other.executable}))
    monkeypatch.setattr(env, "probe", lambda python=None: A1111_HOST if python is None else other)
    assert a1111.install.main([], root=a1111.ext) == 0
    (install, _verify) = a1111.recorder.commands
    assert install == ["/opt/kohya/bin/python", "-m", "pip", "install", "--prefer-binary", "peft>=0.13",
                       "numpy==1.26.4", "torch==2.4.0"]


def comfyui_extension(tmp_path) -> Path:
    comfy = tmp_path / "ComfyUI"
    ext = comfy / "custom_nodes" / "dreambooth_core"
    ext.mkdir(parents=True)
    (comfy / "requirements.txt").write_text("torch\ntransformers>=4.37.2\nsafetensors==0.4.2\n")
    return ext


def test_outside_a1111_only_what_is_missing_is_installed(tmp_path, monkeypatch):
    ext = comfyui_extension(tmp_path)
    here = python_env(sys.executable, "/comfy/venv", "/usr", torch="2.5.1+cu124", transformers="4.40.0",
                      safetensors="0.4.2", numpy="1.26.4", pillow="10.0.0", tqdm="4.66", pyyaml="6.0", tomli="2.0.1",
                      psutil="5.9.8")
    monkeypatch.setattr(env, "probe", lambda python=None: here)
    recorder = Recorder()
    monkeypatch.setattr(env, "run_command", recorder)
    assert "launch" not in sys.modules
    assert load_install().main([], root=ext) == 0
    (install, _verify) = recorder.commands
    # ComfyUI's own pin (safetensors==0.4.2) and torch and numpy are named as installed: pip cannot move them
    assert install == [sys.executable, "-m", "pip", "install", "--prefer-binary", "diffusers>=0.30",
                       "transformers>=4.44", "peft>=0.13", "accelerate>=0.33", "numpy==1.26.4",
                       "safetensors==0.4.2", "torch==2.5.1+cu124"]


def test_nothing_is_installed_when_torch_itself_is_missing(tmp_path, monkeypatch, capsys):
    here = python_env(sys.executable, "/comfy/venv", "/usr", numpy="1.26.4", pillow="10.0.0", tqdm="4.66", pyyaml="6.0")
    monkeypatch.setattr(env, "probe", lambda python=None: here)
    recorder = Recorder()
    monkeypatch.setattr(env, "run_command", recorder)
    assert load_install().main([], root=comfyui_extension(tmp_path)) == 1
    assert recorder.commands == []
    assert "torch>=2.1 is needed but torch is not installed and belongs to the host" in capsys.readouterr().out


def test_install_check_runs_as_the_webui_runs_it(tmp_path):
    """As a subprocess with PYTHONPATH=<webui> (here: the fake), changing nothing."""
    record = tmp_path / "pip.jsonl"
    environ = {**os.environ, "PYTHONPATH": str(fake_webui.FAKE_DIR), "FAKE_LAUNCH_RECORD": str(record)}
    done = subprocess.run([sys.executable, str(REPO / "install.py"), "--check"], capture_output=True, text=True,
                          env=environ, cwd=tmp_path, timeout=60)
    assert done.returncode in (0, 1), done.stderr
    assert "worker venv over" in done.stdout and "training Python:" in done.stdout
    assert not record.exists()      # launch.run_pip was never asked to install into the WebUI


@pytest.mark.slow
def test_a_real_worker_venv_reuses_the_host_torch_and_a_second_start_is_a_no_op(tmp_path):
    """This test Python plays the WebUI's (it is itself a venv, like A1111's): the worker venv
    is really created, sees this venv's torch through the bridge, and needs no install."""
    ext = tmp_path / "ext"
    ext.mkdir()
    with fake_webui.installed():
        fake_webui.setup(tmp_path / "webui")
        install = load_install()
        assert install.main([], root=ext) == 0
        worker = env.venv_python(ext / "worker-venv")
        seen = subprocess.run([str(worker), "-c", "import sys, torch; print(sys.prefix); print(torch.__file__)"],
                              capture_output=True, text=True, check=True).stdout.split()
        assert seen[0] == str(ext / "worker-venv") and seen[1].startswith(sys.prefix)
        t0 = time.monotonic()
        assert install.main([], root=ext) == 0
        assert time.monotonic() - t0 < 2.0


def test_a_failed_setup_is_not_retried_on_every_start(a1111, monkeypatch, capsys):
    seen_env = []
    failing = Recorder(code=1)
    monkeypatch.setattr(env, "run_command", lambda argv: seen_env.append(os.environ.get("PIP_RETRIES")) or failing(argv))
    monkeypatch.setattr(env, "probe", lambda python=None: A1111_HOST)
    monkeypatch.delenv("PIP_RETRIES", raising=False)
    monkeypatch.delenv("PIP_TIMEOUT", raising=False)
    assert a1111.install.main([], root=a1111.ext) == 1
    tried = len(failing.commands)
    assert tried >= 1 and seen_env[0] == "1", "pip waits briefly and retries once when the index is unreachable"
    capsys.readouterr()
    started = time.monotonic()
    assert a1111.install.main([], root=a1111.ext) == 1
    assert len(failing.commands) == tried and time.monotonic() - started < 5
    assert "not retrying on every start" in capsys.readouterr().out
    assert a1111.install.main(["--retry"], root=a1111.ext) == 1 and len(failing.commands) > tried
    monkeypatch.setattr(env, "run_command", Recorder(code=0))
    assert a1111.install.main(["--retry"], root=a1111.ext) == 0
    assert not (a1111.ext / a1111.install.FAILED_STAMP).exists()


def test_a_worker_over_another_webui_venv_gets_its_bridge_rewritten(tmp_path):
    """A second WebUI (Forge beside A1111) or a recreated WebUI venv: the worker must see the new host's torch."""
    site = tmp_path / "worker-venv" / "lib" / "python3.10" / "site-packages"
    site.mkdir(parents=True)
    (site / env.BRIDGE_PTH).write_text(env.bridge_text(A1111_HOST))
    satisfied = {r.split(">=")[0].split(";")[0].strip(): "99.0" for r in env.WORKER_REQUIREMENTS}
    worker = dataclasses.replace(A1111_HOST, executable=str(tmp_path / "worker-venv" / "bin" / "python"),
                                 prefix=str(tmp_path / "worker-venv"), site_packages=[str(site)],
                                 versions={**A1111_HOST.versions, **{env.canonical(k): v for k, v in satisfied.items()
                                                                    if k != "torch"}})
    assert env.plan_worker_venv(tmp_path / "worker-venv", A1111_HOST, worker).steps == []      # same host: nothing
    forge = python_env("/forge/venv/bin/python", "/forge/venv", "/usr", **A1111_HOST.versions)
    (write,) = env.plan_worker_venv(tmp_path / "worker-venv", forge, worker).steps
    assert isinstance(write, env.WriteFile) and "/forge/venv/lib/python3.10/site-packages" in write.text
