"""The HTTP API on the WebUI's app: start a run from a config, read its status and events,
cancel, list; paths outside the WebUI's folders are refused; only with --api, and with
--api-auth's users when set."""
from __future__ import annotations

import inspect
import os
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from a1111_fake import fake_webui

REPO = Path(__file__).resolve().parents[1]
FAKE_RUN_ENV = {"DREAMBOOTH_CORE_FAKE_RUNNER": "fake_trainer:run", "PYTHONPATH": str(fake_webui.FAKE_DIR),
                "FAKE_TRAINER_DELAY": "0.001"}


@pytest.fixture
def webui(tmp_path):
    with fake_webui.installed():
        w = fake_webui.start(tmp_path / "webui", REPO, api=True)
        (w.folders["checkpoint"] / "base.safetensors").write_bytes(b"{}")
        w.sd_models.list_models()
        w.shared.opts.set("dreambooth_core_worker_python", sys.executable)
        adapter = sys.modules["dreambooth_core_a1111"]
        w.session = adapter.session.get_session()
        w.session.manager.env.update(FAKE_RUN_ENV)
        w.api = adapter.api
        w.runs = adapter.api.RunsApi(w.session)
        w.images = w.root / "inputs" / "photos"
        w.images.mkdir(parents=True)
        Image.new("RGB", (64, 64), "red").save(w.images / "a.png")
        yield w
        for job in w.session.manager.list():
            job.cancel()
            job.wait(60)


def body(w, **config):
    return {"preset": "lora", "config": {"base_model": "base.safetensors", "instance_data_dir": str(w.images),
                                         "class_noun": "dog", "max_train_steps": 4, **config}}


def call(w, name, *args, **kwargs):
    return w.api.call(getattr(w.runs, name), *args, **kwargs)


def settle(w, run_id, timeout=60):
    deadline = time.monotonic() + timeout
    while not w.session.view(run_id)["settled"]:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    return w.session.view(run_id)


def test_start_follow_and_list_a_run(webui):
    started = call(webui, "start", body(webui))
    assert started["status"] in ("queued", "running", "completed") and started["name"] == "zwx_dog"
    view = settle(webui, started["id"])
    assert view["status"] == "completed"
    assert view["delivered"][0]["path"] == str(webui.folders["lora"] / "zwx_dog.safetensors")
    assert call(webui, "status", started["id"])["delivered"] == view["delivered"]
    first = call(webui, "events", started["id"], since=0)
    kinds = [e["type"] for e in first["events"]]
    assert kinds[0] == "started" and kinds[-1] == "done" and "artifact" in kinds
    assert call(webui, "events", started["id"], since=first["next"]) == {"events": [], "next": first["next"]}
    assert [r["id"] for r in call(webui, "list_runs")["runs"]] == [started["id"]]
    assert view["run_dir"] == str(webui.root / "outputs" / "dreambooth_core" / "zwx_dog")


def test_cancel_through_the_api_leaves_a_resumable_run(webui):
    webui.session.manager.env["FAKE_TRAINER_DELAY"] = "0.02"
    run_id = call(webui, "start", body(webui, max_train_steps=500))["id"]
    deadline = time.monotonic() + 60
    while not (webui.session.job(run_id).progress and webui.session.job(run_id).progress.step >= 2):
        assert time.monotonic() < deadline
        time.sleep(0.02)
    call(webui, "cancel", run_id)
    view = settle(webui, run_id)
    assert view["status"] == "cancelled"
    resumed = call(webui, "start", body(webui, max_train_steps=view["train_step"] + 2, resume_from="latest"))
    assert settle(webui, resumed["id"])["status"] == "completed"


@pytest.mark.parametrize("key", ["instance_data_dir", "output_dir", "base_model", "class_data_dir", "resume_from",
                                 "dataset_config"])
def test_paths_outside_the_allowed_folders_are_refused(webui, tmp_path, key):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    with pytest.raises(webui.api.ApiError) as err:
        call(webui, "start", body(webui, **{key: str(outside / ("x.safetensors" if key == "base_model" else ""))}))
    assert err.value.status == 403 and key in str(err.value) and "outside the folders" in str(err.value)
    assert webui.session.manager.list() == []


def test_concept_folders_and_a_dataset_toml_are_confined_too(webui, tmp_path):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    concepts = [{"image_dir": str(outside), "token": "zwx", "class_noun": "dog"}]
    with pytest.raises(webui.api.ApiError) as err:
        call(webui, "start", body(webui, concepts=concepts))
    assert err.value.status == 403 and "concepts[0].image_dir" in str(err.value)
    toml = webui.root / "inputs" / "dataset.toml"     # inside, but naming a folder outside
    toml.write_text(f"[[datasets]]\n[[datasets.subsets]]\nimage_dir = '{outside}'\nclass_tokens = 'zwx dog'\n")
    with pytest.raises(webui.api.ApiError) as err:
        call(webui, "start", body(webui, dataset_config=str(toml)))
    assert err.value.status == 403 and "concepts[0].image_dir" in str(err.value)
    assert webui.session.manager.list() == []


