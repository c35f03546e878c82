"""A run's view (`Session.view`) as the tab shows it: HTML for the progress bar and the
result, an inline SVG loss curve, and the log text. Plain strings, so both gradio 3.41
and 4.x show them the same way and no plotting library is needed in the WebUI.
"""
from __future__ import annotations

import html
from typing import Any

from dreambooth_core.evaluate.curves import MEASURES   # the columns of the run's eval.csv, in its order

ACTIVE = ("queued", "running")
PHASES = {"class_images": "generating class images", "caching": "caching", "train": "training",
          "validation": "drawing samples", "evaluation": "evaluating", "saving": "saving"}


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def is_active(view: dict[str, Any] | None) -> bool:
    """Queued, training, or finished but its files not yet published: keep polling."""
    return bool(view) and (view["status"] in ACTIVE or not view.get("settled", True))


def message_html(text: str, error: bool = True) -> str:
    """A message that is not about a run in progress (e.g. a form error): polling stays off."""
    css = "dbc-error" if error else "dbc-note"
    return f'<div class="dbc-status" data-dbc-active="0"><p class="{css}">{_e(text)}</p></div>'


def plan_html(text: str) -> str:
    """A memory plan (plan.memory.MemoryPlan.describe) as preformatted text."""
    return f'<pre class="dbc-plan">{_e(text)}</pre>'


def status_html(view: dict[str, Any] | None) -> str:
    """Progress bar, ETA, loss and step; when done, where each file went and the prompt to use."""
    if not view:
        return '<div class="dbc-status" data-dbc-active="0"><p class="dbc-note">No run yet.</p></div>'
    active = is_active(view)
    parts = [f'<div class="dbc-status" data-dbc-active="{1 if active else 0}" data-dbc-run="{_e(view["id"])}">']
    state = view["status"] if view.get("settled", True) or view["status"] in ACTIVE else "publishing"
    title = f'<b>{_e(view["name"])}</b> ({_e(view["method"])}): {_e(state)}'
    if view.get("queue_position"):
        title += f' — waiting, position {view["queue_position"]} in the queue'
    parts.append(f"<p>{title}</p>")
    total, step = view.get("total") or 0, view.get("step") or 0
    if total:
        done = 100.0 if view["status"] == "completed" else min(100.0, 100.0 * step / total)
        parts.append(f'<div class="dbc-bar"><div style="width:{done:.1f}%"></div></div>')
        facts = [f'{PHASES.get(view.get("phase"), view.get("phase") or "")} {step}/{total}'.strip()]
        if active:
            facts.append(f'ETA {_duration(view.get("eta"))}')
        if view.get("loss") is not None:
            facts.append(f'loss {view["loss"]:.4f}')
        if view.get("lr") is not None:
            facts.append(f'lr {view["lr"]:.2e}')
        parts.append(f'<p class="dbc-facts">{" · ".join(_e(f) for f in facts)}</p>')
    if view.get("error"):
        parts.append(f'<p class="dbc-error">{_e(view["error"])}</p>')
    if view["status"] == "cancelled":
        parts.append('<p class="dbc-note">Cancelled: the last state is saved; press Resume to continue.</p>')
    for item in view.get("delivered", []):
        if item["path"]:
            parts.append('<div class="dbc-result">'
                         f'<p>Saved {_e(item["kind"])} to <code>{_e(item["path"])}</code></p>'
                         f'<p>Use it with: <code>{_e(item["prompt_hint"])}</code></p>'
                         f'<p>Prompt: <code>{_e(item["prompt"])}</code></p></div>')
        else:
            parts.append(f'<p class="dbc-error">{_e(item["error"])}</p>')
    for note in view.get("notes", []):
        parts.append(f'<p class="dbc-note">{_e(note)}</p>')
    if view.get("run_dir"):
        parts.append(f'<p class="dbc-note">Run folder: <code>{_e(view["run_dir"])}</code></p>')
    parts.append("</div>")
    return "".join(parts)


def loss_svg(losses: list[tuple[int, float]]) -> str:
    """The loss per step as an SVG polyline with its range labelled (empty until there is a loss)."""
    if not losses:
        return ""
    values = [v for _, v in losses]
    lo, hi = min(values), max(values)
    if hi - lo < 1e-12:
        lo, hi = lo - 0.5, hi + 0.5
    return _plot_svg({"loss": losses}, lo, hi, "training loss", "loss")


def eval_svg(evaluations: list[tuple[int, dict[str, float]]], best_step: int | None = None) -> str:
    """The evaluation measures per step (0..1), one dashed line each, with the best step named
    (empty until the first evaluation)."""
    if not evaluations:
        return ""
    series = {name: [(step, scores[name]) for step, scores in evaluations if scores.get(name) is not None]
              for name in MEASURES}
    series = {name: points for name, points in series.items() if points}
    caption = " · ".join(name.replace("_", " ") for name in series)
    caption += f" · best at step {best_step}" if best_step is not None else ""
    return _plot_svg(series, 0.0, 1.0, "evaluation measures", caption) if series else ""


DASHES = ("", "6 3", "2 3", "8 3 2 3")


def _plot_svg(series: dict[str, list[tuple[int, float]]], lo: float, hi: float, title: str, caption: str,
              width: int = 480, height: int = 160) -> str:
    """Each series as an SVG polyline (dashed differently) over the range lo..hi, labelled."""
    steps = sorted({s for points in series.values() for s, _ in points})
    s0, span = steps[0], max(1, steps[-1] - steps[0])
    pad = 28

    def xy(step: int, value: float) -> str:
        x = pad + (step - s0) / span * (width - pad - 4)
        y = 4 + (hi - value) / (hi - lo) * (height - 24)
        return f"{x:.1f},{y:.1f}"

    lines = "".join(
        f'<polyline points="{" ".join(xy(s, v) for s, v in points)}" fill="none" stroke="currentColor" '
        f'stroke-width="1.5" stroke-dasharray="{DASHES[i % len(DASHES)]}"><title>{_e(name)}</title></polyline>'
        for i, (name, points) in enumerate(series.items()))
    return (f'<svg class="dbc-loss" viewBox="0 0 {width} {height}" width="100%" role="img" '
            f'aria-label="{_e(title)}">'
            f'<rect x="{pad}" y="4" width="{width - pad - 4}" height="{height - 24}" fill="none" stroke="currentColor" '
            f'stroke-opacity="0.3"/>{lines}'
            f'<text x="2" y="12" font-size="10" fill="currentColor">{hi:.3g}</text>'
            f'<text x="2" y="{height - 20}" font-size="10" fill="currentColor">{lo:.3g}</text>'
            f'<text x="{pad}" y="{height - 6}" font-size="10" fill="currentColor">step {steps[0]}</text>'
            f'<text x="{width - 4}" y="{height - 6}" font-size="10" fill="currentColor" text-anchor="end">'
            f'{_e(caption)} · step {steps[-1]}</text></svg>')


def log_text(view: dict[str, Any] | None) -> str:
    return "\n".join(view["log"]) if view else ""
