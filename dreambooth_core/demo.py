"""`dreambooth-core demo`: teach the bundled toy model a new subject with every method,
offline on a CPU, and show that it learned.

The toy world's subject (a teal ball with an orange band across its middle) is something
the base model cannot draw from words: words reach its colour, no word its band. Each
method trains on the six bundled photos, its result is applied the way a host would use
the file, and the toy world's evaluator scores the samples: subject fidelity, prompt
fidelity (a requested background holds), prior preservation ("ball" images stay free of
the subject's traits) and diversity.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from PIL import Image

    from .events import Event, EventSink
    from .models.base import BaseModel
    from .train.result import RunResult

TOKEN = "sks"
CLASS_NOUN = "ball"
# the toy world's grammar: "a photo of a [size] [colour] ball [on a ... background]"
SUBJECT_PROMPT = f"a photo of a {TOKEN} {CLASS_NOUN}"
RECONTEXT_PROMPT = f"a photo of a {TOKEN} {CLASS_NOUN} on a blue background"
CLASS_PROMPT = f"a photo of a {CLASS_NOUN}"
SAMPLES = 8          # images per prompt for scoring
SAMPLE_STEPS = 20
GUIDANCE = 6.0

# Settings for the toy model (64 px, ~6M parameters), measured to learn the subject in
# minutes on two CPU cores; everything else comes from the method's preset.
COMMON: dict[str, Any] = dict(
    token=TOKEN, class_noun=CLASS_NOUN, instance_prompt="a photo of a {token} {class_noun}",
    class_prompt="a photo of a {class_noun}", resolution=64, train_batch_size=2,
    validation_steps=0, num_validation_images=2, validation_inference_steps=SAMPLE_STEPS,
    guidance_scale=GUIDANCE, class_inference_steps=SAMPLE_STEPS, class_guidance_scale=GUIDANCE,
    checkpointing_steps=0, seed=0, random_flip=False,
    # the evaluation layer draws a few images at a few points of each run (cheap: the demo stays
    # within minutes) for its curves and the step select_best would choose; the demo scores the
    # published file (the last step's) on more samples (below)
    eval_images=2,
)
EVAL_POINTS = 4   # evaluations per run besides step 0


@dataclass
class DemoMethod:
    label: str
    preset: str
    overrides: dict[str, Any] = field(default_factory=dict)


DEMO_METHODS: dict[str, DemoMethod] = {
    m.label: m
    for m in (
        # the text encoder trains too: the toy CLIP never saw "sks", so the UNet alone barely
        # tells "a sks ball" from "a ball" (UNet only, 800 steps: subject fidelity 0.08)
        DemoMethod("dreambooth", "dreambooth", dict(max_train_steps=800, learning_rate=1e-4, num_class_images=48,
                                                    train_text_encoder=True)),
        DemoMethod("lora", "lora", dict(max_train_steps=300, learning_rate=2e-3, rank=8, alpha=8.0)),
        DemoMethod("textual_inversion", "textual_inversion", dict(max_train_steps=600, learning_rate=2e-2, num_vectors=4)),
        DemoMethod("hypernetwork", "hypernetwork", dict(max_train_steps=300, learning_rate=1e-3)),
    )
}


@dataclass
class Evaluation:
    scores: dict[str, float]
    subject: list["Image.Image"]
    recontext: list["Image.Image"]
    plain: list["Image.Image"]


def evaluate(model: "BaseModel") -> Evaluation:
    """Sample the three demo prompts and the toy world's control prompts with fixed seeds and score them."""
    from .evaluate.scorers import TOY_CONTROLS, toy_prompt_control
    from .sample import generate
    from .toy import evaluator

    def sample(prompt: str) -> list["Image.Image"]:
        return generate(model, [prompt] * SAMPLES, steps=SAMPLE_STEPS, guidance_scale=GUIDANCE, seed=1234,
                        width=64, height=64, batch_size=SAMPLES)

    subject, recontext, plain = sample(SUBJECT_PROMPT), sample(RECONTEXT_PROMPT), sample(CLASS_PROMPT)
    scores = {
        "subject fidelity": evaluator.subject_fidelity(subject),
        "prompt fidelity": evaluator.prompt_fidelity(recontext, background="blue"),
        "prior preservation": evaluator.prior_preservation(plain),
        "class diversity": evaluator.diversity(plain),
        "prompt control": toy_prompt_control([sample(p) for p in TOY_CONTROLS], list(TOY_CONTROLS)),
    }
    return Evaluation(scores, subject, recontext, plain)


