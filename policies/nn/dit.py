"""DiT: a diffusion transformer over whatever tokens a head assembles (Peebles & Xie, 2023).

PAD denoises future image latents and actions jointly in one sequence, next to clean context tokens; the head embeds
each modality into tokens and reads out the positions it denoises. The noise level (plus an optional conditioning
vector, e.g. an instruction embedding) modulates every block through adaLN-Zero, so every block starts as the identity.
"""

from __future__ import annotations

import torch
from torch import nn

from vmp.policies.nn.blocks import NoiseEmbedding
from vmp.policies.nn.transformer import AdaLNSelfAttnBlock


class DiTDenoiser(nn.Module):
    """Tokens [B, S, W] + noise level [B] (+ conditioning vector [B, C]) -> transformed tokens [B, S, W].

    Learned positional embeddings cover up to `max_len` positions. `mask` (bool, True = may attend) is [S, S] or
    [B, S, S]; `block_mask` builds the block-structured ones. `noise_embed_scale` maps the noise level onto the
    sinusoids' range (1 for DDPM timesteps; EDM's c_noise = ln(sigma) / 4 needs ~100).
    """

    def __init__(self, width: int, depth: int, n_heads: int, mlp_ratio: float, dropout: float, max_len: int,
                 cond_dim: int | None = None, noise_embed_scale: float = 1.0):
        super().__init__()
        self.width, self.max_len = width, max_len
        self.noise_embed = NoiseEmbedding(width, scale=noise_embed_scale)
        self.cond_in = nn.Linear(cond_dim, width) if cond_dim is not None else None
        self.pos = nn.Parameter(torch.zeros(1, max_len, width))
        nn.init.normal_(self.pos, std=0.02)
        self.blocks = nn.ModuleList(AdaLNSelfAttnBlock(width, n_heads, mlp_ratio, dropout) for _ in range(depth))
        self.norm_out = nn.LayerNorm(width, elementwise_affine=False)
        self.ada_out = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))
        nn.init.zeros_(self.ada_out[1].weight)
        nn.init.zeros_(self.ada_out[1].bias)

    def forward(self, x_BSW: torch.Tensor, noise_B: torch.Tensor, cond_BC: torch.Tensor | None = None,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        b, s, w = x_BSW.shape
        if w != self.width or s > self.max_len or noise_B.shape != (b,):
            raise ValueError(f"expected tokens [B, <= {self.max_len}, {self.width}] and noise [B], "
                             f"got {tuple(x_BSW.shape)} and {tuple(noise_B.shape)}")
        if (cond_BC is None) != (self.cond_in is None):
            raise ValueError(f"this DiT was built with cond_dim={None if self.cond_in is None else self.cond_in.in_features}, "
                             f"got cond {None if cond_BC is None else tuple(cond_BC.shape)}")
        if mask is not None and (mask.dtype != torch.bool or mask.shape not in ((s, s), (b, s, s))):
            raise ValueError(f"expected a bool mask [{s}, {s}] or [{b}, {s}, {s}], got {mask.dtype} {tuple(mask.shape)}")
        c_BW = self.noise_embed(noise_B)
        if cond_BC is not None:
            c_BW = c_BW + self.cond_in(cond_BC)
        if mask is not None and mask.ndim == 3:
            mask = mask[:, None]  # one mask for every head
        x_BSW = x_BSW + self.pos[:, :s]
        for layer, block in enumerate(self.blocks):
            x_BSW = block(x_BSW, block.modulation(c_BW), mask, None, layer)
        shift, scale = self.ada_out(c_BW)[:, None].chunk(2, dim=-1)
        return self.norm_out(x_BSW) * (1 + scale) + shift
