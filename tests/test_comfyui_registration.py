"""The node pack registers through ComfyUI's V3 entry point, with valid schemas."""
from __future__ import annotations

import importlib.util
import json
import sys

import pytest

from comfy_fake.harness import REPO, Host

EXPECTED = {
    "DreamBoothLoadTrainingImages", "DreamBoothConcept", "DreamBoothTrainLoRA", "DreamBoothTrainDreamBooth",
    "DreamBoothTrainTextualInversion", "DreamBoothTrainHypernetwork", "DreamBoothConvertModel", "DreamBoothConvertLoRA",
    "DreamBoothMergeLoRA", "DreamBoothExtractLoRA", "DreamBoothEvaluate",
}


@pytest.fixture
def comfy(tmp_path):
    host = Host(tmp_path / "ComfyUI")
    yield host
    host.close()


def test_root_init_imports_without_comfyui():
    """pytest, A1111 or a plain import: the root module loads with no ComfyUI module around."""
    assert "comfy_api" not in sys.modules
    spec = importlib.util.spec_from_file_location("dreambooth_root_check", REPO / "__init__.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.WEB_DIRECTORY == "./javascript/comfyui"
    assert (REPO / module.WEB_DIRECTORY).resolve().is_dir()
    assert not hasattr(module, "NODE_CLASS_MAPPINGS"), "V1 mappings would make ComfyUI ignore comfy_entrypoint"
    assert "comfy_api" not in sys.modules


def test_extension_lists_every_node_with_a_valid_schema(comfy):
    from comfy_api.latest import ComfyExtension, io

    assert isinstance(comfy.extension, ComfyExtension)
    assert set(comfy.nodes) == EXPECTED
    for node_id, cls in comfy.nodes.items():
        assert issubclass(cls, io.ComfyNode)
        schema = cls.GET_SCHEMA()  # validates ids: unique inputs, outputs, and between them
        assert schema.node_id == node_id and schema.display_name
        assert schema.category.split("/")[0] == "DreamBooth"
        for item in schema.inputs + schema.outputs:
            assert item.io_type, f"{node_id}.{item.id} has no type"
        info = schema.get_v1_info(cls)  # what /object_info serves
        json.dumps(info, default=str)
        assert info["output"] and all(isinstance(t, str) for t in info["output"])


def test_training_nodes_share_the_dataset_and_concept_types(comfy):
    schemas = {k: cls.GET_SCHEMA() for k, cls in comfy.nodes.items()}
    dataset_out = schemas["DreamBoothLoadTrainingImages"].outputs[0].io_type
    concept_out = schemas["DreamBoothConcept"].outputs[0].io_type
    for node_id in ("DreamBoothTrainLoRA", "DreamBoothTrainDreamBooth", "DreamBoothTrainTextualInversion", "DreamBoothTrainHypernetwork"):
        inputs = {i.id: i for i in schemas[node_id].inputs}
        assert inputs["dataset"].io_type == dataset_out == "DREAMBOOTH_DATASET"
        assert inputs["concept"].io_type == concept_out == "DREAMBOOTH_CONCEPT"
        assert schemas[node_id].is_output_node
        assert [o.io_type for o in schemas[node_id].outputs][:2] == ["STRING", "STRING"]
        assert [o.io_type for o in schemas[node_id].outputs][-2:] == ["IMAGE", "IMAGE"]


def test_checkpoint_list_is_read_when_the_schema_is(comfy):
    """ComfyUI re-reads schemas for /object_info: a new checkpoint shows without a restart."""
    (comfy.folder("checkpoints") / "new_model.safetensors").write_bytes(b"x")
    inputs = {i.id: i for i in comfy.nodes["DreamBoothTrainLoRA"].GET_SCHEMA().inputs}
    assert inputs["checkpoint"].options == ["new_model.safetensors"]


def test_missing_checkpoint_is_a_clear_validation_error(comfy):
    message = comfy.validate("DreamBoothTrainLoRA", checkpoint="sd15.safetensors")
    assert isinstance(message, str) and "checkpoints" in message and "R (refresh)" in message
    (comfy.folder("checkpoints") / "other.safetensors").write_bytes(b"x")
    message = comfy.validate("DreamBoothTrainLoRA", checkpoint="sd15.safetensors")
    assert "not in ComfyUI's checkpoints list" in message
    assert comfy.validate("DreamBoothTrainLoRA", checkpoint="other.safetensors") is True


def test_web_extension_listens_for_the_status_event(comfy):
    status_event = sys.modules[f"{comfy.package_name}.nodes.host"].STATUS_EVENT
    scripts = list((REPO / "javascript" / "comfyui").glob("*.js"))
    assert scripts
    source = "\n".join(p.read_text(encoding="utf-8") for p in scripts)
    assert f'"{status_event}"' in source and "registerExtension" in source
