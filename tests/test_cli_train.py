"""`dreambooth-core train`: fail fast on bad config, honour --preset/--set, exit codes, Ctrl-C."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import dreambooth_core.jobs.local as jobs_local
from dreambooth_core.cli import main
from test_jobs import FAKE_ENV, TESTS_DIR, fake_runner

HEAVY = ("torch", "diffusers", "transformers", "peft", "accelerate")


@pytest.fixture
def paths(tmp_path):
    base = tmp_path / "base.safetensors"
    base.write_bytes(b"")
    (tmp_path / "images").mkdir()
    return {"base_model": str(base), "instance_data_dir": str(tmp_path / "images"), "output_dir": str(tmp_path / "runs")}


def write_toml(path: Path, values: dict) -> Path:
    path.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in values.items()))
    return path


def sets(values: dict) -> list[str]:
    return [arg for k, v in values.items() for arg in ("--set", f"{k}={v}")]


@pytest.fixture
def recorded(monkeypatch):
    """Replace the trainer for in-process runs; keep the configs it was given."""
    configs = []

    def runner(config, emit, cancel):
        configs.append(config)
        fake_runner(config, emit, cancel)

    monkeypatch.setattr(jobs_local, "default_runner", lambda: runner)
    return configs


def test_bad_config_fails_in_one_line_before_any_model_loads(tmp_path, paths):
    bad_file = write_toml(tmp_path / "bad.toml", {**paths, "learning_rate": -1})
    cases = [
        ["train", "--set", "max_train_step=5"],
        ["train", *sets(paths), "--set", "max_train_steps=abc"],
        ["train", str(bad_file)],
        ["train", "--preset", "nope"],
        ["train", "--preset", "lora"],
        ["train", str(tmp_path / "missing.toml")],
    ]
    script = (
        "import contextlib, io, json, sys\n"
        "from dreambooth_core.cli import main\n"
        "out = []\n"
        "for argv in json.loads(sys.argv[1]):\n"
        "    err = io.StringIO()\n"
        "    with contextlib.redirect_stderr(err):\n"
        "        rc = main(argv)\n"
        "    out.append([rc, err.getvalue()])\n"
        f"print(json.dumps([out, sorted(m for m in {HEAVY!r} if m in sys.modules)]))\n"
    )
    proc = subprocess.run([sys.executable, "-c", script, json.dumps(cases)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    results, heavy_loaded = json.loads(proc.stdout)
    assert heavy_loaded == []
    expected = [
        "unknown config key 'max_train_step'; did you mean 'max_train_steps'?",
        "max_train_steps expects an integer (got 'abc')",
        "learning_rate must be greater than 0 (got -1.0)",
        "unknown preset 'nope'",
        "base_model is not set",
        "config file not found",
    ]
    for (rc, err), message in zip(results, expected):
        assert rc == 1
        assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err


def test_preset_file_and_set_layer_in_that_order(tmp_path, paths, recorded, capsys):
    config_file = write_toml(tmp_path / "c.toml", {**paths, "max_train_steps": 3, "token": "sks", "learning_rate": 0.02})
    rc = main(["train", str(config_file), "--preset", "textual_inversion",
               "--set", "learning_rate=0.01", "--set", "class_noun=red car"])
    assert rc == 0
    (config,) = recorded
    assert (config.method, config.num_vectors) == ("textual_inversion", 1)         # from the preset
    assert (config.max_train_steps, config.token) == (3, "sks")                     # from the file
    assert (config.learning_rate, config.class_noun) == (0.01, "red car")           # from --set
    out = capsys.readouterr()
    assert out.out.startswith("completed at step 3")
    assert "sks_red_car.safetensors" in out.out and "use in a prompt: <lora:sks_red_car:0.8>" in out.out
    assert "preview at step 2" in out.err


def test_config_file_is_optional_with_preset_and_set(paths, recorded):
    assert main(["train", "--preset", "lora", *sets(paths), "--set", "max_train_steps=2"]) == 0
    assert recorded[0].method == "lora" and recorded[0].max_train_steps == 2


@pytest.mark.parametrize("token, code, text", [("usererror", 1, "error: no usable image in /photos: add some"),
                                               ("crash", 2, "RuntimeError: boom")])
def test_failed_runs_exit_1_for_user_errors_and_2_for_bugs(paths, recorded, capsys, token, code, text):
    assert main(["train", *sets(paths), "--set", f"token={token}"]) == code
    err = capsys.readouterr().err
    assert text in err
    assert ("Traceback" in err) is (code == 2)


def test_worker_mode_prints_the_same_summary(paths, monkeypatch, capsys):
    for key, value in FAKE_ENV.items():
        monkeypatch.setenv(key, value)
    assert main(["train", *sets(paths), "--set", "max_train_steps=4", "--worker"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("completed at step 4") and "<lora:zwx:0.8>" in out
    assert main(["train", *sets(paths), "--set", "token=usererror", "--worker"]) == 1


def start_cli(argv: list[str]) -> subprocess.Popen:
    """The CLI in a child process with the fake trainer, so we can send it Ctrl-C."""
    script = (
        "import sys, test_jobs, dreambooth_core.jobs.local as local\n"
        "local.default_runner = lambda: test_jobs.fake_runner\n"
        "from dreambooth_core.cli import main\n"
        "raise SystemExit(main(sys.argv[1:]))\n"
    )
    env = {**os.environ, **FAKE_ENV, "PYTHONPATH": os.pathsep.join([str(TESTS_DIR.parent), str(TESTS_DIR)])}
    return subprocess.Popen([sys.executable, "-c", script, *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, env=env, text=True)


def wait_until_training(proc: subprocess.Popen) -> None:
    while "steps; run folder" not in proc.stderr.readline():
        assert proc.poll() is None, proc.stderr.read()


@pytest.mark.parametrize("worker", [False, True])
def test_first_ctrl_c_cancels_gracefully_and_exits_130(paths, worker):
    proc = start_cli(["train", *sets(paths), "--set", "token=slow", "--set", "max_train_steps=100000"]
                     + (["--worker"] if worker else []))
    wait_until_training(proc)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "cancelling: saving a resumable state" in err
    assert out.startswith("cancelled") and "resumable state:" in out and "resume_from=latest" in out


def test_second_ctrl_c_stops_at_once(paths):
    proc = start_cli(["train", *sets(paths), "--set", "token=stubborn", "--set", "max_train_steps=100000"])
    wait_until_training(proc)
    proc.send_signal(signal.SIGINT)
    while "cancelling" not in proc.stderr.readline():
        pass
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert "interrupted" in err and out == ""


@pytest.mark.slow
def test_an_old_torch_reads_a_pickled_checkpoint_only_with_unsafe_pickle(paths, tmp_path, monkeypatch, capsys):
    import torch

    from dreambooth_core.fileio import UNSAFE_PICKLE_ENV
    from dreambooth_core.formats.checkpoint import ldm_state_dict
    from dreambooth_core.models.tiny import tiny_base_model

    base = tmp_path / "base.ckpt"
    torch.save({"state_dict": ldm_state_dict(tiny_base_model("sd1"), torch.float32)}, base)
    monkeypatch.setattr(torch, "__version__", "2.1.2+cu121")
    monkeypatch.delenv(UNSAFE_PICKLE_ENV, raising=False)
    args = ["train", "--preset", "lora", *sets({**paths, "base_model": base, "max_train_steps": 1, "resolution": 64,
                                                 "num_validation_images": 0, "rank": 2})]
    assert main(args) == 1
    out = capsys.readouterr()
    assert "CVE-2025-32434" in out.out + out.err and "Traceback" not in out.out + out.err
    # with the flag the pickle is read: the tiny model's tensors are seen (its odd sizes need configs a .ckpt lacks)
    assert main([*args, "--set", "overwrite=true", "--unsafe-pickle"]) == 1
    out = capsys.readouterr()
    # (its UNet's sizes are derived from the shapes now; its toy VAE's are not)
    assert "CVE-2025-32434" not in out.out + out.err and "first_stage_model.encoder.conv_in.weight has shape" in out.err
