"""The tested set: every install path goes through it where the Python and torch can take
it, nothing a host owns is moved by it, and a run whose packages are out of range stops at
the door with the package, the version, the range and the fix, before any model loads."""
from __future__ import annotations

import dataclasses
import sys
import tomllib
from pathlib import Path

import pytest

from dreambooth_core import environment as env
from dreambooth_core.events import Done, Error
from dreambooth_core.jobs import run_in_process
from test_a1111_install import A1111_HOST, Recorder, comfyui_extension, load_install, pip_commands, python_env

REPO = Path(__file__).resolve().parents[1]
TESTED = env.read_tested_set()


def modern(base: env.PythonEnv, **versions: str) -> env.PythonEnv:
    """`base` on Python 3.11 with other versions: a host the tested set applies to."""
    markers = {**base.markers, "python_version": "3.11", "python_full_version": "3.11.7"}
    return dataclasses.replace(base, markers=markers, versions={**base.versions, **versions},
                               site_packages=[p.replace("python3.10", "python3.11") for p in base.site_packages])


def test_the_tested_set_pins_every_runtime_requirement_but_torch():
    names = {env.requirement_name(r) for r in env.WORKER_REQUIREMENTS}
    needed = names - {"torch", "tomli"}          # tomli: only below Python 3.11, which the set does not cover
    assert needed <= set(TESTED.pins), needed - set(TESTED.pins)
    assert "torch" not in TESTED.pins
    for req in env.WORKER_REQUIREMENTS:          # and the pins lie inside the supported ranges
        name = env.requirement_name(req)
        if name in TESTED.pins:
            assert env._requirement(req).specifier.contains(TESTED.pins[name]), (req, TESTED.pins[name])
    assert TESTED.why_not(env.probe()) is None, "this suite must run on a Python the tested set applies to"


def test_comfyuis_requirements_file_installs_the_tested_versions():
    lines = [l.split("#")[0].strip() for l in (REPO / "requirements.txt").read_text().splitlines()]
    pins = env.read_pins(REPO / "requirements.txt")
    assert pins and all(TESTED.pins[name] == version for name, version in pins.items())
    # only what ComfyUI lacks is pinned; the rest stays a floor, so ComfyUI's own packages never move
    assert {"torch", "numpy", "safetensors", "pillow"}.isdisjoint(pins)
    assert all(";" in l for l in lines if "==" in l), "pins apply only where the tested set does (a python marker)"


def test_a_modern_a1111_worker_venv_installs_through_the_tested_set(tmp_path, monkeypatch):
    host = modern(A1111_HOST, torch="2.7.1+cu128")
    recorder = Recorder()
    monkeypatch.setattr(env, "run_command", recorder)
    plan = env.plan_worker_venv(tmp_path / "worker-venv", host)
    assert env.run_plan(plan, say=lambda _: None)
    (install,) = pip_commands(recorder.commands)
    constraints = Path(install[install.index("-c") + 1])
    assert constraints.parent == tmp_path / "worker-venv"
    pinned = env.read_pins(constraints)
    # the tested versions of everything, less what the host's torch build owns
    assert pinned == {k: v for k, v in TESTED.pins.items() if k not in env.HOST_OWNED}
    assert "torch==2.7.1+cu128" in install and "numpy==1.26.2" in install


def test_an_old_host_falls_back_to_the_ranges_and_says_so(tmp_path, monkeypatch):
    recorder = Recorder()
    monkeypatch.setattr(env, "run_command", recorder)
    plan = env.plan_worker_venv(tmp_path / "v", A1111_HOST)        # Python 3.10, torch 2.1.2
    assert any("python 3.10.6 is older than the tested set needs (python>=3.11)" in n for n in plan.notes)
    assert any(l.startswith("note: python 3.10.6") for l in plan.describe())
    env.run_plan(plan, say=lambda _: None)
    (install,) = pip_commands(recorder.commands)
    assert "-c" not in install
    torch_old = modern(A1111_HOST)                                # Python 3.11 but torch 2.1.2
    assert "torch 2.1.2 is older" in env.plan_worker_venv(tmp_path / "w", torch_old).notes[0]


