"""Language drift of our DreamBooth against diffusers' train_dreambooth.py on the toy world (issue 17).

Both trainers fine-tune the bundled toy model (saved here as an fp32 diffusers folder, what
both load) with diffusers' own DreamBooth hyper-parameters: AdamW (0.9, 0.999, weight decay
1e-2, eps 1e-8), constant learning rate without warm-up, max_grad_norm 1, prior loss weight 1,
the same six instance photos and instance prompt, the same class images (drawn once by the
base model, given to both), the same steps, batch and seed; UNet only, fp32 throughout. Each
result is then drawn and scored by the toy world's evaluator (fixed seeds):

- subject fidelity     "a photo of a sks ball"
- prior preservation   "a photo of a ball" (1 = no trace of the subject)
- prompt fidelity      "a photo of a sks ball on a blue/green background" (background only)
- prompt control       plain prompts naming colour, class and background (CONTROL_PROMPTS):
                       the share of images in which all three are drawn right (and, soft, the
                       mean of the three attribute scores). Language drift lowers it.

Ours publishes its single file at `--save-dtype` (fp32 here by default): scored as published,
and, from an fp32 file, also re-saved in fp16 and bf16, which separates training from saving.
`--save-dtype fp16` scores what ours publishes by default; `--ours-precision bf16` trains ours
as memory="auto" does on any GPU (its frozen VAE and text encoder then held in bf16).

The reference script is not part of this repository: see bench_reference.py for where to get
it and how it runs without torchvision.

    python benchmarks/bench_drift.py --reference /tmp/train_dreambooth.py --steps 400 --lr 5e-6
    python benchmarks/bench_drift.py --reference /tmp/train_dreambooth.py --steps 400 --lr 5e-6 --no-prior
    python benchmarks/bench_drift.py --reference /tmp/train_dreambooth.py --only ours --ours-precision bf16 --save-dtype fp16
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]  # this tree first
from bench_reference import child_env, write_launcher  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TOKEN, CLASS = "sks", "ball"
INSTANCE_PROMPT, CLASS_PROMPT = f"a photo of a {TOKEN} {CLASS}", f"a photo of a {CLASS}"
SAMPLES, SAMPLE_STEPS, GUIDANCE, SAMPLE_SEED = 8, 20, 6.0, 1234
# colour, class, background: every class, several colours, all five backgrounds
CONTROL_PROMPTS = [("red", "box", "blue"), ("yellow", "tent", "black"), ("green", "ring", "white"),
                   ("purple", "ball", "gray"), ("orange", "box", "green"), ("blue", "ball", "white"),
                   ("white", "tent", "gray"), ("teal", "ring", "black")]
CONTROL_SAMPLES = 4


def control_prompt(color: str, cls: str, background: str) -> str:
    return f"a photo of a {color} {cls} on a {background} background"


def score_model(model) -> dict[str, float]:
    """The toy evaluator's scores of one model (fixed seeds)."""
    from dreambooth_core.sample import generate
    from dreambooth_core.toy import evaluator

    def draw(prompt: str, n: int = SAMPLES):
        return generate(model, [prompt] * n, steps=SAMPLE_STEPS, guidance_scale=GUIDANCE, seed=SAMPLE_SEED,
                        width=64, height=64, batch_size=n)

    scores = {"subject_fidelity": evaluator.subject_fidelity(draw(INSTANCE_PROMPT)),
              "prior_preservation": evaluator.prior_preservation(draw(CLASS_PROMPT)),
              "prompt_fidelity": sum(evaluator.prompt_fidelity(draw(f"{INSTANCE_PROMPT} on a {bg} background"), background=bg)
                                     for bg in ("blue", "green")) / 2}
    hard, soft = [], []
    for color, cls, bg in CONTROL_PROMPTS:
        for im in draw(control_prompt(color, cls, bg), CONTROL_SAMPLES):
            parts = [evaluator.prompt_fidelity([im], color=color), evaluator.class_fidelity([im], cls),
                     evaluator.prompt_fidelity([im], background=bg)]
            hard.append(float(all(p > 0.5 for p in parts)))
            soft.append(sum(parts) / 3)
    scores["prompt_control"] = sum(hard) / len(hard)
    scores["prompt_control_soft"] = sum(soft) / len(soft)
    return scores


def score_path(path: Path, dtype: str = "fp32") -> dict[str, float]:
    import torch

    from dreambooth_core.models.load import load_base_model

    torch.set_num_threads(1)
    return score_model(load_base_model(path, family="sd1", dtype=dtype))


def prepare(work: Path, num_class: int) -> tuple[Path, Path]:
    """The toy model as an fp32 diffusers folder, and `num_class` class images drawn by it."""
    from dreambooth_core.models.save import save_diffusers
    from dreambooth_core.sample import generate
    from dreambooth_core.toy.model import load_toy_model

    model_dir, class_dir = work / "toy-diffusers", work / f"class-{num_class}"
    base = None
    if not (model_dir / "model_index.json").exists():
        base = load_toy_model(dtype="fp32")
        save_diffusers(base, model_dir, dtype="fp32")
    if len(list(class_dir.glob("*.png"))) < num_class:
        base = base or load_toy_model(dtype="fp32")
        class_dir.mkdir(parents=True, exist_ok=True)
        for i, im in enumerate(generate(base, [CLASS_PROMPT] * num_class, steps=SAMPLE_STEPS, guidance_scale=GUIDANCE,
                                        seed=0, width=64, height=64, batch_size=8)):
            im.save(class_dir / f"{i:04d}.png")
    return model_dir, class_dir


