"""The A1111 tab against the fake WebUI (tests/a1111_fake): it builds from the gradio subset
both 3.41 and 4.x accept; the Train handler runs a worker to completion; the file lands in
the WebUI's folder for its kind and that list is refreshed; the prompt is right; the
WebUI's model leaves the GPU and comes back; Cancel leaves a run that Resume continues;
bad input gives one clear sentence and starts nothing."""
from __future__ import annotations

import html
import os
import signal
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from a1111_fake import fake_webui

REPO = Path(__file__).resolve().parents[1]
FAKE_RUN_ENV = {"DREAMBOOTH_CORE_FAKE_RUNNER": "fake_trainer:run", "PYTHONPATH": str(fake_webui.FAKE_DIR),
                "FAKE_TRAINER_DELAY": "0.001"}


@pytest.fixture
def webui(tmp_path):
    with fake_webui.installed():
        w = fake_webui.start(tmp_path / "webui", REPO)
        (w.folders["checkpoint"] / "base.safetensors").write_bytes(b"{}")
        w.sd_models.list_models()
        w.adapter = sys.modules["dreambooth_core_a1111"]
        w.shared.opts.set("dreambooth_core_worker_python", sys.executable)
        w.session = w.adapter.session.get_session()
        w.session.manager.env.update(FAKE_RUN_ENV)
        (tabs,) = w.script_callbacks.ui_tabs_callback()
        assert w.script_callbacks.reported == []
        w.tab = tabs[0]
        w.images = subject_images(tmp_path / "photos")
        yield w
        for job in w.session.manager.list():
            job.cancel()
            job.wait(60)


def subject_images(folder: Path, n: int = 2) -> Path:
    folder.mkdir(parents=True)
    for i in range(n):
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (64, 64, 3), np.uint8)).save(folder / f"{i}.png")
    return folder


def event(w, elem_id: str, name: str):
    (dep,) = [d for d in w.tab.dependencies if getattr(d.trigger, "elem_id", None) == elem_id and d.event == name]
    return dep


def form_values(w, **changes):
    """The Train inputs as the page would send them: every control's value, some changed."""
    keys = w.adapter.form.FORM_KEYS
    values = dict(zip(keys, [c.value for c in event(w, "dbc_train", "click").inputs]))
    values.update(checkpoint="base.safetensors", images_dir=str(w.images), class_noun="dog", max_train_steps=5)
    values.update(changes)
    if "instance_prompt" not in changes:  # typing the token or class noun fills the prompts in
        values["instance_prompt"], values["class_prompt"] = event(w, "dbc_token", "change").run(values["token"], values["class_noun"])
    return [values[k] for k in keys]


def press(w, button: str, **changes):
    status, loss, gallery, log, shown = event(w, button, "click").run(*form_values(w, **changes))
    return status, shown


def poll(w, shown=None):
    return event(w, "dbc_poll", "click").run(shown or {})


def wait_done(w, timeout: float = 60):
    deadline = time.monotonic() + timeout
    while True:
        view = w.session.view()
        if view["settled"]:
            return view
        assert time.monotonic() < deadline, view
        time.sleep(0.05)


# ---- the tab is built, wired, and consistent with its page script -----------------------------

def test_tab_registers_and_builds_with_the_common_gradio_subset(webui):
    cb = webui.script_callbacks.callback_map
    assert [len(cb[k]) for k in ("callbacks_ui_tabs", "callbacks_ui_settings", "callbacks_app_started")] == [1, 1, 1]
    tabs = webui.script_callbacks.ui_tabs_callback()
    assert [(title, elem_id) for _, title, elem_id in tabs] == [("DreamBooth", "dreambooth_core")]
    checkpoint = webui.tab.find("dbc_checkpoint")
    assert checkpoint.kwargs["choices"] == ["base.safetensors"]
    assert webui.tab.find("dbc_method").kwargs["choices"] == ["DreamBooth", "DreamBooth+LoRA", "LoRA",
                                                              "Textual Inversion", "Hypernetwork"]
    wired = {(getattr(d.trigger, "elem_id", None), d.event): len(d.outputs) for d in webui.tab.dependencies}
    assert wired[("dbc_train", "click")] == wired[("dbc_resume", "click")] == wired[("dbc_poll", "click")] == 5
    assert ("dbc_cancel", "click") in wired and ("dbc_refresh_checkpoints", "click") in wired


