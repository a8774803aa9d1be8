"""Transformer and embedding blocks used by the diffusion heads."""

from __future__ import annotations

import math

import torch
from torch import nn

from vmp.policies.nn.film import FiLM


class MLP(nn.Sequential):
    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, n_layers: int = 2):
        layers: list[nn.Module] = []
        dim = in_dim
        for _ in range(n_layers - 1):
            layers += [nn.Linear(dim, hidden_dim), nn.Mish()]
            dim = hidden_dim
        layers.append(nn.Linear(dim, out_dim))
        super().__init__(*layers)


class NoiseEmbedding(nn.Module):
    """Scalar noise level (EDM's c_noise, or a DDPM timestep) -> [B, dim] via sinusoids and an MLP."""

    def __init__(self, dim: int, max_period: float = 10_000.0, scale: float = 1.0):
        super().__init__()
        self.dim, self.max_period, self.scale = dim, max_period, scale
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.Mish(), nn.Linear(4 * dim, dim))

    def forward(self, t_B: torch.Tensor) -> torch.Tensor:
        half = self.dim // 2
        freqs = torch.exp(-math.log(self.max_period) * torch.arange(half, device=t_B.device, dtype=torch.float32) / half)
        args_BH = (t_B.float() * self.scale)[:, None] * freqs[None]
        return self.mlp(torch.cat([torch.sin(args_BH), torch.cos(args_BH)], dim=-1))


class TransformerDenoiser(nn.Module):
    """Noisy action chunk + noise level + conditioning tokens -> per-step output [B, horizon, action_dim].

    One sequence [noise token, conditioning tokens, action tokens] through a pre-norm transformer encoder with full
    attention (BESO's denoiser is a transformer over the same token types); only the action positions are read out.
    The same network serves the EDM head (input c_noise = ln(sigma)/4) and the DDPM head (input = timestep).
    """

    def __init__(
        self,
        action_dim: int,
        horizon: int,
        n_cond_tokens: int,
        d_model: int = 128,
        n_layers: int = 4,
        n_heads: int = 4,
        dropout: float = 0.0,
        noise_embed_scale: float = 1.0,
        film_dim: int = 0,
    ):
        super().__init__()
        self.horizon, self.n_cond_tokens = horizon, n_cond_tokens
        self.noise_embed = NoiseEmbedding(d_model, scale=noise_embed_scale)
        self.action_in = nn.Linear(action_dim, d_model)
        self.pos_emb = nn.Parameter(torch.zeros(1, 1 + n_cond_tokens + horizon, d_model))
        nn.init.normal_(self.pos_emb, std=0.02)
        layer = nn.TransformerEncoderLayer(
            d_model, n_heads, dim_feedforward=4 * d_model, dropout=dropout, activation="gelu", batch_first=True, norm_first=True
        )
        self.transformer = nn.TransformerEncoder(layer, n_layers, enable_nested_tensor=False)
        # film_dim > 0: a vector [B, film_dim] scales and shifts every layer's output (Diffusion-VLA's reasoning)
        self.films = nn.ModuleList(FiLM(film_dim, d_model) for _ in range(n_layers)) if film_dim else None
        self.norm = nn.LayerNorm(d_model)
        self.action_out = nn.Linear(d_model, action_dim)

    def forward(self, x_BHA: torch.Tensor, noise_B: torch.Tensor, cond_BND: torch.Tensor,
                film_BC: torch.Tensor | None = None) -> torch.Tensor:
        if cond_BND.shape[1] != self.n_cond_tokens or x_BHA.shape[1] != self.horizon:
            raise ValueError(
                f"expected {self.n_cond_tokens} conditioning tokens and horizon {self.horizon}, "
                f"got cond {tuple(cond_BND.shape)} and x {tuple(x_BHA.shape)}"
            )
        tokens = torch.cat([self.noise_embed(noise_B)[:, None], cond_BND, self.action_in(x_BHA)], dim=1) + self.pos_emb
        if (film_BC is None) != (self.films is None):
            raise ValueError("film_BC goes with film_dim > 0 (and only then)")
        if self.films is None:
            out = self.transformer(tokens)
        else:
            out = tokens
            for layer, film in zip(self.transformer.layers, self.films):
                out = film(layer(out), film_BC)
        return self.action_out(self.norm(out[:, -self.horizon :]))
