"""Two subjects in one run, on the bundled toy model: the multi-concept claim made measurable.

Each concept is a toy-world subject with its own token and its own folder of photos (8 of
the teal ball, fewer of the purple box, balanced by `repeats`). One run trains both; the
trained file is applied to a fresh base the way a host would, and each subject's prompt
is scored by the evaluator for that subject alone.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import world as W

if TYPE_CHECKING:
    from ..models.base import BaseModel


@dataclass(frozen=True)
class ToyConcept:
    """One subject of the run: its token, how many photos (drawn with `seed`) and repeats."""

    token: str
    subject: W.Subject
    photos: int
    repeats: int = 1
    seed: int = 0

    @property
    def prompt(self) -> str:
        return W.instance_prompt(self.token, subject=self.subject)

    def write_photos(self, folder: Path) -> Path:
        """The concept's photos as PNGs in `folder` (no captions: the concept's prompt applies)."""
        folder.mkdir(parents=True, exist_ok=True)
        for i, image in enumerate(W.instance_images(self.photos, seed=self.seed, subject=self.subject)):
            image.save(folder / f"{i:02d}.png")
        return folder

    def table(self, folder: Path) -> dict[str, Any]:
        return {"image_dir": str(folder), "token": self.token, "class_noun": self.subject.cls, "repeats": self.repeats}


# 8 photos of the first subject against 4 of the second, which 2 repeats balance per epoch.
BALANCED: tuple[ToyConcept, ...] = (
    ToyConcept("sks", W.SUBJECT, photos=8),
    ToyConcept("ohwx", W.SECOND_SUBJECT, photos=4, repeats=2, seed=1),
)
UNBALANCED: tuple[ToyConcept, ...] = tuple(replace(c, repeats=1) for c in BALANCED)
STEPS = 600  # twice the demo's single-subject LoRA run: each subject gets about its steps


def subject_scores(model: "BaseModel", concepts: Sequence[ToyConcept]) -> dict[str, float]:
    """{token: subject fidelity of that subject on its own prompt}, with the demo's sampling."""
    from ..demo import GUIDANCE, SAMPLE_STEPS, SAMPLES
    from ..sample import generate
    from .evaluator import subject_fidelity

    return {
        c.token: subject_fidelity(
            generate(model, [c.prompt] * SAMPLES, steps=SAMPLE_STEPS, guidance_scale=GUIDANCE, seed=1234,
                     width=64, height=64, batch_size=SAMPLES),
            c.subject,
        )
        for c in concepts
    }


def train_and_score(concepts: Sequence[ToyConcept], out: Path, steps: int = STEPS) -> dict[str, float]:
    """Train the demo's LoRA on `concepts` in one run; {token: subject fidelity} of the result."""
    from ..apply import apply_artifact
    from ..demo import DEMO_METHODS, DemoMethod, demo_config
    from ..events import CancelToken
    from ..train import run_training
    from .model import load_toy_model

    lora = DEMO_METHODS["lora"]
    tables = [c.table(c.write_photos(out / "photos" / c.token)) for c in concepts]
    method = DemoMethod("concepts", lora.preset, {**lora.overrides, "max_train_steps": steps, "concepts": tables})
    result = run_training(demo_config(method, out), lambda _event: None, CancelToken())
    artifact = result.outputs[0]
    return subject_scores(apply_artifact(load_toy_model(), artifact.kind, artifact.path), concepts)
