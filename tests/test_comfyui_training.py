"""The training nodes against the fake ComfyUI: a tiny real training goes through `execute`,
the file lands in ComfyUI's folder, progress reaches the node, Cancel leaves a resumable
run that the next queue continues, and bad input is a clear error."""
from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from comfy_fake.harness import Host

TINY = "tiny-sd1.safetensors"
QUIET = "num_validation_images = 0"


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    from dreambooth_core.models.save import save_single_file
    from dreambooth_core.models.tiny import tiny_base_model

    path = tmp_path_factory.mktemp("models") / TINY
    save_single_file(tiny_base_model("sd1"), path, dtype="fp32")
    return path


@pytest.fixture
def comfy(tmp_path, tiny_checkpoint, monkeypatch):
    monkeypatch.setenv("DREAMBOOTH_CORE_RUN_MODE", "in_process")
    host = Host(tmp_path / "ComfyUI")
    os.link(tiny_checkpoint, host.folder("checkpoints") / TINY)
    yield host
    host.close()


def subject_folder(host: Host, name: str = "subject") -> Path:
    """Three photos of mixed sizes and modes (RGB PNG, RGBA PNG, grayscale JPEG), one captioned."""
    folder = Path(host.folder_paths.get_input_directory()) / name
    folder.mkdir()
    rng = np.random.RandomState(0)
    Image.fromarray((rng.rand(64, 64, 3) * 255).astype("uint8")).save(folder / "a.png")
    Image.fromarray((rng.rand(72, 64, 4) * 255).astype("uint8"), "RGBA").save(folder / "b.png")
    Image.fromarray((rng.rand(64, 80) * 255).astype("uint8"), "L").save(folder / "c.jpg")
    (folder / "c.txt").write_text("a photo of zwx toy on a table", encoding="utf-8")
    return folder


def dataset_and_concept(host: Host, prior: bool = False):
    subject_folder(host)
    dataset = host.run("DreamBoothLoadTrainingImages", folder="subject")[0]
    concept = host.run("DreamBoothConcept", token="zwx", class_noun="toy", instance_prompt="a photo of {token} {class_noun}",
                       class_prompt="a photo of {class_noun}", prior_preservation=prior, num_class_images=2 if prior else 0,
                       prior_loss_weight=1.0)[0]
    return dataset, concept


def common(dataset, concept, **extra):
    values = dict(checkpoint=TINY, dataset=dataset, concept=concept, steps=2, learning_rate=0.0, resolution=64, seed=0,
                  resume=True, options=QUIET)
    values.update(extra)
    return values


def lora_inputs(dataset, concept, **extra):
    return common(dataset, concept, **{"preset": "lora", "rank": 4, "alpha": 0.0, "train_text_encoder": False, "strength": 1.0, **extra})


def package_module(host: Host, name: str):
    return sys.modules[f"{host.package_name}.nodes.{name}"]


def train_events(host: Host) -> list[dict]:
    return [data for event, data, _ in host.server.messages if event == "dreambooth.status"]


# ---- datasets ------------------------------------------------------------------------------

def test_folder_of_mixed_images_becomes_a_dataset(comfy):
    folder = subject_folder(comfy)
    dataset, count = comfy.run("DreamBoothLoadTrainingImages", folder="subject").args
    assert count == dataset.count == 3 and dataset.captioned == 1
    assert Path(dataset.folder) == folder
    assert comfy.run("DreamBoothLoadTrainingImages", folder=str(folder))[0].folder == str(folder)  # absolute path


def test_folder_fingerprint_changes_with_its_files(comfy):
    folder = subject_folder(comfy)
    cls = comfy.nodes["DreamBoothLoadTrainingImages"]
    before = cls.fingerprint_inputs(folder="subject")
    Image.new("RGB", (64, 64), "red").save(folder / "d.png")
    assert cls.fingerprint_inputs(folder="subject") != before


def test_image_batch_becomes_a_dataset(comfy):
    import torch

    batch = torch.rand(2, 32, 48, 3)
    dataset, count = comfy.run("DreamBoothLoadTrainingImages", folder="", images=batch).args
    assert count == 2
    files = sorted(Path(dataset.folder).glob("*.png"))
    assert [Image.open(f).size for f in files] == [(48, 32), (48, 32)]
    again = comfy.run("DreamBoothLoadTrainingImages", folder="", images=batch)[0]
    assert again.folder == dataset.folder and again.signature == dataset.signature


