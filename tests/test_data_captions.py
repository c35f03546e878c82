"""Tag-caption variation (shuffle, keep_tokens, caption/tag dropout), long prompts in
75-token chunks as A1111 encodes them, clip skip, and aspect-ratio buckets."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dreambooth_core.data.captions import CaptionOptions, vary_caption
from dreambooth_core.data.dataset import numpy_rng

TAGS = "zwx, 1girl, red hair, blue eyes, smile, outdoors, tree, sky, cloud, dress"


def tags(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


# ---- captions --------------------------------------------------------------------------
def test_shuffle_keeps_the_leading_tokens_and_permutes_the_rest():
    opts = CaptionOptions(shuffle=True, keep_tokens=2)
    outs = [vary_caption(TAGS, opts, numpy_rng(0, "caption", m)) for m in range(50)]
    for out in outs:
        assert tags(out)[:2] == ["zwx", "1girl"]
        assert sorted(tags(out)[2:]) == sorted(tags(TAGS)[2:])
    assert len({o for o in outs}) > 40                   # really shuffled
    assert vary_caption(TAGS, opts, numpy_rng(0, "caption", 7)) == outs[7]   # same draw, same caption
    assert vary_caption(TAGS, CaptionOptions(), numpy_rng(0)) == TAGS        # nothing asked: untouched


def test_tag_dropout_drops_only_flexible_tags_at_its_rate_and_keeps_the_shuffle():
    rate = 0.3
    shuffled = CaptionOptions(shuffle=True, keep_tokens=1)
    both = CaptionOptions(shuffle=True, keep_tokens=1, tag_dropout_rate=rate)
    dropped = Counter()
    n = 2000
    for m in range(n):
        full = tags(vary_caption(TAGS, shuffled, numpy_rng(1, m)))
        thin = tags(vary_caption(TAGS, both, numpy_rng(1, m)))
        assert thin[0] == "zwx"
        # the kept tags come in the order the shuffle alone gives: dropout does not reshuffle
        assert thin == [t for t in full if t in thin]
        dropped.update(set(full) - set(thin))
    assert "zwx" not in dropped
    for tag in tags(TAGS)[1:]:
        assert abs(dropped[tag] / n - rate) < 0.05, (tag, dropped[tag] / n)
    # without shuffling, dropout keeps the caption's order
    kept = tags(vary_caption(TAGS, CaptionOptions(tag_dropout_rate=0.5), numpy_rng(2)))
    assert kept == [t for t in tags(TAGS) if t in kept] and len(kept) < len(tags(TAGS))


def test_caption_dropout_empties_the_caption_at_its_rate():
    opts = CaptionOptions(caption_dropout_rate=0.25, shuffle=True)
    outs = [vary_caption(TAGS, opts, numpy_rng(3, m)) for m in range(2000)]
    share = sum(o == "" for o in outs) / len(outs)
    assert abs(share - 0.25) < 0.04
    assert all(sorted(tags(o)) == sorted(tags(TAGS)) for o in outs if o)


def test_other_separators_and_keep_tokens_beyond_the_tags():
    opts = CaptionOptions(shuffle=True, separator="|", keep_tokens=9)
    out = vary_caption("a | b | c", opts, numpy_rng(0))
    assert out == "a| b| c"
    out = vary_caption("a | b | c | d | e", CaptionOptions(shuffle=True, separator="|"), numpy_rng(4))
    assert sorted(t.strip() for t in out.split("|")) == ["a", "b", "c", "d", "e"]


def test_varied_prompts_are_the_same_for_any_number_of_processes(tmp_path):
    from dreambooth_core.data.dataset import Example, TrainingData

    opts = CaptionOptions(shuffle=True, keep_tokens=1, tag_dropout_rate=0.2)
    examples = [Example(Path(f"{i}.png"), f"zwx, tag{i}a, tag{i}b, tag{i}c", False, (64, 64), (64, 64), captions=opts)
                for i in range(4)]
    one = TrainingData(examples, [], 4, 1, 5, True, False)
    two = TrainingData(examples, [], 2, 2, 5, True, False)
    for m in range(3):
        whole = [one.prompt("instance", m, it) for it in one.items("instance", m, 0)]
        halves = [two.prompt("instance", m, it) for p in range(2) for it in two.items("instance", m, p)]
        assert whole == halves
        assert all(p.startswith("zwx") for p in whole)


def test_caption_extension_picks_the_caption_file(tmp_path):
    from dreambooth_core.data.images import scan_images

    Image.new("RGB", (64, 64), (1, 2, 3)).save(tmp_path / "a.png")
    (tmp_path / "a.txt").write_text("from txt")
    (tmp_path / "a.tags").write_text("from tags")
    assert scan_images(tmp_path, min_size=1)[0].caption == "from txt"
    assert scan_images(tmp_path, min_size=1, caption_extension=".tags")[0].caption == "from tags"


# ---- long prompts ----------------------------------------------------------------------
def a1111_encode(te, tokenizer, prompt: str, clip_skip: int = 1) -> torch.Tensor:
    """A1111's FrozenCLIPEmbedderWithCustomWords on a plain prompt (no emphasis, no
    embeddings, comma_padding_backtrack 20): chunks of 75 built token by token, each
    [start] + tokens + [end] padded with the end token, encoded one by one, hstacked."""
    ids = tokenizer(prompt, truncation=False, add_special_tokens=False).input_ids
    comma = tokenizer.get_vocab()[",</w>"]
    start, end = tokenizer.bos_token_id, tokenizer.eos_token_id
    chunks, chunk, last_comma = [], [], -1

    def next_chunk():
        nonlocal chunk, last_comma
        chunks.append([start] + chunk + [end] * (75 - len(chunk)) + [end])
        chunk, last_comma = [], -1

    for token in ids:
        if token == comma:
            last_comma = len(chunk)
        elif len(chunk) == 75 and last_comma != -1 and len(chunk) - last_comma <= 20:
            moved = chunk[last_comma + 1:]
            chunk = chunk[: last_comma + 1]
            next_chunk()
            chunk = moved
        if len(chunk) == 75:
            next_chunk()
        chunk.append(token)
    if chunk or not chunks:
        next_chunk()
    zs = []
    with torch.no_grad():
        for c in chunks:
            out = te(torch.tensor([c]), output_hidden_states=True)
            zs.append(te.final_layer_norm(out.hidden_states[-clip_skip]) if clip_skip > 1 else out.last_hidden_state)
    return torch.hstack(zs)


def long_caption(tokenizer, n_tokens: int = 200) -> str:
    words = "red hair, blue eyes, long sleeves, white dress, standing, looking at viewer, outdoors, cherry blossoms, " \
            "smile, holding umbrella, rain, night, city lights, reflection, puddle, "
    text = "zwx, 1girl"
    while len(tokenizer(text, add_special_tokens=False).input_ids) < n_tokens:
        text += ", " + words.split(", ")[len(text) % 14]
    return text


@pytest.mark.parametrize("clip_skip", [1, 2])
def test_a_200_token_caption_is_encoded_in_chunks_as_a1111_does(clip_skip):
    from dreambooth_core.models.tiny import tiny_base_model
    from dreambooth_core.train.prompts import TextEncoding, encode_prompts

    model = tiny_base_model("sd1")
    tok, te = model.tokenizers[0], model.text_encoders[0]
    prompt = long_caption(tok)
    assert 190 <= len(tok(prompt, add_special_tokens=False).input_ids) <= 225
    with torch.no_grad():
        ours = encode_prompts(model, [prompt], TextEncoding(225, clip_skip)).hidden
    ref = a1111_encode(te, tok, prompt, clip_skip)
    assert ours.shape == ref.shape == (1, 3 * 77, te.config.hidden_size)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-6)
    # 150 keeps the first two chunks; 75 is the plain 77-token cut every pipeline makes
    with torch.no_grad():
        two = encode_prompts(model, [prompt], TextEncoding(150, clip_skip)).hidden
        one = encode_prompts(model, [prompt], TextEncoding(75, clip_skip)).hidden
        cut = tok(prompt, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
        out = te(cut, output_hidden_states=True)
        plain = te.final_layer_norm(out.hidden_states[-clip_skip]) if clip_skip > 1 else out.last_hidden_state
    torch.testing.assert_close(two, ref[:, : 2 * 77], rtol=0, atol=1e-6)
    torch.testing.assert_close(one, plain, rtol=0, atol=1e-6)


def test_a_chunk_breaks_after_a_nearby_comma():
    from dreambooth_core.data.long_prompts import split_chunks

    def split(ids, max_chunks):
        return [chunk.ids for chunk in split_chunks([(ids, 1.0)], comma, max_chunks)]

    comma = -1
    ids = list(range(70)) + [comma] + list(range(100, 110))     # a comma 5 tokens before the 75th
    chunks = split(ids, 3)
    assert chunks == [ids[:71], ids[71:]]
    far = list(range(40)) + [comma] + list(range(100, 140))     # comma 35 back: a plain cut
    assert split(far, 3) == [far[:75], far[75:]]
    assert split(far, 1) == [far[:75]]
    assert split([], 3) == [[]]


def test_short_prompts_encode_as_the_diffusers_pipeline_does_and_batches_pad_with_empty_chunks():
    from dreambooth_core.models.tiny import tiny_base_model
    from dreambooth_core.sample import build_pipeline
    from dreambooth_core.train.prompts import PromptCache, TextEncoding, encode_prompts

    model = tiny_base_model("sd1")
    tok = model.tokenizers[0]
    short, longer = "a photo of zwx dog", long_caption(tok, 120)
    with torch.no_grad():
        ours = encode_prompts(model, [short], TextEncoding()).hidden
        theirs, _ = build_pipeline(model).encode_prompt(short, "cpu", 1, False)
        torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)
        both = encode_prompts(model, [short, longer], TextEncoding()).hidden
        empty = encode_prompts(model, [""], TextEncoding()).hidden
    assert both.shape[1] == 2 * 77
    torch.testing.assert_close(both[0], torch.cat([ours[0], empty[0]]), rtol=0, atol=1e-6)
    # the frozen cache pads the same way, without the text encoder
    cache = PromptCache(model.tokenizers, [short, longer], encoding=TextEncoding())
    cache.freeze(model.text_encoders, model.family)
    torch.testing.assert_close(cache.get([short, longer], [], model.family).hidden, both, rtol=0, atol=1e-6)


def test_sdxl_long_prompts_take_the_pooled_output_of_the_first_chunk():
    from dreambooth_core.models.tiny import tiny_base_model
    from dreambooth_core.train.prompts import TextEncoding, encode_prompts, encode_rows, tokenize

    model = tiny_base_model("sdxl")
    prompt = long_caption(model.tokenizers[0], 100)
    rows = tokenize(model.tokenizers, prompt, TextEncoding(150))
    with torch.no_grad():
        full = encode_prompts(model, [prompt], TextEncoding(150))
        first = encode_rows(model.text_encoders, model.tokenizers, model.family, [[r[:1] for r in rows]])
    assert [len(r) for r in rows] == [2, 2] and rows[1][0].ids[-1] == 0     # OpenCLIP-G pads with '!'
    assert full.hidden.shape == (1, 2 * 77, first.hidden.shape[-1])
    torch.testing.assert_close(full.hidden[:, :77], first.hidden, rtol=0, atol=1e-6)
    torch.testing.assert_close(full.pooled, first.pooled, rtol=0, atol=1e-6)



# ---- A1111 emphasis and BREAK ---------------------------------------------------------
@pytest.mark.parametrize("text, parsed", [
    # the examples A1111's parse_prompt_attention documents
    ("normal text", [("normal text", 1.0)]),
    ("an (important) word", [("an ", 1.0), ("important", 1.1), (" word", 1.0)]),
    ("(unbalanced", [("unbalanced", 1.1)]),
    (r"\(literal\]", [("(literal]", 1.0)]),
    ("(unnecessary)(parens)", [("unnecessaryparens", 1.1)]),
    ("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
     [("a ", 1.0), ("house", 1.1 * 1.1 * 1.3), (" ", 1.1), ("on", 1.0), (" a ", 1.1), ("hill", 0.55),
      (", sun, ", 1.1), ("sky", 1.1 ** 4), (".", 1.1)]),
    # BREAK is a marker of weight -1 (inside brackets it is scaled, so no longer a break)
    ("red hair BREAK blue eyes", [("red hair", 1.0), ("BREAK", -1.0), ("blue eyes", 1.0)]),
    ("(a BREAK b)", [("a", 1.1), ("BREAK", -1.1), ("b", 1.1)]),
    ("miku (vocaloid:", [("miku ", 1.0), ("vocaloid:", 1.1)]),
    ("", [("", 1.0)]),
])
def test_emphasis_is_read_as_a1111_reads_it(text, parsed):
    from dreambooth_core.data.long_prompts import is_plain, parse_emphasis

    got = parse_emphasis(text)
    assert [t for t, _ in got] == [t for t, _ in parsed]
    assert [w for _, w in got] == pytest.approx([w for _, w in parsed])
    assert is_plain(text) == (got == [(text, 1.0)])


def test_weights_and_break_encode_as_a1111_does():
    """A1111's tokenize_line + "Original" emphasis restated: each parsed fragment tokenised
    on its own, BREAK ends the chunk, each token's output row times its weight, then the
    chunk rescaled to its unweighted mean."""
    from dreambooth_core.models.tiny import tiny_base_model
    from dreambooth_core.train.prompts import TextEncoding, encode_prompts

    model = tiny_base_model("sd1")
    tok, te = model.tokenizers[0], model.text_encoders[0]
    prompt = "a photo of (zwx:1.5) dog BREAK [red] hair"

    def ids(text):
        return tok(text, add_special_tokens=False).input_ids

    start, end = tok.bos_token_id, tok.eos_token_id
    first = [(ids("a photo of "), 1.0), (ids("zwx"), 1.5), (ids(" dog"), 1.0)]
    second = [(ids("red"), 1 / 1.1), (ids(" hair"), 1.0)]
    zs = []
    with torch.no_grad():
        for fragments in (first, second):
            tokens = [t for piece, _ in fragments for t in piece]
            weights = [w for piece, w in fragments for _ in piece]
            pad = 75 - len(tokens)
            z = te(torch.tensor([[start, *tokens, end] + [end] * pad])).last_hidden_state
            mean = z.mean()
            z = z * torch.tensor([1.0, *weights, 1.0] + [1.0] * pad)[None, :, None]
            zs.append(z * (mean / z.mean()))
        ref = torch.hstack(zs)
        ours = encode_prompts(model, [prompt], TextEncoding(emphasis=True)).hidden
        literal = encode_prompts(model, [prompt], TextEncoding()).hidden
        pipeline = build_pipeline_encode(model, prompt)
    assert ours.shape == ref.shape == (1, 2 * 77, te.config.hidden_size)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-6)
    # emphasis off (training captions without weighted_captions): the brackets are caption text
    torch.testing.assert_close(literal, pipeline, rtol=0, atol=1e-6)


def build_pipeline_encode(model, prompt: str) -> torch.Tensor:
    from dreambooth_core.sample import build_pipeline

    return build_pipeline(model).encode_prompt(prompt, "cpu", 1, False)[0]


def test_previews_read_emphasis_and_training_prompts_only_with_weighted_captions(tmp_path):
    from dreambooth_core.models.tiny import tiny_base_model
    from dreambooth_core.sample import build_pipeline, prompt_inputs
    from test_train_support import tiny_config

    cfg = tiny_config(tmp_path)
    assert not cfg.text_encoding.emphasis and cfg.preview_encoding.emphasis
    assert tiny_config(tmp_path, weighted_captions=True).text_encoding.emphasis
    model = tiny_base_model("sd1")
    pipe = build_pipeline(model)
    # a plain preview prompt stays with the pipeline's own encoding; a weighted one does not
    assert prompt_inputs(model, pipe, ["a photo of zwx dog"], "", cfg.preview_encoding) is None
    assert prompt_inputs(model, pipe, ["a photo of (zwx:1.3) dog"], "", cfg.text_encoding) is None
    weighted = prompt_inputs(model, pipe, ["a photo of (zwx:1.3) dog"], "", cfg.preview_encoding)
    with torch.no_grad():
        plain = build_pipeline_encode(model, "a photo of zwx dog")
    assert weighted["prompt_embeds"].shape == plain.shape
    assert not torch.allclose(weighted["prompt_embeds"], plain, atol=1e-4)

# ---- buckets ---------------------------------------------------------------------------
def photo(folder: Path, name: str, size: tuple[int, int], seed: int) -> None:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(folder / name)


def test_mixed_photos_batch_by_bucket_without_upscaling(tmp_path):
    from dreambooth_core.data.dataset import TrainingData, make_examples
    from dreambooth_core.data.images import scan_images

    sizes = {"portrait_small": (48, 60), "portrait_big": (90, 160), "landscape_big": (160, 90),
             "landscape_small": (60, 44), "square_big": (120, 120), "square_small": (40, 40)}
    for i, (name, size) in enumerate(sizes.items()):
        photo(tmp_path, f"{name}.png", size, i)
    records = scan_images(tmp_path, min_size=1)
    examples = make_examples(records, lambda r: "x", False, resolution=64, bucketing=True, no_upscale=True)
    bucket = {e.path.stem: e.bucket for e in examples}
    # small pictures keep their size, cut to the 8 px grid; large ones fit the 64x64 area
    assert bucket["portrait_small"] == (48, 56) and bucket["landscape_small"] == (56, 40) and bucket["square_small"] == (40, 40)
    assert bucket["square_big"] == (64, 64)
    pw, ph = bucket["portrait_big"]
    assert ph > pw and pw * ph <= 64 * 64 and bucket["landscape_big"] == (ph, pw)
    for e in examples:
        assert e.bucket[0] <= e.size[0] and e.bucket[1] <= e.size[1]      # never upscaled
    data = TrainingData(examples, [], batch_size=2, num_processes=1, seed=0, center_crop=False, random_flip=False)
    shapes = set()
    for m in range(data.sets["instance"].plan.batches_per_epoch):
        items = data.items("instance", m, 0)
        assert len({it.example.bucket for it in items}) == 1                # one bucket per batch
        pixels = [data._prepare(it, numpy_rng(0, m, it.slot)).pixels for it in items]
        w, h = items[0].example.bucket
        assert all(tuple(p.shape) == (3, h, w) for p in pixels)
        shapes.add((w, h))
    assert len(shapes) == 6
    # a small picture's pixels are a crop of the original, not a resampled copy
    small = next(e for e in examples if e.path.stem == "square_small")
    original = np.asarray(Image.open(small.path), dtype=np.float32) / 127.5 - 1
    prepared = data._prepare(data.items("instance", 0, 0)[0].__class__(0, small, 0, False), numpy_rng(0)).pixels
    np.testing.assert_allclose(prepared.permute(1, 2, 0).numpy(), original, atol=1e-6)
    # asked to upscale, the small ones grow to the full area
    upscaled = make_examples(records, lambda r: "x", False, resolution=64, bucketing=True, no_upscale=False)
    assert {e.path.stem: e.bucket for e in upscaled}["square_small"] == (64, 64)


def test_bucketing_is_on_by_default_and_the_table_is_reported(tmp_path):
    from dreambooth_core.config import TrainConfig
    from dreambooth_core.models.tiny import tiny_base_model
    from test_train_support import tiny_config, train

    assert TrainConfig().enable_bucketing and TrainConfig().bucket_no_upscale
    folder = tmp_path / "photos"
    folder.mkdir()
    for i, size in enumerate([(48, 40), (48, 40), (64, 96)]):
        photo(folder, f"img{i}.png", size, i)
    (folder / "img0.txt").write_text(long_caption(tiny_base_model("sd1").tokenizers[0], 150))
    cfg = tiny_config(tmp_path, instance_data_dir=str(folder), shuffle_caption=True, keep_tokens=1, tag_dropout_rate=0.1)
    result, rec, _ = train(cfg)
    assert result.status == "completed"
    table = next(e.message for e in rec.of("log") if e.message.startswith("instance buckets"))
    entries = table.split("images): ", 1)[1].split(", ")
    assert "48x40: 2" in entries and len(entries) == 2, table     # the portrait one has a bucket of its own


# ---- validation and class images use the same encoding ---------------------------------------
@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_sampling_encodes_long_prompts_in_chunks_and_short_ones_as_before(family):
    from dreambooth_core.models.tiny import tiny_base_model
    from dreambooth_core.sample import build_pipeline, generate, prompt_inputs
    from dreambooth_core.train.prompts import TextEncoding

    model = tiny_base_model(family)
    long = long_caption(model.tokenizers[0], 120)

    def draw(prompt, encoding):
        return np.asarray(generate(model, [prompt], steps=2, width=64, height=64, encoding=encoding)[0], dtype=np.int16)

    assert prompt_inputs(model, build_pipeline(model), ["a photo"], "", TextEncoding()) is None   # the pipeline's own path
    inputs = prompt_inputs(model, build_pipeline(model), [long], "", TextEncoding())
    assert inputs["prompt_embeds"].shape[1] == inputs["negative_prompt_embeds"].shape[1] == 2 * 77
    assert np.array_equal(draw("a photo", TextEncoding()), draw("a photo", None))
    assert not np.array_equal(draw(long, TextEncoding(225)), draw(long, TextEncoding(75)))
    assert not np.array_equal(draw("a photo", TextEncoding(clip_skip=3)), draw("a photo", None))
