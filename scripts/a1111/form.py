"""The tab's form, as data: its fields in order, what the method and preset controls fill
in, and the `TrainConfig` the values make. No gradio here, so all of it is plain to test.
"""
from __future__ import annotations

import shutil
import tempfile
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dreambooth_core.config import (CONCEPT_PATH_KEYS, FIELDS, LR_SCHEDULERS, MEMORY_KEYS, MIXED_PRECISION, NETWORKS,
                                    OPTIMIZERS, PATH_KEYS, PRESETS, TrainConfig, check_client_limits, client_paths,
                                    config_from_dict, load_config, toml_loads, unknown_key)
from dreambooth_core.data.images import IMAGE_SUFFIXES
from dreambooth_core.errors import ConfigError, OutputExistsError, UserError
from dreambooth_core.paths import MARKER, contained, real_path, remove_owned_folder, safe_name
from dreambooth_core.train.run_dir import RunDir

from . import host

# Method label → (TrainConfig.method, the preset it starts from).
METHODS: dict[str, tuple[str, str]] = {
    "DreamBooth": ("dreambooth", "dreambooth"),
    "DreamBooth+LoRA": ("lora", "dreambooth-lora"),
    "LoRA": ("lora", "lora"),
    "Textual Inversion": ("textual_inversion", "textual_inversion"),
    "Hypernetwork": ("hypernetwork", "hypernetwork"),
}

# The "Advanced" accordion: TrainConfig keys, in display order.
ADVANCED = ("max_train_steps", "learning_rate", "train_batch_size", "gradient_accumulation_steps", "resolution",
            "lr_scheduler", "lr_warmup_steps", "optimizer", "mixed_precision", "seed", "network", "rank", "alpha",
            "train_text_encoder", "num_vectors", "prior_loss_weight", "checkpointing_steps", "publish_step_saves", "validation_steps",
            "num_validation_images", "save_dtype", "gradient_checkpointing",
            # datasets (dreambooth_core/data): buckets, tag captions, long prompts, masks
            "enable_bucketing", "bucket_no_upscale", "shuffle_caption", "keep_tokens", "caption_dropout_rate",
            "tag_dropout_rate", "max_token_length", "clip_skip", "masked_loss_floor")
CHOICES: dict[str, tuple[str, ...]] = {"network": NETWORKS, "lr_scheduler": LR_SCHEDULERS, "optimizer": OPTIMIZERS,
                                       "mixed_precision": MIXED_PRECISION, "save_dtype": ("fp16", "bf16", "fp32")}
LABELS = {"network": "network type (LoRA methods)", "resolution": "resolution (0: the model's own)", "max_train_steps": "steps", "train_batch_size": "batch size",
          "alpha": "LoRA alpha", "rank": "LoRA rank", "num_vectors": "vectors per token (TI)",
          "checkpointing_steps": "save a resumable state every N steps (0: at the end)",
          "publish_step_saves": "list each step's save in the WebUI as NAME-stepN (X/Y/Z plots)",
          "validation_steps": "samples every N steps (0: before and after)",
          "enable_bucketing": "aspect-ratio buckets (off: square crops)", "bucket_no_upscale": "never upscale small photos",
          "keep_tokens": "tags kept first when shuffling", "max_token_length": "longest prompt in tokens (75, 150, 225)",
          "masked_loss_floor": "loss outside a photo's mask (name.mask.png)"}

# The Advanced section's TOML box: any config key, and [[concepts]] tables.
SETTINGS = "settings_toml"
SETTINGS_LABEL = "More settings (TOML: any config key; [[concepts]] tables for several subjects)"
SETTINGS_PLACEHOLDER = ("validation_steps = 100\ncaption_extension = \".caption\"\n\n[[concepts]]\nimage_dir = \"/photos/dog\"\n"
                        "token = \"zwx\"\nclass_noun = \"dog\"\nrepeats = 2\n\n[[concepts]]\nimage_dir = \"/photos/style\"\n"
                        "token = \"qwv\"\nclass_noun = \"painting\"")
