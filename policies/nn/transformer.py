"""Transformer blocks shared by the heads: the adaLN-Zero self-attention block and its KV cache.

CARP's next-scale GPT stacks these today; PAD's DiT and Diffusion-VLA's reasoning model build on the same block.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn


class KVCache:
    """Keys and values of every layer for the tokens fed so far: one (k, v) pair of [B, heads, S, head_dim] per layer."""

    def __init__(self, n_layers: int):
        self.kv: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * n_layers

    @property
    def length(self) -> int:
        return 0 if self.kv[0] is None else self.kv[0][0].shape[2]


class AdaLNSelfAttnBlock(nn.Module):
    """Pre-norm transformer block whose norms are modulated (shift, scale, gate) by a conditioning vector (adaLN-Zero:
    gates start at zero, so every block starts as the identity)."""

    def __init__(self, width: int, n_heads: int, mlp_ratio: float, dropout: float):
        super().__init__()
        self.n_heads = n_heads
        self.norm1 = nn.LayerNorm(width, elementwise_affine=False)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width, elementwise_affine=False)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, width), nn.Dropout(dropout))
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(width, 6 * width))
        nn.init.zeros_(self.ada[1].weight)
        nn.init.zeros_(self.ada[1].bias)

    def modulation(self, c_BW: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Conditioning vector [B, W] -> this block's (shift1, 1 + scale1, gate1, shift2, 1 + scale2, gate2), each
        [B, 1, W]. Apart from forward so that a caller whose condition holds over several passes (CARP's scales,
        generated tokens) computes it once."""
        shift1, scale1, gate1, shift2, scale2, gate2 = self.ada(c_BW)[:, None].chunk(6, dim=-1)
        return shift1, 1 + scale1, gate1, shift2, 1 + scale2, gate2

    def forward(self, x_BSW: torch.Tensor, mod: tuple[torch.Tensor, ...], mask_SqSk: torch.Tensor | None,
                cache: KVCache | None, layer: int) -> torch.Tensor:
        """x [B, S, W] with its modulation(c) -> [B, S, W]."""
        shift1, gain1, gate1, shift2, gain2, gate2 = mod  # gain = 1 + scale
        h = self.norm1(x_BSW) * gain1 + shift1
        x_BSW = x_BSW + gate1 * self._attend(h, mask_SqSk, cache, layer)
        h = self.norm2(x_BSW) * gain2 + shift2
        return x_BSW + gate2 * self.mlp(h)

    def _attend(self, h_BSW: torch.Tensor, mask_SqSk: torch.Tensor, cache: KVCache | None, layer: int) -> torch.Tensor:
        q, k, v = rearrange(self.qkv(h_BSW), "b s (three h d) -> three b h s d", three=3, h=self.n_heads)
        if cache is not None:
            if cache.kv[layer] is not None:
                k = torch.cat([cache.kv[layer][0], k], dim=2)
                v = torch.cat([cache.kv[layer][1], v], dim=2)
            cache.kv[layer] = (k, v)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask_SqSk)  # no attention dropout: slow on CPU
        return self.proj(rearrange(out, "b h s d -> b s (h d)"))


def block_mask(levels: torch.Tensor) -> torch.Tensor:
    """Levels [S] -> bool [S, S], True where position i may attend to j, i.e. level[j] <= level[i].

    One rule for the masks the heads need: CARP's block-causal mask (observations at level 0, scale k at k + 1) and
    PAD's (context 0, image latents 1, action 2: images cannot see the action, the action sees everything).
    """
    if levels.ndim != 1:
        raise ValueError(f"expected levels of shape [S], got {tuple(levels.shape)}")
    return levels[None, :] <= levels[:, None]