@pytest.mark.parametrize("setup, expected", [
    (lambda d: None, "the folder is empty"),
    (lambda d: (d / "notes.txt").write_text("x"), "found only notes.txt"),
    (lambda d: (d / "broken.png").write_bytes(b"not a png"), "could not be read"),
])
def test_unusable_folder_is_a_clear_error(comfy, setup, expected):
    from dreambooth_core.errors import UserError

    folder = Path(comfy.folder_paths.get_input_directory()) / "empty"
    folder.mkdir()
    setup(folder)
    with pytest.raises(UserError, match=expected):
        comfy.run("DreamBoothLoadTrainingImages", folder="empty")


def test_no_folder_and_no_images_is_a_clear_error(comfy):
    from dreambooth_core.errors import UserError

    with pytest.raises(UserError, match="no image folder given"):
        comfy.run("DreamBoothLoadTrainingImages", folder="  ")


# ---- training ------------------------------------------------------------------------------

@pytest.mark.slow
def test_train_lora_in_a_worker_publishes_and_applies(comfy, monkeypatch, caplog):
    """The default path: a worker process trains; the kohya file lands in models/loras;
    MODEL/CLIP come back patched; progress and previews reach the node."""
    monkeypatch.setenv("DREAMBOOTH_CORE_RUN_MODE", "worker")
    sd = sys.modules["comfy.sd"]
    model, clip = sd.ModelPatcher(), sd.CLIP()
    dataset, concept = dataset_and_concept(comfy)
    options = "num_validation_images = 1\nvalidation_inference_steps = 1\nvalidation_prompts = a photo of zwx toy"
    with caplog.at_level(logging.WARNING):
        out = comfy.run("DreamBoothTrainLoRA", unique_id="7", **lora_inputs(dataset, concept, model=model, clip=clip,
                                                                           strength=0.7, options=options))
    file_name, prompt, new_model, new_clip, loss, samples = out.args
    assert file_name == "zwx_toy.safetensors" and prompt == "a photo of zwx toy"
    assert comfy.folder_paths.get_filename_list("loras") == ["zwx_toy.safetensors"]  # listed at once
    assert not [f for f in os.listdir(comfy.folder("loras")) if f.startswith(".")]

    from safetensors import safe_open
    with safe_open(comfy.folder("loras") / file_name, framework="pt") as f:
        keys = list(f.keys())
    assert keys and all(k.startswith("lora_unet_") for k in keys)
    assert new_model is not model and len(new_model.patches) == len({k.rsplit(".", 2)[0] for k in keys if "lora_down" in k})
    assert all(p[0][0] == 0.7 for p in new_model.patches.values())
    assert "lora key not loaded" not in caplog.text

    assert loss.ndim == 4 and loss.shape[-1] == 3 and samples.shape[0] == 1
    assert out.ui["images"] and all(Path(comfy.folder_paths.get_temp_directory(), i["filename"]).is_file() for i in out.ui["images"])

    assert comfy.mm.calls[:2] == ["unload_all_models", "soft_empty_cache"]
    train_steps = [(v, t) for v, t, _ in comfy.progress if t == 2]
    assert train_steps and train_steps[-1] == (2, 2)
    assert any(p is not None and p[0] == "JPEG" and p[1].size == (64, 64) and p[2] == 512 for _, _, p in comfy.progress)
    status = train_events(comfy)
    assert all(s["node"] == "7" for s in status)
    assert status[-1]["text"] == "completed at step 2" and [s for s, _ in status[-1]["losses"]] == [1, 2]


