"""The optimizer step fused into the backward pass (config.fused_optimizer_step).

Full fine-tuning holds a gradient the size of every trained weight between backward and
the optimizer step: 3.2 GB for the SD1.5 UNet, 9.6 GB for SDXL's, in fp32. Here each
weight's step runs from its own `register_post_accumulate_grad_hook`, as soon as backward
has finished its gradient, and the gradient is freed at once, so at most a few gradients
exist at any moment (the idea of kohya sd-scripts' fused backward pass and OneTrainer's).

The optimizer is the run's own (transformers' Adafactor, built by train.loop.build_optimizer):
for one weight, its group's parameter list is narrowed to that weight while `step()` runs,
so the update, its state and the learning rate the scheduler set are exactly the library's,
and the optimizer's state dict saves and resumes as usual.

What fusing changes: the global gradient norm is never formed, so `max_grad_norm` clips
each weight's gradient on its own; gradients cannot be accumulated over micro-batches, and
fp16 loss scaling cannot skip a whole step (TrainConfig.memory_problem refuses both).
"""
from __future__ import annotations

from typing import Callable

import torch


class FusedOptimizerStep:
    """Hooks that step `optimizer` one weight at a time during backward; `remove()` undoes them."""

    def __init__(self, optimizer: torch.optim.Optimizer, max_grad_norm: float = 0.0,
                 reduce: Callable[[torch.Tensor], None] | None = None):
        self.optimizer = optimizer
        self.max_grad_norm = max_grad_norm
        self.reduce = reduce    # averages a gradient over processes, in place (several processes)
        self.stepped = 0        # weights stepped since the caller last set it to 0 (a failed backward leaves some stepped)
        self._handles = [p.register_post_accumulate_grad_hook(self._make_hook(group))
                         for group in optimizer.param_groups for p in group["params"]]

    def _make_hook(self, group: dict) -> Callable[[torch.Tensor], None]:
        def hook(p: torch.Tensor) -> None:
            if self.reduce is not None:
                self.reduce(p.grad)
            if self.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_([p], self.max_grad_norm)
            params = group["params"]
            group["params"] = [p]
            try:
                self.optimizer.step()
            finally:
                group["params"] = params
            p.grad = None
            self.stepped += 1
        return hook

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
