"""Concept chains against the fake ComfyUI: several Concept nodes into one Train node make
the run's `concepts` (each with its own images, repeats, captions and prior weight), a
lone Concept from a saved workflow still makes the plain one-concept config, and every
concept folder passes ComfyUI's path gate."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from comfy_fake.harness import Host
from dreambooth_core.config import load_config
from dreambooth_core.errors import UserError
from test_comfyui_training import TINY, comfy, tiny_checkpoint  # noqa: F401  (fixtures)



def images(host: Host, name: str, count: int, seed: int):
    folder = Path(host.folder_paths.get_input_directory()) / name
    folder.mkdir()
    rng = np.random.RandomState(seed)
    for i in range(count):
        Image.fromarray((rng.rand(64, 64, 3) * 255).astype("uint8")).save(folder / f"{i}.png")
    return host.run("DreamBoothLoadTrainingImages", folder=name)[0]


# What a saved workflow from before chains sends: the old widgets only.
OLD_WIDGETS = dict(instance_prompt="a photo of {token} {class_noun}", class_prompt="a photo of {class_noun}",
                   prior_preservation=False, num_class_images=0, prior_loss_weight=1.0)


def concept(host: Host, token: str, class_noun: str, **extra):
    return host.run("DreamBoothConcept", token=token, class_noun=class_noun, **{**OLD_WIDGETS, **extra})[0]


def lora_config(host: Host, concept_value, dataset=None, options="num_validation_images = 0"):
    node = host.nodes["DreamBoothTrainLoRA"]
    return node.build_config(TINY, dataset, concept_value, "lora", 2, 0.0, 64, 0, options,
                             rank=4, alpha=0.0, train_text_encoder=False)


def test_a_lone_concept_from_a_saved_workflow_is_the_plain_config(comfy):
    dataset = images(comfy, "subject", 2, 0)
    config = lora_config(comfy, concept(comfy, "zwx", "toy"), dataset)
    assert config.concepts == [] and config.instance_data_dir == dataset.folder
    expected = load_config(preset="lora", overrides=dict(
        method="lora", base_model=config.base_model, instance_data_dir=dataset.folder, seed=0, token="zwx", class_noun="toy",
        instance_prompt=OLD_WIDGETS["instance_prompt"], class_prompt=OLD_WIDGETS["class_prompt"],
        with_prior_preservation=False, prior_loss_weight=1.0, train_text_encoder=False, rank=4, max_train_steps=2,
        resolution=64, num_validation_images=0))
    assert config == expected
    # its caption widgets, once set, are the run's own caption options
    shuffled = lora_config(comfy, concept(comfy, "zwx", "toy", shuffle_caption=True, keep_tokens=1), dataset)
    assert (shuffled.concepts, shuffled.shuffle_caption, shuffled.keep_tokens) == ([], True, 1)


def test_a_chain_of_concepts_makes_the_runs_concepts(comfy):
    person, style = images(comfy, "person", 2, 0), images(comfy, "style", 3, 1)
    first = concept(comfy, "zwx", "man", images=person, repeats=5, prior_loss_weight=0.5)
    second = concept(comfy, "qwv", "painting", images=style, previous=first, shuffle_caption=True, keep_tokens=1,
                     tag_dropout_rate=0.1, caption_extension=".caption")
    config = lora_config(comfy, second)
    base = dict(instance_prompt=OLD_WIDGETS["instance_prompt"], class_prompt=OLD_WIDGETS["class_prompt"])
    assert config.concepts == [
        dict(image_dir=person.folder, repeats=5, token="zwx", class_noun="man", prior_loss_weight=0.5, **base),
        dict(image_dir=style.folder, repeats=1, token="qwv", class_noun="painting", prior_loss_weight=1.0, **base,
             caption_extension=".caption", shuffle_caption=True, keep_tokens=1, tag_dropout_rate=0.1),
    ]
    # the first concept names the run and gives the prompt output; the run-wide caption options stay the run's
    assert (config.token, config.class_noun, config.prior_loss_weight, config.shuffle_caption) == ("zwx", "man", 0.5, False)
    # a concept without its own images takes the Train node's dataset
    dataset = images(comfy, "subject", 2, 2)
    config = lora_config(comfy, concept(comfy, "qwv", "painting", previous=concept(comfy, "zwx", "man", repeats=2)), dataset)
    assert [(c["image_dir"], c["repeats"]) for c in config.concepts] == [(dataset.folder, 2), (dataset.folder, 1)]


def test_chain_mistakes_are_clear_errors(comfy):
    person = images(comfy, "person", 2, 0)
    with pytest.raises(UserError, match="'qwv' has no images"):
        lora_config(comfy, concept(comfy, "qwv", "dog", previous=concept(comfy, "zwx", "man", images=person)))
    with pytest.raises(UserError, match="differ in prior preservation"):
        lora_config(comfy, concept(comfy, "qwv", "dog", images=person, prior_preservation=True, num_class_images=2,
                                   previous=concept(comfy, "zwx", "man", images=person)))
    with pytest.raises(UserError, match="dataset would be left out"):
        lora_config(comfy, concept(comfy, "qwv", "dog", images=person, previous=concept(comfy, "zwx", "man", images=person)),
                    person)
    with pytest.raises(UserError, match="connect Load Training Images"):
        lora_config(comfy, concept(comfy, "zwx", "man"))
    with pytest.raises(UserError, match="concepts cannot be set here"):
        lora_config(comfy, concept(comfy, "zwx", "man"), person, options='concepts = [{"image_dir": "x"}]')


def test_every_concept_folder_passes_comfyuis_path_gate(comfy, tmp_path):
    """A value forged in a workflow (a dataset naming a folder outside ComfyUI's) is refused by the Train node."""
    from dreambooth_core.paths import OutsideRoots

    inside = images(comfy, "person", 2, 0)
    outside = tmp_path / "private"
    outside.mkdir()
    forged = type(inside)(str(outside), 2, 0, "x")
    chain = concept(comfy, "qwv", "dog", images=forged, previous=concept(comfy, "zwx", "man", images=inside))
    with pytest.raises(OutsideRoots, match=r"concepts\[1\].image_dir"):
        lora_config(comfy, chain)
    chain = concept(comfy, "qwv", "dog", images=inside, class_images=forged, prior_preservation=True,
                    previous=concept(comfy, "zwx", "man", images=inside, prior_preservation=True))
    with pytest.raises(OutsideRoots, match=r"concepts\[1\].class_data_dir"):
        lora_config(comfy, chain)


def test_a_chain_trains_both_concepts_with_their_repeats(comfy):
    """Two Concept nodes into Train LoRA: a real (tiny) run whose LoRA metadata lists both folders and repeats."""
    from safetensors import safe_open

    person, style = images(comfy, "person", 2, 0), images(comfy, "style", 1, 1)
    chain = concept(comfy, "qwv", "painting", images=style, repeats=3,
                    previous=concept(comfy, "zwx", "man", images=person))
    out = comfy.run("DreamBoothTrainLoRA", checkpoint=TINY, concept=chain, preset="lora", steps=2, learning_rate=0.0,
                    resolution=64, seed=0, resume=True, options="num_validation_images = 0", rank=4, alpha=0.0,
                    train_text_encoder=False, strength=1.0)
    file_name, prompt = out.args[:2]
    assert (file_name, prompt) == ("zwx_man.safetensors", "a photo of zwx man")
    with safe_open(comfy.folder("loras") / file_name, framework="pt") as f:
        meta = f.metadata()
    assert json.loads(meta["ss_dataset_dirs"]) == {"person": {"n_repeats": 1, "img_count": 2},
                                                   "style": {"n_repeats": 3, "img_count": 1}}
    assert meta["ss_num_train_images"] == "5"


WORKFLOWS = Path(__file__).resolve().parent.parent / "workflows"
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}


