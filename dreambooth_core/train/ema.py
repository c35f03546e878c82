"""An exponential moving average of the trained weights (`ema_decay`, `ema_start_step`).

diffusers' EMAModel keeps the average: it follows the weights exactly until
`ema_start_step`, then averages with a decay that warms up as (1 + n) / (10 + n) to
`ema_decay`. Artifacts and validation images use the average; training steps the raw
weights; a resumable state keeps both, so a resumed run continues the same average.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import TYPE_CHECKING, Iterator

if TYPE_CHECKING:
    import torch

    from ..config import TrainConfig

PREFIX = "ema/"  # state keys of the average, beside the method's own weights


class WeightAverage:
    def __init__(self, params: "list[torch.nn.Parameter]", decay: float, start_step: int):
        from diffusers.training_utils import EMAModel

        self.params = params
        self.ema = EMAModel(params, decay=decay, update_after_step=start_step)
        self.applied = False  # the average is in the parameters for good (after the last step)

    @classmethod
    def for_config(cls, config: "TrainConfig", params: "list[torch.nn.Parameter]") -> "WeightAverage | None":
        return cls(params, config.ema_decay, config.ema_start_step) if config.ema_decay else None

    def update(self) -> None:
        """After an optimizer step."""
        self.ema.step(self.params)

    @contextmanager
    def swapped_in(self) -> Iterator[None]:
        """The average in the parameters for the block (to save or draw with it)."""
        if self.applied:
            yield
            return
        self.ema.store(self.params)
        self.ema.copy_to(self.params)
        try:
            yield
        finally:
            self.ema.restore(self.params)

    def apply(self) -> None:
        """The average becomes the trained weights (after the last step)."""
        self.ema.copy_to(self.params)
        self.applied = True

    # ---- resuming --------------------------------------------------------------------
    def state_dict(self) -> dict[str, "torch.Tensor"]:
        import torch

        out = {f"{PREFIX}{i}": p.detach().clone() for i, p in enumerate(self.ema.shadow_params)}
        out[f"{PREFIX}optimization_step"] = torch.tensor(self.ema.optimization_step)
        return out

    def load_state_dict(self, weights: dict[str, "torch.Tensor"]) -> None:
        import torch

        from ..errors import UserError

        if f"{PREFIX}optimization_step" not in weights:
            raise UserError("the saved training state has no weight average: resume with the run's ema_decay, or start a new run")
        with torch.no_grad():
            for i, p in enumerate(self.ema.shadow_params):
                p.copy_(weights[f"{PREFIX}{i}"])
        self.ema.optimization_step = int(weights[f"{PREFIX}optimization_step"])


def split_state(weights: dict[str, "torch.Tensor"]) -> tuple[dict[str, "torch.Tensor"], dict[str, "torch.Tensor"]]:
    """(the method's weights, the average's) of a saved state."""
    own = {k: v for k, v in weights.items() if not k.startswith(PREFIX)}
    return own, {k: v for k, v in weights.items() if k.startswith(PREFIX)}
