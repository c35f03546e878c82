"""Evaluation during a real (short) toy-world run: curves in the run folder, events, and
select_best publishing the weights of the step it chose."""
from __future__ import annotations

import dataclasses

import pytest

from dreambooth_core import demo
from dreambooth_core.events import Artifact, CancelToken, Evaluation
from dreambooth_core.evaluate.select import Bounds, choose_best
from dreambooth_core.evaluate.session import Session, evalset_for
from dreambooth_core.evaluate.scorers import ToyScorer
from dreambooth_core.apply import apply_artifact
from dreambooth_core.train import run_training
from dreambooth_core.toy.model import TOY_INSTANCE_DIR, load_toy_model

pytestmark = pytest.mark.slow


def test_select_best_publishes_a_step_within_bounds_and_near_the_best_fidelity(tmp_path) -> None:
    cfg = demo.demo_config(demo.DEMO_METHODS["lora"], tmp_path, steps_scale=0.2)   # 60 steps
    cfg = dataclasses.replace(cfg, eval_every_n_steps=15, select_best=True, num_validation_images=0)
    events = []
    result = run_training(cfg, events.append, CancelToken())
    assert result.status == "completed"

    session_dir = result.run_dir / "eval"
    rows = [e for e in events if isinstance(e, Evaluation)]
    assert [e.step for e in rows] == [0, 15, 30, 45, 60]
    assert (session_dir / "eval.csv").is_file() and (session_dir / "eval.png").is_file()
    assert any(isinstance(e, Artifact) and e.kind == "eval_plot" for e in events)
    bounds = Bounds(cfg.select_max_prior_drift, cfg.select_max_prompt_drop)
    measured = [{"step": e.step, **e.scores} for e in rows]
    best = choose_best(measured, bounds)
    assert best is not None and best["step"] > 0
    log = (result.run_dir / "log.txt").read_text()
    assert f"best at step {best['step']}: fidelity" in log

    # the published file, applied to a fresh base the way a host would, scores like the chosen step
    lora = next(e for e in events if isinstance(e, Artifact) and e.kind == "lora" and e.final)
    model = apply_artifact(load_toy_model(), "lora", lora.path)
    session = Session.start(ToyScorer(), evalset_for(cfg, ToyScorer(), 64), TOY_INSTANCE_DIR, tmp_path / "check",
                            load_toy_model(), "toy")
    again = session.measure(model)
    top = max(r["subject_fidelity"] for r in measured if r["step"] > 0 and r["prior_drift"] <= bounds.max_prior_drift
              and r["prompt_fidelity"] >= measured[0]["prompt_fidelity"] * (1 - bounds.max_prompt_drop))
    assert again["subject_fidelity"] >= top - 0.05, (again, measured)
    assert again["prior_drift"] <= bounds.max_prior_drift, again
