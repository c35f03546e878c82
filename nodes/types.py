"""The two values that flow between DreamBooth nodes, and their socket types."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from comfy_api.latest import io

DatasetType = io.Custom("DREAMBOOTH_DATASET")
ConceptType = io.Custom("DREAMBOOTH_CONCEPT")


@dataclass(frozen=True)
class TrainingImages:
    """A checked folder of training images (with optional .txt captions)."""

    folder: str
    count: int
    captioned: int
    signature: str   # dreambooth_core.reruns.source_signature of the folder

    def __str__(self) -> str:
        captions = f", {self.captioned} with captions" if self.captioned else ""
        return f"{self.count} image(s){captions} in {self.folder}"


@dataclass(frozen=True)
class Concept:
    """What to learn and how to keep the class: TrainConfig keys, set as given."""

    token: str
    class_noun: str
    instance_prompt: str
    class_prompt: str
    with_prior_preservation: bool
    num_class_images: int          # 0: the preset's number
    prior_loss_weight: float
    class_images: TrainingImages | None = None

    def config_values(self) -> dict[str, Any]:
        values: dict[str, Any] = {
            "token": self.token.strip(), "class_noun": self.class_noun.strip(),
            "instance_prompt": self.instance_prompt, "class_prompt": self.class_prompt,
            "with_prior_preservation": self.with_prior_preservation, "prior_loss_weight": self.prior_loss_weight,
        }
        if self.num_class_images > 0:
            values["num_class_images"] = self.num_class_images
        if self.class_images is not None:
            values["class_data_dir"] = self.class_images.folder
        return values
