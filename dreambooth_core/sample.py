"""Image generation from a `BaseModel`: class images and validation previews.

Samplers are diffusers schedulers built from the model's own scheduler config (so betas and
the prediction type — ε or v — always match the model); the pipeline is assembled from
the model's components, without a safety checker (nothing to download, and a trainer must
see what the model really draws).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from .errors import UserError

if TYPE_CHECKING:
    from PIL import Image

    from .models.base import BaseModel
    from .train.prompts import TextEncoding

# sampler name → (diffusers scheduler class, settings over the model's config)
SAMPLERS: dict[str, tuple[str, dict[str, Any]]] = {
    "ddim": ("DDIMScheduler", {}),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}),
    "dpmpp_2m": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "pndm": ("PNDMScheduler", {"skip_prk_steps": True}),
    "lms": ("LMSDiscreteScheduler", {}),
    "euler": ("EulerDiscreteScheduler", {}),
}


def make_scheduler(sampler: str, scheduler_config: dict[str, Any]):
    """A fresh inference scheduler named like A1111's samplers, from the model's config."""
    import diffusers

    if sampler not in SAMPLERS:
        raise UserError(f"unknown sampler {sampler!r}: use one of {', '.join(SAMPLERS)}")
    if sampler == "lms":
        from diffusers.utils import is_scipy_available

        if not is_scipy_available():
            raise UserError("the lms sampler needs scipy: `pip install scipy`, or choose another sampler such as dpmpp_2m")
    cls_name, settings = SAMPLERS[sampler]
    if scheduler_config.get("rescale_betas_zero_snr"):  # zero terminal SNR: sampling starts at the last timestep (Lin et al. 2023)
        settings = {**settings, "timestep_spacing": "trailing"}
    return getattr(diffusers, cls_name).from_config(scheduler_config, **settings)


def build_pipeline(model: "BaseModel", sampler: str = "dpmpp_2m"):
    """A StableDiffusion(XL)Pipeline over the model's own modules (nothing is copied)."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    scheduler = make_scheduler(sampler, model.scheduler_config)
    if model.family.is_sdxl:
        pipe = StableDiffusionXLPipeline(**model.components(), scheduler=scheduler)
    else:
        pipe = StableDiffusionPipeline(
            **model.components(), scheduler=scheduler,
            safety_checker=None, feature_extractor=None, requires_safety_checker=False,
        )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def generate(
    model: "BaseModel",
    prompts: list[str],
    negative_prompt: str = "",
    steps: int = 25,
    guidance_scale: float = 7.5,
    seed: int = 0,
    sampler: str = "dpmpp_2m",
    width: int | None = None,
    height: int | None = None,
    batch_size: int = 1,
    on_image: Callable[[int, "Image.Image"], None] | None = None,
    encoding: "TextEncoding | None" = None,
) -> list["Image.Image"]:
    """One image per prompt; image i is seeded with `seed + i`, so it is the same picture
    whatever the batch size or however many images are generated around it.

    `on_image(i, image)` is called as each image is ready (to save it, report progress,
    or raise to stop). `encoding` encodes prompts as training does (long prompts in chunks,
    clip skip); without it, or when it changes nothing, the pipeline encodes them itself.
    """
    import torch

    pipe = build_pipeline(model, sampler)
    width = width or model.family.resolution
    height = height or model.family.resolution
    images: list[Image.Image] = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start : start + batch_size]
        generators = [torch.Generator(device="cpu").manual_seed(seed + start + i) for i in range(len(chunk))]
        with torch.no_grad():
            text = prompt_inputs(model, pipe, chunk, negative_prompt, encoding) or dict(
                prompt=chunk, negative_prompt=[negative_prompt] * len(chunk) if negative_prompt else None)
            out = pipe(
                **text, num_inference_steps=steps, guidance_scale=guidance_scale, generator=generators,
                width=width, height=height, output_type="pil",
            ).images
        for i, image in enumerate(out):
            if on_image is not None:
                on_image(start + i, image)
            images.append(image)
    return images


def prompt_inputs(model: "BaseModel", pipe, prompts: list[str], negative_prompt: str,
                  encoding: "TextEncoding | None") -> dict[str, Any] | None:
    """The pipeline's prompt_embeds arguments when `encoding` differs from the pipeline's own
    (a prompt over 75 tokens, clip skip, or A1111 emphasis or BREAK it reads) or a prompt
    holds a multi-vector embedding's token; None otherwise.
    Prompt and negative prompt are encoded as one batch, so the shorter is padded with empty
    chunks as A1111 pads them."""
    from .data.long_prompts import chunk_size, is_plain, token_count
    from .formats.embeddings import expand_added_tokens
    from .train.prompts import TextEncoding, encode_prompts

    tok = model.tokenizers[0]
    asked = [*prompts, negative_prompt]
    texts = [expand_added_tokens(tok, p) for p in asked]
    # a multi-vector embedding's token is written out here, once, and encoded here: the
    # pipeline's own rewrite would expand it again inside an already written-out prompt
    multi = any(pipe.maybe_convert_prompt(p, tok) != p for p in asked)
    if encoding is None and not multi:
        return None
    encoding = encoding or TextEncoding()
    prompts, negative_prompt = texts[:-1], texts[-1]
    fits = all(token_count(tok, p) <= chunk_size(tok) for p in texts)
    weighted = encoding.emphasis and not all(map(is_plain, texts))
    if encoding.clip_skip == 1 and fits and not weighted and not multi:
        return None
    both = encode_prompts(model, [*prompts, *[negative_prompt] * len(prompts)], encoding)
    n = len(prompts)
    hidden, negative = both.hidden[:n], both.hidden[n:]
    out: dict[str, Any] = {"prompt_embeds": hidden, "negative_prompt_embeds": negative}
    if both.pooled is not None:
        pooled, negative_pooled = both.pooled[:n], both.pooled[n:]
        if not negative_prompt and getattr(pipe.config, "force_zeros_for_empty_prompt", False):
            out["negative_prompt_embeds"], negative_pooled = negative.new_zeros(negative.shape), negative_pooled.new_zeros(negative_pooled.shape)
        out.update(pooled_prompt_embeds=pooled, negative_pooled_prompt_embeds=negative_pooled)
    return out


def image_grid(images: list["Image.Image"], cols: int | None = None) -> "Image.Image":
    """Images (all the size of the first) in a grid of `cols` columns."""
    import math

    from PIL import Image

    if not images:
        raise ValueError("no images to put in a grid")
    cols = cols or math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / cols)
    w, h = images[0].size
    grid = Image.new("RGB", (cols * w, rows * h), (255, 255, 255))
    for i, image in enumerate(images):
        grid.paste(image.resize((w, h)) if image.size != (w, h) else image, ((i % cols) * w, (i // cols) * h))
    return grid
