import json

import pytest

from dreambooth_core.config import PRESETS, TrainConfig, load_config, parse_set
from dreambooth_core.errors import ConfigError


def test_preset_then_file_then_set(tmp_path):
    cfg_file = tmp_path / "run.toml"
    cfg_file.write_text('class_noun = "dog"\nmax_train_steps = 50\nlearning_rate = 1e-5\n')
    cfg = load_config(cfg_file, preset="dreambooth", overrides=parse_set(["max_train_steps=7"]), check_paths=False)
    assert cfg.method == "dreambooth" and cfg.with_prior_preservation  # from the preset
    assert cfg.learning_rate == 1e-5                                    # file beats preset
    assert cfg.max_train_steps == 7                                     # --set beats file
    assert cfg.instance_prompt_text == "a photo of zwx dog"
    assert cfg.class_prompt_text == "a photo of dog"
    assert cfg.name == "zwx_dog"


@pytest.mark.parametrize("suffix,text", [
    (".json", json.dumps({"train": {"class_noun": "cat", "rank": 4}})),
    (".yaml", "class_noun: cat\nrank: 4\n"),
])
def test_json_and_yaml_files(tmp_path, suffix, text):
    p = tmp_path / f"c{suffix}"
    p.write_text(text)
    cfg = load_config(p, check_paths=False)
    assert (cfg.class_noun, cfg.rank) == ("cat", 4)


def test_every_key_is_settable_from_a_string():
    defaults = TrainConfig()
    samples = {bool: "true", int: "3", float: "0.5", str: "x"}
    for key, value in defaults.to_dict().items():
        if isinstance(value, list):
            text = "[1, 2, 1]" if key == "layer_structure" else '["kohya"]' if key == "save_formats" else '["a", "b"]'
        elif value is None:
            continue
        else:
            text = samples[type(value)]
        try:
            cfg = load_config(overrides=parse_set([f"{key}={text}", "class_noun=dog"]), check_paths=False)
        except ConfigError as exc:  # a legal type but an illegal value (e.g. method=x) names the key
            assert key in str(exc)
            continue
        assert getattr(cfg, key) is not None


@pytest.mark.parametrize("overrides,message", [
    ({"learnin_rate": "1"}, "did you mean 'learning_rate'"),
    ({"rank": "abc"}, "rank expects an integer"),
    ({"with_prior_preservation": "maybe"}, "true or false"),
    ({"method": "dreambooth2"}, "method must be one of"),
    ({"resolution": "-64"}, "greater than 0"),
    ({"max_train_steps": "0"}, "greater than 0"),
    ({"token": "two words"}, "one word"),
    ({"optimizer": "adam"}, "optimizer must be one of"),
    ({"instance_prompt": "{subject} photo"}, "only {token} and {class_noun}"),
    ({"method": "lora", "save_formats": "single-file"}, "save_formats must be one of"),
    ({"method": "hypernetwork", "layer_structure": "[2, 1]"}, "start and end with 1"),
    ({"with_prior_preservation": "true", "class_noun": ""}, "class_noun is needed"),
])
def test_bad_values_name_the_key(overrides, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("[", r"\[")):
        load_config(overrides=overrides, check_paths=False)


def test_paths_are_checked_before_any_model_loads(tmp_path):
    with pytest.raises(ConfigError, match="base_model is not set"):
        load_config(overrides={"class_noun": "dog"})
    with pytest.raises(ConfigError, match="base_model not found"):
        load_config(overrides={"base_model": str(tmp_path / "nope.safetensors")})
    model = tmp_path / "m.safetensors"
    model.write_bytes(b"")
    with pytest.raises(ConfigError, match="instance_data_dir is not a folder"):
        load_config(overrides={"base_model": str(model), "instance_data_dir": str(tmp_path / "missing")})


def test_presets_are_valid_configs():
    for name in PRESETS:
        cfg = load_config(preset=name, overrides={"class_noun": "dog"}, check_paths=False)
        assert cfg.method in ("dreambooth", "lora", "textual_inversion", "hypernetwork")


def test_unknown_preset_and_malformed_set():
    with pytest.raises(ConfigError, match="unknown preset"):
        load_config(preset="fast", check_paths=False)
    with pytest.raises(ConfigError, match="key=value"):
        parse_set(["rank"])