def test_a_checkpoint_the_webui_lists_is_usable_wherever_it_lies(webui, tmp_path):
    """`--ckpt FILE` makes the WebUI list a file outside its folders: the operator chose it, so its title
    works; the same file named by path is still outside."""
    import sys

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "cli-model.safetensors").write_bytes(b"{}")
    sys.modules["modules.sd_models"].CheckpointInfo(str(elsewhere / "cli-model.safetensors")).register()
    started = call(webui, "start", body(webui, base_model="cli-model.safetensors"))
    assert started["id"]
    with pytest.raises(webui.api.ApiError) as err:
        call(webui, "start", body(webui, base_model=str(elsewhere / "cli-model.safetensors"), output_name="other"))
    assert err.value.status == 403


def test_symlinks_cannot_smuggle_a_path_out(webui, tmp_path):
    (tmp_path / "secret").mkdir()
    (webui.root / "inputs" / "link").symlink_to(tmp_path / "secret")
    with pytest.raises(webui.api.ApiError) as err:
        call(webui, "start", body(webui, instance_data_dir=str(webui.root / "inputs" / "link")))
    assert err.value.status == 403


@pytest.mark.parametrize("request_body, status, message", [
    ({"config": {"nope": 1}}, 400, "unknown config key 'nope'"),
    ({"config": {}, "extra": 1}, 400, '"config"'),
    ({"preset": "lora", "config": {"base_model": "missing.safetensors"}}, 400, "not in the WebUI's list"),
])
def test_bad_requests_get_a_clear_status(webui, request_body, status, message):
    with pytest.raises(webui.api.ApiError) as err:
        call(webui, "start", request_body)
    assert err.value.status == status and message in str(err.value)


def test_an_existing_result_is_a_conflict_and_an_unknown_run_is_not_found(webui):
    (webui.folders["lora"] / "zwx_dog.safetensors").write_bytes(b"mine")
    with pytest.raises(webui.api.ApiError) as err:
        call(webui, "start", body(webui))
    assert err.value.status == 409
    for name, args in (("status", ("nope",)), ("events", ("nope",)), ("cancel", ("nope",))):
        with pytest.raises(webui.api.ApiError) as err:
            call(webui, name, *args)
        assert err.value.status == 404


def test_a_fresh_run_into_an_earlier_runs_folder_is_a_conflict(webui):
    settle(webui, call(webui, "start", body(webui))["id"])
    (webui.folders["lora"] / "zwx_dog.safetensors").unlink()
    with pytest.raises(webui.api.ApiError) as err:
        call(webui, "start", body(webui))
    assert err.value.status == 409 and "already holds a run" in str(err.value)


def test_routes_are_mounted_on_the_webui_app_only_with_api(webui):
    from fastapi import FastAPI, HTTPException

    app = FastAPI()
    webui.script_callbacks.app_started_callback(None, app)
    assert webui.script_callbacks.reported == []
    assert sorted(app.routes) == [("GET", "/dreambooth/v1/runs"), ("GET", "/dreambooth/v1/runs/{run_id}"),
                                  ("GET", "/dreambooth/v1/runs/{run_id}/events"), ("POST", "/dreambooth/v1/runs"),
                                  ("POST", "/dreambooth/v1/runs/{run_id}/cancel")]
    # FastAPI reads parameters from the signature: body from a dict, path and query from the rest
    endpoint, dependencies = app.routes[("GET", "/dreambooth/v1/runs/{run_id}/events")]
    assert list(inspect.signature(endpoint).parameters) == ["run_id", "since"] and dependencies is None
    assert list(inspect.signature(app.routes[("POST", "/dreambooth/v1/runs")][0]).parameters) == ["body"]
    with pytest.raises(HTTPException) as err:
        endpoint("nope", 0)
    assert err.value.status_code == 404

    webui.shared.cmd_opts.api = False
    closed = FastAPI()
    webui.script_callbacks.app_started_callback(None, closed)
    assert closed.routes == {}


