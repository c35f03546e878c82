"""Several concepts per run: native `concepts` tables, kohya's dataset TOML read into the
same concepts, repeats in the batch order, per-concept prior weights, and a run with them."""
from __future__ import annotations

from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest

from dreambooth_core.config import load_config
from dreambooth_core.data.concepts import concept_runs
from dreambooth_core.errors import ConfigError
from test_train_support import make_images, tiny_config, train

KOHYA = """
[general]
shuffle_caption = true
keep_tokens = 1
caption_extension = ".txt"
min_bucket_reso = 256
max_bucket_reso = 1024

[[datasets]]
resolution = 64
batch_size = 2
enable_bucket = true
bucket_no_upscale = true

  [[datasets.subsets]]
  image_dir = '{a}'
  class_tokens = 'zwx girl'
  num_repeats = 10

  [[datasets.subsets]]
  image_dir = '{b}'
  class_tokens = 'qkv style'
  num_repeats = 2
  keep_tokens = 2
  caption_tag_dropout_rate = 0.1

  [[datasets.subsets]]
  is_reg = true
  image_dir = '{reg}'
  class_tokens = 'girl'
"""


def folders(tmp_path: Path) -> dict[str, str]:
    return {name: str(make_images(tmp_path / name, n=n, seed=i, captions=True))
            for i, (name, n) in enumerate((("a", 2), ("b", 3), ("reg", 4)))}


def test_a_kohya_dataset_toml_reads_into_the_same_concepts_as_the_native_config(tmp_path):
    dirs = folders(tmp_path)
    toml = tmp_path / "dataset.toml"
    toml.write_text(KOHYA.format(**dirs))
    from_kohya = load_config(overrides={"dataset_config": str(toml)}, check_paths=False)
    common = dict(caption_extension=".txt", shuffle_caption=True, caption_separator=",", caption_dropout_rate=0.0)
    native = load_config(overrides=dict(
        resolution=64, train_batch_size=2, enable_bucketing=True, bucket_no_upscale=True, random_flip=False,
        center_crop=True, with_prior_preservation=True,
        concepts=[
            dict(image_dir=dirs["a"], token="zwx", class_noun="girl", instance_prompt="{token} {class_noun}", repeats=10,
                 keep_tokens=1, tag_dropout_rate=0.0, **common),
            dict(image_dir=dirs["b"], token="qkv", class_noun="style", instance_prompt="{token} {class_noun}", repeats=2,
                 keep_tokens=2, tag_dropout_rate=0.1, **common),
            dict(image_dir=dirs["reg"], is_reg=True, class_prompt="girl", repeats=1, keep_tokens=1, tag_dropout_rate=0.0, **common),
        ]), check_paths=False)
    assert replace(from_kohya, concepts=[]) == replace(native, concepts=[])     # the run-level settings
    runs = concept_runs(native)
    assert concept_runs(from_kohya) == runs                                      # the concepts and their configs
    assert [r.concept.repeats for r in runs] == [10, 2, 1] and [r.concept.is_reg for r in runs] == [False, False, True]
    assert runs[0].config.instance_prompt_text == "zwx girl" and runs[1].config.caption_options.keep_tokens == 2
    assert runs[2].config.class_prompt_text == "girl"


@pytest.mark.parametrize("extra,message", [
    ("  colour_aug = true\n", "unknown key 'colour_aug'"),
    ("  color_aug = true\n", "color_aug = True is not supported"),
    ("  metadata_file = 'x.json'\n", "metadata_file"),
])
def test_kohya_keys_this_trainer_cannot_honour_are_named(tmp_path, extra, message):
    dirs = folders(tmp_path)
    text = KOHYA.format(**dirs).replace("  num_repeats = 10\n", "  num_repeats = 10\n" + extra)
    toml = tmp_path / "dataset.toml"
    toml.write_text(text)
    with pytest.raises(ConfigError, match=message) as info:
        load_config(overrides={"dataset_config": str(toml)}, check_paths=False)
    assert "datasets[0].subsets[0]" in str(info.value)


def test_native_concepts_are_checked_key_by_key(tmp_path):
    with pytest.raises(ConfigError, match=r"concepts\[0\]: unknown key\(s\) 'imagedir'"):
        load_config(overrides={"concepts": [{"imagedir": "x"}]}, check_paths=False)
    with pytest.raises(ConfigError, match=r"concepts\[1\] \(b\): keep_tokens"):
        load_config(overrides={"concepts": [{"image_dir": "a"}, {"image_dir": "b", "keep_tokens": -1}]}, check_paths=False)
    with pytest.raises(ConfigError, match="with_prior_preservation"):
        load_config(overrides={"concepts": [{"image_dir": "a"}, {"image_dir": "r", "is_reg": True}]}, check_paths=False)


def test_a_single_concept_config_is_its_own_concept(tmp_path):
    cfg = tiny_config(tmp_path)
    (run,) = concept_runs(cfg)
    assert run.config is cfg and run.concept.image_dir == cfg.instance_data_dir and run.concept.repeats == 1


