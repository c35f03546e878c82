"""`TrainConfig`: every setting of a training run, its presets, and its validation.

Scripts and the host adapters set these exact key names, so they are the public API.
Everything is checked here — unknown keys, types, ranges, paths — before any model
loads, so a typo costs a second, not a model load.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from .errors import ConfigError, UserError
from .paths import real_path, safe_name, text_value
from .registry import METHODS as _METHODS, NETWORKS as _NETWORKS

METHODS = tuple(_METHODS)
NETWORKS = tuple(_NETWORKS)
MIXED_PRECISION = ("no", "fp16", "bf16")
OPTIMIZERS = ("adamw", "adamw8bit", "prodigy", "sgd", "adafactor")
LR_SCHEDULERS = ("constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial")
SAMPLERS = ("ddim", "euler_a", "dpmpp_2m", "pndm", "lms", "euler")
ACTIVATIONS = ("linear", "relu", "leakyrelu", "elu", "swish", "tanh", "sigmoid", "softsign", "mish")
# memory (issue 14): "auto" adds the savings a run needs to fit (plan/auto.py); "manual" uses the settings as given
MEMORY_MODES = ("auto", "manual")
MEMORY_KEYS = ("mixed_precision", "gradient_checkpointing", "optimizer", "cache_latents", "pack_frozen_convolutions",
               "frozen_weights_dtype", "fused_optimizer_step", "full_bf16")
# frozen_weights_dtype: "compute" keeps frozen weights in the compute dtype; "fp8" stores them in
# 8-bit float, up-cast one layer at a time (train/fp8_weights.py)
FROZEN_WEIGHTS_DTYPES = ("compute", "fp8")
# Keys whose values are paths (a front end that serves clients checks where they point), and
# the path keys inside each of `concepts`: `client_paths` lists them all.
PATH_KEYS = ("base_model", "instance_data_dir", "class_data_dir", "output_dir", "resume_from", "dataset_config", "eval_encoder")
CONCEPT_PATH_KEYS = ("image_dir", "class_data_dir")
SAVE_FORMATS = {name: spec.save_formats for name, spec in _METHODS.items()}


@dataclass
class TrainConfig:
    # what and on what
    method: str = "lora"                 # registry.METHODS
    base_model: str = ""
    family: str | None = None            # override detection: a name of families.FAMILIES (sd2-v, sdxl-v: v-prediction)

    # the concept
    instance_data_dir: str = ""
    token: str = "zwx"
    class_noun: str = ""
    instance_prompt: str = "a photo of {token} {class_noun}"
    class_prompt: str = "a photo of {class_noun}"

    # several concepts (data/concepts.py); empty: the one concept above
    concepts: list[dict[str, Any]] = field(default_factory=list)
    dataset_config: str = ""             # a kohya dataset TOML, read into concepts and bucket settings

    # prior preservation
    with_prior_preservation: bool = False
    prior_loss_weight: float = 1.0
    num_class_images: int = 100
    class_data_dir: str | None = None    # default: a cache folder keyed by model, prompt, resolution, seed
    class_sampler: str = "dpmpp_2m"
    class_inference_steps: int = 25
    class_guidance_scale: float = 7.5

    # images
    resolution: int | None = None        # default: the family's native resolution
    center_crop: bool = False
    random_flip: bool = False
    enable_bucketing: bool = True        # aspect-ratio buckets (data/buckets.py); off: one square crop
    bucket_no_upscale: bool = True       # an image smaller than the resolution trains at its own size
    cache_latents: bool = True
    masked_loss_floor: float = 0.1       # loss weight outside an image's mask (photo.mask.png); 1: masks off

    # captions and text encoding (data/captions.py, data/long_prompts.py)
    caption_extension: str = ""          # default: .txt, then .caption
    shuffle_caption: bool = False
    caption_separator: str = ","
    keep_tokens: int = 0                 # leading tags never shuffled or dropped
    caption_dropout_rate: float = 0.0
    tag_dropout_rate: float = 0.0
    max_token_length: int = 225          # 75, 150 or 225: prompts are encoded in 75-token chunks
    clip_skip: int = 1
    # kohya's weighted_captions: read A1111's (word:1.2) emphasis and BREAK in training and
    # class prompts; off, brackets are caption text (booru tags such as "miku (vocaloid)").
    # Previews always read them, as the hosts do.
    weighted_captions: bool = False

    # optimisation
    train_batch_size: int = 1
    gradient_accumulation_steps: int = 1
    max_train_steps: int = 800
    learning_rate: float = 1e-4
    text_encoder_learning_rate: float | None = None
    lr_scheduler: str = "constant"
    lr_warmup_steps: int = 0
    optimizer: str = "adamw"
    adam_weight_decay: float = 1e-2
    max_grad_norm: float = 1.0
    seed: int = 0
    mixed_precision: str = "no"
    gradient_checkpointing: bool = False
    pack_frozen_convolutions: bool = True  # CPU: frozen conv weights kept in oneDNN's layout (faster; +1 copy of them if it fits)
    frozen_weights_dtype: str = "compute"  # "fp8": frozen UNet/text-encoder weights stored in 8-bit float (half of bf16)
    snr_gamma: float | None = None
    noise_offset: float = 0.0
    # full fine-tuning on small cards (train/fused_step.py): each weight's Adafactor step runs as soon as
    # its gradient is ready and the gradient is freed, so no full set of gradients exists; max_grad_norm
    # then clips each weight's gradient on its own (the global norm is never formed)
    fused_optimizer_step: bool = False
    full_bf16: bool = False              # trained weights stored in bf16 (kohya's full_bf16): half the bytes, less precise updates

    # memory: with "auto" the MEMORY_KEYS not pinned are chosen to fit the device; set ones are pinned
    memory: str = "auto"
    pinned: list[str] = field(default_factory=list)
    # memory="auto" fits the run under this many GiB when the device has more free (a shared machine,
    # a host that needs room beside the run); unset: the device's free memory
    memory_limit_gb: float | None = None

    # lora (and dreambooth for train_text_encoder)
    rank: int = 16
    alpha: float = 8.0
    conv_rank: int = 0
    conv_alpha: float | None = None
    network: str = "lora"                # registry.NETWORKS: lora, loha, lokr, dora, oft
    train_text_encoder: bool = False

    # textual inversion
    num_vectors: int = 1
    init_word: str = ""                  # default: the class noun

    # hypernetwork
    layer_structure: list[float] = field(default_factory=lambda: [1.0, 2.0, 1.0])
    activation: str = "linear"
    hypernetwork_layer_norm: bool = False

    # weight average (train.ema): saved and drawn instead of the raw weights when ema_decay is set
    ema_decay: float | None = None
    ema_start_step: int = 0

    # checkpoints
    checkpointing_steps: int = 0         # 0: only at the end (and on cancel)
    publish_step_saves: bool = False     # hosts: also list each step's save as NAME-stepN (lifecycle.step_saves)
    resume_from: str | None = None       # "latest" or a state folder

    # validation
    validation_prompts: list[str] = field(default_factory=list)   # default: the instance and class prompts
    validation_steps: int = 0            # 0: only before and after training
    num_validation_images: int = 2
    validation_scheduler: str = "dpmpp_2m"
    validation_inference_steps: int = 25
    guidance_scale: float = 7.5
    negative_prompt: str = ""

    # evaluation (evaluate/): the paper's measures on a fixed set of generations during training
    eval_every_n_steps: int | None = None  # default: 4 points over the run; 0: off
    eval_encoder: str = ""               # a CLIP / DINOv2 .safetensors file, or a folder holding one (the toy model needs none)
    eval_images: int = 4                 # images per evaluation prompt
    select_best: bool = False            # publish the evaluated step with the best subject fidelity within the bounds below
    select_max_prior_drift: float = 0.25  # share of the way plain-class images may move toward the subject
    select_max_prompt_drop: float = 0.1   # share prompt fidelity may fall below the untrained model's

    # outputs
    output_dir: str = "runs"
    output_name: str = ""                # default: "{token}_{class_noun}"
    save_formats: list[str] = field(default_factory=list)  # default: the method's first (host) format
    save_dtype: str = "fp16"
    overwrite: bool = False

    # ---- derived values -------------------------------------------------------------
    def render(self, template: str) -> str:
        return template.format(token=self.token, class_noun=self.class_noun).strip()

    @property
    def instance_prompt_text(self) -> str:
        return self.render(self.instance_prompt)

    @property
    def class_prompt_text(self) -> str:
        return self.render(self.class_prompt)

    @property
    def name(self) -> str:
        if self.output_name:
            return self.output_name
        return "_".join(p for p in (self.token, self.class_noun.replace(" ", "_")) if p)

    @property
    def formats(self) -> list[str]:
        return list(self.save_formats) or [SAVE_FORMATS[self.method][0]]

    @property
    def effective_init_word(self) -> str:
        if self.init_word:
            return self.init_word
        return self.class_noun.split()[-1] if self.class_noun.strip() else "*"

    @property
    def eval_interval(self) -> int:
        """Steps between evaluations (0: none)."""
        if self.eval_every_n_steps is None:
            return max(1, -(-self.max_train_steps // 4))
        return self.eval_every_n_steps

    @property
    def effective_validation_prompts(self) -> list[str]:
        return list(self.validation_prompts) or [self.instance_prompt_text, self.class_prompt_text]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def pinned_memory_keys(self) -> set[str]:
        """Memory settings memory="auto" must keep: those set explicitly, or away from their defaults."""
        defaults = TrainConfig.__dataclass_fields__
        return set(self.pinned) | {k for k in MEMORY_KEYS if getattr(self, k) != defaults[k].default}

    def memory_problem(self) -> str | None:
        """Why `fused_optimizer_step`, `full_bf16` or fp8 frozen weights cannot be used with the other
        settings (None: they can)."""
        full = self.method == "dreambooth"
        if self.frozen_weights_dtype == "fp8" and full:
            return ("frozen_weights_dtype='fp8' is for LoRA, Textual Inversion and hypernetworks: full fine-tuning saves its "
                    "frozen parts again, which would keep the 8-bit rounding: set frozen_weights_dtype='compute'")
        if self.fused_optimizer_step:
            if not full:
                return "fused_optimizer_step is for full fine-tuning (method='dreambooth'); a LoRA's gradients are small: turn it off"
            if self.optimizer != "adafactor":
                return f"fused_optimizer_step runs Adafactor's step per weight: set optimizer='adafactor' (got {self.optimizer!r})"
            if self.gradient_accumulation_steps != 1:
                return ("fused_optimizer_step steps each weight during backward, but gradient accumulation must keep every "
                        "gradient until the last micro-batch: set gradient_accumulation_steps=1 or turn it off")
            if self.mixed_precision == "fp16":
                return ("fused_optimizer_step cannot unscale fp16 loss scaling per weight (an overflow must skip the whole step): "
                        "use mixed_precision='bf16' (or 'no'), or turn it off")
        if self.full_bf16:
            if not full:
                return "full_bf16 stores the fully trained weights in bf16: it is for method='dreambooth'"
            if self.mixed_precision != "bf16":
                return f"full_bf16 needs mixed_precision='bf16' (a device with bf16; got {self.mixed_precision!r})"
        return None

    # ---- validation -----------------------------------------------------------------
    def validate(self, check_paths: bool = True) -> "TrainConfig":
        """Raise ConfigError naming the key and what to do; return self when all is well
        (with a kohya `dataset_config` read in: then a new config)."""
        if self.dataset_config:
            from .data.concepts import apply_dataset_config

            return apply_dataset_config(self).validate(check_paths)
        choice("method", self.method, METHODS)
        choice("network", self.network, NETWORKS)
        choice("mixed_precision", self.mixed_precision, MIXED_PRECISION)
        choice("optimizer", self.optimizer, OPTIMIZERS)
        choice("memory", self.memory, MEMORY_MODES)
        choice("frozen_weights_dtype", self.frozen_weights_dtype, FROZEN_WEIGHTS_DTYPES)
        for key in self.pinned:
            choice("pinned", key, MEMORY_KEYS)
        choice("lr_scheduler", self.lr_scheduler, LR_SCHEDULERS)
        choice("validation_scheduler", self.validation_scheduler, SAMPLERS)
        choice("class_sampler", self.class_sampler, SAMPLERS)
        choice("activation", self.activation, ACTIVATIONS)
        choice("save_dtype", self.save_dtype, ("fp16", "bf16", "fp32"))
        for fmt in self.save_formats:
            choice("save_formats", fmt, SAVE_FORMATS[self.method])
        if self.family is not None:
            from .families import get_family

            try:
                get_family(self.family)
            except Exception as exc:
                raise ConfigError(f"family: {exc}") from None
        positive = ("max_train_steps", "learning_rate", "train_batch_size", "gradient_accumulation_steps", "rank", "num_vectors", "prior_loss_weight")
        for key in positive:
            if getattr(self, key) <= 0:
                raise ConfigError(f"{key} must be greater than 0 (got {getattr(self, key)})")
        for key in ("lr_warmup_steps", "checkpointing_steps", "validation_steps", "conv_rank", "noise_offset", "num_validation_images", "adam_weight_decay"):
            if getattr(self, key) < 0:
                raise ConfigError(f"{key} must not be negative (got {getattr(self, key)})")
        self._validate_captions()
        if self.concepts:
            from .data.concepts import validate_concepts

            validate_concepts(self, check_paths)
        if self.with_prior_preservation and self.num_class_images <= 0:
            raise ConfigError("num_class_images must be greater than 0 when with_prior_preservation is on")
        if self.resolution is not None and self.resolution <= 0:  # the multiple comes from the model (BaseModel.check_resolution)
            raise ConfigError(f"resolution must be greater than 0, or left unset for the model's own (got {self.resolution})")
        if self.ema_decay is not None and not 0 < self.ema_decay < 1:
            raise ConfigError(f"ema_decay must be between 0 and 1, e.g. 0.999, or left unset (got {self.ema_decay})")
        if self.publish_step_saves and not self.checkpointing_steps:
            raise ConfigError("publish_step_saves places the saves made every checkpointing_steps: set checkpointing_steps too")
        if self.eval_every_n_steps is not None and self.eval_every_n_steps < 0:
            raise ConfigError(f"eval_every_n_steps must not be negative (got {self.eval_every_n_steps}); 0 turns evaluation off")
        if self.eval_images < 2:
            raise ConfigError(f"eval_images must be at least 2 (diversity compares images; got {self.eval_images})")
        if self.select_best and self.eval_every_n_steps == 0:
            raise ConfigError("select_best chooses among evaluated steps: set eval_every_n_steps above 0 (or leave it unset)")
        if not 0 <= self.select_max_prompt_drop <= 1:
            raise ConfigError(f"select_max_prompt_drop must be between 0 and 1 (got {self.select_max_prompt_drop})")
        problem = self.memory_problem()
        if problem:
            raise ConfigError(problem)
        if self.memory_limit_gb is not None and self.memory_limit_gb <= 0:
            raise ConfigError(f"memory_limit_gb must be greater than 0, or left unset for the device's free memory (got {self.memory_limit_gb})")
        if self.ema_start_step < 0:
            raise ConfigError(f"ema_start_step must not be negative (got {self.ema_start_step})")
        if self.snr_gamma is not None and self.snr_gamma <= 0:
            raise ConfigError(f"snr_gamma must be greater than 0, or left unset (got {self.snr_gamma})")
        if not self.token.strip() or any(c.isspace() for c in self.token.strip()):
            raise ConfigError(f"token must be one word such as 'zwx' (got {self.token!r})")
        self.check_name()
        if self.method in ("dreambooth", "lora") and self.with_prior_preservation and not self.class_noun.strip() and not self.concepts:
            raise ConfigError("class_noun is needed for prior preservation: name the class of your subject, e.g. 'dog'")
        if self.network != "lora" and "peft" in self.save_formats:
            raise ConfigError(f"save_formats: a {self.network} network is saved in the LyCORIS layout the hosts read; 'peft' is for network = 'lora'")
        if self.method == "hypernetwork" and (len(self.layer_structure) < 2 or self.layer_structure[0] != 1 or self.layer_structure[-1] != 1):
            raise ConfigError(f"layer_structure must start and end with 1, e.g. [1, 2, 1] (got {self.layer_structure})")
        for tmpl_key in ("instance_prompt", "class_prompt"):
            try:
                self.render(getattr(self, tmpl_key))
            except (KeyError, IndexError, ValueError) as exc:
                raise ConfigError(f"{tmpl_key}: only {{token}} and {{class_noun}} may be used in braces ({exc})") from None
        if check_paths:
            if not self.base_model:
                raise ConfigError("base_model is not set: give a .safetensors/.ckpt checkpoint or a diffusers folder")
            if not Path(self.base_model).exists():
                raise ConfigError(f"base_model not found: {self.base_model}")
            if not self.instance_data_dir and not self.concepts:
                raise ConfigError("instance_data_dir is not set: give the folder with your subject's images")
            if not self.concepts and not Path(self.instance_data_dir).is_dir():
                raise ConfigError(f"instance_data_dir is not a folder: {self.instance_data_dir}")
            if self.resume_from not in (None, "", "latest") and not Path(self.resume_from).exists():
                raise ConfigError(f"resume_from not found: {self.resume_from} (use 'latest' or a state folder of an earlier run)")
        return self

    def _validate_captions(self) -> None:
        from .data.long_prompts import MAX_TOKEN_LENGTHS

        choice("max_token_length", self.max_token_length, MAX_TOKEN_LENGTHS)
        for key in ("caption_dropout_rate", "tag_dropout_rate"):
            if not 0 <= getattr(self, key) <= 1:
                raise ConfigError(f"{key} must be between 0 and 1 (got {getattr(self, key)})")
        if not 0 <= self.masked_loss_floor <= 1:
            raise ConfigError(f"masked_loss_floor must be between 0 and 1 (got {self.masked_loss_floor})")
        if self.keep_tokens < 0 or self.clip_skip < 1:
            raise ConfigError(f"keep_tokens must be 0 or more and clip_skip 1 or more (got {self.keep_tokens}, {self.clip_skip})")
        if not self.caption_separator.strip():
            raise ConfigError("caption_separator must not be empty or blank (the usual one is ',')")
        if self.caption_extension and not self.caption_extension.startswith("."):
            raise ConfigError(f"caption_extension must start with a dot, e.g. '.txt' (got {self.caption_extension!r})")

    @property
    def caption_options(self):
        from .data.captions import CaptionOptions

        return CaptionOptions(self.shuffle_caption, self.caption_separator, self.keep_tokens,
                              self.caption_dropout_rate, self.tag_dropout_rate)

    @property
    def text_encoding(self):
        from .train.prompts import TextEncoding

        return TextEncoding(self.max_token_length, self.clip_skip, self.weighted_captions)

    @property
    def preview_encoding(self):
        """Previews are prompted as A1111 and ComfyUI prompt: emphasis and BREAK always read."""
        import dataclasses

        return dataclasses.replace(self.text_encoding, emphasis=True)


    def check_name(self) -> None:
        """The run's name becomes folder and file names: it must be one plain path component."""
        what = "output_name" if self.output_name else "the run name made from token and class_noun"
        try:
            safe_name(self.name, what)
            if self.output_name and self.output_name != self.output_name.strip():
                raise ConfigError(f"output_name {self.output_name!r} must not start or end with spaces")
        except UserError as exc:
            raise ConfigError(str(exc)) from None


