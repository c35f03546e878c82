"""Train LoRA, Train DreamBooth, Train Textual Inversion, Train Hypernetwork.

One base class holds what they share (base checkpoint, dataset, concept, preset, the
common hyper-parameters, resume, free-form options, and the run itself); each method
adds its own inputs and says how its file is applied to MODEL/CLIP.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from comfy_api.latest import io, ui
from comfy_execution.graph_utils import ExecutionBlocker

from dreambooth_core.config import (ACTIVATIONS, PATH_KEYS, PRESETS, SAVE_FORMATS, TrainConfig, check_client_limits, client_paths, load_config,
                                    parse_set)
from dreambooth_core.errors import UserError
from dreambooth_core.registry import method_kind
from dreambooth_core.lifecycle import source_signature

from . import host
from .images import load_images
from .runner import Trained, train
from .types import Concept, ConceptType, DatasetType, TrainingImages, concept_settings, source_signatures

CATEGORY = "DreamBooth"
MAX_SEED = 2**31 - 1
OPTIONS_PLACEHOLDER = ("more settings, one per line (any training config key), e.g.\n"
                       "validation_steps = 100\nmixed_precision = fp16\noutput_name = my_dog")


def parse_options(text: str) -> dict[str, str]:
    """`key = value` lines (blank lines and # comments ignored) as TrainConfig overrides.
    Paths are the node's inputs' business (ComfyUI's lists and folders), never free text here."""
    items = []
    for line in (raw.strip() for raw in text.splitlines()):
        if line and not line.startswith("#"):
            key, sep, value = line.partition("=")
            items.append(f"{key.strip()}={value.strip()}" if sep else line)
    options = parse_set(items)
    refused = [key for key in options if key in PATH_KEYS and key != "dataset_config" or key == "concepts"]
    if refused:
        raise UserError(f"options: {', '.join(refused)} cannot be set here; the checkpoint, dataset and concept inputs "
                        "choose the files, and runs are kept in ComfyUI's output/dreambooth folder")
    return options


def unconnected(message: str) -> ExecutionBlocker:
    """An output that stops the nodes fed by it with `message` as their error."""
    return ExecutionBlocker(message)


class TrainNode(io.ComfyNode):
    """Shared by the four training nodes (not registered itself)."""

    METHOD: ClassVar[str]
    NODE_ID: ClassVar[str]
    DISPLAY_NAME: ClassVar[str]
    DESCRIPTION: ClassVar[str]

    # ---- schema ------------------------------------------------------------------------
    @classmethod
    def presets(cls) -> list[str]:
        """The method's presets, its plain one first (the default)."""
        names = [name for name, values in PRESETS.items() if values["method"] == cls.METHOD]
        return sorted(names, key=lambda name: name != cls.METHOD)

    @classmethod
    def method_inputs(cls) -> list[io.Input]:
        return []

    @classmethod
    def result_outputs(cls) -> list[io.Output]:
        return []

    @classmethod
    def define_schema(cls) -> io.Schema:
        inputs = [
            io.Combo.Input("checkpoint", options=host.checkpoint_names(),
                           tooltip="Base model to train on (ComfyUI's checkpoints list)"),
            DatasetType.Input("dataset", optional=True,
                              tooltip="From Load Training Images (needed unless every chained Concept has its own images)"),
            ConceptType.Input("concept", tooltip="From Concept (or the last of a chain of Concepts)"),
            io.Combo.Input("preset", options=cls.presets(), default=cls.presets()[0],
                           tooltip="Defaults from the literature; the inputs below override them"),
            io.Int.Input("steps", default=0, min=0, max=200000, tooltip="Training steps; 0: the preset's"),
            io.Float.Input("learning_rate", default=0.0, min=0.0, max=1.0, step=0.000001, round=0.0000001,
                           tooltip="0: the preset's"),
            *cls.method_inputs(),
            io.Int.Input("resolution", default=0, min=0, max=2048, step=64, tooltip="Training resolution; 0: the model's native one"),
            io.Int.Input("seed", default=0, min=0, max=MAX_SEED),
            io.Boolean.Input("resume", default=True, label_on="continue an interrupted run", label_off="start over",
                             tooltip="After a Cancel (or a crash), queueing again continues from the saved state"),
            io.String.Input("options", default="", multiline=True, placeholder=OPTIONS_PLACEHOLDER,
                            tooltip="Any other training setting as key = value lines"),
        ]
        outputs = [
            io.String.Output("file_name", display_name="file_name", tooltip="The saved file, as ComfyUI's loaders list it"),
            io.String.Output("prompt", display_name="prompt", tooltip="The instance prompt, ready for CLIP Text Encode"),
            *cls.result_outputs(),
            io.Image.Output("loss_curve", display_name="loss_curve"),
            io.Image.Output("samples", display_name="samples", tooltip="The last validation images"),
        ]
        return io.Schema(node_id=cls.NODE_ID, display_name=cls.DISPLAY_NAME, category=CATEGORY, description=cls.DESCRIPTION,
                         inputs=inputs, outputs=outputs, hidden=[io.Hidden.unique_id], is_output_node=True)

    @classmethod
    def validate_inputs(cls, checkpoint: str | None = None) -> bool | str:
        """A clear message instead of 'Value not in list' when the checkpoint is missing,
        when the graph is queued. (ComfyUI files the message under every input named here,
        so only the checkpoint is.) A linked value arrives as None: checked when run."""
        if checkpoint is None:
            return True
        try:
            host.model_path("checkpoints", checkpoint)
        except UserError as exc:
            return str(exc)
        return True

    # ---- run -----------------------------------------------------------------------------
    @classmethod
    def method_values(cls, **inputs: Any) -> dict[str, Any]:
        """TrainConfig values of the method's own inputs."""
        return {}

    @classmethod
    def build_config(cls, checkpoint: str, dataset: TrainingImages | None, concept: Concept, preset: str, steps: int,
                     learning_rate: float, resolution: int, seed: int, options: str, planning: bool = False,
                     **method: Any) -> TrainConfig:
        """The run's config; `planning` (the plan before queueing, nodes/plan.py) lets the images be unknown yet."""
        values: dict[str, Any] = {
            "method": cls.METHOD,
            "base_model": str(host.model_path("checkpoints", checkpoint)),
            "seed": seed,
            **concept_settings(concept, dataset, need_images=not planning),
            **cls.method_values(**method),
        }
        if steps > 0:
            values["max_train_steps"] = steps
        if learning_rate > 0:
            values["learning_rate"] = learning_rate
        if resolution > 0:
            values["resolution"] = resolution
        values.update(parse_options(options))
        if values.get("dataset_config"):
            values["dataset_config"] = str(host.input_path(values["dataset_config"], "dataset_config"))
        config = check_client_limits(load_config(preset=preset, overrides=values, check_paths=not planning))
        for what, value in client_paths(config):   # the folders a dataset TOML names, too
            # the runner puts every run under runs_root(); the checkpoint is one of ComfyUI's own list,
            # which may be a link to a models folder elsewhere (shared model folders often are)
            if what not in ("output_dir", "base_model"):
                host.input_path(value, what)
        if not config.eval_encoder:   # a CLIP / DINOv2 file in models/clip_vision measures the run (evaluate/)
            found = host.encoder_file()
            config.eval_encoder = str(found) if found else ""
        host_format = SAVE_FORMATS[cls.METHOD][0]  # the format ComfyUI loads is always written
        if host_format not in config.formats:
            config.save_formats = [host_format, *config.save_formats]
        return config

    @classmethod
    def execute(cls, checkpoint: str, concept: Concept, preset: str, steps: int, learning_rate: float, resolution: int,
                seed: int, resume: bool, options: str, dataset: TrainingImages | None = None, **method: Any) -> io.NodeOutput:
        graph = {k: method.pop(k) for k in ("model", "clip", "strength") if k in method}
        config = cls.build_config(checkpoint, dataset, concept, preset, steps, learning_rate, resolution, seed, options, **method)
        sources = {"base_model": source_signature(config.base_model), **source_signatures(concept, dataset)}
        trained = train(config, method_kind(cls.METHOD), sources, cls.hidden.unique_id if cls.hidden else None, resume)
        curves = Path(trained.run.loss_plot).parent / "eval" / "eval.png" if trained.run.loss_plot else None
        plot = [p for p in [trained.run.loss_plot, curves] if p and Path(p).is_file()]   # the loss, then the evaluation
        sample_files = [p for p in trained.run.samples if Path(p).is_file()]
        loss = load_images(plot) if plot else None
        samples = load_images(sample_files) if sample_files else None
        shown = [ui.PreviewImage(t, cls=cls).as_dict()["images"] for t in (loss, samples) if t is not None]
        return io.NodeOutput(
            trained.file_name, cls.prompt(trained), *cls.apply(trained, **graph),
            loss if loss is not None else ExecutionBlocker(None),
            samples if samples is not None else ExecutionBlocker(None),
            ui={"images": [image for group in shown for image in group]},
        )

    @classmethod
    def prompt(cls, trained: Trained) -> str:
        return trained.config.instance_prompt_text

    @classmethod
    def apply(cls, trained: Trained, **graph: Any) -> tuple:
        return ()


class TrainLoRA(TrainNode):
    METHOD = "lora"
    NODE_ID, DISPLAY_NAME = "DreamBoothTrainLoRA", "Train LoRA"
    DESCRIPTION = ("Train a LoRA (kohya format, loads in LoraLoader and A1111). Connect MODEL and CLIP of the same "
                   "base checkpoint to get them back with the LoRA applied.")

    @classmethod
    def method_inputs(cls) -> list[io.Input]:
        return [
            io.Int.Input("rank", default=0, min=0, max=1024, tooltip="LoRA rank; 0: the preset's (16)"),
            io.Float.Input("alpha", default=0.0, min=0.0, max=1024.0, step=0.5, tooltip="LoRA alpha (strength = alpha/rank); 0: the preset's"),
            io.Boolean.Input("train_text_encoder", default=False),
            io.Model.Input("model", optional=True, tooltip="MODEL to apply the trained LoRA to"),
            io.Clip.Input("clip", optional=True, tooltip="CLIP to apply the trained LoRA to"),
            io.Float.Input("strength", default=1.0, min=-10.0, max=10.0, step=0.01, tooltip="Strength on MODEL and CLIP"),
        ]

    @classmethod
    def result_outputs(cls) -> list[io.Output]:
        return [io.Model.Output("lora_model", display_name="MODEL"), io.Clip.Output("lora_clip", display_name="CLIP")]

    @classmethod
    def method_values(cls, rank: int, alpha: float, train_text_encoder: bool) -> dict[str, Any]:
        values: dict[str, Any] = {"train_text_encoder": train_text_encoder}
        if rank > 0:
            values["rank"] = rank
        if alpha > 0:
            values["alpha"] = alpha
        return values

    @classmethod
    def apply(cls, trained: Trained, model: Any = None, clip: Any = None, strength: float = 1.0) -> tuple:
        hint = f"connect MODEL and CLIP to Train LoRA to get them back with {trained.file_name} applied (or use LoraLoader)"
        if model is None and clip is None:
            return unconnected(hint), unconnected(hint)
        new_model, new_clip = host.apply_lora(model, clip, trained.path, strength)
        return (new_model if new_model is not None else unconnected(hint),
                new_clip if new_clip is not None else unconnected(hint))


class TrainDreamBooth(TrainNode):
    METHOD = "dreambooth"
    NODE_ID, DISPLAY_NAME = "DreamBoothTrainDreamBooth", "Train DreamBooth"
    DESCRIPTION = ("Fine-tune the whole model (DreamBooth, with prior preservation from the Concept) and save a "
                   "checkpoint into ComfyUI's checkpoints folder; outputs its MODEL, CLIP and VAE.")

    @classmethod
    def method_inputs(cls) -> list[io.Input]:
        return [io.Boolean.Input("train_text_encoder", default=False)]

    @classmethod
    def result_outputs(cls) -> list[io.Output]:
        return [io.Model.Output("trained_model", display_name="MODEL"), io.Clip.Output("trained_clip", display_name="CLIP"),
                io.Vae.Output("trained_vae", display_name="VAE")]

    @classmethod
    def method_values(cls, train_text_encoder: bool) -> dict[str, Any]:
        return {"train_text_encoder": train_text_encoder}

    @classmethod
    def apply(cls, trained: Trained, **graph: Any) -> tuple:
        return host.load_checkpoint(trained.path)


class TrainTextualInversion(TrainNode):
    METHOD = "textual_inversion"
    NODE_ID, DISPLAY_NAME = "DreamBoothTrainTextualInversion", "Train Textual Inversion"
    DESCRIPTION = ("Learn new token vectors only (an embedding); use it as embedding:NAME in a prompt. "
                   "The prompt output already says it that way.")

    @classmethod
    def method_inputs(cls) -> list[io.Input]:
        return [
            io.Int.Input("num_vectors", default=0, min=0, max=75, tooltip="Vectors per token; 0: the preset's (1)"),
            io.String.Input("init_word", default="", tooltip="Word to start from; empty: the class noun"),
            io.Clip.Input("clip", optional=True, tooltip="Passed through: ComfyUI's CLIP reads embeddings by name"),
        ]

    @classmethod
    def result_outputs(cls) -> list[io.Output]:
        return [io.Clip.Output("embedding_clip", display_name="CLIP")]

    @classmethod
    def method_values(cls, num_vectors: int, init_word: str) -> dict[str, Any]:
        values: dict[str, Any] = {"init_word": init_word.strip()}
        if num_vectors > 0:
            values["num_vectors"] = num_vectors
        return values

    @classmethod
    def prompt(cls, trained: Trained) -> str:
        cfg = trained.config
        return cfg.instance_prompt.format(token=f"embedding:{trained.path.stem}", class_noun=cfg.class_noun).strip()

    @classmethod
    def apply(cls, trained: Trained, clip: Any = None) -> tuple:
        if clip is None:
            return (unconnected(f"connect CLIP to Train Textual Inversion to pass it on (embedding:{trained.path.stem} "
                                "works with any CLIP of the same base model)"),)
        return (clip,)


class TrainHypernetwork(TrainNode):
    METHOD = "hypernetwork"
    NODE_ID, DISPLAY_NAME = "DreamBoothTrainHypernetwork", "Train Hypernetwork"
    DESCRIPTION = "Train an A1111-style hypernetwork (.pt, loads in HypernetworkLoader); applied to a connected MODEL."

    @classmethod
    def method_inputs(cls) -> list[io.Input]:
        return [
            io.String.Input("layer_structure", default="", placeholder="1, 2, 1", tooltip="Layer widths; empty: the preset's"),
            io.Combo.Input("activation", options=list(ACTIVATIONS), default="linear"),
            io.Model.Input("model", optional=True, tooltip="MODEL to apply the trained hypernetwork to"),
            io.Float.Input("strength", default=1.0, min=-10.0, max=10.0, step=0.01),
        ]

    @classmethod
    def result_outputs(cls) -> list[io.Output]:
        return [io.Model.Output("hypernetwork_model", display_name="MODEL")]

    @classmethod
    def method_values(cls, layer_structure: str, activation: str) -> dict[str, Any]:
        values: dict[str, Any] = {"activation": activation}
        if layer_structure.strip():
            values["layer_structure"] = layer_structure
        return values

    @classmethod
    def apply(cls, trained: Trained, model: Any = None, strength: float = 1.0) -> tuple:
        if model is None:
            return (unconnected(f"connect MODEL to Train Hypernetwork to get it back with {trained.file_name} applied "
                                "(or use HypernetworkLoader)"),)
        return (host.apply_hypernetwork(model, trained.path, strength),)


TRAIN_NODES = [TrainLoRA, TrainDreamBooth, TrainTextualInversion, TrainHypernetwork]