def test_api_auth_users_guard_the_routes(webui):
    from fastapi import FastAPI, HTTPException
    from fastapi.security import HTTPBasicCredentials

    webui.shared.cmd_opts.api_auth = "alice:secret,bob:pw"
    app = FastAPI()
    webui.script_callbacks.app_started_callback(None, app)
    assert webui.script_callbacks.reported == []  # the WebUI would log the error and carry on without the API
    _, dependencies = app.routes[("GET", "/dreambooth/v1/runs")]
    (guard,) = dependencies
    assert guard.dependency(HTTPBasicCredentials("alice", "secret")) is True
    with pytest.raises(HTTPException) as err:
        guard.dependency(HTTPBasicCredentials("alice", "wrong"))
    assert err.value.status_code == 401


@pytest.mark.parametrize("key", ["output_name", "token", "class_noun"])
def test_a_name_that_would_climb_out_is_refused(webui, tmp_path, key):
    from hostile import HOSTILE_NAMES, NOT_TEXT, Canary

    canary = Canary(tmp_path)
    for value in HOSTILE_NAMES + NOT_TEXT:
        if key == "class_noun" and value in (".", "..", ".hidden"):
            continue  # after the token ("zwx_..") these are plain file names
        with pytest.raises(webui.api.ApiError) as err:
            call(webui, "start", body(webui, **{key: value}))
        assert err.value.status == 400, (value, str(err.value))
        assert key in str(err.value) or "name" in str(err.value)
    assert webui.session.manager.list() == []
    canary.assert_intact()


@pytest.mark.parametrize("key", ["instance_data_dir", "output_dir", "base_model", "class_data_dir", "resume_from"])
def test_every_way_to_a_folder_outside_is_refused(webui, tmp_path, monkeypatch, key):
    from hostile import Canary

    monkeypatch.setenv("HOME", str(tmp_path))
    canary = Canary(tmp_path)
    for value in canary.paths(webui.root):
        with pytest.raises(webui.api.ApiError) as err:
            call(webui, "start", body(webui, **{key: value}))
        assert err.value.status in (400, 403), (value, str(err.value))
        if err.value.status == 403:
            assert "outside the folders" in str(err.value) and "Settings → DreamBooth" in str(err.value)
    assert webui.session.manager.list() == []
    canary.assert_intact()


def test_a_malformed_body_is_a_400_not_a_500(webui):
    for bad in ([], "text", {"config": []}, {"preset": ["lora"], "config": {}}, {"config": {"base_model": 5}}):
        with pytest.raises(webui.api.ApiError) as err:
            call(webui, "start", bad)
        assert err.value.status == 400


def test_only_the_operator_opens_other_folders(webui, tmp_path):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    Image.new("RGB", (64, 64), "blue").save(outside / "a.png")
    key = "dreambooth_core_any_folder"
    assert webui.shared.opts.set(key, True, is_api=True) is False   # what POST /sdapi/v1/options does: refused
    with pytest.raises(webui.api.ApiError) as err:
        call(webui, "start", body(webui, instance_data_dir=str(outside)))
    assert err.value.status == 403
    webui.shared.opts.set(key, True)   # Settings → DreamBooth, by the WebUI's operator
    view = settle(webui, call(webui, "start", body(webui, instance_data_dir=str(outside)))["id"])
    assert view["status"] == "completed"
    with pytest.raises(webui.api.ApiError) as err:   # relative paths still stay under the WebUI's folders
        call(webui, "start", body(webui, output_name="other", instance_data_dir=os.path.relpath(outside, webui.root)))
    assert err.value.status == 403


@pytest.mark.parametrize("key, value", [("max_train_steps", 10**9), ("num_class_images", 10**7), ("resolution", 65536),
                                        ("train_batch_size", 4096), ("num_validation_images", 1000)])
def test_settings_past_their_bounds_are_a_400(webui, key, value):
    with pytest.raises(webui.api.ApiError) as err:
        call(webui, "start", body(webui, **{key: value}))
    assert err.value.status == 400 and key in str(err.value) and "at most" in str(err.value)
    assert webui.session.manager.list() == []


def test_a_full_queue_is_refused_with_a_clear_message(webui):
    webui.session.manager.env["FAKE_TRAINER_DELAY"] = "0.05"
    limit = webui.session.manager.max_queue
    for i in range(limit + 1):
        call(webui, "start", body(webui, output_name=f"run{i}", max_train_steps=200))
    with pytest.raises(webui.api.ApiError) as err:
        call(webui, "start", body(webui, output_name="one_too_many"))
    assert err.value.status == 400 and f"the limit is {limit}" in str(err.value)


def test_the_api_cannot_overwrite_a_file_in_the_webuis_folders(webui):
    theirs = webui.folders["lora"] / "zwx_dog.safetensors"
    theirs.write_bytes(b"mine")
    with pytest.raises(webui.api.ApiError) as err:
        call(webui, "start", body(webui, overwrite=True))
    assert err.value.status == 409 and theirs.read_bytes() == b"mine"
