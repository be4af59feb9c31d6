"""Exponential moving average of a model's weights (Polyak averaging).

Diffusion models sample far better from an EMA of their weights than from the last
iterate (Ho et al. 2020, appendix B; Song & Ermon 2020, §3.4). Buffers (e.g. BatchNorm
statistics) are copied, not averaged.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    """``shadow = decay · shadow + (1 − decay) · weights`` after every optimizer step."""

    def __init__(self, model: nn.Module, decay: float = 0.999) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1); got {decay}")
        self.decay = decay
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    def decay_at(self, step: int | None) -> float:
        """The decay after ``step`` optimizer steps: warmed up as min(decay, (1+s)/(10+s)),
        so short runs are not dominated by the random initialisation."""
        if step is None:
            return self.decay
        return min(self.decay, (1 + step) / (10 + step))

    @torch.no_grad()
    def update(self, model: nn.Module, step: int | None = None) -> None:
        decay = self.decay_at(step)
        shadow = dict(self.model.named_parameters())
        for name, param in model.named_parameters():
            shadow[name].lerp_(param.detach(), 1.0 - decay)
        buffers = dict(self.model.named_buffers())
        for name, buf in model.named_buffers():
            buffers[name].copy_(buf)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.model.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.model.load_state_dict(state)