@pytest.mark.slow
def test_queueing_again_reuses_the_finished_run(comfy):
    dataset, concept = dataset_and_concept(comfy)
    first = comfy.run("DreamBoothTrainLoRA", **lora_inputs(dataset, concept))
    published = comfy.folder("loras") / first[0]
    stamp = published.stat().st_mtime_ns
    runs = package_module(comfy, "runner").manager().list()
    second = comfy.run("DreamBoothTrainLoRA", **lora_inputs(dataset, concept))
    assert second[0] == first[0] and published.stat().st_mtime_ns == stamp
    assert package_module(comfy, "runner").manager().list() == runs, "no new run was started"

    published.unlink()  # the user deleted the file: the finished run puts it back without training
    comfy.run("DreamBoothTrainLoRA", **lora_inputs(dataset, concept))
    assert published.is_file() and package_module(comfy, "runner").manager().list() == runs

    # Another rank is another run; it may replace the file an earlier run of ours placed,
    # since that run keeps its own copy.
    comfy.run("DreamBoothTrainLoRA", **lora_inputs(dataset, concept, rank=2))
    assert len(package_module(comfy, "runner").manager().list()) == len(runs) + 1
    assert published.stat().st_mtime_ns != stamp
    copies = sorted((Path(comfy.folder_paths.get_output_directory()) / "dreambooth").glob("zwx_toy-*/zwx_toy/outputs/zwx_toy.safetensors"))
    sizes = sorted(c.stat().st_size for c in copies)
    assert len(copies) == 2 and sizes[0] < sizes[1], "each run keeps its own file (rank 2 is the smaller)"
    assert published.stat().st_size == sizes[0]


@pytest.mark.slow
def test_cancel_leaves_a_resumable_run_that_the_next_queue_continues(comfy, monkeypatch):
    """Cancel during training (worker process): ComfyUI's exception, a saved state, nothing
    in the loras list; the same graph queued again resumes from that state."""
    monkeypatch.setenv("DREAMBOOTH_CORE_RUN_MODE", "worker")
    dataset, concept = dataset_and_concept(comfy)
    steps = 16  # room for the cancel to arrive: the worker runs on while progress is relayed
    inputs = lora_inputs(dataset, concept, steps=steps)

    def cancel_at_step_two(value, total):
        if total == steps and value >= 2:
            comfy.interrupt()
    comfy.on_progress = cancel_at_step_two
    with pytest.raises(comfy.mm.InterruptProcessingException):
        comfy.run("DreamBoothTrainLoRA", **inputs)
    comfy.on_progress = None

    assert comfy.folder_paths.get_filename_list("loras") == []
    run_dirs = list((Path(comfy.folder_paths.get_output_directory()) / "dreambooth").glob("zwx_toy-*/zwx_toy"))
    assert len(run_dirs) == 1
    states = sorted((run_dirs[0] / "state").glob("step-*"))
    stopped_at = int(states[-1].name.split("-")[1])
    assert 2 <= stopped_at < steps
    assert "queue again to resume" in train_events(comfy)[-1]["text"]

    comfy.server.messages.clear()
    out = comfy.run("DreamBoothTrainLoRA", **inputs)
    assert out[0] == "zwx_toy.safetensors" and (comfy.folder("loras") / out[0]).is_file()
    texts = [s["text"] for s in train_events(comfy)]
    assert texts[0] == "resuming lora run zwx_toy" and f"lora: {steps} steps (resumed at step {stopped_at})" in texts
    assert texts[-1] == f"completed at step {steps}"


@pytest.mark.slow
def test_train_textual_inversion_gives_the_embedding_prompt(comfy):
    sd = sys.modules["comfy.sd"]
    clip = sd.CLIP()
    dataset, concept = dataset_and_concept(comfy)
    out = comfy.run("DreamBoothTrainTextualInversion", **common(dataset, concept, preset="textual_inversion", num_vectors=2,
                                                               init_word="", clip=clip))
    file_name, prompt, clip_out = out.args[:3]
    assert file_name == "zwx_toy.safetensors" and comfy.folder_paths.get_filename_list("embeddings") == [file_name]
    assert prompt == "a photo of embedding:zwx_toy toy"
    assert clip_out is clip

    from safetensors.torch import load_file
    assert load_file(comfy.folder("embeddings") / file_name)["emb_params"].shape == (2, 32)


@pytest.mark.slow
def test_train_hypernetwork_applies_through_comfyuis_patch(comfy):
    sd = sys.modules["comfy.sd"]
    model = sd.ModelPatcher()
    dataset, concept = dataset_and_concept(comfy)
    out = comfy.run("DreamBoothTrainHypernetwork", **common(dataset, concept, preset="hypernetwork", layer_structure="1, 2, 1",
                                                           activation="relu", model=model, strength=0.5))
    file_name, prompt, patched = out.args[:3]
    assert file_name == "zwx_toy.pt" and comfy.folder_paths.get_filename_list("hypernetworks") == [file_name]
    assert patched is not model and len(patched.attn1_patches) == len(patched.attn2_patches) == 1
    patch = patched.attn1_patches[0]
    assert patch.strength == 0.5 and sorted(patch.hypernet) == [32, 64]  # attention widths (self and cross)