def test_repeats_weight_the_batch_order_per_epoch():
    from dreambooth_core.data.dataset import BatchPlan

    plan = BatchPlan([(64, 64)] * 3, global_batch=1, seed=0, role="instance", repeats=[3, 1, 1])
    assert plan.batches_per_epoch == 5
    seen = Counter(plan.batch(m)[0] for m in range(plan.batches_per_epoch))
    assert seen == {0: 3, 1: 1, 2: 1}


def test_a_run_with_two_concepts_repeats_and_a_reg_set(tmp_path):
    dirs = folders(tmp_path)
    cfg = tiny_config(tmp_path, with_prior_preservation=True, max_train_steps=3, prior_loss_weight=1.0, concepts=[
        {"image_dir": dirs["a"], "token": "zwx", "class_noun": "dog", "repeats": 2},
        {"image_dir": dirs["b"], "token": "qkv", "class_noun": "cat", "shuffle_caption": True},
        {"image_dir": dirs["reg"], "is_reg": True, "class_prompt": "a photo of a dog", "prior_loss_weight": 0.5},
    ])
    result, rec, _ = train(cfg)
    assert result.status == "completed"
    log = " | ".join(e.message for e in rec.of("log"))
    assert "5 instance image(s), 4 class image(s)" in log


def test_prior_weights_per_concept_scale_only_their_class_losses(tmp_path, monkeypatch):
    """A reg concept's prior_loss_weight scales its class term, nothing else."""
    from dreambooth_core.train.loop import Trainer

    dirs = folders(tmp_path)
    seen = []
    original = Trainer._loss

    def spy(self, m):
        parts = original(self, m)
        seen.append(float(parts.total - parts.instance))
        return parts

    monkeypatch.setattr(Trainer, "_loss", spy)
    for weight in (0.25, 1.0):
        cfg = tiny_config(tmp_path, with_prior_preservation=True, max_train_steps=1, overwrite=True, concepts=[
            {"image_dir": dirs["a"], "token": "zwx", "class_noun": "dog"},
            {"image_dir": dirs["reg"], "is_reg": True, "class_prompt": "a dog", "prior_loss_weight": weight},
        ])
        train(cfg)
    assert seen[1] > 0 and seen[0] == pytest.approx(0.25 * seen[1], rel=1e-5)


def test_lora_metadata_carries_kohya_dataset_facts_without_paths(tmp_path):
    import json

    from safetensors import safe_open

    dirs = folders(tmp_path)
    (Path(dirs["a"]) / "img0.txt").write_text("zwx, Red Hair, smile")
    (Path(dirs["a"]) / "img1.txt").write_text("zwx, red hair")
    cfg = tiny_config(tmp_path, with_prior_preservation=True, max_train_steps=3, clip_skip=2, max_token_length=150, concepts=[
        {"image_dir": dirs["a"], "token": "zwx", "class_noun": "dog", "repeats": 3},
        {"image_dir": dirs["reg"], "is_reg": True, "class_prompt": "a dog", "repeats": 2},
    ])
    result, _, _ = train(cfg)
    lora = next(a for a in result.artifacts if a.kind == "lora" and a.final)
    with safe_open(lora.path, "pt") as f:
        meta = f.metadata()
    assert json.loads(meta["ss_tag_frequency"])["a"] == {"zwx": 2, "red hair": 2, "smile": 1}
    assert json.loads(meta["ss_dataset_dirs"]) == {"a": {"n_repeats": 3, "img_count": 2}, "reg": {"n_repeats": 2, "img_count": 4}}
    assert (meta["ss_num_train_images"], meta["ss_num_reg_images"]) == ("6", "8")
    assert (meta["ss_clip_skip"], meta["ss_max_token_length"]) == ("2", "150")
    assert meta["ss_num_batches_per_epoch"] == "6" and meta["ss_epoch"] == "1" and meta["ss_num_epochs"] == "1"
    assert json.loads(meta["ss_bucket_info"])["buckets"]["0"]["count"] == 6
    assert meta["ss_optimizer"] == "torch.optim.adamw.AdamW"
    assert str(tmp_path) not in json.dumps(meta)


def test_the_worker_payload_makes_concept_paths_absolute(tmp_path, monkeypatch):
    import json

    from dreambooth_core.config import TrainConfig
    from dreambooth_core.jobs import config_payload

    monkeypatch.chdir(tmp_path)
    cfg = TrainConfig(concepts=[{"image_dir": "a", "repeats": 2}, {"image_dir": "reg", "is_reg": True, "class_data_dir": "c"}],
                      dataset_config="")
    data = json.loads(config_payload(cfg))
    assert data["concepts"] == [{"image_dir": str(tmp_path / "a"), "repeats": 2},
                                {"image_dir": str(tmp_path / "reg"), "is_reg": True, "class_data_dir": str(tmp_path / "c")}]


def test_a_run_given_a_kohya_dataset_config_trains_its_concepts(tmp_path):
    dirs = folders(tmp_path)
    toml = tmp_path / "dataset.toml"
    toml.write_text(KOHYA.format(**dirs))
    cfg = tiny_config(tmp_path, dataset_config=str(toml), max_train_steps=2, num_class_images=2)
    result, rec, _ = train(cfg)
    assert result.status == "completed"
    log = " | ".join(e.message for e in rec.of("log"))
    assert "5 instance image(s), 4 class image(s)" in log
