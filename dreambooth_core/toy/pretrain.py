"""Pretrain the bundled toy base model from scratch on the toy world (CPU, tens of minutes).

    python -m dreambooth_core.toy.pretrain --out toy_sd1.safetensors [--seed 0] [--minutes 30]

Two phases, like Stable Diffusion itself: first the VAE learns to reconstruct images, then
the text encoder and UNet learn, jointly, to denoise the VAE's latents of captioned world
scenes (with empty captions now and then, for classifier-free guidance). The VAE also sees
random flat shapes in arbitrary colours, two-toned half the time and banded a quarter of
the time, so that it reproduces looks the world never shows - above all the subject's
band, which DreamBooth must later learn - without ever seeing the subject's instance images.

`--minutes` scales the step counts (it is a nominal budget on a 2-core CPU, not a
wall-clock limit), so the same arguments give the same weights on the same machine.
"""
from __future__ import annotations

import argparse
import colorsys
import dataclasses
import json
import platform
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from . import world as W
from .model import FAMILY, RESOLUTION, build_toy_model

if TYPE_CHECKING:
    import torch

    from ..models.base import BaseModel

NOMINAL_MINUTES = 30.0  # the step counts below are for this budget


@dataclass(frozen=True)
class PretrainConfig:
    """Hyper-parameters of both phases; step counts are for NOMINAL_MINUTES."""

    seed: int = 0
    minutes: float = NOMINAL_MINUTES
    vae_steps: int = 1500
    vae_batch: int = 32
    vae_crop: int = 32           # px: random crops of the 64 px images...
    vae_full_fraction: float = 0.25  # ...except in the last quarter of the steps
    vae_lr: float = 5e-4
    kl_weight: float = 1e-4      # per latent element, against a per-pixel L1: keeps latents tame
    edge_weight: float = 0.5     # L1 of image gradients: crisp shape edges
    initial_logvar: float = -6.0  # of the VAE posterior, at initialisation
    scenes: int = 12000          # distinct world scenes whose latents are cached
    # SD1's noise schedule was made for 64 x 64 latents; at 16 x 16 an object spans few
    # latent pixels, and at unit scale enough of it survives even t=999 that the model
    # takes objects from the noise instead of the prompt. Scaling the latents to std 1/4
    # lowers every step's SNR 16-fold (the (64/16)^2 resolution shift of "simple
    # diffusion"), through the VAE's scaling_factor alone: schedule, noise, samplers and
    # trainers stay standard SD1.
    latent_std: float = 0.25
    unet_steps: int = 1500
    unet_batch: int = 48
    lr: float = 6e-4
    warmup: int = 100
    cfg_dropout: float = 0.1     # empty caption, for classifier-free guidance
    min_snr_gamma: float = 5.0   # min-SNR loss weighting: faster convergence at equal steps
    # SD1's schedule leaves ~7% of the image at t=999, so a model learns to take the
    # background (most of a toy image) from the noise's mean instead of the prompt; noise
    # with a random per-channel offset makes that mean unreliable.
    offset_noise: float = 0.1

    def steps(self, nominal: int) -> int:
        return max(1, round(nominal * self.minutes / NOMINAL_MINUTES))


# ------------------------------------------------------------------ data

def _random_colour(rng: np.random.Generator) -> tuple[int, int, int]:
    """Any colour: uniform RGB a third of the time, otherwise a saturated hue - half of
    those fully saturated - which uniform RGB rarely gives, and the world's colours are."""
    if rng.random() < 1 / 3:
        return tuple(int(v) for v in rng.integers(0, 256, 3))
    s = 1.0 if rng.random() < 0.5 else rng.uniform(0.5, 1.0)
    h, v = rng.random(), rng.uniform(0.4, 1.0)
    return tuple(round(255 * c) for c in colorsys.hsv_to_rgb(h, s, v))


