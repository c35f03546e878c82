"""memory="auto": the cheapest savings that make a run fit its device, in a fixed order.

The order (each step is tried only when the steps before it do not fit; one that saved
nothing is tried again once a later one is taken: gradient checkpointing saves nothing while
a full set of gradients sets the peak, and pays once the optimizer step is fused):
1. on a CPU only: frozen convolutions stay plain (no packed copy: slower steps, less memory);
2. bf16 mixed precision (fp16 where bf16 is missing) with fp32 trained weights; frozen parts
   are then loaded in the compute dtype (Method.load_dtypes);
3. cached latents (the VAE leaves the step) - text-encoder outputs are cached whenever the
   text encoders do not train;
4. gradient checkpointing;
5. a lean optimizer: 8-bit AdamW where bitsandbytes works on a GPU, else Adafactor;
6. full fine-tuning: Adafactor with its step fused into the backward pass (train/fused_step.py:
   no full set of gradients; needs gradient_accumulation_steps=1 and no fp16 loss scaling);
7. full fine-tuning where the compute dtype is bf16: the trained weights stored in bf16
   (full_bf16; costs precision: updates rounded to nearest, no stochastic rounding).
8. frozen UNet and text-encoder weights stored in 8-bit float, up-cast one layer at a time
   (train/fp8_weights.py: a little quality and speed for half the frozen bytes; not for full
   fine-tuning, which saves its frozen parts again).
On a GPU step 2 is always taken (it is faster there too). A setting the user pinned is
never changed; when the plan still does not fit, the run is refused before the model loads.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import UserError
from .memory import GiB, MemoryPlan, architecture, plan_memory

if TYPE_CHECKING:
    from ..config import TrainConfig
    from ..models.base import BaseModel

MARGIN = 0.10  # of the free memory, kept spare
# e4m3 keeps 3 mantissa bits (train/fp8_weights.py)
FP8_COST = "frozen weights stored in fp8 (each rounded to ~2 digits: outputs drift slightly; one up-cast per layer and pass)"


@dataclass(frozen=True)
class Saving:
    name: str               # said in the plan and in messages
    changes: dict[str, Any]


def compute_precision(device: str) -> str:
    import torch

    if device == "cuda" and torch.cuda.is_available() and not torch.cuda.is_bf16_supported():
        return "fp16"
    return "bf16"


def lean_optimizer(device: str) -> str:
    if device == "cuda":
        try:
            import bitsandbytes  # noqa: F401

            return "adamw8bit"
        except Exception:  # missing, or built without this GPU's support
            pass
    return "adafactor"


def savings(device: str) -> list[Saving]:
    """The savings in the order they are tried on `device`."""
    out = [Saving("frozen convolutions not packed (CPU: slower steps)", {"pack_frozen_convolutions": False})] if device == "cpu" else []
    return out + [
        Saving(f"{compute_precision(device)} mixed precision", {"mixed_precision": compute_precision(device)}),
        Saving("cached latents", {"cache_latents": True}),
        Saving("gradient checkpointing", {"gradient_checkpointing": True}),
        Saving(f"{lean_optimizer(device)} optimizer", {"optimizer": lean_optimizer(device)}),
        Saving("adafactor step fused into backward", {"optimizer": "adafactor", "fused_optimizer_step": True}),
        Saving("bf16 trained weights (full_bf16: costs precision)", {"full_bf16": True}),
        Saving(FP8_COST, {"frozen_weights_dtype": "fp8"}),
    ]


def applies(saving: Saving, config: "TrainConfig") -> bool:
    """Whether `saving` changes `config` into settings that work together (TrainConfig.memory_problem)."""
    if not any(getattr(config, k) != v for k, v in saving.changes.items()):
        return False
    return dataclasses.replace(config, **saving.changes).memory_problem() is None


def blocked_by(saving: Saving, config: "TrainConfig") -> list[str]:
    """The pinned settings that keep `saving` from being taken."""
    return [k for k, v in saving.changes.items() if k in config.pinned_memory_keys and getattr(config, k) != v]


def choose(config: "TrainConfig", free_bytes: int, device: str, model: "BaseModel | None" = None,
           limited: bool = False) -> tuple["TrainConfig", MemoryPlan]:
    """The config with the savings it needs to fit `free_bytes` (and its plan), or a UserError
    naming the estimate and the pinned setting to change; `limited`: `free_bytes` is the
    config's memory_limit_gb, not what the device has free."""
    arch = architecture(config, model)
    budget = free_bytes * (1 - MARGIN)
    chosen: list[str] = []
    blocked: list[str] = []
    order = savings(device)
    if device != "cpu" and applies(order[0], config) and not blocked_by(order[0], config):
        config = dataclasses.replace(config, **order[0].changes)
        chosen.append(order[0].name)
        order = order[1:]
    plan = plan_memory(config, device=device, arch=arch)
    pending, idle = list(order), []   # idle: savings that saved nothing yet; a later one taken may make them pay
    while pending and plan.total_bytes > budget:
        saving = pending.pop(0)
        if not applies(saving, config):
            continue
        pinned = blocked_by(saving, config)
        if pinned:
            blocked += [f"{k}={saving.changes[k]!r}" for k in pinned]
            continue
        trial = dataclasses.replace(config, **saving.changes)
        trial_plan = plan_memory(trial, device=device, arch=arch)
        if trial_plan.total_bytes < plan.total_bytes:  # a saving that saves nothing here costs speed for nothing
            config, plan = trial, trial_plan
            chosen.append(saving.name)
            pending, idle = idle + pending, []
        else:
            idle.append(saving)
    plan.choices = chosen
    if plan.total_bytes > budget:
        raise UserError(refusal(plan, free_bytes, blocked, limited))
    return config, plan


def refusal(plan: MemoryPlan, free_bytes: int, blocked: list[str], limited: bool = False) -> str:
    room = f"memory_limit_gb allows {free_bytes / GiB:.1f} GiB" if limited else f"the {plan.device} has {free_bytes / GiB:.1f} GiB free"
    need = f"needs about {plan.total_bytes / GiB:.1f} GiB ({', '.join(f'{k} {v / GiB:.1f}' for k, v in plan.parts.items() if v)})" \
           f" but {room}"
    if blocked:
        return f"this run {need}: set {', '.join(blocked)} (or unpin it) and memory='auto' will make it fit, or lower resolution or train_batch_size"
    return f"this run {need} even with every saving: lower resolution or train_batch_size, or train a LoRA instead"


def next_saving(config: "TrainConfig", device: str) -> Saving | None:
    """The first saving not yet taken that a resumed run may take (the optimizer cannot change on resume)."""
    for saving in savings(device):
        if "optimizer" not in saving.changes and applies(saving, config) and not blocked_by(saving, config):
            return saving
    return None


def plan_for_run(config: "TrainConfig", model: "BaseModel | None" = None) -> tuple["TrainConfig", MemoryPlan]:
    """The config a run will use on this machine's device and its plan (what Trainer and the
    host adapters show before Train); refuses, before any model loads, a run that cannot fit.
    The memory it fits is the device's free memory, or `memory_limit_gb` where that is less."""
    from .memory import free_memory, run_device

    device = run_device()
    if config.memory != "auto":
        return config, plan_memory(config, model=model, device=device)
    free = free_memory(device)
    limit = int(config.memory_limit_gb * GiB) if config.memory_limit_gb is not None else free
    return choose(config, min(free, limit), device, model=model, limited=limit < free)
