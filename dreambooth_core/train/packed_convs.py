"""Frozen convolutions with their weights kept in oneDNN's own layout, for training on a CPU.

On a CPU, PyTorch gives oneDNN every convolution weight in the plain layout, and oneDNN
reorders it into a blocked layout on every call: once for the forward and once more
(another layout) for the input gradient. A UNet's low-resolution convolutions have the
largest weights and the least work per weight, so there the reorders cost more than the
convolutions: in an SD1.5 LoRA step at 256 px, 0.6 s of 2.2 s (ONEDNN_VERBOSE=1 shows it).

When the weights are frozen (LoRA, Textual Inversion, hypernetworks; any model while it
only samples, as for class images) the reorders can be done once. The input gradient of a
stride-1 convolution is itself a convolution: of the output gradient with the kernel's
channels swapped and its taps flipped, padded k-1-p. So each frozen convolution keeps two
packed weights, and both passes run oneDNN's forward convolution on them. The dense weight
is released while packed and rebuilt exactly on exit (a reorder only moves values), so
training holds one more copy of the convolution weights, not two, and sampling none.

PyTorch has no public API for packed weights in training (intel-extension-for-pytorch had
one; its newest release, 2.8, needs torch 2.8); the two ops used here are the ones
torch.compile's freezing passes use for packed convolutions in inference. Where they are
missing or disagree with a plain convolution, convolutions stay plain.
"""
from __future__ import annotations

import ctypes
import functools
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import torch

PACKABLE_DTYPES = (torch.float32, torch.bfloat16)


@functools.cache
def available() -> bool:
    """Whether this torch runs convolutions on packed weights (and gets them right)."""
    try:
        conv = torch.nn.utils.skip_init(torch.nn.Conv2d, 3, 4, 3, padding=1).requires_grad_(False)  # no RNG draws
        conv.weight.copy_(torch.linspace(-1, 1, 108).reshape(4, 3, 3, 3))
        conv.bias.copy_(torch.linspace(-1, 1, 4))
        x = torch.linspace(-1, 1, 75).reshape(1, 3, 5, 5)
        packed = PackedWeights.of(conv, x.shape, gradients=False)
        got = _convolve(x, packed.forward_weight, packed.bias, packed.padding)
        return torch.allclose(got, conv(x), atol=1e-5) and torch.equal(packed.dense_weight(), conv.weight)
    except (AttributeError, NotImplementedError, RuntimeError, TypeError):  # no oneDNN, or ops of another signature
        return False


def packing_cost(module: torch.nn.Module) -> int:
    """Bytes that packing `module`'s frozen convolutions for training adds (one more copy of their weights)."""
    return sum(m.weight.numel() * m.weight.element_size() for m in module.modules() if packable(m))


def _autocast_dtype() -> torch.dtype | None:
    """The dtype CPU autocast computes in, None when it is off."""
    if hasattr(torch, "get_autocast_dtype"):  # torch >= 2.4
        return torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None
    return torch.get_autocast_cpu_dtype() if torch.is_autocast_cpu_enabled() else None


def keep_dense(conv: torch.nn.Module) -> None:
    """Never pack `conv`: something reads its dense weight while training (a LoHa/LoKr
    adapter takes its shape to build the weight change)."""
    conv.keep_dense_weight = True


def packable(conv: torch.nn.Module, gradients: bool = True) -> bool:
    """A dense, stride-1 2-D convolution on the CPU whose input gradient is a plain
    convolution; frozen when gradients will flow through it."""
    if type(conv) is not torch.nn.Conv2d or getattr(conv, "keep_dense_weight", False):
        return False
    w, b = conv.weight, conv.bias
    frozen = not w.requires_grad and (b is None or not b.requires_grad)
    return (w.device.type == "cpu" and w.dtype in PACKABLE_DTYPES and (frozen or not gradients)
            and conv.groups == 1 and conv.padding_mode == "zeros"
            and conv.stride == (1, 1) and conv.dilation == (1, 1) and not isinstance(conv.padding, str)
            and all(0 <= p < k for p, k in zip(conv.padding, conv.kernel_size)))