@pytest.mark.parametrize("settings", [
    dict(activation="relu", layer_norm=True, activate_output=True),
    dict(activation="mish"),
    dict(activation="relu", layer_norm=True),  # ComfyUI also activates the last Linear (it counts the LayerNorm)
    dict(activation="relu", dropout_structure=(0, 0.1, 0)),  # ComfyUI's dropout (0.3) stays on when generating
], ids=["relu-norm-output", "mish", "relu-norm", "dropout"])
def test_comfyuis_patch_computes_what_a1111_does_exactly_for_the_settings_we_allow(comfy, tmp_path, settings):
    import importlib

    import torch

    from dreambooth_core.errors import UserError
    from dreambooth_core.formats.hypernetwork import Hypernetwork, check_host_compatible, save_hypernetwork

    torch.manual_seed(0)
    hn = Hypernetwork([32], layer_structure=(1, 2, 1), weight_init="XavierNormal", **settings)
    with torch.no_grad():
        for p in hn.parameters():  # LayerNorms away from their initialisation too
            p.add_(torch.randn_like(p) * 0.3)
    path = save_hypernetwork(hn, tmp_path / "hn.pt")
    patch = importlib.import_module("comfy_extras.nodes_hypernetwork").load_hypernetwork_patch(str(path), 0.7)
    context = torch.randn(2, 5, 32)
    with torch.no_grad():
        q, k, v = patch(context, context, context, {})
        a1111 = [mlp.eval()(context, 0.7) for mlp in hn.pair(32)]  # A1111 generates in eval mode
    same = torch.allclose(k, a1111[0], atol=1e-5) and torch.allclose(v, a1111[1], atol=1e-5)
    assert q is context
    try:
        check_host_compatible(hn.activation, hn.layer_norm, hn.activate_output, hn.dropout_structure)
        allowed = True
    except UserError:
        allowed = False
    assert same == allowed


@pytest.mark.slow
def test_train_dreambooth_with_prior_preservation_outputs_the_new_checkpoint(comfy):
    dataset, concept = dataset_and_concept(comfy, prior=True)
    options = "num_validation_images = 0\nclass_inference_steps = 1"
    out = comfy.run("DreamBoothTrainDreamBooth", **common(dataset, concept, preset="dreambooth", train_text_encoder=False,
                                                         options=options))
    file_name, prompt, model, clip, vae = out.args[:5]
    assert file_name == "zwx_toy.safetensors"
    assert set(comfy.folder_paths.get_filename_list("checkpoints")) == {TINY, file_name}
    assert model.source == clip.source == vae.source == str(comfy.folder("checkpoints") / file_name)
    assert any(s["text"].startswith("class images") for s in train_events(comfy))


# ---- bad input -----------------------------------------------------------------------------

def test_name_collision_is_refused_before_training(comfy):
    from dreambooth_core.errors import OutputExistsError

    dataset, concept = dataset_and_concept(comfy)
    theirs = comfy.folder("loras") / "zwx_toy.safetensors"
    theirs.write_bytes(b"someone else's LoRA")
    with pytest.raises(OutputExistsError, match="output_name=another_name"):
        comfy.run("DreamBoothTrainLoRA", **lora_inputs(dataset, concept))
    assert theirs.read_bytes() == b"someone else's LoRA"
    assert package_module(comfy, "runner").manager().list() == []
    assert "unload_all_models" not in comfy.mm.calls


def test_missing_checkpoint_when_run_is_a_clear_error(comfy):
    from dreambooth_core.errors import UserError

    dataset, concept = dataset_and_concept(comfy)
    with pytest.raises(UserError, match="not in ComfyUI's checkpoints list"):
        comfy.run("DreamBoothTrainLoRA", **lora_inputs(dataset, concept, checkpoint="gone.safetensors"))