# The concepts table: its columns (header, concept key, datatype); a row is one concept.
CONCEPTS = "concepts_table"
CONCEPT_COLUMNS = (("image folder", "image_dir", "str"), ("token", "token", "str"), ("class noun", "class_noun", "str"),
                   ("repeats", "repeats", "number"), ("prior loss weight", "prior_loss_weight", "number"))
# Config keys the form's own controls set (the box would bypass their checks), and which control.
FORM_OWNED = {"method": "Method", "base_model": "Base checkpoint", "output_dir": "the WebUI's runs folder (Settings)",
              "output_name": "Output name", "overwrite": "Overwrite", "resume_from": "the Resume button"}

# Every input of the Train/Resume handlers, in the order they are passed.
FORM_KEYS = ("checkpoint", "method", "images_dir", "uploads", "token", "class_noun", "instance_prompt", "class_prompt",
             "prior", "num_class_images", "preset", "output_name", "overwrite", *ADVANCED, SETTINGS, CONCEPTS)

_HINTS = typing.get_type_hints(TrainConfig)


def field_type(key: str) -> str:
    """'choice', 'bool', 'int' or 'float': which control shows `key`."""
    if key in CHOICES:
        return "choice"
    hint = _HINTS[key]
    args = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
    return {bool: "bool", int: "int", float: "float"}[args[0]]


def label(key: str) -> str:
    return LABELS.get(key, key.replace("_", " "))


def presets_for(method_label: str) -> list[str]:
    method = METHODS[method_label][0]
    return [name for name, values in PRESETS.items() if values["method"] == method]


def method_for_preset(preset: str) -> str:
    """The method label a preset belongs to (its own label when it is one's starting preset)."""
    for method_label, (_, start) in METHODS.items():
        if start == preset:
            return method_label
    method = PRESETS[preset]["method"]
    return next(lbl for lbl, (m, _) in METHODS.items() if m == method)


def preset_values(preset: str) -> dict[str, Any]:
    """What a preset puts in the form: the Advanced fields, prior preservation, class images."""
    cfg = config_from_dict(PRESETS[preset], TrainConfig())
    values = {key: getattr(cfg, key) for key in ADVANCED}
    values["resolution"] = values["resolution"] or 0
    values["prior"] = cfg.with_prior_preservation
    values["num_class_images"] = cfg.num_class_images
    return values


def prompts(token: str, class_noun: str) -> tuple[str, str]:
    """The instance and class prompts for a token and class noun (the config's own templates)."""
    cfg = TrainConfig(token=(token or "").strip(), class_noun=(class_noun or "").strip())
    return cfg.instance_prompt_text, cfg.class_prompt_text


# ---- values → config ------------------------------------------------------------------------

@dataclass
class Form:
    values: dict[str, Any]

    @classmethod
    def from_args(cls, args: tuple) -> "Form":
        if len(args) != len(FORM_KEYS):
            raise TypeError(f"expected {len(FORM_KEYS)} form values, got {len(args)}")
        return cls(dict(zip(FORM_KEYS, args)))

    def text(self, key: str) -> str:
        return str(self.values.get(key) or "").strip()

    @property
    def name(self) -> str:
        """The run's name, checked to be one plain file name (it names folders that get replaced)."""
        if self.text("output_name"):
            return safe_name(self.text("output_name"), "output name")
        derived = TrainConfig(token=self.text("token") or "zwx", class_noun=self.text("class_noun")).name
        return safe_name(derived, "the name made from token and class noun (or type an output name)")


def uploaded_paths(uploads: Any) -> list[Path]:
    """Paths of gradio File uploads: objects with `.name` (gradio 3) or plain paths (gradio 4)."""
    items = uploads if isinstance(uploads, (list, tuple)) else ([uploads] if uploads else [])
    return [Path(getattr(item, "name", item)) for item in items]