# Upper bounds for runs a client asks for over the network (A1111 tab and API, ComfyUI nodes):
# far past any sensible run, short of one that fills a disk or holds the GPU for weeks.
CLIENT_LIMITS = {"max_train_steps": 200_000, "num_class_images": 10_000, "resolution": 2048, "train_batch_size": 64,
                 "gradient_accumulation_steps": 1024, "num_validation_images": 16, "validation_inference_steps": 150,
                 "class_inference_steps": 150, "rank": 1024, "conv_rank": 1024, "num_vectors": 75,
                 "checkpointing_steps": 200_000, "validation_steps": 200_000, "eval_images": 16}


def check_client_limits(config: TrainConfig) -> TrainConfig:
    """ConfigError naming the first setting past its `CLIENT_LIMITS` bound."""
    for key, limit in CLIENT_LIMITS.items():
        value = getattr(config, key)
        if value is not None and value > limit:
            raise ConfigError(f"{key} is at most {limit} here (got {value})")
    if len(config.validation_prompts) > 16 or len(config.layer_structure) > 16:
        raise ConfigError("validation_prompts and layer_structure hold at most 16 entries here")
    return config


def choice(key: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{key} must be one of {', '.join(map(str, allowed))} (got {value!r})")


# ---- building configs from dicts, files and --set ---------------------------------------

FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
_HINTS = typing.get_type_hints(TrainConfig)


def coerce(key: str, value: Any) -> Any:
    """Convert `value` to the declared type of `key`, or raise ConfigError naming both."""
    hint = _HINTS[key]
    args = [a for a in get_args(hint) if a is not type(None)]
    if key in PATH_KEYS and value is not None:
        try:
            return text_value(value, key)  # a number or a list is no path
        except UserError as exc:
            raise ConfigError(str(exc)) from None
    if isinstance(value, str) and "\x00" in value:
        raise ConfigError(f"{key} contains a NUL byte: remove it")
    if value is None:
        if type(None) in get_args(hint):
            return None
        raise ConfigError(f"{key} cannot be empty")
    if get_origin(hint) is Literal:
        choice(key, value, get_args(hint))
        return value
    base = args[0] if args and get_origin(hint) is not list else hint
    origin = get_origin(base)
    try:
        if origin is list:
            (item,) = get_args(base)
            if isinstance(value, str):
                value = json.loads(value) if value.strip().startswith("[") else [v.strip() for v in value.split(",") if v.strip()]
            if not isinstance(value, (list, tuple)):
                raise TypeError
            return [coerce_scalar(item, v) for v in value]
        return coerce_scalar(base, value)
    except (TypeError, ValueError, json.JSONDecodeError):
        raise ConfigError(f"{key} expects {type_name(hint)} (got {value!r})") from None


def coerce_scalar(tp: Any, value: Any) -> Any:
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "on", "false", "no", "0", "off"):
            return value.lower() in ("true", "yes", "1", "on")
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise TypeError
    if tp is int:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise TypeError
        return int(value)
    if tp is float:
        if isinstance(value, bool):
            raise TypeError
        return float(value)
    if tp is str:
        if not isinstance(value, str):  # a number or a list is no name, prompt or path
            raise TypeError
        return value
    return value