def test_bad_setting_in_options_names_the_key(comfy):
    from dreambooth_core.errors import ConfigError

    dataset, concept = dataset_and_concept(comfy)
    with pytest.raises(ConfigError, match="did you mean 'validation_steps'"):
        comfy.run("DreamBoothTrainLoRA", **lora_inputs(dataset, concept, options="# comment\nvalidaton_steps = 10"))
    with pytest.raises(ConfigError, match="mixed_precision must be one of"):
        comfy.run("DreamBoothTrainLoRA", **lora_inputs(dataset, concept, options="mixed_precision=fp8"))
    parse = package_module(comfy, "train").parse_options
    assert parse("max_train_steps= 5\n\n  # a comment\nseed =2") == {"max_train_steps": "5", "seed": "2"}


def test_missing_worker_python_is_a_clear_error(comfy, monkeypatch):
    from dreambooth_core.errors import UserError

    monkeypatch.setenv("DREAMBOOTH_CORE_RUN_MODE", "worker")
    monkeypatch.setenv("DREAMBOOTH_CORE_WORKER_PYTHON", "/nonexistent/python3")
    dataset, concept = dataset_and_concept(comfy)
    with pytest.raises(UserError, match="worker Python not found: /nonexistent/python3"):
        comfy.run("DreamBoothTrainLoRA", **lora_inputs(dataset, concept))
    assert comfy.folder_paths.get_filename_list("loras") == []


def test_cancel_during_the_final_save_keeps_the_finished_file(comfy):
    """A Cancel that arrives while the run writes its result: the run still completes, its
    file is placed whole (atomically), ComfyUI gets its interrupt, and queueing again reuses it."""
    from dreambooth_core.events import Artifact, Done, Progress, Started
    from dreambooth_core.train.run_dir import RunDir

    def runner(config, emit, cancel):
        rd = RunDir.for_config(config)
        rd.create(clear=True)
        emit(Started(run_dir=str(rd.root), method=config.method, total_steps=config.max_train_steps))
        emit(Progress(phase="saving", step=config.max_train_steps, total=config.max_train_steps))
        comfy.interrupt()
        import time
        time.sleep(0.5)  # the node sees the interrupt and cancels while we "save"
        out = rd.outputs / f"{config.name}.safetensors"
        out.write_bytes(b"a finished LoRA")
        emit(Artifact(kind="lora", path=str(out), name=config.name))
        emit(Done(status="completed", run_dir=str(rd.root), step=config.max_train_steps))

    package_module(comfy, "runner").manager().runner = runner
    dataset, concept = dataset_and_concept(comfy)
    with pytest.raises(comfy.mm.InterruptProcessingException):
        comfy.run("DreamBoothTrainLoRA", **lora_inputs(dataset, concept))
    published = comfy.folder("loras") / "zwx_toy.safetensors"
    assert published.read_bytes() == b"a finished LoRA"
    jobs = package_module(comfy, "runner").manager().list()
    assert comfy.run("DreamBoothTrainLoRA", **lora_inputs(dataset, concept))[0] == "zwx_toy.safetensors"
    assert package_module(comfy, "runner").manager().list() == jobs


def test_status_line_shows_every_phase_change_despite_rate_limiting(comfy):
    """Status messages are rate-limited, but the first of each phase always goes out."""
    from nodes.runner import EventRelay

    from dreambooth_core.events import Progress

    sent: list[tuple[str, bool]] = []

    class Bar:
        def update(self, *args) -> None:
            pass

        def status(self, text: str, force: bool = False, **data) -> None:
            sent.append((text, force))

    relay = EventRelay(Bar())
    for phase, total in (("class_images", 2), ("caching", 2), ("train", 3)):
        for step in range(1, total + 1):
            relay(Progress(phase=phase, step=step, total=total))
    forced = [text for text, force in sent if force]
    assert forced == ["class images 1/2", "caching latents 1/2", "training 1/3"]


def test_the_node_shows_the_memory_plan_before_the_first_step(comfy):
    """The run's memory plan (made before the model loads) reaches the node's status line at once."""
    from dreambooth_core.config import TrainConfig
    from dreambooth_core.events import Log
    from dreambooth_core.plan.memory import plan_memory
    from nodes.runner import EventRelay

    sent = []

    class Bar:
        def update(self, *a, **k) -> None:
            pass

        def status(self, text: str, force: bool = False, **data) -> None:
            sent.append((text, force))

    plan = plan_memory(TrainConfig(method="lora", family="sd1", resolution=256), device="cuda")
    relay = EventRelay(Bar())
    relay(Log(level="info", message=plan.describe()))
    relay(Log(level="info", message="6 instance image(s)"))
    ((text, forced),) = sent
    assert forced and text.startswith("memory plan for lora on sd1 at 256 px")
    assert f"{plan.total_bytes / 2**30:.2f} GiB planned" in text and "fits: " not in text and "6 GB" in text


