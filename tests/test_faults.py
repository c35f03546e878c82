"""Faults end in one clear sentence and lose nothing: a real full disk (RLIMIT_FSIZE in a
child process) during artifact, torch, state and class-image saves; damaged resume states;
file modes without touching the umask; temporary files of a killed save cleaned up."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from dreambooth_core.errors import UserError
from dreambooth_core.fileio import clean_stale_temps, save_safetensors, write_bytes_atomic
from dreambooth_core.lifecycle import publish
from dreambooth_core.train.run_dir import RunDir
from dreambooth_core.train.state import DamagedState, TrainingState, load_state, save_state

REPO = Path(__file__).resolve().parents[1]
LIMIT = 64 * 1024   # bytes a file may grow to in the child: the old files fit, the new ones do not

FULL_DISK_CHILD = textwrap.dedent("""
    import json, resource, signal, sys
    from pathlib import Path
    import numpy as np, torch
    from PIL import Image
    from dreambooth_core.errors import UserError
    from dreambooth_core.fileio import atomic_path, save_safetensors, save_torch_atomic
    from dreambooth_core.train.state import TrainingState, save_state

    folder, limit = Path(sys.argv[1]), int(sys.argv[2])
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)    # a write past the limit then fails with EFBIG
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    big = torch.zeros(64 * 1024)
    state = TrainingState(2, 2, {"w": big}, {"state": {}, "param_groups": []}, {}, {}, {})

    def image(tmp):
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (512, 512, 3), np.uint8)).save(tmp, format="PNG")

    def class_image():
        with atomic_path(folder / "class-00000.png", overwrite=True) as tmp:
            image(tmp)

    saves = {"artifact": lambda: save_safetensors({"w": big}, folder / "lora.safetensors", overwrite=True),
             "torch": lambda: save_torch_atomic({"w": big}, folder / "hyper.pt", overwrite=True),
             "state": lambda: save_state(folder / "state", state),
             "class_image": class_image}
    out = {}
    for name, save in saves.items():
        try:
            save()
            out[name] = "written"
        except UserError as exc:
            out[name] = str(exc)
    print(json.dumps(out))
