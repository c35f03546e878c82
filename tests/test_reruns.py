"""dreambooth_core.lifecycle.plan: the same training asked for again is resumed or reused, never mixed up."""
from __future__ import annotations

import json
from pathlib import Path

from dreambooth_core.config import TrainConfig
from dreambooth_core.events import Artifact, Preview
from dreambooth_core.jobs import RunState
from dreambooth_core.lifecycle.plan import (Published, finished_run, identity, placed_by_a_run, plan_run, record_finished,
                                              recorded_run, source_signature)

SOURCES = {"base_model": "abc", "images": "def"}


def config(**values) -> TrainConfig:
    return TrainConfig(**{"token": "zwx", "class_noun": "dog", "max_train_steps": 10, **values})


def add_state(plan, step: int) -> Path:
    folder = plan.run_dir.state / f"step-{step}"
    folder.mkdir(parents=True)
    (folder / "state.json").write_text(json.dumps({"step": step}))
    return folder


def finish(plan, tmp_path: Path) -> None:
    artifact = plan.run_dir.outputs / "zwx_dog.safetensors"
    artifact.parent.mkdir(parents=True, exist_ok=True)
    artifact.write_bytes(b"lora")
    state = RunState(status="completed", run_dir=str(plan.run_dir.root), artifacts=[
        Artifact(kind="lora", path=str(artifact), name="zwx_dog"),
        Artifact(kind="loss_plot", path=str(plan.run_dir.loss_png), name="loss.png", final=False),
    ], previews=[Preview(step=0, path="p0.png"), Preview(step=10, path="a.png"), Preview(step=10, path="b.png")])
    run = finished_run(state)
    assert run.loss_plot == str(plan.run_dir.loss_png) and run.samples == ["a.png", "b.png"]
    assert [a.kind for a in run.artifacts] == ["lora"]
    record_finished(plan, run)


def test_a_new_request_runs_fresh_in_its_own_folder(tmp_path):
    plan = plan_run(config(), tmp_path, SOURCES)
    assert plan.action == "fresh"
    assert plan.folder.parent == tmp_path and plan.folder.name.startswith("zwx_dog-")
    assert plan.config.output_dir == str(plan.folder) and plan.config.overwrite and plan.config.resume_from is None


def test_an_interrupted_run_is_resumed_from_its_newest_state(tmp_path):
    plan = plan_run(config(), tmp_path, SOURCES)
    add_state(plan, 2)
    newest = add_state(plan, 4)
    again = plan_run(config(learning_rate=3e-4, max_train_steps=12), tmp_path, SOURCES)  # lr and steps may change
    assert again.action == "resume" and again.folder == plan.folder
    assert again.config.resume_from == str(newest) and not again.config.overwrite
    assert plan_run(config(), tmp_path, SOURCES, resume=False).action == "fresh"
    assert plan_run(config(max_train_steps=4), tmp_path, SOURCES).action == "fresh", "a state at the last step cannot resume"


def test_weight_shaping_settings_and_inputs_make_another_run(tmp_path):
    base = identity(config(), SOURCES)
    assert identity(config(learning_rate=1e-3, max_train_steps=99, validation_steps=5), SOURCES) == base
    assert identity(config(rank=8), SOURCES) != base
    assert identity(config(seed=1), SOURCES) != base
    assert identity(config(token="sks"), SOURCES) != base
    assert identity(config(), {**SOURCES, "images": "changed"}) != base


def test_a_finished_run_with_the_same_settings_is_reused(tmp_path):
    plan = plan_run(config(), tmp_path, SOURCES)
    add_state(plan, 10)
    finish(plan, tmp_path)
    again = plan_run(config(), tmp_path, SOURCES)
    assert again.action == "reuse" and recorded_run(again.record).artifact("lora").name == "zwx_dog"
    more = plan_run(config(max_train_steps=20), tmp_path, SOURCES)
    assert more.action == "resume" and more.config.resume_from.endswith("step-10"), "more steps continue the finished run"
    Path(recorded_run(again.record).artifacts[0].path).unlink()
    assert plan_run(config(), tmp_path, SOURCES).action != "reuse", "a record whose files are gone is not reused"


def test_source_signature_follows_file_changes(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    (folder / "a.png").write_bytes(b"1")
    before = source_signature(folder)
    (folder / ".hidden.tmp").write_bytes(b"x")
    assert source_signature(folder) == before
    (folder / "b.png").write_bytes(b"2")
    assert source_signature(folder) != before
    assert source_signature(tmp_path / "missing") != source_signature(folder) and source_signature(None) == ""


def test_published_copy_is_recognised_until_replaced(tmp_path):
    path = tmp_path / "loras" / "zwx_dog.safetensors"
    path.parent.mkdir()
    path.write_bytes(b"ours")
    plan = plan_run(config(), tmp_path / "runs", SOURCES)
    add_state(plan, 10)
    finish(plan, tmp_path)
    assert not placed_by_a_run(tmp_path / "runs", path)
    run = recorded_run(plan_run(config(), tmp_path / "runs", SOURCES).record)
    run.published = [Published.of("lora", path)]
    record_finished(plan, run)
    assert run.published[0].intact() and placed_by_a_run(tmp_path / "runs", path)
    path.write_bytes(b"someone else's, longer")
    assert not run.published[0].intact() and not placed_by_a_run(tmp_path / "runs", path)
