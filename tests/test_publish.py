from pathlib import Path

import pytest

from dreambooth_core.errors import OutputExistsError
from dreambooth_core.lifecycle import check_name_free, prompt_hint, publish


def test_publish_places_file_atomically_and_refuses_overwrite(tmp_path):
    src = tmp_path / "run" / "outputs" / "zwx_dog.safetensors"
    src.parent.mkdir(parents=True)
    src.write_bytes(b"weights")
    loras = tmp_path / "models" / "Lora"
    dest = publish(src, "lora", "zwx_dog", loras)
    assert dest == loras / "zwx_dog.safetensors" and dest.read_bytes() == b"weights"
    assert [p.name for p in loras.iterdir()] == ["zwx_dog.safetensors"]  # no temp file left behind
    with pytest.raises(OutputExistsError, match="zwx_dog.safetensors already exists"):
        publish(src, "lora", "zwx_dog", loras)
    with pytest.raises(OutputExistsError):
        check_name_free("lora", "zwx_dog", loras)
    src.write_bytes(b"new")
    publish(src, "lora", "zwx_dog", loras, overwrite=True)
    assert dest.read_bytes() == b"new"


def test_hypernetworks_are_pt_and_hints_match_each_host(tmp_path):
    src = tmp_path / "h.pt"
    src.write_bytes(b"x")
    assert publish(src, "hypernetwork", "zwx", tmp_path / "hn").name == "zwx.pt"
    assert prompt_hint("lora", "zwx_dog") == "<lora:zwx_dog:0.8>"
    assert prompt_hint("hypernetwork", "zwx_dog") == "<hypernet:zwx_dog:1>"
    assert prompt_hint("embedding", "zwx_dog") == "zwx_dog"
    assert prompt_hint("embedding", "zwx_dog", host="comfyui") == "embedding:zwx_dog"


def test_published_files_get_the_umask_mode_not_mkstemps_0600(tmp_path):
    import os
    import stat

    src = tmp_path / "a.safetensors"
    src.write_bytes(b"x")
    os.chmod(src, 0o600)
    old = os.umask(0o022)
    try:
        dest = publish(src, "lora", "shared", tmp_path / "Lora")
    finally:
        os.umask(old)
    assert stat.S_IMODE(dest.stat().st_mode) == 0o644


def test_step_saves_are_delivered_as_name_step_n_only_when_asked(tmp_path):
    """A real tiny run saving every step: with `publish_step_saves` the host folder gets
    zwx_dog-step1 and -step2 beside zwx_dog (each the run's own file); without it, only zwx_dog."""
    from dataclasses import replace

    from test_train_support import tiny_config, train

    from dreambooth_core.config import ConfigError
    from dreambooth_core.lifecycle import check_destination, deliver

    cfg = tiny_config(tmp_path, max_train_steps=3, checkpointing_steps=1, publish_step_saves=True)
    result, _, _ = train(cfg)
    outputs = {a.name: a.path for a in result.artifacts if a.kind == "lora"}
    assert {"zwx_dog-step1", "zwx_dog-step2", "zwx_dog"} <= set(outputs)

    folders = {"lora": tmp_path / "Lora"}
    delivered = deliver(result.artifacts, cfg, folders)
    assert sorted(d.name for d in delivered) == ["zwx_dog", "zwx_dog-step1", "zwx_dog-step2"]
    assert all(not d.error for d in delivered)
    assert {d.prompt_hint for d in delivered} == {"<lora:zwx_dog:0.8>", "<lora:zwx_dog-step1:0.8>", "<lora:zwx_dog-step2:0.8>"}
    for d in delivered:
        assert Path(d.path) == folders["lora"] / f"{d.name}.safetensors"
        assert Path(d.path).read_bytes() == Path(outputs[d.name]).read_bytes()

    quiet = deliver(result.artifacts, replace(cfg, publish_step_saves=False), {"lora": tmp_path / "Lora2"})
    assert [d.name for d in quiet] == ["zwx_dog"] and [p.name for p in (tmp_path / "Lora2").iterdir()] == ["zwx_dog.safetensors"]

    # Before a second run: a step name already taken refuses, as the final name does.
    for name in ("zwx_dog", "zwx_dog-step1"):
        (folders["lora"] / f"{name}.safetensors").unlink()
    with pytest.raises(OutputExistsError, match="zwx_dog-step2.safetensors already exists"):
        check_destination(cfg, folders)
    with pytest.raises(ConfigError, match="set checkpointing_steps"):
        replace(cfg, checkpointing_steps=0).validate()


def test_a_cancelled_runs_save_is_never_a_step_save(tmp_path):
    from dreambooth_core.lifecycle import step_saves
    from dreambooth_core.events import Artifact

    from test_train_support import tiny_config

    cfg = tiny_config(tmp_path, max_train_steps=6, checkpointing_steps=2, publish_step_saves=True)
    made = [Artifact("lora", str(tmp_path / f"{n}.safetensors"), n, final=False)
            for n in ("zwx_dog-step2", "zwx_dog-step3-cancelled", "other-step2", "zwx_dog-step6")]
    made.append(Artifact("state", str(tmp_path / "step-000002"), "step-000002", final=False))
    assert [a.name for a in step_saves(made, cfg)] == ["zwx_dog-step2"]  # 6 is the final step, saved as zwx_dog
