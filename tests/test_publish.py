import pytest

from dreambooth_core.errors import OutputExistsError
from dreambooth_core.publish import check_name_free, prompt_hint, publish


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
