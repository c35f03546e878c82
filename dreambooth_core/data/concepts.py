"""Concepts: the image sets of a run, each with its own prompt, class, repeats and captions.

A run trains one concept (the top-level `instance_data_dir`, `token`, ... keys, as always)
or several (`concepts = [{image_dir = ..., token = ..., repeats = 3}, ...]`): a person
plus a style, or 8 photos balanced against 200 with `repeats`. A concept with
`is_reg = true` is a set of class (regularisation) images. Each concept becomes a copy of
the run's config with its own values filled in, so everything that reads a config
(caption reading, class-image generation) works per concept unchanged.

kohya's dataset TOML (`dataset_config`) is read into the same concepts: `[general]` <
`[[datasets]]` < `[[datasets.subsets]]`, kohya's defaults where a key is absent, and any
key this trainer does not know or cannot honour is named in the error.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError

if TYPE_CHECKING:
    from ..config import TrainConfig


@dataclass(frozen=True)
class Concept:
    image_dir: str
    is_reg: bool = False                  # class (regularisation) images, not a subject
    repeats: int = 1                      # times each image is seen per epoch
    # None: the run's own value
    token: str | None = None
    class_noun: str | None = None
    instance_prompt: str | None = None
    class_prompt: str | None = None
    class_data_dir: str | None = None
    prior_loss_weight: float | None = None
    caption_extension: str | None = None
    shuffle_caption: bool | None = None
    caption_separator: str | None = None
    keep_tokens: int | None = None
    caption_dropout_rate: float | None = None
    tag_dropout_rate: float | None = None


CONCEPT_KEYS = {f.name: f for f in dataclasses.fields(Concept)}
OWN_KEYS = ("image_dir", "is_reg", "repeats")


@dataclass(frozen=True)
class ConceptRun:
    """A concept with the run's config for it (its prompts, class and caption options)."""

    concept: Concept
    config: "TrainConfig"

    @property
    def name(self) -> str:
        return Path(self.concept.image_dir).name


def concept_from_dict(data: dict[str, Any], where: str) -> Concept:
    from ..config import coerce, coerce_scalar

    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be a table of concept keys such as {{image_dir = '...', token = 'zwx'}} (got {data!r})")
    unknown = [k for k in data if k not in CONCEPT_KEYS]
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(map(repr, unknown))}; a concept takes {', '.join(CONCEPT_KEYS)}")
    if not data.get("image_dir"):
        raise ConfigError(f"{where}: image_dir is not set: give the folder with this concept's images")
    values: dict[str, Any] = {}
    for key, value in data.items():
        if key == "image_dir":
            values[key] = str(value)
        elif key in ("is_reg", "repeats"):
            try:
                values[key] = coerce_scalar(bool if key == "is_reg" else int, value)
            except (TypeError, ValueError):
                raise ConfigError(f"{where}: {key} expects {'true or false' if key == 'is_reg' else 'an integer'} (got {value!r})") from None
            if key == "repeats" and values[key] < 1:
                raise ConfigError(f"{where}: repeats must be 1 or more (got {value})")
        else:
            values[key] = coerce(key, value)
    return Concept(**values)


def concept_runs(config: "TrainConfig") -> list[ConceptRun]:
    """The run's concepts with their configs; the single top-level concept when none is listed."""
    if not config.concepts:
        return [ConceptRun(Concept(config.instance_data_dir), config)]
    out = []
    for i, data in enumerate(config.concepts):
        concept = concept_from_dict(data, f"concepts[{i}]")
        own = {k: v for k, v in dataclasses.asdict(concept).items() if k not in OWN_KEYS and v is not None}
        derived = dataclasses.replace(config, concepts=[], instance_data_dir=concept.image_dir, **own)
        out.append(ConceptRun(concept, derived))
    if all(c.concept.is_reg for c in out):
        raise ConfigError("concepts: every concept is is_reg = true; add at least one concept to train")
    return out


def validate_concepts(config: "TrainConfig", check_paths: bool) -> None:
    """Each concept's own values checked like the run's; its folders exist (with `check_paths`)."""
    runs = concept_runs(config)
    has_reg = any(r.concept.is_reg for r in runs)
    if has_reg and not config.with_prior_preservation:
        raise ConfigError("concepts: is_reg concepts are class images: set with_prior_preservation = true to use them")
    for i, run in enumerate(runs):
        # with reg sets, those are the class images: no concept then needs a class to generate
        own = dataclasses.replace(run.config, with_prior_preservation=run.config.with_prior_preservation and not has_reg)
        try:
            own.validate(check_paths=False)
        except ConfigError as exc:
            raise ConfigError(f"concepts[{i}] ({run.name}): {exc}") from None
        if check_paths and not Path(run.concept.image_dir).is_dir():
            raise ConfigError(f"concepts[{i}]: image_dir is not a folder: {run.concept.image_dir}")


