"""One training step of the real module tree on fake tensors: the bytes it would hold.

The model is built from its configs under FakeTensorMode (no storage), set up by the run's
own method class (peft layers, embedding rows, hypernetwork hooks), and stepped as the loop
steps it: forward under autocast, backward, gradient clipping, optimizer step. LiveBytes
counts the storage each part holds, so the figures follow diffusers, peft and torch as they
are installed rather than a formula that drifts from them.
"""
from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterator

import torch

from .live_bytes import LiveBytes, storage_bytes

if TYPE_CHECKING:
    from ..config import TrainConfig
    from ..families import Family

WEIGHT_DTYPES = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# optimizers this torch cannot run here: persistent state per trained value (bytes)
STATE_BYTES = {"adamw8bit": 2, "prodigy": 16}


@dataclass
class StepBytes:
    """What one step holds on its device, by part (bytes)."""

    frozen_weights: int
    trainable_weights: int
    gradients: int
    optimizer_state: int
    activations: int      # the step's own peak beyond the gradients (activations, temporaries)
    packed_convolutions: int = 0
    parked: int = 0       # on the CPU during steps; validation previews bring it back (not a part)

    def parts(self) -> dict[str, int]:
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "parked"}


def on_device(config: "TrainConfig", method, device_type: str) -> dict[str, bool]:
    """Which components stay on the device during steps (as Trainer._free_unneeded decides):
    cached ones leave a GPU; on a CPU they are freed only when nothing after the steps needs them."""
    keep_all = device_type == "cpu" and (config.num_validation_images > 0 or method.needs_full_model)
    return {"vae": keep_all or not config.cache_latents, "text_encoders": keep_all or method.trains_text_encoder}