def random_object_image(rng: np.random.Generator, resolution: int = RESOLUTION) -> Image.Image:
    """One world shape in an arbitrary colour, size and place, on a world background half
    the time (else on any colour); two-toned (upper / lower part) half the time, with a
    band of a third colour a quarter of the time. VAE training data beyond the world."""
    side = resolution * W.SUPERSAMPLE
    if rng.random() < 0.5:
        background = W.COLORS[W.BACKGROUNDS[int(rng.integers(len(W.BACKGROUNDS)))]]
    else:
        background = _random_colour(rng)
    canvas = Image.new("RGB", (side, side), background)
    cls = list(W.CLASSES)[int(rng.integers(len(W.CLASSES)))]
    fw, fh = W.CLASSES[cls]
    extent = rng.uniform(0.25, 0.7) * side
    w, h = max(1, round(fw * extent * rng.uniform(0.8, 1.25))), max(1, round(fh * extent))
    obj = Image.new("RGB", (w, h), _random_colour(rng))
    if rng.random() < 0.5:
        split = 0.5 if rng.random() < 0.5 else rng.uniform(0.3, 0.7)
        obj.paste(_random_colour(rng), (0, round(h * split), w, h))
    if rng.random() < 0.25:
        middle, half = rng.uniform(0.3, 0.7), rng.uniform(0.05, 0.2)
        obj.paste(_random_colour(rng), (0, round(h * (middle - half)), w, round(h * (middle + half))))
    cx, cy = rng.uniform(0.3, 0.7, 2) * side
    canvas.paste(obj, (round(cx - w / 2), round(cy - h / 2)), W.shape_mask(cls, (w, h)))
    return canvas.resize((resolution, resolution), Image.Resampling.BOX)


def to_tensor(images: Sequence[Image.Image]) -> "torch.Tensor":
    """PIL images -> N x 3 x H x W float tensor in [-1, 1] (the VAE's input range)."""
    import torch

    arr = np.stack([np.asarray(im.convert("RGB"), dtype=np.float32) for im in images])
    return torch.from_numpy(arr).permute(0, 3, 1, 2) / 127.5 - 1.0


def to_images(x: "torch.Tensor") -> list[Image.Image]:
    """The inverse of `to_tensor` (clamped and rounded to uint8)."""
    import torch

    arr = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return [Image.fromarray(a.permute(1, 2, 0).numpy()) for a in arr]


def vae_batch(rng: np.random.Generator, n: int) -> "torch.Tensor":
    """A third world scenes, two thirds arbitrary-colour shapes (the harder part)."""
    images = [
        W.sample_scene(rng).render(RESOLUTION) if rng.random() < 1 / 3 else random_object_image(rng)
        for _ in range(n)
    ]
    return to_tensor(images)


def random_caption(scene: W.Scene, rng: np.random.Generator) -> str:
    """A fresh caption for a cached scene: size, colour and position are stated or not with
    the world's probabilities; the background is stated as the scene says (an unstated one
    must be the default gray)."""
    mentions = {a for a in ("size", "color", "position") if rng.random() < W.MENTION_PROB[a]}
    mentions |= scene.mentions & {"background"}
    return dataclasses.replace(scene, mentions=frozenset(mentions)).caption()


# ------------------------------------------------------------------ training

def _optimizer(params, lr: float, warmup: int, steps: int):
    import torch
    from diffusers.optimization import get_cosine_schedule_with_warmup

    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    return opt, get_cosine_schedule_with_warmup(opt, warmup, steps)