def test_the_fake_gradio_refuses_what_only_one_version_accepts():
    with fake_webui.installed():
        import gradio as gr

        with pytest.raises(TypeError, match="not accepted by both"):
            gr.Button("x", js="f()")                     # gradio 4 only
        with pytest.raises(ValueError):
            gr.File(type="file")                         # gradio 3 only (4 says "filepath")
        with gr.Blocks():
            with pytest.raises(TypeError, match="_js"):
                gr.Button("x").click(fn=None, _js="f")   # 3.x spelling; 4.x calls it js


def test_page_script_and_stylesheet_use_the_tab_s_element_ids(webui):
    ui = webui.adapter.ui
    script = (REPO / "javascript" / "dreambooth_core.js").read_text()
    for needed in (ui.POLL_ID, ui.CANCEL_ID, ui.STATUS_ID, f"tab_{ui.TAB_ID}", "data-dbc-active"):
        assert needed in script
    assert f"#{ui.POLL_ID} {{ display: none" in (REPO / "style.css").read_text()
    webui.tab.find(ui.POLL_ID), webui.tab.find(ui.CANCEL_ID), webui.tab.find(ui.STATUS_ID)
    assert 'data-dbc-active="0"' in webui.tab.find(ui.STATUS_ID).value


def test_method_and_preset_fill_the_form_and_prompts_follow_token_and_class(webui):
    form = webui.adapter.form
    preset, prior, n_class, *advanced = event(webui, "dbc_method", "change").run("Textual Inversion")
    assert preset == {"__type__": "update", "choices": ["textual_inversion"], "value": "textual_inversion"}
    filled = dict(zip(form.ADVANCED, advanced))
    assert prior is False and filled["learning_rate"] == 5e-3 and filled["max_train_steps"] == 3000
    assert filled["network"] == "lora" and form.CHOICES["network"] == ("lora", "loha", "lokr", "dora", "oft")
    prior, n_class, *advanced = event(webui, "dbc_preset", "change").run("dreambooth")
    assert prior is True and n_class == 200 and dict(zip(form.ADVANCED, advanced))["learning_rate"] == 5e-6
    assert event(webui, "dbc_token", "change").run("sks", "cat") == ["a photo of sks cat", "a photo of cat"]


def test_refresh_shows_a_checkpoint_added_after_start(webui):
    (webui.folders["checkpoint"] / "sub").mkdir()
    (webui.folders["checkpoint"] / "sub" / "new.safetensors").write_bytes(b"{}")
    (update,) = event(webui, "dbc_refresh_checkpoints", "click").run("base.safetensors")
    assert update["choices"] == ["base.safetensors", "sub/new.safetensors"] and update["value"] == "base.safetensors"


def test_settings_are_registered_in_their_own_section(webui):
    labels = webui.shared.opts.data_labels
    ours = {k: v for k, v in labels.items() if k.startswith("dreambooth_core_")}
    assert set(ours) >= {"dreambooth_core_worker_python", "dreambooth_core_runs_dir", "dreambooth_core_default_preset",
                         "dreambooth_core_lora_dir", "dreambooth_core_checkpoint_dir", "dreambooth_core_embedding_dir",
                         "dreambooth_core_hypernetwork_dir", "dreambooth_core_unload_model"}
    assert {v.section for v in ours.values()} == {("dreambooth_core", "DreamBooth")}


# ---- a run, from the Train button to the WebUI's lists -----------------------------------------