def type_name(hint: Any) -> str:
    text = str(hint).replace("typing.", "")
    return {"<class 'int'>": "an integer", "<class 'float'>": "a number", "<class 'bool'>": "true or false", "<class 'str'>": "text"}.get(text, text)


def unknown_key(key: str) -> ConfigError:
    close = difflib.get_close_matches(key, FIELDS, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return ConfigError(f"unknown config key {key!r}{hint}")


def config_from_dict(data: dict[str, Any], base: TrainConfig | None = None) -> TrainConfig:
    values = dataclasses.asdict(base) if base else {}
    for key, value in data.items():
        if key not in FIELDS:
            raise unknown_key(key)
        values[key] = coerce(key, value)
    # A memory setting given explicitly is pinned; a whole config written out (to_dict: the worker's
    # payload, a run folder's config.json) carries its `pinned` list, which is then taken as it is.
    set_here = [] if "pinned" in data else [k for k in MEMORY_KEYS if k in data]
    values["pinned"] = list(dict.fromkeys([*values.get("pinned", []), *set_here]))
    return TrainConfig(**values)


def toml_loads(text: str) -> dict[str, Any]:
    """TOML text as a dict (tomllib, or tomli on Python 3.10); raises the parser's error (a ValueError)."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        try:
            import tomli as tomllib
        except ModuleNotFoundError:   # a host's Python without our requirements (the WebUI's own)
            raise ConfigError(f"reading TOML on Python {sys.version_info[0]}.{sys.version_info[1]} needs the tomli "
                              "package: install it into this Python (pip install tomli)") from None
    return tomllib.loads(text)


def read_config_file(path: str | Path) -> dict[str, Any]:
    """TOML, JSON or YAML by suffix; a top-level [train] table is accepted too."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    text = p.read_text(encoding="utf-8")
    try:
        if p.suffix == ".toml":
            data = toml_loads(text)
        elif p.suffix == ".json":
            data = json.loads(text)
        elif p.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text) or {}
        else:
            raise ConfigError(f"{p}: use a .toml, .json or .yaml config file")
    except ConfigError:
        raise
    except Exception as exc:
        raise ConfigError(f"{p} could not be parsed: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p} must hold a table of settings")
    return data.get("train", data) if isinstance(data.get("train"), dict) else data