def image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def typed_path(text: object, what: str) -> Path:
    """A path typed into the tab, resolved; confined to the WebUI's folders while others can
    reach this WebUI (anyone on the network can type here), unless the operator allowed any folder."""
    if host.non_local() and not host.any_folder():
        return contained(text, what, host.allowed_roots(), base=host.data_path(), setting_hint=host.SETTING_HINT)
    return real_path(text, what)


def settings_overrides(text: str) -> dict[str, Any]:
    """The TOML box's settings: known keys only, none that a form control owns, and every
    path (concept folders included) through the same gate as the image folder field."""
    if not text:
        return {}
    try:
        data = toml_loads(text)
    except ValueError as exc:   # tomllib.TOMLDecodeError
        raise ConfigError(f"More settings: not valid TOML: {exc}") from None
    for key in data:
        if key in FORM_OWNED:
            raise ConfigError(f"More settings: {key} is set by {FORM_OWNED[key]}, not here")
        if key not in FIELDS:
            raise unknown_key(key)
    for key in PATH_KEYS:
        if data.get(key):
            data[key] = str(typed_path(data[key], key))
    concepts = data.get("concepts")
    for i, concept in enumerate(concepts if isinstance(concepts, list) else []):
        for key in CONCEPT_PATH_KEYS:
            if isinstance(concept, dict) and concept.get(key):
                concept[key] = str(typed_path(concept[key], f"concepts[{i}].{key}"))
    return data


def _blank(cell: Any) -> bool:
    return cell is None or (isinstance(cell, str) and not cell.strip()) or cell != cell   # NaN from an empty number cell


def _blank_row(row: list[Any]) -> bool:
    """No cell filled in: gradio (3.41 and 4.x) starts an empty row with 0 in its number cells."""
    return all(_blank(cell) or (kind == "number" and cell == 0) for (_, _, kind), cell in zip(CONCEPT_COLUMNS, row))


def table_concepts(table: Any) -> list[dict[str, Any]]:
    """The concepts table's rows (gradio's type="array": a list of rows) as `concepts`; blank
    rows are skipped, blank cells left to the run's own value, folders through the field's gate."""
    rows = table.get("data", []) if isinstance(table, dict) else (table or [])
    concepts = []
    for n, row in enumerate(rows, start=1):
        if _blank_row(row):
            continue
        cells = {key: cell for (_, key, _), cell in zip(CONCEPT_COLUMNS, row) if not _blank(cell)}
        if "image_dir" not in cells:
            raise UserError(f"concepts table, row {n}: give the folder of this concept's images")
        cells["image_dir"] = str(typed_path(cells["image_dir"], f"concepts table, row {n}, image folder"))
        for key in ("repeats", "prior_loss_weight"):
            if key in cells:
                try:
                    number = float(cells[key])
                except (TypeError, ValueError):
                    number = float("nan")
                if number != number or (key == "repeats" and not number.is_integer()):
                    raise UserError(f"concepts table, row {n}: {key.replace('_', ' ')} must be a "
                                    f"{'whole ' if key == 'repeats' else ''}number (got {cells[key]!r})")
                cells[key] = int(number) if key == "repeats" else number
        concepts.append({key: value.strip() if isinstance(value, str) else value for key, value in cells.items()})
    return concepts


def instance_images(form: Form, runs: Path) -> Path:
    """The folder of the subject's images: uploads are copied into `runs/datasets/<name>/`
    (replacing an earlier upload of that name), else the folder typed in must hold images."""
    uploads = [p for p in uploaded_paths(form.values.get("uploads")) if p.suffix.lower() in IMAGE_SUFFIXES]
    if form.values.get("uploads") and not uploads:
        raise UserError(f"none of the uploaded files is an image ({', '.join(IMAGE_SUFFIXES)})")
    if uploads:
        name = form.name
        dest = runs / "datasets" / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=dest.parent))
        try:
            (staging / MARKER).touch()   # only a folder holding this marker is ever replaced
            for i, src in enumerate(uploads):
                shutil.copyfile(src, staging / f"{i:03d}_{src.name}")
            remove_owned_folder(dest)
            staging.rename(dest)
        finally:
            shutil.rmtree(staging, ignore_errors=True)  # gone already when renamed
        return dest
    typed = form.text("images_dir")
    if not typed:
        raise UserError("give the folder with your subject's photos, or upload them")
    folder = typed_path(typed, "image folder")
    if not folder.is_dir():
        raise UserError(f"the image folder {folder} does not exist")
    if not image_files(folder):
        raise UserError(f"no images in {folder}: put your photos there as {', '.join(IMAGE_SUFFIXES)}")
    return folder