def listed(w, kind: str, name: str) -> bool:
    if kind == "checkpoint":
        return f"{name}.safetensors" in w.sd_models.checkpoints_list
    if kind == "lora":
        return name in w.networks.available_networks
    if kind == "hypernetwork":
        return name in w.shared.hypernetworks
    return name in w.sd_hijack.model_hijack.embedding_db.word_embeddings


@pytest.mark.parametrize("method, kind, hint, prompt", [
    ("LoRA", "lora", "<lora:zwx_dog:0.8>", "a photo of zwx dog <lora:zwx_dog:0.8>"),
    ("DreamBooth", "checkpoint", "zwx_dog.safetensors", "a photo of zwx dog"),
    ("Textual Inversion", "embedding", "zwx_dog", "a photo of zwx_dog dog"),
    ("Hypernetwork", "hypernetwork", "<hypernet:zwx_dog:1>", "a photo of zwx dog <hypernet:zwx_dog:1>"),
])
def test_train_publishes_into_the_webui_folder_refreshes_its_list_and_gives_the_prompt(webui, method, kind, hint, prompt):
    model = webui.shared.sd_model          # the WebUI has a model loaded (on the GPU)
    preset = webui.adapter.form.METHODS[method][1]
    status, _ = press(webui, "dbc_train", method=method, preset=preset, num_class_images=2)
    assert 'data-dbc-active="1"' in status
    view = wait_done(webui)
    assert view["status"] == "completed", view["error"]
    suffix = ".pt" if kind == "hypernetwork" else ".safetensors"
    dest = webui.folders[kind] / f"zwx_dog{suffix}"
    assert dest.is_file()
    assert listed(webui, kind, "zwx_dog")
    (item,) = view["delivered"]
    assert (item["path"], item["prompt_hint"], item["prompt"]) == (str(dest), hint, prompt)
    status, loss, gallery, log, shown = poll(webui)
    assert 'data-dbc-active="0"' in status and html.escape(prompt) in status and html.escape(str(dest)) in status
    assert "<polyline" in loss and len(gallery) == 1 and isinstance(gallery[0], Image.Image)
    # the evaluation curves beside the loss: every measure, and the step select_best would publish
    assert view["evaluations"][-1][1]["subject_fidelity"] == 1.0 and 'aria-label="evaluation measures"' in loss
    assert loss.count("<polyline") == 5 and f"best at step {view['evaluations'][-1][0]}" in loss
    assert poll(webui, shown)[2] == {"__type__": "update"}      # the gallery is not re-sent when unchanged
    calls = [(what, m) for what, m in webui.sd_models.calls if what != "load"]
    assert calls == [("to_cpu", model), ("to_device", model)] and model.device == "cuda"


def test_a_dora_run_is_delivered_with_the_warning_that_a1111_computes_another_weight(webui):
    preset = webui.adapter.form.METHODS["LoRA"][1]
    press(webui, "dbc_train", method="LoRA", preset=preset, network="dora", num_class_images=2)
    view = wait_done(webui)
    assert view["status"] == "completed", view["error"]
    (item,) = view["delivered"]
    assert item["path"] and "A1111 v1.10 scales a DoRA file per input column" in item["warning"]
    assert [n for n in view["notes"] if n.startswith("warning:")] == [f"warning: {item['warning']}"]


def test_embeddings_with_no_model_loaded_wait_for_the_webui_and_never_load_one(webui):
    press(webui, "dbc_train", method="Textual Inversion", preset="textual_inversion")
    view = wait_done(webui)
    assert (webui.folders["embedding"] / "zwx_dog.safetensors").is_file()
    assert any("when a model is loaded" in note for note in view["notes"])
    assert webui.sd_models.calls == [] and webui.sd_models.model_data.sd_model is None