def _log_every(steps: int) -> int:
    return max(1, steps // 20)


def random_crops(x: "torch.Tensor", size: int, rng: np.random.Generator) -> "torch.Tensor":
    """One random `size` x `size` crop of each image: the VAE is convolutional, and crops
    cost a quarter of full images per step at half the side."""
    import torch

    if size >= x.shape[-1]:
        return x
    ij = rng.integers(0, x.shape[-1] - size + 1, size=(len(x), 2))
    return torch.stack([im[:, i : i + size, j : j + size] for im, (i, j) in zip(x, ij)])


def train_vae(model: "BaseModel", cfg: PretrainConfig, log: Callable[[str], None]) -> None:
    """Reconstruction (L1 + MSE + edge L1) plus a small KL term, on random crops, then
    on whole images."""
    import torch

    from . import evaluator as E

    vae = model.vae.train()
    with torch.no_grad():  # start with a narrow posterior: the decoder sees the encoder's
        logvar = slice(vae.config.latent_channels, None)  # signal from step one, not unit noise
        vae.quant_conv.weight[logvar] *= 0.1
        vae.quant_conv.bias[logvar] = cfg.initial_logvar
    steps = cfg.steps(cfg.vae_steps)
    opt, sched = _optimizer(vae.parameters(), cfg.vae_lr, min(cfg.warmup, steps // 10), steps)
    rng = np.random.default_rng([cfg.seed, 1])
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    held_out = vae_batch(np.random.default_rng([cfg.seed, 4]), 32)
    instances = W.instance_images()  # only watched, never trained on
    start = time.time()
    full_from = round(steps * (1 - cfg.vae_full_fraction))
    for step in range(1, steps + 1):
        if step <= full_from:
            x = random_crops(vae_batch(rng, cfg.vae_batch), cfg.vae_crop, rng)
        else:  # whole images at the same pixel count per step: whole objects, full-size attention
            x = vae_batch(rng, cfg.vae_batch * cfg.vae_crop**2 // RESOLUTION**2)
        posterior = vae.encode(x).latent_dist
        y = vae.decode(posterior.sample(generator=gen)).sample
        rec = (y - x).abs().mean() + ((y - x) ** 2).mean()
        edge = sum((torch.diff(y, dim=d) - torch.diff(x, dim=d)).abs().mean() for d in (2, 3))
        kl = posterior.kl().mean() / posterior.mean[0].numel()
        loss = rec + cfg.edge_weight * edge + cfg.kl_weight * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % _log_every(steps) == 0 or step == steps:
            vae.eval()
            with torch.no_grad():
                err = (vae.decode(vae.encode(held_out).latent_dist.mean).sample - held_out).abs().mean()
            fidelity = E.subject_fidelity(vae_round_trip(model, instances))
            vae.train()
            log(f"vae {step}/{steps} loss {loss.item():.4f} kl {kl.item():.2f} held-out L1 {err.item():.4f} "
                f"instance round trip subject_fidelity {fidelity:.3f} ({time.time() - start:.0f}s)")
    vae.eval()


@dataclass
class LatentCache:
    """The scaled latents of `scenes`, encoded once, for the denoiser phase."""

    scenes: list[W.Scene]
    latents: "torch.Tensor"


def encode_scenes(model: "BaseModel", cfg: PretrainConfig, batch: int = 64) -> LatentCache:
    """Encode `cfg.scenes` world scenes (posterior means) and set the VAE's scaling factor
    so that their scaled latents have standard deviation `cfg.latent_std`."""
    import torch

    rng = np.random.default_rng([cfg.seed, 2])
    scenes = [W.sample_scene(rng) for _ in range(cfg.scenes)]
    chunks = []
    with torch.no_grad():
        for i in range(0, len(scenes), batch):
            x = to_tensor([s.render(RESOLUTION) for s in scenes[i : i + batch]])
            chunks.append(model.vae.encode(x).latent_dist.mean)
    latents = torch.cat(chunks)
    scale = round(cfg.latent_std / latents.std().item(), 5)
    model.vae.register_to_config(scaling_factor=scale)
    return LatentCache(scenes, latents * scale)


class CaptionEncoder:
    """Token ids of captions, cached: the world has only a few thousand distinct captions."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self._ids: dict[str, list[int]] = {}

    def __call__(self, captions: Sequence[str]) -> "torch.Tensor":
        import torch

        for c in captions:
            if c not in self._ids:
                self._ids[c] = self.tokenizer(
                    c, padding="max_length", max_length=self.tokenizer.model_max_length, truncation=True
                ).input_ids
        return torch.tensor([self._ids[c] for c in captions])


def train_denoiser(model: "BaseModel", cache: LatentCache, cfg: PretrainConfig, log: Callable[[str], None]) -> None:
    """Text encoder and UNet together, epsilon prediction on SD1's DDPM schedule, with
    min-SNR-weighted MSE, offset noise and `cfg_dropout` empty captions."""
    import torch

    unet, text_encoder = model.unet.train(), model.text_encoders[0].train()
    noise_scheduler = model.noise_scheduler()
    alphas = noise_scheduler.alphas_cumprod
    snr = alphas / (1 - alphas)
    weights = torch.clamp(snr, max=cfg.min_snr_gamma) / snr if cfg.min_snr_gamma > 0 else torch.ones_like(snr)
    tokens = CaptionEncoder(model.tokenizers[0])
    steps = cfg.steps(cfg.unet_steps)
    opt, sched = _optimizer([*unet.parameters(), *text_encoder.parameters()], cfg.lr, cfg.warmup, steps)
    rng = np.random.default_rng([cfg.seed, 3])
    gen = torch.Generator().manual_seed(cfg.seed + 3)
    n_train = noise_scheduler.config.num_train_timesteps
    start, running = time.time(), 0.0
    for step in range(1, steps + 1):
        idx = rng.integers(len(cache.scenes), size=cfg.unet_batch)
        captions = ["" if rng.random() < cfg.cfg_dropout else random_caption(cache.scenes[i], rng) for i in idx]
        latents = cache.latents[torch.from_numpy(idx)]
        noise = torch.randn(latents.shape, generator=gen)
        noise += cfg.offset_noise * torch.randn(*latents.shape[:2], 1, 1, generator=gen)
        t = torch.randint(0, n_train, (cfg.unet_batch,), generator=gen)
        noisy = noise_scheduler.add_noise(latents, noise, t)
        context = text_encoder(tokens(captions))[0]
        pred = unet(noisy, t, context).sample
        per_sample = ((pred - noise) ** 2).mean(dim=(1, 2, 3))
        loss = (per_sample * weights[t]).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([*unet.parameters(), *text_encoder.parameters()], 1.0)
        opt.step()
        sched.step()
        running += per_sample.mean().item()
        every = _log_every(steps)
        if step % every == 0 or step == steps:
            log(f"unet {step}/{steps} mse {running / (step % every or every):.4f} ({time.time() - start:.0f}s)")
            running = 0.0
    unet.eval()
    text_encoder.eval()


# ------------------------------------------------------------------ evaluation

# (prompt, what prompt_fidelity checks): background (gray when unstated), colour, class.
EVAL_PROMPTS: tuple[tuple[str, dict[str, str]], ...] = (
    ("a photo of a red box", dict(background="gray", color="red", cls="box")),
    ("a photo of a ball on a blue background", dict(background="blue", cls="ball")),
    ("a photo of a green tent on a black background", dict(background="black", color="green", cls="tent")),
    ("a photo of a yellow ring on a white background", dict(background="white", color="yellow", cls="ring")),
    ("a photo of a big purple ball on a green background", dict(background="green", color="purple", cls="ball")),
    ("a photo of a teal box on a black background", dict(background="black", color="teal", cls="box")),
)


def vae_round_trip(model: "BaseModel", images: Sequence[Image.Image]) -> list[Image.Image]:
    import torch

    with torch.no_grad():
        x = to_tensor(images)
        return to_images(model.vae.decode(model.vae.encode(x).latent_dist.mean).sample)


def evaluate(model: "BaseModel", n: int = 16, seed: int = 1000, steps: int = 20, guidance_scale: float = 6.0) -> dict[str, dict[str, float]]:
    """Evaluator scores of the base model: prompts follow, the class prior is varied and
    free of the subject, words reach the subject's colours but not its band, and the VAE
    reproduces the subject."""
    from ..sample import generate
    from . import evaluator as E

    def toy_generate(prompt: str) -> list[Image.Image]:
        return generate(model, [prompt] * n, steps=steps, guidance_scale=guidance_scale, seed=seed,
                        width=RESOLUTION, height=RESOLUTION, batch_size=n)

    rows: dict[str, dict[str, float]] = {}
    for prompt, asked in EVAL_PROMPTS:
        images = toy_generate(prompt)
        rows[prompt] = {
            "prompt_fidelity": E.prompt_fidelity(images, **asked),
            "class_fidelity": E.class_fidelity(images, asked["cls"]),
            "diversity": E.diversity(images),
        }
    plain = toy_generate(W.class_prompt())
    rows[W.class_prompt()] = {
        "prompt_fidelity": E.prompt_fidelity(plain, background="gray", cls="ball"),
        "class_fidelity": E.class_fidelity(plain), "prior_preservation": E.prior_preservation(plain),
        "diversity": E.diversity(plain),
    }
    for prompt in (W.instance_prompt(), W.words_prompt()):
        subject = toy_generate(prompt)
        rows[prompt] = {"subject_fidelity": E.subject_fidelity(subject), "class_fidelity": E.class_fidelity(subject)}
    rows["VAE round trip of instance_images()"] = {"subject_fidelity": E.subject_fidelity(vae_round_trip(model, W.instance_images()))}
    rows["instance_images() (reference)"] = {"subject_fidelity": E.subject_fidelity(W.instance_images())}
    return rows


# ------------------------------------------------------------------ entry point

def save_instance_images(folder: Path, n: int = 6) -> list[Path]:
    """The subject's instance photos as `instance/00.png`...: what a demo user would upload."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, image in enumerate(W.instance_images(n, resolution=RESOLUTION, seed=0)):
        paths.append(folder / f"{i:02d}.png")
        image.save(paths[-1])
    return paths


def _versions() -> dict[str, str]:
    import diffusers
    import torch
    import transformers

    return {"python": platform.python_version(), "torch": torch.__version__,
            "diffusers": diffusers.__version__, "transformers": transformers.__version__,
            "numpy": np.__version__}


@dataclass
class Clock:
    """Wall and CPU seconds per phase: on a shared machine the wall time says little, and
    the process's CPU time is what an idle machine would take (with one thread)."""

    phases: dict[str, tuple[float, float]] = dataclasses.field(default_factory=dict)

    def run(self, name: str, fn: Callable[[], object]) -> object:
        wall, cpu = time.time(), time.process_time()
        result = fn()
        self.phases[name] = (time.time() - wall, time.process_time() - cpu)
        return result

    def summary(self) -> str:
        total = [sum(p[i] for p in self.phases.values()) for i in (0, 1)]
        parts = [f"{k} {w:.0f}s wall / {c:.0f}s cpu" for k, (w, c) in self.phases.items()]
        return f"total {total[0]:.0f}s wall / {total[1]:.0f}s cpu ({', '.join(parts)})"


def pretrain(cfg: PretrainConfig, log: Callable[[str], None] = print, clock: Clock | None = None) -> "BaseModel":
    """Build and train the toy model (seeded: the same config and thread count give the
    same weights on the same machine)."""
    import torch

    clock = clock or Clock()
    torch.manual_seed(cfg.seed)
    model = build_toy_model(cfg.seed)
    clock.run("vae", lambda: train_vae(model, cfg, log))
    cache = clock.run("encode", lambda: encode_scenes(model, cfg))
    log(f"encoded {len(cache.scenes)} scenes; scaling_factor {model.vae.config.scaling_factor}")
    clock.run("denoiser", lambda: train_denoiser(model, cache, cfg, log))
    model.metadata = {
        "modelspec.title": "dreambooth_core toy sd1",
        "modelspec.description": "Tiny SD1-architecture model pretrained on dreambooth_core.toy.world (64 px).",
        "modelspec.resolution": f"{RESOLUTION}x{RESOLUTION}",
        "dreambooth_core.toy.pretrain": json.dumps(
            {"config": dataclasses.asdict(cfg), "threads": torch.get_num_threads(), "versions": _versions()},
            sort_keys=True),
    }
    return model


def main(argv: Sequence[str] | None = None) -> int:
    import torch

    from ..fileio import check_output
    from ..models.save import save_single_file

    parser = argparse.ArgumentParser(prog="python -m dreambooth_core.toy.pretrain", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, type=Path, help="the .safetensors single file to write")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--minutes", type=float, default=NOMINAL_MINUTES,
                        help="nominal budget in single-core CPU minutes; scales the step counts (default %(default)s)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: robust on a shared machine). Part of the "
                             "reproducibility key: another count gives other, equally good, weights")
    parser.add_argument("--instance-dir", type=Path, help="also write the subject's instance PNGs here")
    parser.add_argument("--overwrite", action="store_true")
    parser.add_argument("--evaluate", action="store_true", help="print evaluator scores of the result")
    args = parser.parse_args(argv)
    check_output(args.out, args.overwrite)
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    cfg = PretrainConfig(seed=args.seed, minutes=args.minutes)

    def log(msg: str) -> None:
        print(msg, flush=True)

    log(f"pretraining toy {FAMILY} model: {cfg}; threads {args.threads}; {_versions()}")
    clock = Clock()
    model = pretrain(cfg, log, clock)
    clock.run("save", lambda: save_single_file(model, args.out, dtype="fp16", overwrite=args.overwrite))
    log(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.1f} MB); {clock.summary()}")
    if args.instance_dir:
        save_instance_images(args.instance_dir)
    if args.evaluate:
        from . import evaluator as E
        from .model import load_toy_model

        log(E.format_table(evaluate(load_toy_model(args.out))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
