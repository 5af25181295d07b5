"""An exponential moving average of a model's weights, the weights a diffusion model
samples with (as in every published diffusion model: DDPM, ADM, Stable Diffusion).

The decay warms up as (1 + step) / (10 + step), capped at `decay`: early on the average
follows the fast-moving weights instead of remembering the random initialization, which
matters when a CPU budget buys a few thousand steps, not hundreds of thousands.
"""

from __future__ import annotations

import torch
from torch import nn


class WeightAverage:
    """EMA of a module's parameters. Buffers are copied, not averaged: they are statistics
    of the data (the SER's input normalization, the VAE's per-emotion latent
    distribution), right as they are and wrong as a mix of several epochs' values."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.shadow = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self._averaged = [self.shadow[name] for name, _ in model.named_parameters()]

    def current_decay(self, step: int) -> float:
        return min(self.decay, (1 + step) / (10 + step))

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        """Fold in the model's parameters after optimizer step `step` (counting from 1)."""
        # one fused lerp over all parameters instead of a Python loop over state_dict()
        torch._foreach_lerp_(self._averaged, [p.detach() for p in model.parameters()], 1.0 - self.current_decay(step))
        self.copy_buffers(model)

    @torch.no_grad()
    def copy_buffers(self, model: nn.Module) -> None:
        """Take the model's current buffers (after a task changed them between steps)."""
        for name, buffer in model.named_buffers():
            self.shadow[name].copy_(buffer)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu().clone() for k, v in self.shadow.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for k, v in state.items():
            self.shadow[k].copy_(v)