def test_uploaded_images_are_copied_into_the_runs_folder(webui, tmp_path):
    class Upload:  # gradio 3 hands over temp-file objects, gradio 4 paths: both are accepted
        def __init__(self, path):
            self.name = str(path)
    files = sorted(webui.images.iterdir())
    press(webui, "dbc_train", images_dir="", uploads=[Upload(files[0]), str(files[1])])
    view = wait_done(webui)
    assert view["status"] == "completed", view["error"]
    dataset = webui.root / "outputs" / "dreambooth_core" / "datasets" / "zwx_dog"
    assert sorted(p.name for p in dataset.iterdir() if not p.name.startswith(".")) == ["000_0.png", "001_1.png"]


def test_a_second_run_waits_in_the_queue_while_one_trains(webui):
    webui.session.manager.env["FAKE_TRAINER_DELAY"] = "0.01"
    press(webui, "dbc_train", max_train_steps=60)
    status, _ = press(webui, "dbc_train", output_name="second", max_train_steps=2)
    assert "position 1 in the queue" in status
    first, second = webui.session.manager.list()
    assert second.wait(60) and first.status == second.status == "completed"
    assert (webui.folders["lora"] / "second.safetensors").is_file()


def test_cancel_leaves_a_run_that_resume_continues(webui):
    webui.session.manager.env["FAKE_TRAINER_DELAY"] = "0.02"
    press(webui, "dbc_train", max_train_steps=400)
    deadline = time.monotonic() + 60
    while (webui.session.view()["step"] or 0) < 3:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    (status,) = event(webui, "dbc_cancel", "click").run()
    view = wait_done(webui)
    assert view["status"] == "cancelled" and "press Resume" in poll(webui)[0]
    stopped = view["train_step"]
    assert (webui.root / "outputs" / "dreambooth_core" / "zwx_dog" / "state" / f"step-{stopped}" / "state.json").is_file()
    assert not (webui.folders["lora"] / "zwx_dog.safetensors").exists()

    webui.session.manager.env["FAKE_TRAINER_DELAY"] = "0.001"
    status, _ = press(webui, "dbc_resume", max_train_steps=stopped + 5)
    view = wait_done(webui)
    assert view["status"] == "completed", view["error"]
    started = webui.session.job(view["id"]).events[0]
    assert started.start_step == stopped and view["losses"][0] == (stopped, pytest.approx(1.0 / stopped))
    assert (webui.folders["lora"] / "zwx_dog.safetensors").is_file()


# ---- bad input: one sentence, nothing started, the WebUI untouched -------------------------------

@pytest.mark.parametrize("changes, message", [
    ({"checkpoint": None}, "choose a base checkpoint first"),
    ({"checkpoint": "gone.safetensors"}, "is not in the WebUI's list"),
    ({"images_dir": ""}, "give the folder with your subject's photos"),
    ({"images_dir": "/no/such/folder"}, "does not exist"),
    ({"token": ""}, "type a token"),
    ({"method": "LoRA", "prior": True, "class_noun": ""}, "class_noun is needed for prior preservation"),
])
def test_bad_form_input_is_one_sentence_and_starts_nothing(webui, changes, message):
    model = webui.shared.sd_model
    status, _ = press(webui, "dbc_train", **changes)
    assert message in html.unescape(status) and 'data-dbc-active="0"' in status
    assert webui.session.manager.list() == [] and model.device == "cuda"


def test_empty_image_folder_and_resume_without_state_are_refused(webui, tmp_path):
    (tmp_path / "empty").mkdir()
    assert "no images in" in press(webui, "dbc_train", images_dir=str(tmp_path / "empty"))[0]
    assert "nothing to resume for zwx_dog" in press(webui, "dbc_resume")[0]