def test_options_take_a_kohya_dataset_toml(comfy, tmp_path):
    """A kohya user's dataset config works from the Train node's options; its keys are checked."""
    from dreambooth_core.errors import ConfigError

    from dreambooth_core.paths import OutsideRoots

    dataset, concept = dataset_and_concept(comfy)
    toml = Path(dataset.folder).parent / "dataset.toml"      # in ComfyUI's input folder
    toml.write_text(f"[[datasets]]\nresolution = 64\n[[datasets.subsets]]\nimage_dir = '{dataset.folder}'\n"
                    "class_tokens = 'zwx dog'\nnum_repeats = 3\ncolour_aug = true\n")
    with pytest.raises(ConfigError, match=r"dataset_config: dataset.toml datasets\[0\].subsets\[0\]: unknown key 'colour_aug'"):
        comfy.run("DreamBoothTrainLoRA", **lora_inputs(dataset, concept, options=f"dataset_config = {toml}"))
    # a TOML outside ComfyUI's folders, or one that names a folder outside them, is refused
    outside = tmp_path / "outside.toml"
    outside.write_text(toml.read_text().replace("colour_aug = true\n", ""))
    with pytest.raises(OutsideRoots, match="dataset_config"):
        comfy.run("DreamBoothTrainLoRA", **lora_inputs(dataset, concept, options=f"dataset_config = {outside}"))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    toml.write_text(outside.read_text().replace(str(dataset.folder), str(elsewhere)))
    with pytest.raises(OutsideRoots, match=r"concepts\[0\].image_dir"):
        comfy.run("DreamBoothTrainLoRA", **lora_inputs(dataset, concept, options=f"dataset_config = {toml}"))


def test_step_saves_land_in_the_loras_folder_when_asked(comfy):
    """options `publish_step_saves = true`: each checkpointing_steps save is in LoraLoader's
    list as NAME-stepN; queued again, the finished run puts back a deleted one without training."""
    dataset, concept = dataset_and_concept(comfy)
    options = f"{QUIET}\ncheckpointing_steps = 1\npublish_step_saves = true"
    first = comfy.run("DreamBoothTrainLoRA", **lora_inputs(dataset, concept, steps=3, options=options))
    assert first[0] == "zwx_toy.safetensors"
    assert comfy.folder_paths.get_filename_list("loras") == ["zwx_toy-step1.safetensors", "zwx_toy-step2.safetensors",
                                                              "zwx_toy.safetensors"]
    run_outputs = next((Path(comfy.folder_paths.get_output_directory()) / "dreambooth").glob("zwx_toy-*/zwx_toy/outputs"))
    step1 = comfy.folder("loras") / "zwx_toy-step1.safetensors"
    assert step1.read_bytes() == (run_outputs / step1.name).read_bytes()

    runs = package_module(comfy, "runner").manager().list()
    step1.unlink()
    comfy.run("DreamBoothTrainLoRA", **lora_inputs(dataset, concept, steps=3, options=options))
    assert step1.is_file() and package_module(comfy, "runner").manager().list() == runs, "reused, not trained again"


def test_a_foreign_file_with_a_step_saves_name_is_refused_before_training(comfy):
    from dreambooth_core.errors import OutputExistsError

    dataset, concept = dataset_and_concept(comfy)
    theirs = comfy.folder("loras") / "zwx_toy-step2.safetensors"
    theirs.write_bytes(b"someone else's LoRA")
    options = f"{QUIET}\ncheckpointing_steps = 2\npublish_step_saves = true"
    with pytest.raises(OutputExistsError, match="zwx_toy-step2.safetensors already exists"):
        comfy.run("DreamBoothTrainLoRA", **lora_inputs(dataset, concept, steps=4, options=options))
    assert theirs.read_bytes() == b"someone else's LoRA" and package_module(comfy, "runner").manager().list() == []
