"""The diffusion training objective: noise, timesteps, targets, and the weighted loss.

Every random draw of an example comes from a generator seeded by that example's place
in the run (see `data.dataset.example_generator`), never from global state. That is what
makes a resumed run bit-identical to an uninterrupted one and a run on two processes
equal to one process with the doubled batch.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def sample_noise(shape: tuple[int, ...], generator: "torch.Generator", noise_offset: float = 0.0) -> "torch.Tensor":
    """Gaussian noise for one latent [C, H, W]; `noise_offset` adds a per-channel constant
    (Guttenberg's offset noise), which lets the model learn very dark and very bright images."""
    import torch

    noise = torch.randn(shape, generator=generator)
    if noise_offset:
        noise = noise + noise_offset * torch.randn((shape[0], 1, 1), generator=generator)
    return noise


def sample_timestep(num_train_timesteps: int, generator: "torch.Generator") -> int:
    import torch

    return int(torch.randint(0, num_train_timesteps, (1,), generator=generator))


def training_target(scheduler, latents: "torch.Tensor", noise: "torch.Tensor", timesteps: "torch.Tensor") -> "torch.Tensor":
    """What the UNet must predict: the noise (ε models) or the velocity (v models, SD 2.x 768)."""
    prediction_type = scheduler.config.prediction_type
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "v_prediction":
        return scheduler.get_velocity(latents, noise, timesteps)
    raise ValueError(f"unsupported prediction type {prediction_type!r}")


def snr(scheduler, timesteps: "torch.Tensor") -> "torch.Tensor":
    """Signal-to-noise ratio alpha_bar / (1 - alpha_bar) at each timestep."""
    alphas_cumprod = scheduler.alphas_cumprod.to(timesteps.device)[timesteps].float()
    return alphas_cumprod / (1.0 - alphas_cumprod)


def min_snr_weights(scheduler, timesteps: "torch.Tensor", gamma: float) -> "torch.Tensor":
    """Min-SNR-γ loss weights (Hang et al. 2023), converted for the model's target:
    min(SNR, γ)/SNR for ε-prediction and min(SNR, γ)/(SNR + 1) for v-prediction."""
    import torch

    s = snr(scheduler, timesteps)
    clipped = torch.minimum(s, torch.full_like(s, gamma))
    if scheduler.config.prediction_type == "v_prediction":
        return clipped / (s + 1.0)
    return clipped / s


def per_example_mse(pred: "torch.Tensor", target: "torch.Tensor", weights: "torch.Tensor | None" = None) -> "torch.Tensor":
    """Mean squared error of each example (in fp32, whatever the compute dtype); `weights`
    ([B, 1, h, w], from a mask) scale each latent pixel's error."""
    error = (pred.float() - target.float()) ** 2
    if weights is not None:
        error = error * weights.float()
    return error.mean(dim=tuple(range(1, pred.ndim)))


@dataclass
class LossParts:
    total: "torch.Tensor"
    instance: "torch.Tensor"
    prior: "torch.Tensor | None"


def dreambooth_loss(
    instance_losses: "torch.Tensor",
    class_losses: "torch.Tensor | None",
    prior_loss_weight: float,
) -> LossParts:
    """The DreamBooth objective: mean instance loss + λ · mean class (prior) loss.

    Inputs are per-example losses (already min-SNR weighted if enabled). Each process
    computes this over its share of the batch; the loop averages gradients over processes,
    which equals this loss over the whole batch because every process holds the same
    number of instance and class examples.
    """
    instance = instance_losses.mean()
    if class_losses is None:
        return LossParts(instance, instance.detach(), None)
    prior = class_losses.mean()
    return LossParts(instance + prior_loss_weight * prior, instance.detach(), prior.detach())
