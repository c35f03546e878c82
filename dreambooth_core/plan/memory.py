"""The memory plan of a run: bytes by part, the total, and which cards it fits.

`plan_memory` needs no weights: the architecture comes from an in-memory model, from a
model file's header (safetensors: the header only), or from a family's shipped configs.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import UserError

if TYPE_CHECKING:
    from ..config import TrainConfig
    from ..families import Family
    from ..models.base import BaseModel

GiB = 2**30
CARD_SIZES_GB = (6, 8, 12, 16, 24)
# what a CUDA context, the allocator's fragmentation and the host's own tensors take beyond the plan
CARD_RESERVE = 0.10
# the settings a plan depends on (and reports)
PLAN_KEYS = ("method", "mixed_precision", "gradient_checkpointing", "optimizer", "fused_optimizer_step", "full_bf16",
             "cache_latents", "pack_frozen_convolutions", "frozen_weights_dtype",
             "train_batch_size", "with_prior_preservation", "train_text_encoder", "rank", "conv_rank", "num_vectors",
             "layer_structure", "num_validation_images", "memory")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


@dataclass
class MemoryPlan:
    parts: dict[str, int]
    settings: dict[str, Any]
    device: str = "cpu"
    choices: list[str] = field(default_factory=list)   # the savings memory="auto" added, in order
    preview_bytes: int = 0   # what validation previews bring back from the CPU while they draw

    @property
    def total_bytes(self) -> int:
        return sum(self.parts.values())

    def fits(self, gb: float) -> bool:
        """Whether the run fits a device with `gb` GiB free, keeping CARD_RESERVE of it spare."""
        return self.total_bytes <= gb * GiB * (1 - CARD_RESERVE)

    def to_dict(self) -> dict[str, Any]:
        return {"parts": dict(self.parts), "total_bytes": self.total_bytes, "settings": dict(self.settings),
                "device": self.device, "choices": list(self.choices), "preview_bytes": self.preview_bytes,
                "fits": {str(gb): self.fits(gb) for gb in CARD_SIZES_GB}}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "MemoryPlan":
        """The plan `to_dict` wrote (e.g. `dreambooth-core plan --json` in another Python)."""
        return cls(parts={k: int(v) for k, v in data["parts"].items()}, settings=dict(data["settings"]), device=data["device"],
                   choices=list(data.get("choices", [])), preview_bytes=int(data.get("preview_bytes", 0)))

    def describe(self) -> str:
        s = self.settings
        lines = [f"memory plan for {s['method']} on {s['family']} at {s['resolution']} px, batch {s['train_batch_size']} ({self.device}):"]
        lines += [f"  {name.replace('_', ' '):<22}{b / GiB:8.2f} GiB" for name, b in self.parts.items()]
        lines.append(f"  {'total':<22}{self.total_bytes / GiB:8.2f} GiB")
        lines.append("  fits: " + ", ".join(f"{gb} GB {'yes' if self.fits(gb) else 'no'}" for gb in CARD_SIZES_GB))
        keys = ("mixed_precision", "gradient_checkpointing", "optimizer", "fused_optimizer_step", "full_bf16", "cache_latents",
                "pack_frozen_convolutions", "frozen_weights_dtype")
        lines.append("  settings: " + ", ".join(f"{k}={s[k]}" for k in keys))
        if s["full_bf16"]:
            lines.append("  full_bf16: the trained weights are stored in bf16, which costs precision (each update is rounded to 8 bits)")
        if self.choices:
            lines.append("  chosen by memory=auto: " + "; ".join(self.choices))
        if self.preview_bytes:
            lines.append(f"  validation previews bring the cached-away VAE/text encoders back from the CPU: "
                         f"+{self.preview_bytes / GiB:.2f} GiB while they draw (gradients are freed then)")
        return "\n".join(lines)

    @staticmethod
    def summary_of(described: str) -> str | None:
        """One line of a `describe()` text (a host's status line shows it): the run, its total
        and the card sizes it fits; None for any other text."""
        lines = described.splitlines()
        if not lines or not lines[0].startswith("memory plan for "):
            return None
        total = next((l.split()[-2] for l in lines if l.strip().startswith("total")), "?")
        fits = next((l.strip().removeprefix("fits: ") for l in lines if l.strip().startswith("fits:")), "")
        return f"{lines[0].rstrip(':')}: {total} GiB planned; fits {fits}"

    def write(self, path: Path) -> None:
        from ..fileio import write_text_atomic

        write_text_atomic(path, json.dumps(self.to_dict(), indent=2))


class UnreadableWithoutLoading(UserError):
    """A model file whose architecture only loading it would tell (a pickled .ckpt with no family given)."""


def architecture(config: "TrainConfig", model: "BaseModel | None" = None) -> tuple["Family", dict[str, Any]]:
    """(family, component configs) of the run's model, without loading any weights."""
    from ..families import FAMILIES, get_family
    from ..models.configs import model_configs, shipped_configs

    if model is not None:
        return model.family, model_configs(model)
    path = Path(config.base_model) if config.base_model else None
    if path is None or not path.exists():
        if config.family is None:
            raise UserError(f"nothing to plan for: give base_model (a model file) or a family ({', '.join(FAMILIES)})")
        fam = get_family(config.family)
        return fam, shipped_configs(fam)
    if path.is_dir():
        from ..models.detect import detect_diffusers_family

        fam = detect_diffusers_family(path, config.family)
        configs = shipped_configs(fam)
        for name in configs:
            f = path / name / "config.json"
            if name != "scheduler" and f.is_file():
                configs[name] = json.loads(f.read_text())
        return fam, configs
    if path.suffix.lower() != ".safetensors":
        fam = get_family(config.family) if config.family else None
        if fam is None:
            raise UnreadableWithoutLoading(f"{path.name}: only a .safetensors header can be read without loading; "
                                           "set family to plan for it")
        return fam, shipped_configs(fam)
    from ..fileio import read_safetensors_metadata, read_shapes
    from ..formats.checkpoint import normalized_key_names
    from ..models.detect import detect_family
    from ..models.configs import single_file_configs

    stored, metadata = read_shapes(path), read_safetensors_metadata(path)
    shapes = {k: stored[old] for k, old in normalized_key_names(stored).items()}
    fam = detect_family(shapes, metadata, path.with_suffix(".yaml"), requested=config.family, what=str(path))
    return fam, single_file_configs(shapes, metadata, fam, str(path))


def cache_bytes(config: "TrainConfig", family: "Family", resolution: int, configs_vae_blocks: list) -> int:
    """Host memory of the latent cache (mean and std per image) and the prompt-embedding cache."""
    folder = Path(config.instance_data_dir) if config.instance_data_dir else None
    images = sum(1 for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES) if folder and folder.is_dir() else 0
    images += config.num_class_images if config.with_prior_preservation else 0
    side = resolution // 2 ** (len(configs_vae_blocks) - 1)
    latents = 2 * 4 * side**2 * 4 if config.cache_latents else 0
    return images * latents + 2 * 77 * sum(family.context_dims) * 4


def plan_memory(config: "TrainConfig", model: "BaseModel | None" = None, device: str = "cpu",
                arch: tuple["Family", dict[str, Any]] | None = None) -> MemoryPlan:
    """The bytes one training step of `config` holds on `device` ("cpu", "cuda", "mps"), by part."""
    from .simulate import simulate_step

    family, configs = arch or architecture(config, model)
    resolution = config.resolution or family.resolution
    step = simulate_step(config, family, configs, resolution, device)
    parts = step.parts()
    if device != "cpu":
        parts.pop("packed_convolutions")
    parts["caches"] = cache_bytes(config, family, resolution, configs["vae"]["block_out_channels"]) if device == "cpu" else 0
    settings = {k: getattr(config, k) for k in PLAN_KEYS} | {"family": family.name, "resolution": resolution}
    return MemoryPlan(parts=parts, settings=settings, device=device, preview_bytes=step.parked)


def free_memory(device: str) -> int:
    """Bytes free on the device a run will use (its memory now, not its size)."""
    import torch

    if device == "cuda":
        return torch.cuda.mem_get_info()[0]
    if device == "mps":
        return int(torch.mps.recommended_max_memory() - torch.mps.driver_allocated_memory())
    import psutil

    return psutil.virtual_memory().available


def run_device() -> str:
    """The device type accelerate will train on here."""
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"