def widget_names(host: Host, node_id: str) -> list[str]:
    """The node's widgets in the order the frontend stores widgets_values: required, then optional inputs."""
    info = host.nodes[node_id].GET_SCHEMA().get_v1_info(host.nodes[node_id])["input"]
    return [name for group in ("required", "optional") for name, (kind, _) in info.get(group, {}).items()
            if kind in WIDGET_TYPES or isinstance(kind, list)]


@pytest.mark.parametrize("workflow", ["train_lora_and_sample", "textual_inversion", "dreambooth_prior_preservation"])
def test_saved_workflows_keep_their_concept_values(comfy, workflow):
    """The saved graphs store Concept's widget values by position: the new widgets come after them,
    and the API-format Concept values still make a plain one-concept config."""
    graph = json.loads((WORKFLOWS / f"{workflow}.json").read_text())
    saved = next(n for n in graph["nodes"] if n["type"] == "DreamBoothConcept")
    api = next(n for n in json.loads((WORKFLOWS / f"{workflow}.api.json").read_text()).values()
               if n["class_type"] == "DreamBoothConcept")
    names = widget_names(comfy, "DreamBoothConcept")
    assert dict(zip(names, saved["widgets_values"])) == api["inputs"]
    dataset = images(comfy, "my_subject", 2, 0)
    config = lora_config(comfy, comfy.run("DreamBoothConcept", **api["inputs"])[0], dataset)
    assert config.concepts == [] and config.instance_data_dir == dataset.folder and config.token == api["inputs"]["token"]