""")


def listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def test_a_real_full_disk_is_a_clear_message_and_the_previous_files_are_intact(tmp_path):
    small = torch.arange(16, dtype=torch.float32)
    save_safetensors({"w": small}, tmp_path / "lora.safetensors")
    torch.save({"w": small}, tmp_path / "hyper.pt")
    write_bytes_atomic(tmp_path / "class-00000.png", b"previous png")
    save_state(tmp_path / "state", TrainingState(1, 1, {"w": small}, {"state": {}, "param_groups": []}, {}, {}, {}))
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    names = listing(tmp_path)
    proc = subprocess.run([sys.executable, "-c", FULL_DISK_CHILD, str(tmp_path), str(LIMIT)], capture_output=True,
                          text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    for name, message in result.items():
        assert message.startswith("disk full"), (name, message)
        assert "intact" in message and "Traceback" not in message
    assert str(tmp_path / "lora.safetensors") in result["artifact"]
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before
    assert listing(tmp_path) == names, "no temporary file or folder is left"


def test_the_umask_is_never_changed_and_files_get_the_usual_mode(tmp_path, monkeypatch):
    old = os.umask(0o027)
    try:
        monkeypatch.setattr(os, "umask", lambda *a: pytest.fail("the process umask was touched"))
        path = write_bytes_atomic(tmp_path / "a.bin", b"x")
        save_safetensors({"w": torch.ones(2)}, tmp_path / "b.safetensors")
    finally:
        monkeypatch.undo()
        os.umask(old)
    assert (path.stat().st_mode & 0o777) == 0o640
    assert ((tmp_path / "b.safetensors").stat().st_mode & 0o777) == 0o640


def test_a_killed_saves_leftovers_are_cleaned_at_the_next_start_and_a_live_ones_kept(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    stale = tmp_path / f".lora.safetensors.{dead_pid}.ab12cd34.tmp"
    stale.write_bytes(b"half")
    stale_dir = tmp_path / f".step-4.{dead_pid}.ab12cd34.tmp"
    stale_dir.mkdir()
    live = tmp_path / f".other.safetensors.{os.getpid()}.ab12cd34.tmp"
    live.write_bytes(b"being written")
    user = tmp_path / ".my.notes.tmp"
    user.write_text("not ours")
    source = tmp_path / "run.safetensors"
    source.write_bytes(b"x")
    publish(source, "lora", "new", tmp_path)   # the next copy into that folder
    assert not stale.exists() and not stale_dir.exists() and live.exists() and user.exists()
    assert clean_stale_temps(tmp_path) == []


def make_states(root: Path) -> None:
    for step in (1, 2):
        opt = {"state": {0: {"exp_avg": torch.full((4,), float(step))}}, "param_groups": [{"lr": 0.1, "params": [0]}]}
        save_state(root, TrainingState(step, step, {"w": torch.full((4,), float(step))}, opt, {"last_epoch": step},
                                       {"python": 1}, {"method": "lora"}))


DAMAGE = {
    "trainable.safetensors": lambda p: p.write_bytes(p.read_bytes()[:-7]),                 # truncated
    "optimizer.pt": lambda p: p.write_bytes(b"garbage, not a torch file" * 10),             # garbage
    "state.json": lambda p: p.write_text(json.dumps({"step": 2}), encoding="utf-8"),       # keys missing
    "scheduler.pt": lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2]),   # truncated zip
}


@pytest.mark.parametrize("damaged", list(DAMAGE))
def test_resume_falls_back_to_the_previous_good_state_and_names_the_damaged_file(tmp_path, damaged):
    run = RunDir(tmp_path / "run")
    make_states(run.state)
    DAMAGE[damaged](run.state / "step-2" / damaged)
    with pytest.raises(DamagedState) as info:
        load_state(run.state / "step-2")
    assert str(run.state / "step-2" / damaged) in str(info.value)
    assert run.resume_folder("latest") == run.state / "step-1"
    assert str(run.state / "step-2" / damaged) in run.skipped_states[0]
    assert torch.equal(load_state(run.state / "step-1").weights["w"], torch.full((4,), 1.0))
    DAMAGE[damaged](run.state / "step-1" / damaged)
    with pytest.raises(DamagedState, match="no saved state can be resumed") as info:
        RunDir(run.root).resume_folder("latest")
    assert isinstance(info.value, UserError) and damaged in str(info.value)


def test_a_run_folder_is_cleared_only_when_this_project_made_it(tmp_path):
    theirs = RunDir(tmp_path / "Documents")
    (theirs.state / "important").mkdir(parents=True)
    with pytest.raises(UserError, match="not made by dreambooth_core"):
        theirs.create(clear=True)
    assert (theirs.state / "important").is_dir()
    ours = RunDir(tmp_path / "run")
    ours.create(clear=False)
    (ours.state / "step-1").mkdir()
    ours.create(clear=True)
    assert list(ours.state.iterdir()) == []


def test_an_old_torch_refuses_pickles_unless_the_user_says_so(tmp_path, monkeypatch):
    from dreambooth_core.fileio import UnsafePickle, load_pickled, weights_only_is_safe

    assert not weights_only_is_safe("2.1.2+cu121") and not weights_only_is_safe("2.5.1")
    assert weights_only_is_safe("2.6.0") and weights_only_is_safe("2.13.0.dev20261101")
    path = tmp_path / "model.ckpt"
    torch.save({"w": torch.ones(2)}, path)
    monkeypatch.setattr(torch, "__version__", "2.1.2+cu121")
    with pytest.raises(UnsafePickle) as info:
        load_pickled(path, "model file")
    message = str(info.value)
    assert "CVE-2025-32434" in message and ".safetensors" in message and "--unsafe-pickle" in message
    assert torch.equal(load_pickled(path, unsafe=True)["w"], torch.ones(2))


def test_an_old_torch_resumes_only_states_in_a_run_folder_of_ours(tmp_path, monkeypatch):
    from dreambooth_core.fileio import UnsafePickle

    ours = RunDir(tmp_path / "run")
    ours.create(clear=False)
    make_states(ours.state)
    theirs = tmp_path / "handed_in" / "state"
    make_states(theirs)
    monkeypatch.setattr(torch, "__version__", "2.1.2")
    assert load_state(ours.state / "step-2").step == 2
    with pytest.raises(UnsafePickle):
        load_state(theirs / "step-2")