def test_a_name_that_would_overwrite_a_file_is_refused_before_training(webui):
    (webui.folders["lora"] / "zwx_dog.safetensors").write_bytes(b"the user's own")
    status, _ = press(webui, "dbc_train")
    assert "zwx_dog.safetensors already exists" in status and "choose another output name" in status
    assert webui.session.manager.list() == []
    press(webui, "dbc_train", overwrite=True)
    assert wait_done(webui)["status"] == "completed"
    assert (webui.folders["lora"] / "zwx_dog.safetensors").read_bytes() != b"the user's own"


def test_an_earlier_run_of_the_same_name_points_to_resume(webui):
    press(webui, "dbc_train")
    wait_done(webui)
    (webui.folders["lora"] / "zwx_dog.safetensors").unlink()
    assert "press Resume to continue it" in press(webui, "dbc_train")[0]


def test_missing_worker_environment_says_how_to_create_it(webui, tmp_path):
    webui.shared.opts.set("dreambooth_core_worker_python", str(tmp_path / "venv" / "bin" / "python"))
    model = webui.shared.sd_model
    status, _ = press(webui, "dbc_train")
    assert "the training environment is not set up" in status and "install.py" in status
    assert model.device == "cuda"


def test_broken_worker_environment_fails_clearly_and_gives_the_model_back(webui, tmp_path):
    broken = tmp_path / "python"
    broken.write_text("#!/bin/sh\necho \"ModuleNotFoundError: No module named 'diffusers'\" >&2\nexit 1\n")
    broken.chmod(0o755)
    webui.shared.opts.set("dreambooth_core_worker_python", str(broken))
    model = webui.shared.sd_model
    press(webui, "dbc_train")
    view = wait_done(webui)
    assert view["status"] == "failed" and "No module named 'diffusers'" in view["error"]
    assert "check the worker Python" in view["error"] and model.device == "cuda"


def test_a_worker_killed_from_outside_fails_clearly_and_the_webui_carries_on(webui):
    webui.session.manager.env["FAKE_TRAINER_DELAY"] = "0.02"
    model = webui.shared.sd_model
    press(webui, "dbc_train", max_train_steps=1000)
    job = webui.session.job(webui.session.focus)
    deadline = time.monotonic() + 60
    while not (job.progress and job.progress.step >= 2):
        assert time.monotonic() < deadline
        time.sleep(0.02)
    os.kill(job.pid, signal.SIGKILL)
    view = wait_done(webui)
    assert view["status"] == "failed" and "killed (SIGKILL)" in view["error"]
    assert model.device == "cuda"
    webui.session.manager.env["FAKE_TRAINER_DELAY"] = "0.001"
    press(webui, "dbc_train", overwrite=True)
    assert wait_done(webui)["status"] == "completed"


# ---- the real trainer ----------------------------------------------------------------------------

@pytest.mark.slow
def test_a_tiny_real_lora_run_from_the_train_button_to_the_lora_list(webui):
    from dreambooth_core.models.save import save_single_file
    from dreambooth_core.models.tiny import tiny_base_model

    save_single_file(tiny_base_model("sd1"), webui.folders["checkpoint"] / "tiny.safetensors", dtype="fp32")
    webui.sd_models.list_models()
    for key in FAKE_RUN_ENV:
        webui.session.manager.env.pop(key)
    press(webui, "dbc_train", checkpoint="tiny.safetensors", max_train_steps=2, resolution=64, rank=2, alpha=2.0,
          num_validation_images=0)
    view = wait_done(webui, timeout=600)
    assert view["status"] == "completed", (view["error"], view["log"][-10:])
    lora = webui.networks.available_networks["zwx_dog"]
    assert lora.filename == str(webui.folders["lora"] / "zwx_dog.safetensors")
    assert lora.alias == "zwx_dog" and lora.sd_version == "SD1"
    assert view["delivered"][0]["prompt"] == "a photo of zwx dog <lora:zwx_dog:0.8>"