def test_a_changed_tested_set_prepares_the_worker_again():
    other = env.TestedSet({**TESTED.pins, "peft": "0.99.0"}, TESTED.applies_to)
    assert env.stamp_data(A1111_HOST, env.WORKER_REQUIREMENTS) != env.stamp_data(A1111_HOST, env.WORKER_REQUIREMENTS, other)


def test_comfyui_gets_only_what_it_lacks_at_the_tested_versions_and_nothing_it_has_moves(tmp_path, monkeypatch):
    ext = comfyui_extension(tmp_path)
    here = python_env(sys.executable, "/comfy/venv", "/usr", torch="2.8.0+cu128", transformers="5.25.0",
                      safetensors="0.4.2", numpy="2.1.0", pillow="11.0.0", tqdm="4.66", pyyaml="6.0",
                      psutil="5.9.8", **{"huggingface-hub": "1.40.0", "tokenizers": "0.23.1"})
    here = modern(here)
    monkeypatch.setattr(env, "probe", lambda python=None: here)
    recorder = Recorder()
    monkeypatch.setattr(env, "run_command", recorder)
    assert load_install().main([], root=ext) == 0
    (install,) = pip_commands(recorder.commands)
    assert install[install.index("-c") + 2:] == ["diffusers>=0.30", "peft>=0.13", "accelerate>=0.33", "numpy==2.1.0",
                                                 "safetensors==0.4.2", "torch==2.8.0+cu128"]
    pinned = env.read_pins(install[install.index("-c") + 1])
    assert pinned["diffusers"] == TESTED.pins["diffusers"] and pinned["peft"] == TESTED.pins["peft"]
    # ComfyUI's transformers, hub and tokenizers (and its pins) are never moved to the tested versions
    assert {"transformers", "huggingface-hub", "tokenizers", "safetensors", "numpy", "torch"}.isdisjoint(pinned)


# ---- at the door ---------------------------------------------------------------------------

def out_of_range_env() -> env.PythonEnv:
    here = env.probe()
    return dataclasses.replace(here, versions={**here.versions, "transformers": "4.30.2", "peft": "0.10.0"})


def test_an_out_of_range_pair_is_named_with_the_fix():
    with pytest.raises(env.UserError) as err:
        env.check_runtime(out_of_range_env())
    message = str(err.value)
    assert "transformers 4.30.2 is installed but transformers>=4.44 is needed" in message
    assert "peft 0.10.0 is installed but peft>=0.13 is needed" in message
    assert f"-m pip install transformers=={TESTED.pins['transformers']} peft=={TESTED.pins['peft']}" in message
    env.check_runtime(env.probe())          # this very Python is in range


def test_a_host_names_its_own_fix_and_torch_is_left_to_the_host(monkeypatch):
    monkeypatch.setenv(env.FIX_HINT_ENV, "fix: restart the WebUI")
    with pytest.raises(env.UserError, match="is needed. fix: restart the WebUI$"):
        env.check_runtime(out_of_range_env())
    here = env.probe()
    old_torch = dataclasses.replace(here, versions={**here.versions, "torch": "2.0.1"})
    with pytest.raises(env.UserError, match="torch belongs to the host: update it there"):
        env.check_runtime(old_torch)


def test_a_run_stops_at_the_door_before_any_model_loads(monkeypatch, tmp_path):
    import dreambooth_core.models.load as model_load
    from dreambooth_core.config import TrainConfig

    wrong = out_of_range_env()
    monkeypatch.setattr(env, "probe", lambda python=None: wrong)
    monkeypatch.setattr(model_load, "load_base_model", lambda *a, **k: pytest.fail("a model was loaded"))
    events = []
    cfg = TrainConfig(method="lora", base_model=str(tmp_path / "m.safetensors"), instance_data_dir=str(tmp_path),
                      token="zwx", class_noun="dog", output_dir=str(tmp_path / "out"))
    state = run_in_process(cfg, on_event=events.append)
    assert state.status == "failed"
    (error,) = [e for e in events if isinstance(e, Error)]
    assert error.user_error and "peft 0.10.0 is installed but peft>=0.13 is needed" in error.message
    assert isinstance(events[-1], Done) and not (tmp_path / "out").exists()