def simulate_step(config: "TrainConfig", family: "Family", configs: dict[str, Any], resolution: int, device_type: str = "cpu") -> StepBytes:
    """Bytes of one step of `config` on a model of `family` with component `configs`."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from ..methods import get_method
    from ..models.configs import empty_base_model
    from ..train.fused_step import FusedOptimizerStep
    from ..train.loop import build_optimizer
    from ..train.packed_convs import packing_cost
    from ..train.prompts import PromptCache

    # fp16 is planned as bf16 (the same bytes; CPU autocast, which the plan runs under, is bf16)
    weight_dtype = WEIGHT_DTYPES["bf16" if config.mixed_precision == "fp16" else config.mixed_precision]
    with FakeTensorMode(allow_non_fake_inputs=True), _fake_conversions():
        method_cls = get_method(config.method)
        dtypes = method_cls.load_dtypes(config, weight_dtype)
        model = empty_base_model(family, configs, meta=False, dtypes=dtypes)
        method = method_cls(config, model)
        method.setup(weight_dtype)
        if config.gradient_checkpointing:
            method.enable_gradient_checkpointing()
        method.train(True)
        _no_module_dropout_draw(model)
        keep = on_device(config, method, device_type)
        later = config.num_validation_images > 0 and device_type != "cpu"
        parked = storage_bytes([t for part, on in (("vae", [model.vae]), ("text_encoders", model.text_encoders))
                                if later and not keep[part] for m in on for t in (*m.parameters(), *m.buffers())])
        modules = [model.unet] + ([model.vae] if keep["vae"] else []) + (list(model.text_encoders) if keep["text_encoders"] else [])
        params = method.parameters()
        trained = {id(p) for p in params}
        extra = [t for m in method.trainable_modules().values() for t in (*m.parameters(), *m.buffers())]
        everything = {id(t): t for m in modules for t in (*m.parameters(), *m.buffers())} | {id(t): t for t in extra}
        frozen = storage_bytes([t for k, t in everything.items() if k not in trained])
        trainable = storage_bytes(params)

        analytic = STATE_BYTES.get(config.optimizer)
        opt_cfg = dataclasses.replace(config, optimizer="sgd", adam_weight_decay=0.0) if analytic is not None else config
        optimizer = build_optimizer(opt_cfg, method.param_groups())
        if device_type == "cuda":  # torch's optimizers default to their foreach form there (temporaries the size of the weights)
            for g in optimizer.param_groups:
                if "foreach" in g:
                    g["foreach"] = True
        for p in params:  # a first step creates the optimizer's state
            p.grad = torch.zeros_like(p)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        state = storage_bytes(optimizer.state_dict()["state"]) if analytic is None else analytic * sum(p.numel() for p in params)

        fused = FusedOptimizerStep(optimizer, config.max_grad_norm) if config.fused_optimizer_step else None
        prompts = PromptCache(model.tokenizers, ["a photo of zwx dog"], transform=method.prompt)
        with LiveBytes() as live:
            _one_step(config, family, model, method, prompts, params, optimizer, resolution, weight_dtype, fused=fused is not None)
        # gradients of the trained weights' dtype; fused into backward, one weight's at a time
        gradients = max(storage_bytes([p]) for p in params) if fused else trainable
        packed = packing_cost(model.unet) if device_type == "cpu" and config.pack_frozen_convolutions else 0
    return StepBytes(frozen, trainable, gradients, state, max(0, live.peak - gradients), packed, parked)


def _no_module_dropout_draw(model) -> None:
    """peft's LyCORIS layers (LoHa, LoKr) draw `torch.rand(1) > module_dropout` in training
    mode, a value a fake tensor cannot have; in eval mode they add the same delta with the
    same memory, so the plan runs them so."""
    from peft.tuners.lycoris_utils import LycorisLayer

    for part in (model.unet, *model.text_encoders):
        for module in part.modules():
            if isinstance(module, LycorisLayer):
                module.training = False


@contextlib.contextmanager
def _fake_conversions() -> Iterator[None]:
    """Let `module.to(...)` convert fake parameters. torch swaps a fake parameter for its
    converted copy, which FakeTensorMode's own weak references forbid; setting `.data`
    (what it does for real tensors) gives the same module."""
    swap = torch.utils.swap_tensors

    def swap_or_set(t1, t2):
        try:
            swap(t1, t2)
        except RuntimeError:
            t1.data = t2.data

    torch.utils.swap_tensors = swap_or_set
    try:
        yield
    finally:
        torch.utils.swap_tensors = swap


def _one_step(config, family, model, method, prompts, params, optimizer, resolution: int, dtype: torch.dtype, fused: bool = False) -> None:
    """The loop's step (train.loop.Trainer._optimizer_step) on fake inputs; `fused`: the
    optimizer steps inside backward (its hooks are set), as in the loop."""
    batch = config.train_batch_size * (2 if config.with_prior_preservation else 1)
    side = resolution // 2 ** (len(model.vae.config.block_out_channels) - 1)  # 8 for every real family's VAE
    if not config.cache_latents:
        with torch.no_grad():
            pixels = torch.zeros(config.train_batch_size, 3, resolution, resolution, dtype=model.vae.dtype)
            model.vae.encode(pixels).latent_dist.mean
            del pixels
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if dtype != torch.float32 else torch.autocast("cpu", enabled=False)
    with autocast:
        if method.trains_text_encoder:
            embeds = prompts.get(["a photo of zwx dog"] * batch, model.text_encoders, family)
            hidden, pooled = embeds.hidden.to(dtype), embeds.pooled
        else:
            hidden = torch.zeros(batch, 77, model.unet.config.cross_attention_dim, dtype=dtype)  # SDXL: both encoders
            pooled = torch.zeros(batch, model.unet.config.projection_class_embeddings_input_dim - 6 * model.unet.config.addition_time_embed_dim, dtype=dtype) if family.is_sdxl else None
        kwargs = {}
        if family.is_sdxl:
            kwargs["added_cond_kwargs"] = {"text_embeds": pooled.to(dtype), "time_ids": torch.zeros(batch, 6, dtype=dtype)}
        noisy = torch.zeros(batch, model.unet.config.in_channels, side, side, dtype=dtype)
        target = torch.zeros(batch, model.unet.config.out_channels, side, side)
        pred = model.unet(noisy, torch.zeros(batch, dtype=torch.long), encoder_hidden_states=hidden, **kwargs).sample
        loss = (pred.float() - target).pow(2).mean()
    loss.backward()
    del pred, loss, hidden, pooled, noisy, target, kwargs
    if fused:
        return
    if config.max_grad_norm > 0:
        torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