def test_an_upload_never_replaces_a_folder_outside_its_own(webui, tmp_path):
    from hostile import HOSTILE_NAMES, Canary

    canary = Canary(tmp_path)
    photo = str(sorted(webui.images.iterdir())[0])
    runs = webui.root / "outputs" / "dreambooth_core"
    rel = os.path.relpath(canary.folder, runs / "datasets")
    for value in [*HOSTILE_NAMES, rel, "/" + rel, f"/../..{canary.folder}"]:
        for key in ("output_name", "token"):
            status, _ = press(webui, "dbc_train", images_dir="", uploads=[photo], **{key: value})
            assert "dbc-error" in status and any(w in status for w in ("plain name", "NUL byte", "characters long", "one word")), \
                (key, value, status)
    status, _ = press(webui, "dbc_train", images_dir="", uploads=[photo], class_noun=f"x/{rel}")
    assert "plain name" in status
    assert webui.session.manager.list() == [] and not (runs / "datasets").exists()
    canary.assert_intact()


def test_an_upload_replaces_only_an_upload_folder_it_made(webui, tmp_path):
    photo = str(sorted(webui.images.iterdir())[0])
    theirs = webui.root / "outputs" / "dreambooth_core" / "datasets" / "mine"
    theirs.mkdir(parents=True)
    (theirs / "keep.png").write_bytes(b"user's file")
    status, _ = press(webui, "dbc_train", images_dir="", uploads=[photo], output_name="mine")
    assert "not made by dreambooth_core" in status and (theirs / "keep.png").read_bytes() == b"user's file"
    assert sorted(p.name for p in theirs.parent.iterdir()) == ["mine"], "no staging folder is left behind"
    press(webui, "dbc_train", images_dir="", uploads=[photo], output_name="ours")
    assert wait_done(webui)["status"] == "completed"
    press(webui, "dbc_train", images_dir="", uploads=[photo, str(sorted(webui.images.iterdir())[1])], output_name="ours",
          overwrite=True)
    assert wait_done(webui)["status"] == "completed"
    ours = theirs.parent / "ours"
    assert sorted(p.name for p in ours.iterdir() if not p.name.startswith(".")) == ["000_0.png", "001_1.png"]


def test_an_image_folder_that_is_no_path_is_a_clear_error(webui):
    status, _ = press(webui, "dbc_train", images_dir=str(webui.images) + "\x00")
    assert "NUL byte" in status and webui.session.manager.list() == []


def test_a_shared_webui_reads_image_folders_only_from_its_own(webui, tmp_path, monkeypatch):
    from hostile import Canary

    monkeypatch.setenv("HOME", str(tmp_path))
    canary = Canary(tmp_path)
    webui.shared.cmd_opts.webui_is_non_local = True   # what the WebUI sets for --listen / --share
    for value in canary.paths(webui.root)[:-3]:       # the tab's textbox always sends text
        status, _ = press(webui, "dbc_train", images_dir=value)
        assert "dbc-error" in status and ("outside the folders" in status or "NUL byte" in status), (value, status)
    status, _ = press(webui, "dbc_train", images_dir=str(webui.images))
    assert "Settings → DreamBooth" in status
    webui.shared.opts.set("dreambooth_core_any_folder", True)
    press(webui, "dbc_train", images_dir=str(webui.images))
    assert wait_done(webui)["status"] == "completed"
    canary.assert_intact()


def test_the_advanced_section_sets_buckets_tag_captions_and_long_prompts(webui):
    form = webui.adapter.form
    defaults = dict(zip(form.FORM_KEYS, form_values(webui)))
    assert defaults["enable_bucketing"] is True and defaults["max_token_length"] == 225   # the tab shows the defaults
    values = form_values(webui, enable_bucketing=False, shuffle_caption=True, keep_tokens=1, tag_dropout_rate=0.1,
                         max_token_length=150, clip_skip=2, masked_loss_floor=0.3)
    config = form.build_config(form.Form.from_args(tuple(values)))
    assert (config.enable_bucketing, config.shuffle_caption, config.keep_tokens, config.tag_dropout_rate) == (False, True, 1, 0.1)
    assert (config.max_token_length, config.clip_skip, config.masked_loss_floor) == (150, 2, 0.3)
    with pytest.raises(Exception, match="max_token_length must be one of 75, 150, 225"):
        form.build_config(form.Form.from_args(tuple(form_values(webui, max_token_length=100))))