def run_reference(script: Path, work: Path, model: Path, classes: Path, out: Path, a) -> None:
    from dreambooth_core.toy.model import TOY_INSTANCE_DIR

    launcher = write_launcher(work)
    prior = ["--with_prior_preservation", "--class_data_dir", str(classes), "--class_prompt", CLASS_PROMPT,
             "--num_class_images", str(a.num_class), "--prior_loss_weight", "1.0"] if a.prior else []
    cmd = [sys.executable, str(launcher), str(launcher.parent / "stub"), str(script.resolve()),
           "--pretrained_model_name_or_path", str(model), "--instance_data_dir", str(TOY_INSTANCE_DIR),
           "--instance_prompt", INSTANCE_PROMPT, "--output_dir", str(out), "--resolution", "64",
           "--train_batch_size", str(a.batch), "--max_train_steps", str(a.steps), "--learning_rate", str(a.lr),
           "--lr_scheduler", "constant", "--lr_warmup_steps", "0", "--mixed_precision", "no",
           "--checkpointing_steps", "100000000", "--seed", str(a.seed), *prior]
    log = out.parent / f"{out.name}.log"
    with open(log, "w") as f:
        subprocess.run(cmd, env=child_env(1, ""), stdout=f, stderr=subprocess.STDOUT, check=True, cwd=work)


def run_ours(work: Path, model: Path, classes: Path, out: Path, a) -> Path:
    """Our DreamBooth at the same settings; returns the published single file."""
    from dreambooth_core.config import load_config
    from dreambooth_core.events import CancelToken
    from dreambooth_core.toy.model import TOY_INSTANCE_DIR
    from dreambooth_core.train import run_training

    cfg = load_config(overrides=dict(
        method="dreambooth", base_model=str(model), family="sd1", instance_data_dir=str(TOY_INSTANCE_DIR), token=TOKEN, class_noun=CLASS,
        instance_prompt="a photo of a {token} {class_noun}", class_prompt="a photo of a {class_noun}",
        with_prior_preservation=a.prior, class_data_dir=str(classes), num_class_images=a.num_class, prior_loss_weight=1.0,
        resolution=64, train_batch_size=a.batch, max_train_steps=a.steps, learning_rate=a.lr, lr_scheduler="constant",
        lr_warmup_steps=0, optimizer="adamw", adam_weight_decay=1e-2, max_grad_norm=1.0, seed=a.seed, mixed_precision=a.ours_precision,
        memory="manual", num_validation_images=0, eval_every_n_steps=0, checkpointing_steps=0,
        save_dtype=a.save_dtype, output_dir=str(out), output_name="ours", overwrite=True))
    result = run_training(cfg, lambda e: None, CancelToken())
    if result.status != "completed":
        raise SystemExit(f"our run ended {result.status}")
    return next(Path(x.path) for x in result.artifacts if x.kind == "checkpoint" or str(x.path).endswith(".safetensors"))


def resave(src: Path, dest: Path, dtype: str) -> Path:
    from dreambooth_core.models.load import load_base_model
    from dreambooth_core.models.save import save_single_file

    save_single_file(load_base_model(src, family="sd1", dtype="fp32"), dest, dtype=dtype, overwrite=True)
    return dest


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reference", type=Path, required=True)
    p.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "bench_drift")
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--lr", type=float, default=5e-6)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--num-class", type=int, default=48)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-prior", dest="prior", action="store_false")
    p.add_argument("--ours-precision", choices=["no", "bf16"], default="no",
                   help="our mixed precision (bf16: what memory='auto' always takes on a GPU); the reference's stays 'no', diffusers' default")
    p.add_argument("--save-dtype", choices=["fp32", "fp16"], default="fp32",
                   help="what ours publishes in (its default is fp16; fp32 separates training from saving: the rows after it re-save that file)")
    p.add_argument("--only", choices=["reference", "ours", "base"], action="append")
    a = p.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    a.work.mkdir(parents=True, exist_ok=True)
    model, classes = prepare(a.work, a.num_class)
    tag = f"{'prior' if a.prior else 'noprior'}-s{a.steps}-lr{a.lr:g}-b{a.batch}-seed{a.seed}" + ("-bf16" if a.ours_precision == "bf16" else "") + f"-save{a.save_dtype}"
    rows: dict[str, dict[str, float]] = {}
    only = set(a.only or ["reference", "ours", "base"])
    if "base" in only:
        rows["base"] = score_path(model)
    if "reference" in only:
        out = a.work / f"ref-{tag}"
        shutil.rmtree(out, ignore_errors=True)
        run_reference(a.reference, a.work, model, classes, out, a)
        rows["reference"] = score_path(out)
    if "ours" in only:
        out = a.work / f"ours-{tag}"
        shutil.rmtree(out, ignore_errors=True)
        published = run_ours(a.work, model, classes, out, a)
        rows[f"ours {a.save_dtype}"] = score_path(published)
        if a.save_dtype == "fp32":
            for dtype in ("fp16", "bf16"):
                rows[f"ours {dtype} save"] = score_path(resave(published, out / f"ours-{dtype}.safetensors", dtype))
    print(f"\n{tag}")
    cols = ["subject_fidelity", "prior_preservation", "prompt_fidelity", "prompt_control", "prompt_control_soft"]
    print(f"{'':16s}" + "".join(f"{c:>22s}" for c in cols))
    for name, s in rows.items():
        print(f"{name:16s}" + "".join(f"{s[c]:22.3f}" for c in cols))
    (a.work / f"scores-{tag}.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