def parse_set(items: list[str]) -> dict[str, Any]:
    """`--set key=value` pairs; values stay strings and are coerced by field type."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value (got {item!r})")
        key, value = item.split("=", 1)
        key = key.strip()
        if key not in FIELDS:
            raise unknown_key(key)
        out[key] = value
    return out


# ---- presets ---------------------------------------------------------------------------
# Defaults from the literature: DreamBooth (Ruiz et al.; diffusers' SD recipe), Textual
# Inversion (Gal et al.; lr 5e-3 scaled by batch), and the common LoRA recipe.

PRESETS: dict[str, dict[str, Any]] = {
    "dreambooth": dict(method="dreambooth", learning_rate=5e-6, max_train_steps=800, with_prior_preservation=True,
                       prior_loss_weight=1.0, num_class_images=200, train_text_encoder=False),
    "dreambooth-sd2": dict(method="dreambooth", learning_rate=2e-6, max_train_steps=800, with_prior_preservation=True,
                           prior_loss_weight=1.0, num_class_images=200),
    "dreambooth-lora": dict(method="lora", learning_rate=1e-4, max_train_steps=800, rank=16, alpha=8.0,
                            with_prior_preservation=True, num_class_images=100),
    "lora": dict(method="lora", learning_rate=1e-4, max_train_steps=1000, rank=16, alpha=8.0, with_prior_preservation=False),
    "textual_inversion": dict(method="textual_inversion", learning_rate=5e-3, max_train_steps=3000, num_vectors=1,
                              with_prior_preservation=False),
    "hypernetwork": dict(method="hypernetwork", learning_rate=5e-6, max_train_steps=2000, layer_structure=[1.0, 2.0, 1.0],
                         activation="linear", with_prior_preservation=False),
}


def load_config(
    path: str | Path | None = None,
    preset: str | None = None,
    overrides: dict[str, Any] | None = None,
    check_paths: bool = True,
) -> TrainConfig:
    """Preset < file < overrides, then validated. The one way every front end builds a config."""
    cfg = TrainConfig()
    if preset:
        if preset not in PRESETS:
            raise ConfigError(f"unknown preset {preset!r}: use one of {', '.join(PRESETS)}")
        cfg = config_from_dict(PRESETS[preset], cfg)
    if path:
        cfg = config_from_dict(read_config_file(path), cfg)
    if overrides:
        cfg = config_from_dict(overrides, cfg)
    return expand_paths(cfg).validate(check_paths=check_paths)


def client_paths(cfg: TrainConfig) -> list[tuple[str, str]]:
    """(what, path) for every path a config will read or write, its concepts' folders (also
    those a kohya dataset TOML named) included: what a front end serving clients must confine."""
    out = [(key, getattr(cfg, key)) for key in PATH_KEYS
           if getattr(cfg, key) and not (key == "resume_from" and getattr(cfg, key) == "latest")]
    for i, concept in enumerate(cfg.concepts):
        out += [(f"concepts[{i}].{key}", concept[key]) for key in CONCEPT_PATH_KEYS if concept.get(key)]
    return out


def expand_paths(cfg: TrainConfig) -> TrainConfig:
    """Each path expanded once (`~`) and resolved, so every later join sees the real folder."""
    for key in PATH_KEYS:
        value = getattr(cfg, key)
        if value and not (key == "resume_from" and value == "latest"):
            try:
                setattr(cfg, key, str(real_path(value, key)))
            except UserError as exc:
                raise ConfigError(str(exc)) from None
    return cfg