@dataclass
class PackedWeights:
    """A convolution's weight laid out for oneDNN, for the forward and for the input gradient."""
    forward_weight: torch.Tensor           # mkldnn tensor
    gradient_weight: torch.Tensor | None   # mkldnn tensor: channels swapped, taps flipped
    bias: torch.Tensor | None
    padding: list[int]
    gradient_padding: list[int]

    @classmethod
    def of(cls, conv: torch.nn.Conv2d, input_shape: torch.Size, gradients: bool) -> "PackedWeights":
        w = conv.weight.detach()
        padding = list(conv.padding)
        gradient_padding = [k - 1 - p for k, p in zip(conv.kernel_size, padding)]
        gradient_weight = None
        if gradients:
            flipped = w.transpose(0, 1).flip(2, 3).contiguous()
            gradient_weight = _pack(flipped, gradient_padding, [input_shape[0], w.shape[0], *input_shape[2:]])
        return cls(
            forward_weight=_pack(w, padding, list(input_shape)),
            gradient_weight=gradient_weight,
            bias=None if conv.bias is None else conv.bias.detach(),
            padding=padding, gradient_padding=gradient_padding,
        )

    def dense_weight(self) -> torch.Tensor:
        return self.forward_weight.to_dense()


def _pack(weight: torch.Tensor, padding: list[int], input_shape: list[int]) -> torch.Tensor:
    return torch._C._nn.mkldnn_reorder_conv2d_weight(weight.to_mkldnn(), padding, [1, 1], [1, 1], 1, input_shape)


def _convolve(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, padding: list[int]) -> torch.Tensor:
    return torch.ops.mkldnn._convolution_pointwise(x, weight, bias, padding, [1, 1], [1, 1], 1, "none", [], "")


class _PackedConvolution(torch.autograd.Function):
    """A convolution on packed weights; only the input's gradient flows (the weights are frozen)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, packed: PackedWeights) -> torch.Tensor:
        ctx.packed = packed
        return _convolve(x, packed.forward_weight, packed.bias, packed.padding)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        if not ctx.needs_input_grad[0]:
            return None, None
        packed = ctx.packed
        if packed.gradient_weight is None:
            raise RuntimeError("a convolution packed for sampling only was asked for gradients")
        return _convolve(grad.contiguous(), packed.gradient_weight, None, packed.gradient_padding), None


class _PackedForward:
    """Stands in for one convolution's `forward`; packs its weights at the first call, when
    the input's shape (which picks oneDNN's layout) is known."""

    def __init__(self, conv: torch.nn.Conv2d, gradients: bool):
        self.conv = conv
        self.gradients = gradients
        self.packed: PackedWeights | None = None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        conv = self.conv
        if self.packed is None:
            if _autocast_dtype() not in (None, conv.weight.dtype):
                return torch.nn.Conv2d.forward(conv, x)  # autocast computes in another dtype: stay plain
            with torch.no_grad():
                self.packed = PackedWeights.of(conv, x.shape, self.gradients)
            conv.weight.data = torch.empty(0, dtype=conv.weight.dtype)
            _return_freed_memory()
        return _PackedConvolution.apply(x.to(self.packed.forward_weight.dtype), self.packed)

    def restore(self) -> None:
        """Give the convolution back its dense weight and its own forward."""
        if self.packed is not None:
            self.conv.weight.data = self.packed.dense_weight()
            self.packed = None
        del self.conv.forward


@contextmanager
def packed_frozen_convolutions(*modules: torch.nn.Module, gradients: bool = True) -> Iterator[int]:
    """Within the block, the packable convolutions of `modules` run on packed weights;
    yields how many. `gradients=False` packs for sampling only: the weights need not be
    frozen, but nothing may train in the block. Everything is as before on exit, also
    after an error."""
    patched: list[_PackedForward] = []
    if available():
        for module in modules:
            for conv in module.modules():
                if packable(conv, gradients) and "forward" not in vars(conv):
                    conv.forward = _PackedForward(conv, gradients)
                    patched.append(conv.forward)
    try:
        yield len(patched)
    finally:
        for p in patched:
            p.restore()


@functools.cache
def _malloc_trim():
    """glibc's malloc_trim, None elsewhere."""
    try:
        return ctypes.CDLL(None).malloc_trim
    except (AttributeError, OSError, TypeError):
        return None


def _return_freed_memory() -> None:
    """Hand the pages of freed heap memory back to the system (glibc's malloc_trim).

    The plain weights that packing replaces mostly sit in the heap between tensors that
    stay, so their pages would otherwise stay counted in the process's memory."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
