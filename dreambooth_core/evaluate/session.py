"""One run's (or one artifact's) evaluation: which scorer, the fixed set, the photos, the base
model's class images, and the measures as they come, kept in `<run>/eval/`:

    eval/eval.csv, eval/eval.png     the measures per evaluated step
    eval/base_class/<key>/i.png      the base model's class images (drawn once)
    eval/best.safetensors            select_best: the weights of the best step so far
"""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import UserError
from . import curves
from .evalset import EvalSet, base_class_images, draw_set, instance_photos
from .scorers import EncoderScorer, Scorer, ToyScorer

if TYPE_CHECKING:
    import torch
    from PIL import Image

    from ..config import TrainConfig
    from ..models.base import BaseModel

HOW_TO_ENABLE = ("evaluation is off: set eval_encoder to a CLIP or DINOv2 .safetensors file (e.g. one from ComfyUI's "
                 "models/clip_vision) to measure subject fidelity, prompt fidelity and prior drift during training")


def is_toy_model(base_model: str, model_name: str = "") -> bool:
    from ..toy.model import TOY_MODEL_PATH

    return bool(base_model) and Path(base_model).resolve() == TOY_MODEL_PATH.resolve() or model_name == "toy-sd1"


def find_scorer(encoder: str, base_model: str = "", model_name: str = "") -> Scorer | None:
    """The encoder file named (or the first found in a folder named), else the toy world's
    evaluator for the toy model, else None."""
    from .encoders import find_encoder, load_encoder

    if encoder:
        path = Path(encoder)
        if path.is_dir():
            found = find_encoder([path])
            if found is not None:
                return EncoderScorer(load_encoder(found))
        elif path.exists():
            return EncoderScorer(load_encoder(path))
        else:
            raise UserError(f"eval_encoder not found: {encoder}")
    if is_toy_model(base_model, model_name):
        return ToyScorer()
    return None


def evalset_for(cfg: "TrainConfig", scorer: Scorer, resolution: int) -> EvalSet:
    return EvalSet.build(cfg.instance_prompt_text, cfg.class_prompt_text, cfg.token, scorer.contexts,
                         scorer.controls, images_per_prompt=cfg.eval_images, steps=cfg.validation_inference_steps,
                         guidance_scale=cfg.guidance_scale, sampler=cfg.validation_scheduler,
                         resolution=resolution, negative_prompt=cfg.negative_prompt)


@dataclass
class Session:
    scorer: Scorer
    evalset: EvalSet
    instance: list["Image.Image"]
    folder: Path
    base_class: list["Image.Image"] = field(default_factory=list)

    @classmethod
    def start(cls, scorer: Scorer, evalset: EvalSet, instance_dir: str | Path, folder: Path, base: "BaseModel",
              model_id: str, autocast=nullcontext) -> "Session":
        """Read the photos and draw (or reuse) the base model's class images: call with the untrained model."""
        instance = instance_photos(instance_dir)
        folder.mkdir(parents=True, exist_ok=True)
        return cls(scorer, evalset, instance, folder,
                   base_class_images(base, evalset, folder / "base_class", model_id, autocast))

    def measure(self, model: "BaseModel", autocast=nullcontext) -> dict[str, float]:
        images = draw_set(model, self.evalset, autocast)
        return self.scorer.score(self.evalset, images, self.base_class, self.instance)

    # ---- curves ----------------------------------------------------------------------
    @property
    def csv(self) -> Path:
        return self.folder / "eval.csv"

    @property
    def png(self) -> Path:
        return self.folder / "eval.png"

    @property
    def rows(self) -> list[dict[str, float]]:
        return curves.read_rows(self.csv)

    def record(self, row: dict[str, float]) -> list[dict[str, float]]:
        """Add (or replace) the row of its step; rewrite the CSV and the plot."""
        rows = sorted([r for r in self.rows if r["step"] != row["step"]] + [row], key=lambda r: r["step"])
        curves.write_rows(self.csv, rows)
        curves.plot(rows, self.png)
        return rows

    def truncate(self, last_step: int) -> None:
        """A resumed run measures again what followed its state."""
        rows = [r for r in self.rows if r["step"] <= last_step]
        curves.write_rows(self.csv, rows)
        kept = self.kept_step()
        if kept is not None and kept > last_step:
            self.kept.unlink()

    # ---- the best step's weights (select_best) ----------------------------------------
    @property
    def kept(self) -> Path:
        return self.folder / "best.safetensors"

    def keep(self, weights: dict[str, "torch.Tensor"], step: int) -> None:
        from ..fileio import save_safetensors

        save_safetensors({k: v.clone() for k, v in weights.items()}, self.kept, {"step": str(step)}, overwrite=True)

    def kept_step(self) -> int | None:
        from ..fileio import read_safetensors_metadata

        return int(read_safetensors_metadata(self.kept)["step"]) if self.kept.is_file() else None

    def kept_weights(self, step: int) -> dict[str, "torch.Tensor"] | None:
        """The kept weights if they are `step`'s."""
        from safetensors.torch import load_file

        return load_file(str(self.kept)) if self.kept_step() == step else None


def format_scores(scores: dict[str, float]) -> str:
    return ", ".join(f"{k.replace('_', ' ')} {v:.3f}" for k, v in scores.items())

