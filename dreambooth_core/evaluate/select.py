"""Which evaluated step to publish: the highest subject fidelity among the steps whose prior
drift and prompt fidelity stay within bounds (select_best)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Bounds:
    max_prior_drift: float = 0.25   # share of the way the class moved toward the subject
    max_prompt_drop: float = 0.1    # prompt fidelity may fall this share below the first evaluation's (the untrained model's)


def within(row: dict[str, float], reference: dict[str, float], bounds: Bounds) -> bool:
    if row.get("prior_drift", 0.0) > bounds.max_prior_drift:
        return False
    if "prompt_fidelity" in row and "prompt_fidelity" in reference:
        return row["prompt_fidelity"] >= reference["prompt_fidelity"] * (1 - bounds.max_prompt_drop)
    return True


def choose_best(rows: list[dict[str, float]], bounds: Bounds) -> dict[str, float] | None:
    """The best trained step (step > 0) within bounds; None when none is."""
    if not rows:
        return None
    reference = rows[0]
    fit = [r for r in rows if r["step"] > 0 and within(r, reference, bounds)]
    return max(fit, key=lambda r: (r["subject_fidelity"], -r["step"]), default=None)


def describe(row: dict[str, float]) -> str:
    extra = f", prompt fidelity {row['prompt_fidelity']:.3f}" if "prompt_fidelity" in row else ""
    return f"best at step {int(row['step'])}: fidelity {row['subject_fidelity']:.3f}, drift {row['prior_drift']:.3f}{extra}"