def demo_config(method: DemoMethod, out: Path, steps_scale: float = 1.0):
    from .config import load_config
    from .toy.model import TOY_INSTANCE_DIR, TOY_MODEL_PATH

    overrides = {**COMMON, **method.overrides}
    overrides["max_train_steps"] = max(1, round(overrides["max_train_steps"] * steps_scale))
    overrides.setdefault("eval_every_n_steps", max(1, overrides["max_train_steps"] // EVAL_POINTS))
    overrides.update(
        base_model=str(TOY_MODEL_PATH), instance_data_dir=str(TOY_INSTANCE_DIR),
        output_dir=str(out / "runs"), output_name=f"{TOKEN}_{CLASS_NOUN}_{method.label}",
        class_data_dir=str(out / "class_images"), overwrite=True,
    )
    return load_config(preset=method.preset, overrides=overrides)


def require_toy_model() -> None:
    from .errors import UserError
    from .toy.model import TOY_INSTANCE_DIR, TOY_MODEL_PATH

    for needed in (TOY_MODEL_PATH, TOY_INSTANCE_DIR):
        if not needed.exists():
            raise UserError(f"the bundled toy model is not in this checkout ({needed} is missing): "
                            "build it with `python -m dreambooth_core.toy.pretrain`")


@dataclass
class MethodRun:
    """One method trained on the toy subject, its host file applied to the base, scored."""

    result: "RunResult"
    evaluation: Evaluation
    seconds: float
    seconds_per_step: float    # training steps alone (no class images, caching or saving)
    curve: list[dict[str, float]] = field(default_factory=list)   # the evaluation layer's rows: step and measures
    best_step: int | None = None   # the step select_best chooses (published only with select_best)


def train_and_score(method: DemoMethod, out: Path, steps_scale: float = 1.0, emit: "EventSink | None" = None) -> MethodRun:
    """Train `method`, load its first output into a fresh toy model the way a host would, and score it."""
    from .apply import apply_artifact
    from .events import CancelToken, Evaluation, Progress
    from .toy.model import load_toy_model
    from .train import run_training

    steps: list["Progress"] = []
    evaluations: list["Evaluation"] = []

    def watch(event: "Event") -> None:
        if isinstance(event, Progress) and event.phase == "train" and event.elapsed_seconds is not None:
            steps.append(event)
        if isinstance(event, Evaluation):
            evaluations.append(event)
        if emit is not None:
            emit(event)

    started = time.monotonic()
    result = run_training(demo_config(method, out, steps_scale), watch, CancelToken())
    seconds = time.monotonic() - started
    artifact = result.outputs[0]
    model = apply_artifact(load_toy_model(), artifact.kind, artifact.path, token=TOKEN)
    per_step = ((steps[-1].elapsed_seconds - steps[0].elapsed_seconds) / (steps[-1].step - steps[0].step)
                if len(steps) > 1 and steps[-1].step > steps[0].step else float("nan"))
    curve = [{"step": e.step, **e.scores} for e in evaluations]
    return MethodRun(result, evaluate(model), seconds, per_step, curve, evaluations[-1].best_step if evaluations else None)


def run_demo(
    out: str | Path = "demo_output",
    methods: list[str] | None = None,
    steps_scale: float = 1.0,
    emit: "EventSink | None" = None,
    say: Callable[[str], None] = print,
) -> dict[str, dict[str, float]]:
    """Train every method on the toy subject; write images, loss plots and host files under `out`.

    Returns the score table {row: {metric: value}}, first row the untrained base.
    """
    from .errors import UserError
    from .toy import evaluator
    from .toy.model import load_toy_model
    from .train.threads import THREADS_ENV, choose_threads, cpu_threads

    require_toy_model()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    chosen = methods or list(DEMO_METHODS)
    unknown = [m for m in chosen if m not in DEMO_METHODS]
    if unknown:
        raise UserError(f"unknown demo method(s) {', '.join(unknown)}: use {', '.join(DEMO_METHODS)}")
    # Chosen once, before anything of ours runs, and kept for every method: our own
    # training must not count as other work when the next method starts.
    threads = choose_threads()
    say(threads.describe())
    rows: dict[str, Evaluation] = {}
    timings: dict[str, float] = {}
    with _environ(THREADS_ENV, str(threads.count)), cpu_threads(threads):
        say("Scoring the untrained base model …")
        rows["base (untrained)"] = evaluate(load_toy_model())
        for label in chosen:
            say(f"\n== {label} ==")
            run = train_and_score(DEMO_METHODS[label], out, steps_scale, emit)
            rows[label], timings[label] = run.evaluation, run.seconds
            _collect(run.result, out)
            say(f"{label}: trained in {run.seconds:.0f} s ({run.seconds_per_step:.2f} s/step), wrote {run.result.outputs[0].path}")
            say(curve_table(run))
    table = {name: ev.scores for name, ev in rows.items()}
    _before_after(rows, out / "before_after.png")
    text = evaluator.format_table(table)
    (out / "scores.md").write_text(
        text + "\n\n" + "\n".join(f"- {k}: trained in {v:.0f} s" for k, v in timings.items()) + "\n", encoding="utf-8"
    )
    say(f"Images: {out / 'before_after.png'}; evaluation curves: {out}/eval_*.png; files for A1111/ComfyUI: "
        f"{out / 'models'}; scores: {out / 'scores.md'}")
    return table


@contextlib.contextmanager
def _environ(name: str, value: str):
    """`name=value` in this process's environment for the block (runs read it), then as before."""
    before = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before


def _collect(result, out: Path) -> None:
    """Copy the run's host files into out/models/<A1111 folder>/ and its loss and evaluation plots beside them."""
    from .registry import KINDS

    for artifact in result.outputs:
        folder = KINDS[artifact.kind].a1111_folder if artifact.kind in KINDS else None
        if folder:
            dest = out / "models" / folder
            dest.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(artifact.path, dest / Path(artifact.path).name)
    # the plots are announced as they are redrawn (not final): the file holds the whole run
    for artifact in result.artifacts:
        if artifact.kind in ("loss_plot", "eval_plot") and Path(artifact.path).is_file():
            shutil.copyfile(artifact.path, out / f"{artifact.kind.split('_')[0]}_{Path(result.run_dir).name}.png")


def curve_table(run: "MethodRun") -> str:
    """The run's evaluation curve as a Markdown table, the step select_best chooses marked."""
    from .toy.evaluator import format_table

    if not run.curve:
        return "(no evaluation curve)"
    return format_table({f"step {r['step']}" + (" (best)" if r["step"] == run.best_step else ""):
                         {k.replace("_", " "): v for k, v in r.items() if k != "step"} for r in run.curve})


def _before_after(rows: dict[str, Evaluation], path: Path, scale: int = 2) -> None:
    """One row per model: 4 subject samples, 2 on a blue background, 2 plain balls."""
    from PIL import Image, ImageDraw

    cell, label_w = 64 * scale, 150
    cols = [("sks ball", lambda e: e.subject[:4]), ("… on blue", lambda e: e.recontext[:2]), ("a ball", lambda e: e.plain[:2])]
    n_cols = sum(len(pick(next(iter(rows.values())))) for _, pick in cols)
    sheet = Image.new("RGB", (label_w + n_cols * cell, 20 + len(rows) * cell), "white")
    draw = ImageDraw.Draw(sheet)
    x = label_w
    for title, pick in cols:
        draw.text((x + 4, 4), title, fill="black")
        x += len(pick(next(iter(rows.values())))) * cell
    for r, (name, ev) in enumerate(rows.items()):
        y = 20 + r * cell
        draw.text((4, y + cell // 2 - 6), name, fill="black")
        images = [im for _, pick in cols for im in pick(ev)]
        for c, im in enumerate(images):
            sheet.paste(im.resize((cell, cell), Image.NEAREST), (label_w + c * cell, y))
    sheet.save(path)