# ---- kohya's dataset TOML ----------------------------------------------------------------
# (kohya key, default) for what each level may hold; defaults are kohya's (library/config_util.py)
KOHYA_SUBSET = {
    "image_dir": None, "is_reg": False, "num_repeats": 1, "class_tokens": None, "caption_extension": ".caption",
    "shuffle_caption": False, "caption_separator": ",", "keep_tokens": 0, "caption_dropout_rate": 0.0,
    "caption_tag_dropout_rate": 0.0, "flip_aug": False, "random_crop": False,
}
KOHYA_DATASET = {"resolution": None, "batch_size": 1, "enable_bucket": False, "bucket_no_upscale": False}
# kohya keys accepted only at a value that changes nothing here (kohya's default, or what our buckets do)
KOHYA_NEUTRAL = {
    "color_aug": False, "caption_dropout_every_n_epochs": 0, "token_warmup_min": 1, "token_warmup_step": 0,
    "enable_wildcard": False, "cache_info": False, "face_crop_aug_range": None, "caption_prefix": None,
    "caption_suffix": None, "keep_tokens_separator": None, "secondary_separator": None, "network_multiplier": 1.0,
    "bucket_reso_steps": 64,
}
# bounds of kohya's bucket table: ours keeps the resolution's area with aspect at most 2, so
# these change nothing unless they cut into that range; they are accepted and reported
KOHYA_BUCKET_BOUNDS = ("min_bucket_reso", "max_bucket_reso")


