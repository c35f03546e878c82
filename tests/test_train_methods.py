"""Every method on every family: trains, saves through the formats layer, and the saved
file loaded into a fresh base model reproduces the trained model (and differs from the base)."""
from __future__ import annotations

import pytest
import torch

from test_train_support import FAMILIES, train, tiny_config, unet_output

from dreambooth_core.fileio import read_safetensors_metadata
from dreambooth_core.models.tiny import tiny_base_model

# sd1 runs in the fast suite; the other families take the same path with other shapes
FAMILY_PARAMS = [pytest.param(f, marks=() if f == "sd1" else pytest.mark.slow) for f in FAMILIES]


def only_artifact(result, kind):
    (artifact,) = [a for a in result.outputs if a.kind == kind]
    return artifact


def text_output(model, prompt: str, index: int = 0) -> torch.Tensor:
    tok, te = model.tokenizers[index], model.text_encoders[index]
    ids = tok(prompt, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        return te(ids)[0]


@pytest.mark.parametrize("family", FAMILY_PARAMS)
def test_lora(tmp_path, family):
    from dreambooth_core.formats.lora import read_lora
    from dreambooth_core.formats.lora_tools import merge_loras

    result, rec, trained = train(tiny_config(tmp_path), family)
    artifact = only_artifact(result, "lora")
    assert artifact.prompt_hint == "<lora:zwx_dog:0.8>" and artifact.path.endswith("outputs/zwx_dog.safetensors")
    meta = read_safetensors_metadata(artifact.path)
    assert meta["ss_network_dim"] == "4" and meta["ss_steps"] == "2" and meta["modelspec.trigger_phrase"] == "a photo of zwx dog"
    assert meta["dreambooth_core.method"] == "lora" and meta["ss_sd_model_name"] == f"tiny-{family}"
    weights = read_lora(artifact.path)
    assert all(k.startswith("lora_unet_") for k in weights.modules)

    base = tiny_base_model(family)
    before = unet_output(base)
    merge_loras(base, [(weights, 1.0)])
    after = unet_output(base)
    assert not torch.allclose(before, after, atol=1e-4)
    torch.testing.assert_close(after, unet_output(trained), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("family", [pytest.param("sd1"), pytest.param("sdxl", marks=pytest.mark.slow)])
def test_lora_with_text_encoders_and_conv_layers(tmp_path, family):
    from dreambooth_core.formats.lora import read_lora

    cfg = tiny_config(tmp_path, train_text_encoder=True, conv_rank=2, conv_alpha=1.0)
    result, _, trained = train(cfg, family)
    path = only_artifact(result, "lora").path
    weights = read_lora(path)
    prefixes = {k.split("_text_model")[0] for k in weights.modules if k.startswith("lora_te")}
    assert prefixes == ({"lora_te1", "lora_te2"} if family == "sdxl" else {"lora_te"})
    convs = [m for m in weights.modules.values() if m.is_conv3x3]
    assert convs and all(m.rank == 2 and m.alpha == 1.0 for m in convs)
    assert all(m.rank == 4 and m.alpha == 4.0 for m in weights.modules.values() if not m.is_conv3x3)
    assert '"conv_dim": "2"' in read_safetensors_metadata(path)["ss_network_args"]
    # the text-encoder LoRA learned something
    assert any(m.up.abs().max() > 0 for k, m in weights.modules.items() if k.startswith("lora_te"))


@pytest.mark.parametrize("family", FAMILY_PARAMS)
def test_dreambooth(tmp_path, family):
    from dreambooth_core.models.load import load_base_model

    cfg = tiny_config(tmp_path, method="dreambooth", learning_rate=1e-3, save_dtype="fp32")
    result, _, trained = train(cfg, family)
    artifact = only_artifact(result, "checkpoint")
    assert artifact.prompt_hint == "zwx_dog.safetensors"
    meta = read_safetensors_metadata(artifact.path)
    assert meta["dreambooth_core.method"] == "dreambooth" and meta["dreambooth_core.steps"] == "2"
    loaded = load_base_model(artifact.path, family=family)
    assert loaded.family.name == family
    out = unet_output(loaded)
    assert not torch.allclose(out, unet_output(tiny_base_model(family)), atol=1e-4)
    torch.testing.assert_close(out, unet_output(trained), atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_dreambooth_with_text_encoder_and_diffusers_folder(tmp_path):
    from dreambooth_core.models.load import load_base_model

    cfg = tiny_config(tmp_path, method="dreambooth", learning_rate=1e-3, save_dtype="fp32", train_text_encoder=True,
                      save_formats=["single-file", "diffusers"])
    result, _, trained = train(cfg, "sd1")
    folder = only_artifact(result, "diffusers").path
    loaded = load_base_model(folder)
    base = tiny_base_model("sd1")
    prompt = "a photo of zwx dog"
    assert not torch.allclose(text_output(loaded, prompt), text_output(base, prompt), atol=1e-4)
    torch.testing.assert_close(text_output(loaded, prompt), text_output(trained, prompt), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(unet_output(loaded), unet_output(trained), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", FAMILY_PARAMS)
def test_textual_inversion(tmp_path, family):
    from dreambooth_core.formats.embeddings import load_embedding_into, read_embedding

    cfg = tiny_config(tmp_path, method="textual_inversion", num_vectors=2, init_word="dog", adam_weight_decay=0.1)
    base = tiny_base_model(family)
    original = [te.get_input_embeddings().weight.detach().clone() for te in base.text_encoders]
    result, _, trained = train(cfg, family)
    artifact = only_artifact(result, "embedding")
    assert artifact.prompt_hint == "zwx_dog" and artifact.path.endswith("outputs/zwx_dog.safetensors")
    emb = read_embedding(artifact.path)
    assert emb.name == "zwx_dog" and emb.num_vectors == 2
    assert set(emb.vectors) == ({"clip_l", "clip_g"} if family == "sdxl" else {"emb_params"})

    for i, te in enumerate(trained.text_encoders):
        weight = te.get_input_embeddings().weight
        n = original[i].shape[0]
        # every pre-existing row is bit-identical (weight decay was on); the two new rows learned
        assert torch.equal(weight[:n], original[i])
        dog = original[i][base.tokenizers[i]("dog", add_special_tokens=False).input_ids[0]]
        assert not torch.equal(weight[n], dog) and not torch.equal(weight[n + 1], dog)
        torch.testing.assert_close(emb.per_encoder(trained.family)[i], weight[n:].float())

    # the file, loaded into a fresh base, gives the trained encoder's output under its name
    load_embedding_into(base, emb)
    for i in range(len(base.text_encoders)):
        torch.testing.assert_close(text_output(base, "a photo of zwx_dog zwx_dog_1", i),
                                   text_output(trained, "a photo of zwx zwx_1", i))
        assert not torch.allclose(text_output(base, "a photo of zwx_dog zwx_dog_1", i), text_output(base, "a photo of dog dog", i))


def test_textual_inversion_learns_one_embedding_per_concept_token(tmp_path):
    """Two concepts, two tokens: each gets its own vectors (from its own class noun) and its
    own file named after it; both train, and each file gives the trained encoder's output."""
    from dreambooth_core.formats.embeddings import load_embedding_into, read_embedding
    from test_train_support import make_images

    dirs = [make_images(tmp_path / name, n=2, seed=i) for i, name in enumerate(("dogs", "cats"))]
    cfg = tiny_config(tmp_path, method="textual_inversion", num_vectors=2, max_train_steps=3, concepts=[
        {"image_dir": str(dirs[0]), "token": "zwx", "class_noun": "dog", "repeats": 2},
        {"image_dir": str(dirs[1]), "token": "qkv", "class_noun": "cat"},
    ])
    base = tiny_base_model("sd1")
    result, _, trained = train(cfg)
    artifacts = {a.name: a for a in result.outputs if a.kind == "embedding"}
    assert set(artifacts) == {"zwx_dog_zwx", "zwx_dog_qkv"}
    assert all(a.path.endswith(f"outputs/{name}.safetensors") and a.prompt_hint == name for name, a in artifacts.items())

    tok, weight = base.tokenizers[0], base.text_encoders[0].get_input_embeddings().weight
    n = weight.shape[0]
    trained_rows = trained.text_encoders[0].get_input_embeddings().weight[n:]
    assert trained_rows.shape[0] == 4
    for i, (token, init) in enumerate((("zwx", "dog"), ("qkv", "cat"))):
        emb = read_embedding(artifacts[f"zwx_dog_{token}"].path)
        assert emb.num_vectors == 2 and read_safetensors_metadata(artifacts[f"zwx_dog_{token}"].path)["dreambooth_core.token"] == token
        vectors = emb.vectors["emb_params"]
        torch.testing.assert_close(vectors, trained_rows[2 * i : 2 * i + 2].float())
        start, other = (weight[tok(w, add_special_tokens=False).input_ids[0]] for w in (init, {"dog": "cat", "cat": "dog"}[init]))
        assert all(not torch.equal(row, start) for row in vectors)      # both tokens trained...
        assert all((row - start).norm() < (row - other).norm() for row in vectors)  # ...from their own class
        load_embedding_into(base, emb, token=token)
    # the files, loaded into a fresh base under their tokens, give the trained encoder's output
    prompt = "a photo of zwx zwx_1 dog and qkv qkv_1 cat"
    torch.testing.assert_close(text_output(base, prompt), text_output(trained, prompt))


@pytest.mark.parametrize("family", FAMILY_PARAMS)
def test_hypernetwork(tmp_path, family):
    from dreambooth_core.formats.hypernetwork import apply_hypernetwork, load_hypernetwork

    cfg = tiny_config(tmp_path, method="hypernetwork", learning_rate=1e-3)
    result, _, trained = train(cfg, family)
    artifact = only_artifact(result, "hypernetwork")
    assert artifact.prompt_hint == "<hypernet:zwx_dog:1>" and artifact.path.endswith("outputs/zwx_dog.pt")
    hn = load_hypernetwork(artifact.path)
    assert hn.name == "zwx_dog" and hn.step == 2 and hn.sd_checkpoint_name == f"tiny-{family}"
    base = tiny_base_model(family)
    before = unet_output(base)
    apply_hypernetwork(base.unet, hn, 1.0)
    after = unet_output(base)
    assert not torch.allclose(before, after, atol=1e-5)
    torch.testing.assert_close(after, unet_output(trained), atol=1e-5, rtol=1e-5)


def test_lora_also_in_peft_layout(tmp_path):
    from dreambooth_core.formats.lora import read_lora

    cfg = tiny_config(tmp_path, save_formats=["kohya", "peft"], train_text_encoder=True)
    result, _, _ = train(cfg)
    kohya, peft = [read_lora(a.path, family="sd1") for a in result.outputs]
    assert kohya.modules.keys() == peft.modules.keys()
    for key, mod in kohya.modules.items():
        assert torch.equal(mod.down, peft.modules[key].down) and torch.equal(mod.up, peft.modules[key].up)
        assert mod.alpha == peft.modules[key].alpha
    assert result.outputs[1].path.endswith("outputs/zwx_dog-peft/pytorch_lora_weights.safetensors")


def test_bf16_runs_load_frozen_parts_in_bf16_and_keep_what_is_saved_exact(tmp_path, monkeypatch):
    """LoRA: the frozen base is loaded in bf16 (no fp32 copy at the peak), the LoRA trains in
    fp32. DreamBooth: everything it saves again stays fp32, so the untouched VAE is exact."""
    from test_train_support import Recorder

    from dreambooth_core.models import load as model_load
    from dreambooth_core.models.load import load_base_model
    from dreambooth_core.models.save import save_single_file
    from dreambooth_core.train.loop import Trainer

    loaded_dtypes = []

    def recording_load(path, family=None, dtype="fp32", **kw):
        model = load_base_model(path, family=family, dtype=dtype, **kw)
        loaded_dtypes.append({n: m.dtype for n, m in (("unet", model.unet), ("vae", model.vae))})
        return model

    monkeypatch.setattr(model_load, "load_base_model", recording_load)

    base = tiny_base_model("sd1", seed=7)
    path = save_single_file(base, tmp_path / "base.safetensors", dtype="fp32")
    runs = {}
    for method in ("lora", "dreambooth"):
        cfg = tiny_config(tmp_path / method, method=method, base_model=str(path), mixed_precision="bf16",
                          save_dtype="fp32", learning_rate=1e-3)
        rec = Recorder()
        trainer = Trainer(cfg, rec, rec.cancel)
        runs[method] = (trainer.run(), trainer)
    assert loaded_dtypes == [{"unet": torch.bfloat16, "vae": torch.bfloat16}, {"unet": torch.float32, "vae": torch.float32}]
    lora_trainer = runs["lora"][1]
    assert lora_trainer.model.text_encoders[0].dtype == torch.bfloat16
    frozen = [p for n, p in lora_trainer.model.unet.named_parameters() if "lora_" not in n]
    trained = [p for n, p in lora_trainer.model.unet.named_parameters() if "lora_" in n]
    assert frozen and all(p.dtype == torch.bfloat16 for p in frozen)
    assert trained and all(p.dtype == torch.float32 for p in trained)

    saved = load_base_model(only_artifact(runs["dreambooth"][0], "checkpoint").path)
    for a, b in zip(saved.vae.state_dict().values(), base.vae.state_dict().values()):
        assert torch.equal(a, b)
