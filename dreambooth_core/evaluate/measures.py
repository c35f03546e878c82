"""The DreamBooth paper's measures over unit-length embeddings (evaluate.encoders).

- subject fidelity: mean cosine of subject generations to the instance photos (CLIP-I / DINO);
- prompt fidelity: mean cosine of each context generation to its prompt's text (CLIP-T);
- prior drift: how far plain-class generations moved from the base model's own class
  generations toward the subject, as a share of the way (0 = as the base, 1 = the photos);
- diversity: mean pairwise cosine distance (DIV).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def mean_similarity(a: "torch.Tensor", b: "torch.Tensor") -> float:
    """Mean cosine over every pair (row of `a`, row of `b`)."""
    return float((a @ b.T).mean())


def subject_fidelity(generated: "torch.Tensor", instance: "torch.Tensor") -> float:
    return mean_similarity(generated, instance)


def prompt_fidelity(images: "torch.Tensor", texts: "torch.Tensor") -> float:
    """Mean cosine of image i to text i (each image with the prompt it was drawn from)."""
    return float((images * texts).sum(dim=-1).mean())


def prior_drift(class_now: "torch.Tensor", class_base: "torch.Tensor", instance: "torch.Tensor") -> float:
    """How far the class generations' similarity to the photos rose over the base model's,
    as a share of what was left to rise: 0 when they are as the base's, 1 when they look
    like the photos themselves (the class has become the subject)."""
    now, base = mean_similarity(class_now, instance), mean_similarity(class_base, instance)
    return (now - base) / max(1e-6, 1.0 - base)


def diversity(embeddings: "torch.Tensor") -> float:
    """Mean pairwise cosine distance; 0 for fewer than two images."""
    n = len(embeddings)
    if n < 2:
        return 0.0
    sims = embeddings @ embeddings.T
    return float((1.0 - sims).sum() / (n * (n - 1)))