def test_plan_memory_shows_the_plan_before_train_and_loads_nothing(webui):
    from dreambooth_core.models.save import save_single_file
    from dreambooth_core.models.tiny import tiny_base_model

    save_single_file(tiny_base_model("sd1"), webui.folders["checkpoint"] / "tiny.safetensors", dtype="fp32")
    webui.sd_models.list_models()
    (shown,) = event(webui, "dbc_plan", "click").run(*form_values(webui, checkpoint="tiny.safetensors"))
    shown = html.unescape(shown)
    assert shown.startswith('<pre class="dbc-plan">memory plan for lora on sd1') and "total" in shown and "fits: 6 GB yes" in shown
    assert webui.session.manager.list() == [] and webui.shared.sd_model.device == "cuda"
    # found in the real A1111: a user plans before choosing photos (the plan needs none)
    (early,) = event(webui, "dbc_plan", "click").run(*form_values(webui, checkpoint="tiny.safetensors", images_dir=""))
    assert html.unescape(early).startswith('<pre class="dbc-plan">memory plan for lora on sd1'), early
    (refused,) = event(webui, "dbc_plan", "click").run(*form_values(webui))  # b"{}" is no checkpoint
    assert "dbc-error" in refused


def test_step_saves_land_in_the_webui_list_when_asked(webui):
    """Advanced → publish_step_saves: each checkpointing_steps save is listed as NAME-stepN
    beside the result, so X/Y/Z plots can compare steps."""
    press(webui, "dbc_train", max_train_steps=5, checkpointing_steps=2, publish_step_saves=True)
    view = wait_done(webui)
    assert view["status"] == "completed", view["error"]
    names = sorted(p.name for p in webui.folders["lora"].iterdir())
    assert names == ["zwx_dog-step2.safetensors", "zwx_dog-step4.safetensors", "zwx_dog.safetensors"]
    assert all(listed(webui, "lora", n) for n in ("zwx_dog", "zwx_dog-step2", "zwx_dog-step4"))
    assert sorted(d["prompt_hint"] for d in view["delivered"]) == ["<lora:zwx_dog-step2:0.8>", "<lora:zwx_dog-step4:0.8>",
                                                                   "<lora:zwx_dog:0.8>"]

    press(webui, "dbc_train", output_name="quiet", max_train_steps=5, checkpointing_steps=2)
    assert wait_done(webui)["status"] == "completed"
    assert not any(p.name.startswith("quiet-step") for p in webui.folders["lora"].iterdir())


def test_step_saves_from_before_a_cancel_are_placed_when_the_resumed_run_ends(webui):
    webui.session.manager.env["FAKE_TRAINER_DELAY"] = "0.02"
    press(webui, "dbc_train", max_train_steps=400, checkpointing_steps=2, publish_step_saves=True)
    deadline = time.monotonic() + 60
    while (webui.session.view()["step"] or 0) < 5:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    event(webui, "dbc_cancel", "click").run()
    stopped = wait_done(webui)["train_step"]
    assert not list(webui.folders["lora"].iterdir())   # nothing placed by a cancelled run

    webui.session.manager.env["FAKE_TRAINER_DELAY"] = "0.001"
    press(webui, "dbc_resume", max_train_steps=stopped + 4, checkpointing_steps=2, publish_step_saves=True)
    assert wait_done(webui)["status"] == "completed"
    expected = {f"zwx_dog-step{s}.safetensors" for s in range(2, stopped + 4, 2)} | {"zwx_dog.safetensors"}
    assert {p.name for p in webui.folders["lora"].iterdir()} == expected
