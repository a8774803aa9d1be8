"""FiLM: feature-wise scale and shift from a conditioning vector (Perez et al., 2018).

Diffusion-VLA injects its reasoning embedding into every layer this way; zero-initialised, so adding it to a trained
or freshly built network starts as the identity and cannot disturb it before it has learned anything.
"""

from __future__ import annotations

import torch
from torch import nn


class FiLM(nn.Module):
    """x * (1 + scale(c)) + shift(c), per feature. Features lie on `channel_dim` of x: -1 for [B, F] and [B, S, F],
    1 for a 1-D conv net's [B, F, L]."""

    def __init__(self, cond_dim: int, feature_dim: int, zero_init: bool = True, channel_dim: int = -1):
        super().__init__()
        self.feature_dim, self.channel_dim = feature_dim, channel_dim
        self.proj = nn.Linear(cond_dim, 2 * feature_dim)
        if zero_init:
            nn.init.zeros_(self.proj.weight)
            nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor, c_BC: torch.Tensor) -> torch.Tensor:
        if x.ndim < 2 or x.shape[self.channel_dim] != self.feature_dim or c_BC.shape[0] != x.shape[0]:
            raise ValueError(f"expected x [B, ...] with {self.feature_dim} features on dim {self.channel_dim} and c [B, C], "
                             f"got x {tuple(x.shape)} and c {tuple(c_BC.shape)}")
        shape = [x.shape[0]] + [1] * (x.ndim - 1)
        shape[self.channel_dim] = self.feature_dim
        scale, shift = (p.reshape(shape) for p in self.proj(c_BC).chunk(2, dim=-1))
        return x * (1 + scale) + shift
