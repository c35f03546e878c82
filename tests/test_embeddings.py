"""Textual-Inversion embeddings: every host format in, the shared format out, and real use in diffusers."""
import pytest
import torch
from safetensors import safe_open

from dreambooth_core.errors import FamilyError, FormatError, OutputExistsError, UserError
from dreambooth_core.formats.embeddings import (
    Embedding,
    add_tokens,
    expand_prompt,
    load_embedding_into,
    read_embedding,
    write_embedding,
)
from dreambooth_core.models.tiny import tiny_base_model


def _emb(name="zwx", family="sd1", n=3, widths=(32,), seed=0):
    g = torch.Generator().manual_seed(seed)
    return Embedding.from_encoders(name, family, [torch.randn(n, w, generator=g) for w in widths])


def _file_keys(path):
    with safe_open(str(path), framework="pt") as f:
        return sorted(f.keys()), f.metadata()


def test_sd1_round_trip_and_metadata(tmp_path):
    emb = _emb()
    path = write_embedding(emb, tmp_path / "zwx.safetensors", "sd1", {"extra": "yes"}, init_word="dog", step=500,
                           base_model="v1-5-pruned", base_model_hash="0123456789")
    keys, meta = _file_keys(path)
    assert keys == ["emb_params"]  # A1111 reads a safetensors embedding only if it holds exactly one tensor
    assert meta["modelspec.architecture"] == "stable-diffusion-v1/textual-inversion"
    assert meta["modelspec.title"] == meta["modelspec.trigger_phrase"] == "zwx"
    assert meta["modelspec.date"][:2] == "20"
    assert (meta["dreambooth_core.num_vectors"], meta["dreambooth_core.init_word"], meta["dreambooth_core.step"]) == ("3", "dog", "500")
    assert (meta["dreambooth_core.base_model"], meta["dreambooth_core.base_model_hash"], meta["extra"]) == ("v1-5-pruned", "0123456789", "yes")
    back = read_embedding(path)
    assert back.name == "zwx" and back.num_vectors == 3 and list(back.vectors) == ["emb_params"]
    assert torch.equal(back.vectors["emb_params"], emb.vectors["emb_params"])
    assert back.metadata == meta
    with pytest.raises(OutputExistsError):
        write_embedding(emb, path, "sd1")


def test_sdxl_round_trip(tmp_path):
    emb = _emb("zwx_xl", "sdxl", n=2, widths=(768, 1280))
    path = write_embedding(emb, tmp_path / "zwx_xl.safetensors", "sdxl")
    keys, meta = _file_keys(path)
    assert keys == ["clip_g", "clip_l"]
    assert meta["modelspec.architecture"] == "stable-diffusion-xl-v1-base/textual-inversion"
    back = read_embedding(path)
    assert back.is_sdxl and back.compatible_families() == ("sdxl", "sdxl-v")
    for k in ("clip_l", "clip_g"):
        assert torch.equal(back.vectors[k], emb.vectors[k])
    assert back.widths == {"clip_l": 768, "clip_g": 1280}


def test_compatible_families_by_width():
    assert _emb(widths=(768,)).compatible_families() == ("sd1",)
    assert _emb(widths=(1024,)).compatible_families() == ("sd2", "sd2-v")
    assert _emb(widths=(32,)).compatible_families() == ()


@pytest.mark.parametrize("legacy", [True, False])
def test_reads_a1111_pt(tmp_path, legacy):
    vec = torch.randn(4, 768)
    data = {"string_to_token": {"*": 265}, "string_to_param": {"*": vec}, "name": "old-name", "step": 1200,
            "sd_checkpoint": "e1441589a6", "sd_checkpoint_name": "v1-5-pruned"}
    path = tmp_path / "art-style.pt"
    torch.save(data, path, _use_new_zipfile_serialization=not legacy)
    emb = read_embedding(path)
    assert emb.name == "art-style"  # hosts name embeddings after the file, not the stored name
    assert torch.equal(emb.vectors["emb_params"], vec)
    assert emb.metadata == {"name": "old-name", "step": "1200", "sd_checkpoint": "e1441589a6", "sd_checkpoint_name": "v1-5-pruned"}
    assert emb.compatible_families() == ("sd1",)