def build_config(form: Form, resume: bool = False, check_folder: bool = True) -> TrainConfig:
    """The validated config the form describes; UserError (one sentence) on bad input.
    `check_folder=False` (planning) skips the run-folder checks of Train and Resume, and
    needs no photos yet (they only add their cache to a CPU plan)."""
    v = form.values
    method = METHODS.get(v.get("method") or "")
    if method is None:
        raise UserError(f"choose a method: {', '.join(METHODS)}")
    preset = v.get("preset") or method[1]
    runs = host.runs_dir()
    # a memory control left at its default is not pinned: memory="auto" may choose it
    overrides: dict[str, Any] = {key: v[key] for key in ADVANCED if v.get(key) is not None
                                 and not (key in MEMORY_KEYS and v[key] == getattr(TrainConfig, key))}
    overrides["resolution"] = int(v.get("resolution") or 0) or None
    overrides.update(
        method=method[0],
        base_model=host.checkpoint_file(v.get("checkpoint")),
        token=form.text("token"),
        class_noun=form.text("class_noun"),
        instance_prompt=form.text("instance_prompt") or TrainConfig.instance_prompt,
        class_prompt=form.text("class_prompt") or TrainConfig.class_prompt,
        with_prior_preservation=bool(v.get("prior")),
        num_class_images=int(v.get("num_class_images") or 0),
        output_name=form.name,
        overwrite=bool(v.get("overwrite")),
        output_dir=str(runs),
    )
    settings = settings_overrides(form.text(SETTINGS))
    table = table_concepts(v.get(CONCEPTS))
    if table and "concepts" in settings:
        raise UserError("concepts are given both in the concepts table and as [[concepts]] in More settings: use one")
    if table:
        settings["concepts"] = table
    overrides.update(settings)
    if not overrides["token"]:
        raise UserError("type a token: a rare word such as 'zwx' that will stand for your subject")
    named = "concepts" if settings.get("concepts") else "dataset_config" if settings.get("dataset_config") else ""
    if named and (form.text("images_dir") or v.get("uploads")):
        raise UserError(f"the {named} in Advanced name the images, so the instance images would be left out: "
                        "clear the folder field (or the uploads), or add that folder as a concept")
    photos_later = not check_folder and not (form.text("images_dir") or v.get("uploads"))
    if not named and "instance_data_dir" not in settings:
        overrides["instance_data_dir"] = "" if photos_later else str(instance_images(form, runs))
    if resume:
        overrides["resume_from"] = "latest"
    config = check_client_limits(load_config(preset=preset, overrides=overrides,
                                             check_paths=not (photos_later and not overrides.get("instance_data_dir"))))
    for what, value in client_paths(config):   # also the folders a dataset TOML names
        typed_path(value, what)
    if check_folder:
        check_run_folder(config, resume)
    return config


def check_run_folder(config: TrainConfig, resume: bool) -> None:
    """Resume needs a saved state; a fresh run must not mix into an earlier run of that name."""
    run = RunDir.for_config(config)
    if resume:
        if run.resume_folder("latest") is None:
            raise UserError(f"nothing to resume for {config.name}: no saved state in {run.state}; press Train")
        return
    try:
        run.check_fresh(config.overwrite)
    except OutputExistsError:
        raise OutputExistsError(f"{config.name} was trained before ({run.root}): press Resume to continue it, "
                                "choose another output name, or tick Overwrite") from None
