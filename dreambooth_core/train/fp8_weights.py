"""Frozen weights stored in 8-bit float and up-cast one layer at a time (frozen_weights_dtype="fp8").

A frozen Linear or Conv2d keeps its weight in float8_e4m3fn (half of bf16), scaled per layer so
its largest value uses fp8's whole range (a plain cast would flush most of a UNet's small weights
to fp8's few subnormals); each call up-casts it to the dtype it had (the run's compute dtype) for
that one layer, and the backward pass
up-casts it again instead of keeping the up-cast copy alive until then. So a step holds the
8-bit weights plus one layer's up-cast copy at a time, with or without gradient checkpointing.

diffusers' layerwise casting (`ModelMixin.enable_layerwise_casting`) does the same for
inference, but it swaps `param.data` back to fp8 after each forward, and autograd then finds
the fp8 tensor where it saved the up-cast weight: the backward to the input (which LoRA,
Textual Inversion and hypernetworks all need) fails with "expected scalar type ... but found
Float8_e4m3fn". Here the layer's own class is swapped for a subclass whose op saves the fp8
weight itself; the layers chosen are diffusers' choice for layerwise casting (its default skip
patterns plus the model's own `_skip_layerwise_casting_patterns`: norms, embeddings of
positions and patches) and never a layer with a trained parameter (peft's adapters, trained
embedding rows) or the run's full-precision components.

Cost: e4m3 keeps 3 mantissa bits, so each frozen weight is rounded to about 2 significant
digits (relative error up to 1/16); outputs drift slightly from the bf16 model's, and each
step pays one up-cast per layer in the forward and one in the backward.
"""
from __future__ import annotations

import re

import torch
import torch.nn.functional as F

STORAGE_DTYPE = torch.float8_e4m3fn
# beyond diffusers' skips: a UNet's first and last convolutions and its timestep/added embeddings
# are small and precision-critical, and the first parameter's dtype is the one `ModelMixin.dtype`
# reports (pipelines make their latents in it), so it must stay the compute dtype
KEEP = ("^conv_in$", "^conv_out$", "^time_embedding", "^add_embedding")


def upcast(weight: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return weight.to(dtype).mul_(scale.to(dtype))


class _Fp8Linear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, scale, bias, dtype):
        ctx.save_for_backward(weight, scale)
        ctx.x_dtype = x.dtype
        return F.linear(x, upcast(weight, scale, dtype), None if bias is None else bias.to(dtype))

    @staticmethod
    def backward(ctx, grad):
        if not ctx.needs_input_grad[0]:
            return None, None, None, None, None
        weight, scale = ctx.saved_tensors
        return (grad @ upcast(weight, scale, grad.dtype)).to(ctx.x_dtype), None, None, None, None


class _Fp8Conv2d(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, scale, bias, dtype, conv):
        ctx.save_for_backward(weight, scale)
        ctx.conv, ctx.x_shape, ctx.x_dtype = conv, x.shape, x.dtype
        return conv._conv_forward(x, upcast(weight, scale, dtype), None if bias is None else bias.to(dtype))

    @staticmethod
    def backward(ctx, grad):
        if not ctx.needs_input_grad[0]:
            return None, None, None, None, None, None
        weight, scale = ctx.saved_tensors
        c = ctx.conv
        dx = torch.nn.grad.conv2d_input(ctx.x_shape, upcast(weight, scale, grad.dtype), grad, c.stride, c.padding, c.dilation, c.groups)
        return dx.to(ctx.x_dtype), None, None, None, None, None


class Fp8StoredLinear(torch.nn.Linear):
    """A frozen Linear whose weight is stored in fp8 (times `weight_scale`) and computed in `compute_dtype`."""

    compute_dtype: torch.dtype
    weight_scale: torch.Tensor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _Fp8Linear.apply(x, self.weight, self.weight_scale, self.bias, self.compute_dtype)


class Fp8StoredConv2d(torch.nn.Conv2d):
    """A frozen zero-padded Conv2d whose weight is stored in fp8 (times `weight_scale`) and computed in `compute_dtype`."""

    compute_dtype: torch.dtype
    weight_scale: torch.Tensor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _Fp8Conv2d.apply(x, self.weight, self.weight_scale, self.bias, self.compute_dtype, self)


def skip_patterns(model: torch.nn.Module) -> tuple[str, ...]:
    """The module-name patterns left in the compute dtype: diffusers' for layerwise casting, and KEEP."""
    from diffusers.hooks.layerwise_casting import DEFAULT_SKIP_MODULES_PATTERN

    return tuple(DEFAULT_SKIP_MODULES_PATTERN) + tuple(getattr(model, "_skip_layerwise_casting_patterns", None) or ()) + KEEP


def store_in_fp8(model: torch.nn.Module) -> int:
    """Store `model`'s frozen Linear and Conv2d weights in fp8 (biases stay); returns how many layers."""
    patterns = skip_patterns(model)
    count = 0
    for name, module in model.named_modules():
        cls = {torch.nn.Linear: Fp8StoredLinear, torch.nn.Conv2d: Fp8StoredConv2d}.get(type(module))
        if cls is None or any(re.search(p, name) for p in patterns):
            continue
        if cls is Fp8StoredConv2d and module.padding_mode != "zeros":
            continue
        if any(p.requires_grad for p in module.parameters()) or not module.weight.is_floating_point():
            continue
        w = module.weight.data
        scale = (w.abs().amax().float() / torch.finfo(STORAGE_DTYPE).max).clamp(min=torch.finfo(torch.float32).tiny)
        module.compute_dtype = w.dtype
        module.register_buffer("weight_scale", scale, persistent=False)
        module.weight.data = (w.float() / scale).to(STORAGE_DTYPE)
        module.__class__ = cls
        count += 1
    return count