def test_reads_diffusers_bin_and_single_tensors(tmp_path):
    vec = torch.randn(1024)
    torch.save({"<cat-toy>": vec}, tmp_path / "learned_embeds.bin")
    emb = read_embedding(tmp_path / "learned_embeds.bin")
    assert emb.vectors["emb_params"].shape == (1, 1024) and torch.equal(emb.vectors["emb_params"][0], vec)
    assert emb.metadata == {"dreambooth_core.token": "<cat-toy>"}

    torch.save(torch.ones(2, 768), tmp_path / "bare.pt")
    assert torch.equal(read_embedding(tmp_path / "bare.pt").vectors["emb_params"], torch.ones(2, 768))

    from safetensors.torch import save_file
    save_file({"<tok>": torch.zeros(3, 768)}, str(tmp_path / "diffusers.safetensors"))
    assert read_embedding(tmp_path / "diffusers.safetensors").num_vectors == 3


def test_read_errors(tmp_path):
    from safetensors.torch import save_file

    save_file({"a": torch.zeros(1, 8), "b": torch.zeros(1, 8)}, str(tmp_path / "two.safetensors"))
    with pytest.raises(FormatError, match="not a textual-inversion embedding"):
        read_embedding(tmp_path / "two.safetensors")
    (tmp_path / "broken.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(FormatError, match="not a readable safetensors"):
        read_embedding(tmp_path / "broken.safetensors")
    torch.save({"string_to_param": {"*": torch.zeros(1, 8)}, "obj": FormatError("x")}, tmp_path / "code.pt")
    with pytest.raises(FormatError, match="pickled Python objects"):
        read_embedding(tmp_path / "code.pt")
    with pytest.raises(FormatError, match="not found"):
        read_embedding(tmp_path / "missing.safetensors")


def test_write_guards(tmp_path):
    emb = _emb()
    with pytest.raises(UserError, match=r"\.safetensors"):
        write_embedding(emb, tmp_path / "zwx.pt", "sd1")
    with pytest.raises(UserError, match="trigger word"):
        write_embedding(emb, tmp_path / "other.safetensors", "sd1")
    with pytest.raises(FamilyError, match="clip_l and clip_g"):
        write_embedding(emb, tmp_path / "zwx.safetensors", "sdxl")
    assert not list(tmp_path.iterdir())


def test_expand_prompt():
    assert expand_prompt("a zwx dog", "zwx", 1) == "a zwx dog"
    assert expand_prompt("a zwx dog, zwx.", "zwx", 3) == "a zwx zwx_1 zwx_2 dog, zwx zwx_1 zwx_2."
    assert expand_prompt("zwxy and xzwx stay", "zwx", 2) == "zwxy and xzwx stay"
    once = expand_prompt("photo of zwx", "zwx", 2)
    assert expand_prompt(once, "zwx", 2) == once == "photo of zwx zwx_1"


def test_add_tokens_initialises_from_init_word_and_keeps_other_rows():
    model = tiny_base_model("sd1", seed=0)
    tok, te = model.tokenizers[0], model.text_encoders[0]
    before = te.get_input_embeddings().weight.detach().clone()
    ids = add_tokens(tok, te, "zwx", 3, "dog")
    after = te.get_input_embeddings().weight.detach()
    assert ids == [49408, 49409, 49410] and after.shape[0] == 49411
    assert torch.equal(after[:49408], before)  # every existing row bit-identical
    dog = tok("dog", add_special_tokens=False).input_ids
    assert len(dog) == 1 and all(torch.equal(after[i], before[dog[0]]) for i in ids)
    assert tok(expand_prompt("a zwx", "zwx", 3)).input_ids[1:-1] == [tok.convert_tokens_to_ids("a</w>"), *ids]

    ids2 = add_tokens(tok, te, "qvn", 2, "red car")  # a two-token init phrase is spread over the vectors
    red, car = tok("red car", add_special_tokens=False).input_ids
    assert torch.equal(te.get_input_embeddings().weight[ids2[0]], before[red])
    assert torch.equal(te.get_input_embeddings().weight[ids2[1]], before[car])

    with pytest.raises(UserError, match="already exist"):
        add_tokens(tok, te, "zwx", 1, "dog")
    with pytest.raises(UserError, match="init word"):
        add_tokens(tok, te, "new", 1, "")


def _pipeline(model):
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    return StableDiffusionPipeline(**model.components(), scheduler=DDIMScheduler.from_config(model.scheduler_config),
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)


@pytest.mark.slow
def test_written_embedding_works_in_a_diffusers_pipeline(tmp_path):
    emb = _emb("zwx", n=2, seed=1)
    path = write_embedding(emb, tmp_path / "zwx.safetensors", "sd1")
    other = write_embedding(_emb("zwx", n=2, seed=2), tmp_path / "other" / "zwx.safetensors", "sd1")

    def encode(file, via_diffusers):
        model = tiny_base_model("sd1", seed=0)
        pipe = _pipeline(model)
        if via_diffusers:
            pipe.load_textual_inversion(str(file), token="zwx")
        else:
            load_embedding_into(model, read_embedding(file))
        prompt = pipe.maybe_convert_prompt("a photo of zwx on a beach", pipe.tokenizer)
        assert prompt == "a photo of zwx zwx_1 on a beach" == expand_prompt("a photo of zwx on a beach", "zwx", 2)
        ids = pipe.tokenizer(prompt, padding="max_length", max_length=77, return_tensors="pt").input_ids
        embeds, _ = pipe.encode_prompt(prompt, "cpu", 1, False)
        return pipe, ids[0], embeds[0]

    pipe, ids, out = encode(path, via_diffusers=True)
    _, ids_ours, out_ours = encode(path, via_diffusers=False)
    _, _, out_other = encode(other, via_diffusers=True)
    assert torch.equal(ids, ids_ours) and torch.equal(out, out_ours)  # our loader == diffusers' loader

    positions = [i for i, t in enumerate(ids.tolist()) if t >= 49408]
    assert positions == [4, 5]
    rows = pipe.text_encoder.get_input_embeddings()(ids)
    assert torch.equal(rows[positions], emb.vectors["emb_params"])
    # CLIP's causal attention: positions before the token see nothing of it, the token positions do
    assert torch.equal(out[: positions[0]], out_other[: positions[0]])
    assert all(not torch.allclose(out[p], out_other[p]) for p in positions)

    g = torch.Generator().manual_seed(0)
    latents = pipe("a photo of zwx", num_inference_steps=2, height=16, width=16, output_type="latent", generator=g).images
    assert latents.shape == (1, 4, 8, 8) and torch.isfinite(latents).all()


def test_load_embedding_into_sdxl_sets_both_encoders():
    model = tiny_base_model("sdxl", seed=0)
    widths = [te.get_input_embeddings().weight.shape[-1] for te in model.text_encoders]
    emb = _emb("zwx", "sdxl", n=2, widths=widths)
    ids = load_embedding_into(model, emb)
    for te, tok, key, row_ids in zip(model.text_encoders, model.tokenizers, ("clip_l", "clip_g"), ids):
        assert tok.convert_tokens_to_ids(["zwx", "zwx_1"]) == row_ids
        assert torch.equal(te.get_input_embeddings().weight[row_ids], emb.vectors[key])
    with pytest.raises(FamilyError, match="SDXL embedding"):
        load_embedding_into(tiny_base_model("sd1"), emb)
    with pytest.raises(FamilyError, match="width"):
        load_embedding_into(tiny_base_model("sd2"), _emb("abc", widths=(768,)))
