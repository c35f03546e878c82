"""What a training method is to the loop: which weights train, how they are saved.

The loop knows nothing of LoRA, embeddings or hypernetworks: it asks the method to set the
model up, for the parameter groups to optimise, for a state dict of exactly the trained
weights (to resume), and to save its artifact(s) through the formats layer.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    import torch

    from ..config import TrainConfig
    from ..events import Artifact
    from ..models.base import BaseModel


@dataclass
class SaveInfo:
    """What every artifact records: where it goes and the facts hosts show about it."""

    out_dir: Path
    stem: str                  # file stem, e.g. "zwx_dog" or "zwx_dog-step400"
    step: int
    final: bool
    overwrite: bool
    base_model: str            # file name of the base model
    base_model_hash: str
    metadata: dict[str, str] = field(default_factory=dict)   # training facts (ss_* and ours)


class Method:
    """One way of personalising a model. Subclasses set the class attributes and fill in
    `prepare`, `trainable_modules` and `save`."""

    name: ClassVar[str]
    # True when intermediate artifacts are cheap enough to write at every checkpoint
    small_artifacts: ClassVar[bool] = True

    def __init__(self, config: "TrainConfig", model: "BaseModel"):
        self.config = config
        self.model = model

    # ---- set-up ----------------------------------------------------------------------
    @property
    def trains_text_encoder(self) -> bool:
        """Whether the text encoder(s) are in the graph being trained (no caption cache then)."""
        return False

    @property
    def needs_full_model(self) -> bool:
        """Whether saving writes the whole model (so the VAE and text encoders must be kept)."""
        return False

    @classmethod
    def full_precision_components(cls, config: "TrainConfig") -> tuple[str, ...]:
        """Components kept in fp32 whatever the compute dtype: weights that train in full, or
        that are saved again, must not be rounded to bf16 or fp16 on the way."""
        return ()

    @classmethod
    def load_dtypes(cls, config: "TrainConfig", weight_dtype: "torch.dtype") -> dict[str, "torch.dtype"]:
        """The dtype each base-model component is loaded in: frozen parts go straight to the
        compute dtype, so no full fp32 copy of them ever exists."""
        import torch

        from ..models.configs import COMPONENTS

        keep = cls.full_precision_components(config)
        return {c: torch.float32 if c in keep else weight_dtype for c in COMPONENTS}

    def setup(self, weight_dtype: "torch.dtype") -> None:
        """Freeze the whole model (in `load_dtypes`), then let the method add/unfreeze its
        weights, which are kept in fp32 (mixed-precision training updates fp32 masters)
        unless `trained_dtype` says otherwise."""
        m = self.model
        dtypes = self.load_dtypes(self.config, weight_dtype)
        for name, module in {"unet": m.unet, "vae": m.vae, **dict(zip(m.family.text_encoders, m.text_encoders))}.items():
            module.requires_grad_(False)
            if module.dtype != dtypes[name]:
                module.to(dtype=dtypes[name])
            module.eval()
        self.prepare()
        trained = self.trained_dtype(self.config)
        for p in self.parameters():
            p.data = p.data.to(trained)
        if self.config.frozen_weights_dtype == "fp8":
            self.store_frozen_in_fp8()

    def store_frozen_in_fp8(self) -> None:
        """frozen_weights_dtype="fp8": the UNet's and text encoders' frozen layers keep their
        weights in 8-bit float (train/fp8_weights.py); components kept in full precision, the
        VAE and trained layers stay as they are."""
        from ..train.fp8_weights import store_in_fp8

        m = self.model
        keep = self.full_precision_components(self.config)
        for name, module in {"unet": m.unet, **dict(zip(m.family.text_encoders, m.text_encoders))}.items():
            if name not in keep:
                store_in_fp8(module)

    @staticmethod
    def trained_dtype(config: "TrainConfig") -> "torch.dtype":
        """fp32 masters, or bf16 with `full_bf16` (full fine-tuning on small cards; the
        updates are rounded to bf16's 8 bits, to nearest: no stochastic rounding)."""
        import torch

        return torch.bfloat16 if config.full_bf16 else torch.float32

    def prepare(self) -> None:
        """Add or unfreeze the trained weights (called with everything frozen)."""
        raise NotImplementedError

    def trainable_modules(self) -> dict[str, "torch.nn.Module"]:
        """Named modules whose parameters with requires_grad train (their state dicts resume)."""
        raise NotImplementedError

    def parameters(self) -> list["torch.nn.Parameter"]:
        return [p for group in self.param_groups() for p in group["params"]]

    def param_groups(self) -> list[dict]:
        """Optimizer groups; text-encoder weights get `text_encoder_learning_rate` if set."""
        cfg = self.config
        groups: list[dict] = []
        for key, module in self.trainable_modules().items():
            params = [p for p in module.parameters() if p.requires_grad]
            if not params:
                continue
            lr = cfg.text_encoder_learning_rate if key.startswith("text_encoder") and cfg.text_encoder_learning_rate else cfg.learning_rate
            groups.append({"params": params, "lr": lr, "name": key})
        return groups

    def enable_gradient_checkpointing(self) -> None:
        self.model.unet.enable_gradient_checkpointing()
        if self.trains_text_encoder:
            for te in self.model.text_encoders:
                enable = getattr(te, "activation_checkpointing_enable", None) or te.gradient_checkpointing_enable
                enable({"use_reentrant": False})

    def train(self, mode: bool = True) -> None:
        for module in self.trainable_modules().values():
            module.train(mode)

    def finish(self) -> None:
        """Called once after the last step: make the in-memory model the trained model."""

    # ---- resuming --------------------------------------------------------------------
    def state_dict(self) -> dict[str, "torch.Tensor"]:
        """Exactly the trained weights, as `<module key>/<param name>`."""
        out = {}
        for key, module in self.trainable_modules().items():
            for name, p in module.named_parameters():
                if p.requires_grad:
                    out[f"{key}/{name}"] = p.detach()
        return out

    def load_state_dict(self, sd: dict[str, "torch.Tensor"]) -> None:
        import torch

        own = self.state_dict()
        missing = sorted(set(own) - set(sd))
        unexpected = sorted(set(sd) - set(own))
        if missing or unexpected:
            from ..errors import UserError

            raise UserError(
                f"the saved training state does not match this {self.name} run "
                f"({len(missing)} weights missing, {len(unexpected)} unexpected, e.g. {(missing + unexpected)[0]}): "
                "resume with the same method and settings, or start a new run"
            )
        params = {f"{key}/{name}": p for key, module in self.trainable_modules().items() for name, p in module.named_parameters()}
        with torch.no_grad():
            for k, v in sd.items():
                params[k].copy_(v)

    # ---- prompts and saving ----------------------------------------------------------
    def prompt(self, text: str) -> str:
        """The prompt as this model's tokenizer must see it (TI expands multi-vector tokens)."""
        return text

    def save(self, info: SaveInfo) -> list["Artifact"]:
        """Write the artifact(s) into `info.out_dir` through the formats layer."""
        raise NotImplementedError

    def host_path(self, info: SaveInfo) -> Path:
        """The file a host lists: the stem with the suffix of this method's artifact kind."""
        from ..registry import method_kind, suffix

        return info.out_dir / f"{info.stem}{suffix(method_kind(self.name))}"

    def host_artifact(self, path: Path, info: SaveInfo) -> "Artifact":
        """The event for a file written at `host_path`, with the prompt text A1111 uses for it."""
        from ..events import Artifact
        from ..registry import KINDS, method_kind

        kind = method_kind(self.name)
        return Artifact(kind=kind, path=str(path), name=info.stem, prompt_hint=KINDS[kind].hint(info.stem), final=info.final)

    def trigger(self, info: SaveInfo) -> str:
        """What to write in a prompt to get the subject (the instance prompt, by default)."""
        return self.config.instance_prompt_text

    def common_metadata(self, info: SaveInfo) -> dict[str, str]:
        """Facts every artifact records: base model, method, steps, trigger."""
        from .. import __version__

        cfg = self.config
        return {
            "dreambooth_core.version": __version__,
            "dreambooth_core.method": self.name,
            "dreambooth_core.base_model": info.base_model,
            "dreambooth_core.base_model_hash": info.base_model_hash,
            "dreambooth_core.family": self.model.family.name,
            "dreambooth_core.steps": str(info.step),
            "dreambooth_core.trigger": self.trigger(info),
            "dreambooth_core.token": cfg.token,
            **info.metadata,
        }