def read_kohya_dataset(path: str | Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(run-level settings, concept tables) from a kohya dataset TOML."""
    from ..config import read_config_file

    data = read_config_file(path)
    where = Path(path).name
    top_unknown = [k for k in data if k not in ("general", "datasets")]
    if top_unknown:
        raise ConfigError(f"{where}: unknown table(s) {', '.join(map(repr, top_unknown))}; a kohya dataset config has [general] and [[datasets]]")
    general = data.get("general", {})
    datasets = data.get("datasets", [])
    if not datasets:
        raise ConfigError(f"{where}: no [[datasets]] table")
    _check_keys(general, {**KOHYA_DATASET, **KOHYA_SUBSET}, f"{where} [general]")
    run: dict[str, Any] = {}
    concepts: list[dict[str, Any]] = []
    for d, dataset in enumerate(datasets):
        here = f"{where} datasets[{d}]"
        _check_keys({k: v for k, v in dataset.items() if k != "subsets"}, {**KOHYA_DATASET, **KOHYA_SUBSET}, here)
        level = {**general, **{k: v for k, v in dataset.items() if k != "subsets"}}
        settings = _dataset_settings(level, here)
        for key, value in settings.items():
            if key in run and run[key] != value:
                raise ConfigError(f"{here}: {key} differs from an earlier dataset ({run[key]!r} vs {value!r}); "
                                  "this trainer takes one value for the whole run")
            run[key] = value
        for s, subset in enumerate(dataset.get("subsets", [])):
            at = f"{here}.subsets[{s}]"
            _check_keys(subset, KOHYA_SUBSET, at)
            merged = {**{k: v for k, v in level.items() if k in KOHYA_SUBSET}, **subset}
            concepts.append(_subset_concept(merged, at, run))
        if not dataset.get("subsets"):
            raise ConfigError(f"{here}: no [[datasets.subsets]] with an image_dir")
    return run, concepts


def _check_keys(table: dict[str, Any], allowed: dict[str, Any], where: str) -> None:
    for key, value in table.items():
        if key in allowed or key in KOHYA_BUCKET_BOUNDS:
            continue
        if key in KOHYA_NEUTRAL:
            if value != KOHYA_NEUTRAL[key]:
                raise ConfigError(f"{where}: {key} = {value!r} is not supported by this trainer "
                                  f"(remove it or set it to {KOHYA_NEUTRAL[key]!r})")
            continue
        if key == "metadata_file":
            raise ConfigError(f"{where}: metadata_file (kohya's fine-tuning datasets) is not supported; "
                              "use image_dir with caption files")
        raise ConfigError(f"{where}: unknown key {key!r}")


def _dataset_settings(level: dict[str, Any], where: str) -> dict[str, Any]:
    out: dict[str, Any] = {"enable_bucketing": bool(level.get("enable_bucket", KOHYA_DATASET["enable_bucket"])),
                           "bucket_no_upscale": bool(level.get("bucket_no_upscale", KOHYA_DATASET["bucket_no_upscale"])),
                           "train_batch_size": int(level.get("batch_size", KOHYA_DATASET["batch_size"]))}
    resolution = level.get("resolution")
    if isinstance(resolution, (list, tuple)):
        if len(resolution) != 2 or resolution[0] != resolution[1]:
            raise ConfigError(f"{where}: resolution {resolution!r}: only square resolutions are supported "
                              "(buckets then cover other shapes)")
        resolution = resolution[0]
    if resolution is not None:
        out["resolution"] = int(resolution)
    return out


def _subset_concept(subset: dict[str, Any], where: str, run: dict[str, Any]) -> dict[str, Any]:
    if not subset.get("image_dir"):
        raise ConfigError(f"{where}: image_dir is not set")
    value = {**KOHYA_SUBSET, **subset}
    for key, run_key in (("flip_aug", "random_flip"), ("random_crop", "center_crop")):
        setting = bool(value[key]) if key == "flip_aug" else not value[key]
        if run.setdefault(run_key, setting) != setting:
            raise ConfigError(f"{where}: {key} differs between subsets; this trainer takes one value for the whole run")
    concept: dict[str, Any] = {
        "image_dir": str(value["image_dir"]), "is_reg": bool(value["is_reg"]), "repeats": int(value["num_repeats"]),
        "caption_extension": value["caption_extension"], "shuffle_caption": value["shuffle_caption"],
        "caption_separator": value["caption_separator"], "keep_tokens": value["keep_tokens"],
        "caption_dropout_rate": float(value["caption_dropout_rate"]), "tag_dropout_rate": float(value["caption_tag_dropout_rate"]),
    }
    tokens = (value["class_tokens"] or "").split()
    if concept["is_reg"]:
        concept["class_prompt"] = " ".join(tokens)
    elif tokens:
        # kohya's class_tokens ("zwx girl") is the prompt of an image without a caption file
        concept.update(token=tokens[0], class_noun=" ".join(tokens[1:]), instance_prompt="{token} {class_noun}")
    if concept["is_reg"]:
        run["with_prior_preservation"] = True
    return concept


def apply_dataset_config(config: "TrainConfig") -> "TrainConfig":
    """`config` with its kohya `dataset_config` read in: the datasets' run settings over the
    config's, and their subsets as its concepts."""
    from ..config import config_from_dict

    if not config.dataset_config:
        return config
    if config.concepts:
        raise ConfigError("give concepts or dataset_config, not both")
    try:
        run, concepts = read_kohya_dataset(config.dataset_config)
    except ConfigError as exc:
        raise ConfigError(f"dataset_config: {exc}") from None
    return config_from_dict({**run, "concepts": concepts, "dataset_config": ""}, config)


def concept_examples(instance: list, classes: list, resolution: int, config: "TrainConfig"):
    """(instance, class) `Example`s from (ConceptRun, image records) pairs: instance prompts
    from each concept's captions and prompt, class prompts from its class prompt (a reg
    concept's captions where it has them), each concept's repeats and prior weight."""
    from .dataset import caption_prompt, make_examples

    def build(run: ConceptRun, records: list, is_class: bool):
        c = run.config
        if is_class:
            own = run.concept.is_reg
            return make_examples(records, lambda r: (own and r.caption) or c.class_prompt_text, True, resolution,
                                 config.enable_bucketing, config.bucket_no_upscale,
                                 repeats=run.concept.repeats if own else 1, weight=c.prior_loss_weight)
        prompt = c.instance_prompt_text
        return make_examples(records, lambda r: caption_prompt(r.caption, prompt, c.token, c.class_noun), False, resolution,
                             config.enable_bucketing, config.bucket_no_upscale, captions=c.caption_options,
                             repeats=run.concept.repeats)

    return ([e for run, records in instance for e in build(run, records, False)],
            [e for run, records in classes for e in build(run, records, True)])
