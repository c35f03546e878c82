"""The two values that flow between DreamBooth nodes, and their socket types."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from comfy_api.latest import io

from dreambooth_core.errors import UserError

DatasetType = io.Custom("DREAMBOOTH_DATASET")
ConceptType = io.Custom("DREAMBOOTH_CONCEPT")


@dataclass(frozen=True)
class TrainingImages:
    """A checked folder of training images (with optional .txt captions)."""

    folder: str
    count: int
    captioned: int
    signature: str   # dreambooth_core.lifecycle.source_signature of the folder

    def __str__(self) -> str:
        captions = f", {self.captioned} with captions" if self.captioned else ""
        return f"{self.count} image(s){captions} in {self.folder}"


# Caption options a Concept node sets, with the values that leave the run's own in place.
CAPTION_DEFAULTS: dict[str, Any] = {"caption_extension": "", "shuffle_caption": False, "keep_tokens": 0,
                                    "caption_dropout_rate": 0.0, "tag_dropout_rate": 0.0}


@dataclass(frozen=True)
class Concept:
    """What to learn and how to keep the class: TrainConfig keys, set as given.

    Concept nodes chain (`previous`): the chain is the run's `concepts`, each with its own
    images (or the Train node's dataset), repeats and caption options. A lone Concept with
    neither images nor repeats is the plain one-concept config, as before chains existed."""

    token: str
    class_noun: str
    instance_prompt: str
    class_prompt: str
    with_prior_preservation: bool
    num_class_images: int          # 0: the preset's number
    prior_loss_weight: float
    class_images: TrainingImages | None = None
    images: TrainingImages | None = None     # None: the Train node's dataset
    repeats: int = 1
    captions: tuple[tuple[str, Any], ...] = ()   # caption options that differ from CAPTION_DEFAULTS
    previous: "Concept | None" = None

    def chain(self) -> list["Concept"]:
        """The concepts from the first node of the chain to this one."""
        return [*(self.previous.chain() if self.previous else []), self]

    @property
    def single(self) -> bool:
        return self.previous is None and self.images is None and self.repeats == 1

    def config_values(self) -> dict[str, Any]:
        values: dict[str, Any] = {
            "token": self.token.strip(), "class_noun": self.class_noun.strip(),
            "instance_prompt": self.instance_prompt, "class_prompt": self.class_prompt,
            "with_prior_preservation": self.with_prior_preservation, "prior_loss_weight": self.prior_loss_weight,
            **dict(self.captions),
        }
        if self.num_class_images > 0:
            values["num_class_images"] = self.num_class_images
        if self.class_images is not None:
            values["class_data_dir"] = self.class_images.folder
        return values

    def concept_entry(self, dataset: TrainingImages | None) -> dict[str, Any]:
        """This concept as one of the config's `concepts` (dreambooth_core.data.concepts.Concept keys)."""
        images = self.images or dataset
        if images is None:
            raise UserError(f"the Concept {self.token.strip()!r} has no images: connect Load Training Images to its "
                            "images input, or a dataset to the Train node")
        entry = {key: value for key, value in self.config_values().items()
                 if key not in ("with_prior_preservation", "num_class_images")}
        return {"image_dir": images.folder, "repeats": self.repeats, **entry}


def concept_settings(concept: Concept, dataset: TrainingImages | None, need_images: bool = True) -> dict[str, Any]:
    """The TrainConfig values of a Concept chain and the Train node's dataset (which a plan
    made before queueing, `need_images=False`, may not know yet)."""
    if concept.single:
        if dataset is None and not need_images:
            return {"instance_data_dir": "", **concept.config_values()}
        if dataset is None:
            raise UserError("connect Load Training Images to the Train node's dataset (or to the Concept's images)")
        return {"instance_data_dir": dataset.folder, **concept.config_values()}
    chain = concept.chain()
    for key in ("with_prior_preservation", "num_class_images"):
        if len({getattr(c, key) for c in chain}) > 1:
            raise UserError(f"the chained Concept nodes differ in {key.replace('with_', '').replace('_', ' ')}: it is set "
                            "for the whole run, so set it the same on every Concept")
    first = chain[0].config_values()
    values = {key: first[key] for key in ("token", "class_noun", "instance_prompt", "class_prompt",
                                          "with_prior_preservation", "num_class_images", "prior_loss_weight") if key in first}
    if dataset is not None and all(c.images for c in chain):
        raise UserError("every chained Concept has its own images, so the Train node's dataset would be left out: "
                        "disconnect it, or connect it to a Concept's images input")
    values["concepts"] = [c.concept_entry(dataset) for c in chain]
    values["instance_data_dir"] = ""
    return values


def source_signatures(concept: Concept, dataset: TrainingImages | None) -> dict[str, str]:
    """What the run reads, for noticing a changed input on the next queue."""
    chain = concept.chain()
    images = [dataset] if dataset else []
    images += [c.images for c in chain if c.images]
    return {"images": "+".join(i.signature for i in images),
            "class_images": "+".join(c.class_images.signature for c in chain if c.class_images)}
