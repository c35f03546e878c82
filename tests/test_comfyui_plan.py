"""The Train nodes' memory plan before queueing, against the fake ComfyUI: the web extension's
Plan memory button posts the node's widget values to POST /dreambooth/plan, which answers
the core planner's JSON (the numbers `dreambooth-core plan --here` gives) without loading a
model or starting a run, and refuses paths outside ComfyUI's folders."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from comfy_fake.harness import Host
from hostile import Canary
from test_comfyui_training import TINY, tiny_checkpoint  # noqa: F401  (the same tiny SD1 file)

REPO = Path(__file__).resolve().parents[1]
ROUTE = "/dreambooth/plan"
LORA_INPUTS = {"checkpoint": TINY, "preset": "lora", "steps": 10, "learning_rate": 0.0, "rank": 4, "alpha": 0.0,
               "train_text_encoder": False, "strength": 1.0, "resolution": 64, "seed": 0, "resume": True, "options": ""}
CONCEPT = {"token": "zwx", "class_noun": "dog", "instance_prompt": "a photo of {token} {class_noun}",
           "class_prompt": "a photo of {class_noun}", "prior_preservation": False, "num_class_images": 0, "prior_loss_weight": 1.0}


@pytest.fixture
def comfy(tmp_path, tiny_checkpoint, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("DREAMBOOTH_CORE_ANY_FOLDER", raising=False)
    monkeypatch.setenv("DREAMBOOTH_CORE_WORKER_PYTHON", sys.executable)
    host = Host(tmp_path / "ComfyUI")
    os.link(tiny_checkpoint, host.folder("checkpoints") / TINY)
    subject = Path(host.folder_paths.get_input_directory()) / "subject"
    subject.mkdir()
    for i in range(3):
        Image.fromarray(np.full((64, 64, 3), 40 * i, np.uint8)).save(subject / f"{i}.png")
    host.canary = Canary(tmp_path)
    yield host
    host.close()
    host.canary.assert_intact()


def body(node="DreamBoothTrainLoRA", folder="subject", concept=None, **inputs):
    return {"node": node, "inputs": {**LORA_INPUTS, **inputs}, "concept": {**CONCEPT, **(concept or {})}, "folder": folder}


def plan_module(comfy: Host):
    return sys.modules[f"{comfy.package_name}.nodes.plan"]


def test_the_route_answers_the_planners_json_without_loading_or_running(comfy):
    status, plan = comfy.request("POST", ROUTE, body())
    assert status == 200, plan
    assert set(plan) >= {"parts", "total_bytes", "settings", "fits", "choices", "device", "text", "summary"}
    assert plan["total_bytes"] == sum(plan["parts"].values()) > 0
    assert plan["settings"]["method"] == "lora" and plan["settings"]["rank"] == 4 and plan["settings"]["resolution"] == 64
    assert plan["fits"] == {"6": True, "8": True, "12": True, "16": True, "24": True}   # a tiny model fits every card
    assert plan["text"].startswith("memory plan for lora on sd1 at 64 px") and "fits 6 GB yes" in plan["summary"]

    # the same numbers the CLI and the A1111 tab get for this config, made in this process
    from dreambooth_core.plan.auto import plan_for_run

    nodes = plan_module(comfy)
    c = CONCEPT
    concept = nodes.Concept(c["token"], c["class_noun"], c["instance_prompt"], c["class_prompt"], False, 0, 1.0)
    inputs = {k: v for k, v in LORA_INPUTS.items() if k not in ("strength", "resume")}
    config = nodes.TRAIN_BY_ID["DreamBoothTrainLoRA"].build_config(dataset=nodes.images_from_folder("subject"), concept=concept, **inputs)
    assert plan["parts"] == plan_for_run(config)[1].parts

    assert comfy.mm.calls == [], "planning leaves ComfyUI's models where they are"
    assert not (Path(comfy.folder_paths.get_output_directory()) / "dreambooth").exists(), "no run was started"
    assert comfy.request("POST", "/api" + ROUTE, body())[0] == 200   # ComfyUI serves every route under /api too


def test_options_and_concept_change_the_plan_as_they_would_the_run(comfy):
    _, plain = comfy.request("POST", ROUTE, body(folder=""))   # images not known yet (an IMAGE batch, or unwired)
    _, pinned = comfy.request("POST", ROUTE, body(folder="", options="gradient_checkpointing = true\noptimizer = adafactor"))
    assert (pinned["settings"]["gradient_checkpointing"], pinned["settings"]["optimizer"]) == (True, "adafactor")
    assert pinned["parts"]["optimizer_state"] < plain["parts"]["optimizer_state"]
    _, prior = comfy.request("POST", ROUTE, body(folder="", concept={"prior_preservation": True, "num_class_images": 4}))
    assert prior["settings"]["with_prior_preservation"] is True
    _, ti = comfy.request("POST", ROUTE, {"node": "DreamBoothTrainTextualInversion", "concept": CONCEPT,
                                          "inputs": {"checkpoint": TINY, "resolution": 64, "num_vectors": 2}})
    assert ti["settings"]["method"] == "textual_inversion" and ti["settings"]["num_vectors"] == 2


def test_paths_outside_comfyuis_folders_are_refused_before_anything_is_read(comfy, monkeypatch):
    def never(*args, **kwargs):
        raise AssertionError("a refused request must not reach the planner")

    monkeypatch.setattr(plan_module(comfy), "plan_in_worker", never)
    outside = comfy.canary.paths(Path(comfy.folder_paths.get_input_directory()))
    for value in outside:
        status, answer = comfy.request("POST", ROUTE, body(folder=value))
        assert status == 403 and any(w in answer["error"] for w in ("outside the folders", "NUL byte", "must be text")), (value, answer)
        assert "config.json" not in answer["error"], "the files of a folder outside are never listed"
    status, answer = comfy.request("POST", ROUTE, body(options=f"dataset_config = {comfy.canary.folder / 'config.json'}"))
    assert status == 403 and "outside the folders" in answer["error"]
    for key in ("base_model", "instance_data_dir", "eval_encoder", "output_dir"):
        status, answer = comfy.request("POST", ROUTE, body(options=f"{key} = {comfy.canary.folder}"))
        assert status == 400 and "cannot be set here" in answer["error"], (key, answer)
    for name in ("../../canary/model.safetensors", str(comfy.canary.folder / "model.safetensors")):
        status, answer = comfy.request("POST", ROUTE, body(checkpoint=name))
        assert status == 400 and "checkpoint" in answer["error"], answer


def test_malformed_requests_get_one_clear_sentence(comfy, monkeypatch):
    monkeypatch.setattr(plan_module(comfy), "plan_in_worker", lambda *a, **k: pytest.fail("not for a bad request"))
    cases = [("{not json", "must be JSON"), ([1, 2], "JSON object"), ({"node": "KSampler"}, "node must be one of"),
             (body(steps="10"), "steps"), (body(train_text_encoder=1), "train_text_encoder"), (body(preset="nope"), "preset"),
             ({**body(), "inputs": "x"}, "widget values"), (body(concept={"num_class_images": 1.5}), "num_class_images"),
             (body(steps=10**9), "max_train_steps")]
    for sent, said in cases:
        status, answer = comfy.request("POST", ROUTE, sent)
        assert status == 400 and said in answer["error"], (sent, answer)


@pytest.mark.skipif(shutil.which("node") is None, reason="needs node to run the web extension")
def test_the_plan_button_sends_the_graph_and_shows_the_answer(comfy):
    """The web extension's request, from a graph of Load Training Images → Concept → Train LoRA,
    goes to the route as it is; its answer is drawn under the node."""
    graph = {"train": "3", "nodes": {
        "1": {"type": "DreamBoothLoadTrainingImages", "widgets": {"folder": "subject"}},
        "2": {"type": "DreamBoothConcept", "widgets": CONCEPT, "inputs": {"images": "1"}},
        "3": {"type": "DreamBoothTrainLoRA", "widgets": {**LORA_INPUTS, "control_after_generate": "fixed"},
              "inputs": {"concept": "2", "dataset": None}}}}

    def page(answer: dict | None) -> dict:
        with tempfile.TemporaryDirectory() as folder:   # not beside the canary
            files = {"graph": graph, "answer": answer}
            for name, data in files.items():
                Path(folder, name).write_text(json.dumps(data))
            args = [str(Path(folder, name)) for name, data in files.items() if data is not None]
            done = subprocess.run(["node", str(REPO / "tests" / "comfy_fake" / "page.mjs"),
                                   str(REPO / "javascript" / "comfyui" / "dreambooth.js"), *args],
                                  capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    first = page(None)
    request = first["request"]
    assert first["button_saved"] is False, "the button is no widget value of the queued prompt"
    assert (request["route"], request["method"]) == (ROUTE, "POST")
    assert request["body"]["folder"] == "subject" and request["body"]["concept"]["class_noun"] == "dog"
    status, plan = comfy.request("POST", ROUTE, request["body"])
    assert status == 200, plan
    shown = page({"status": status, "body": plan})
    total = f"{plan['total_bytes'] / 2**30:.2f} GiB"
    assert shown["lines"][0].startswith(f"memory plan: {total} on {plan['device']} (lora, sd1, 64 px)")
    assert shown["lines"][1] == "fits: 6 GB yes, 8 GB yes, 12 GB yes, 16 GB yes, 24 GB yes"
    assert shown["stale_lines"][-1] == "(settings changed: press Plan memory again)"
    status, refused = comfy.request("POST", ROUTE, {**request["body"], "folder": "/etc"})
    lines = page({"status": status, "body": refused})["lines"]
    assert status == 403 and lines[0].startswith("plan: folder '/etc' is outside the folders") and len(lines) <= 8
    assert all(len(line) <= 60 for line in lines[:-1])   # wrapped to the node's width


def test_a_listed_checkpoint_that_links_elsewhere_is_planned(comfy, tiny_checkpoint):
    """Found in the real ComfyUI: a model folder of symlinks to a shared models folder is common;
    a checkpoint ComfyUI lists is used wherever its link leads (a typed path still is not)."""
    (comfy.folder("checkpoints") / "linked.safetensors").symlink_to(tiny_checkpoint)
    status, plan = comfy.request("POST", ROUTE, body(checkpoint="linked.safetensors"))
    assert status == 200 and plan["settings"]["family"] == "sd1", plan
    status, answer = comfy.request("POST", ROUTE, body(checkpoint="linked.safetensors", options=f"dataset_config = {tiny_checkpoint}"))
    assert status == 403 and "outside the folders" in answer["error"]
