"""The DreamBooth paper's claims, on the bundled toy model: each method learns a subject the
base cannot draw, and prior preservation keeps the class prompt free of the subject's traits.

Each run is the demo's (same settings, same files, scored by the toy world's evaluator on
samples of the trained file applied to a fresh base). Thresholds are the measured scores
with a margin; the measured values are in the comments.
"""
from __future__ import annotations

import dataclasses

import pytest

from dreambooth_core import demo
from dreambooth_core.toy.model import load_toy_model

pytestmark = pytest.mark.slow

SUBJECT = "subject fidelity"
PRIOR = "prior preservation"


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    return tmp_path_factory.mktemp("toy_learning")


@pytest.fixture(scope="module")
def base() -> dict[str, float]:
    return demo.evaluate(load_toy_model()).scores


@pytest.fixture(scope="module")
def runs(out):
    """Trained lazily, once per module: {label: MethodRun}."""
    cache: dict[str, demo.MethodRun] = {}

    def get(label: str) -> demo.MethodRun:
        if label not in cache:
            method = NO_PRIOR if label == NO_PRIOR.label else NETWORKS.get(label) or demo.DEMO_METHODS[label]
            cache[label] = demo.train_and_score(method, out)
        return cache[label]

    return get


DREAMBOOTH = demo.DEMO_METHODS["dreambooth"]
NO_PRIOR = dataclasses.replace(
    DREAMBOOTH, label="dreambooth_without_prior", overrides={**DREAMBOOTH.overrides, "with_prior_preservation": False}
)

# Measured (seed 0, 2 threads, `dreambooth-core demo`): base 0.000; dreambooth 0.637, lora 0.519
# (body and band); textual_inversion 0.155, hypernetwork 0.226 (the body's teal, the band
# seldom: a frozen UNet never drew a band). Minimum fidelity, and minimum gain over the base.
LEARNED = {"dreambooth": (0.35, 0.3), "lora": (0.35, 0.3), "textual_inversion": (0.08, 0.08),
           "hypernetwork": (0.12, 0.1)}

# The other network types at the LoRA run's steps, rank and alpha; LoKr (whose factors are
# about √width on each side) at a higher rate. Measured (seed 0, one thread, beside LoRA 0.519):
# loha 0.394; lokr 0.368 (0.268 at LoRA's 2e-3); dora 0.531 (prior preservation 0.291).
# OFT (rank = block size 8, alpha = its norm constraint, which does not bind here): 0.343 at
# 3e-3 (1e-3: 0.266, 2e-3: 0.337, 6e-3: 0.137).
LORA = demo.DEMO_METHODS["lora"]
NETWORKS = {n: dataclasses.replace(LORA, label=n, overrides={**LORA.overrides, "network": n, **extra})
            for n, extra in (("loha", {}), ("lokr", {"learning_rate": 6e-3}), ("dora", {}), ("oft", {"learning_rate": 3e-3}))}


def test_the_base_cannot_draw_the_subject(base) -> None:
    assert base[SUBJECT] <= 0.05


@pytest.mark.parametrize("label", list(LEARNED))
def test_each_method_learns_the_subject(runs, base, label) -> None:
    scores = runs(label).evaluation.scores
    least, gain = LEARNED[label]
    assert scores[SUBJECT] >= least, scores
    assert scores[SUBJECT] >= base[SUBJECT] + gain, (scores, base)


@pytest.mark.parametrize("label", list(NETWORKS))
def test_each_network_type_learns_the_subject_by_the_lora_margin(runs, base, label) -> None:
    scores = runs(label).evaluation.scores
    assert scores[SUBJECT] >= base[SUBJECT] + LEARNED["lora"][1], (scores, base)


def test_only_weight_training_methods_learn_the_band(runs) -> None:
    """The paper's point against Textual Inversion, in the toy world: an embedding reaches
    what the frozen model can already draw (a teal ball), fine-tuning also the identity."""
    ti = runs("textual_inversion").evaluation.scores[SUBJECT]
    for label in ("dreambooth", "lora"):
        assert runs(label).evaluation.scores[SUBJECT] >= ti + 0.2, (label, ti)


def test_prior_preservation_keeps_the_class_better_than_without(runs, base) -> None:
    """Same run without the class term: plain "a photo of a ball" turns into the subject
    (the paper's language drift); with it, the class keeps much of its prior."""
    with_prior = runs("dreambooth").evaluation.scores
    without = runs(NO_PRIOR.label).evaluation.scores
    # measured: with 0.783, without 0.302 (base 0.830)
    assert with_prior[PRIOR] >= without[PRIOR] + 0.3, (with_prior, without)
