"""CARP's multi-scale residual action tokenizer (stage 1): 1-D conv encoder/decoder around VAR-style residual
quantization over a scale schedule, with one codebook shared by all scales.

Shapes (B batch, H horizon, A action_dim, G groups, C code_dim, L latent length = scales[-1], l_k = scales[k]):

    actions [B, H, A] --encode--> f [B, G*C, L]
    for k: residual (f - f_hat) --area-downsample--> [B, G, C, l_k] --cosine lookup--> idx_k [B, G, l_k]
           codebook[idx_k] --linear-upsample to L--> phi_k --> added to f_hat
    f_hat [B, G*C, L] --decode--> actions [B, H, A]

`per_dim=True` (CARP's reference setting) makes every action dimension its own tokenizer: G = A groups whose convs,
norms and codebooks never mix (grouped convolutions, one [V, C] codebook per group), so scale k has G * l_k codes.
`per_dim=False` tokenizes the whole action vector jointly (G = 1).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn


class GroupedResBlock(nn.Module):
    """Pre-norm residual conv block whose G groups of channels never mix."""

    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.GroupNorm(groups, channels), nn.SiLU(), nn.Conv1d(channels, channels, 3, padding=1, groups=groups),
            nn.GroupNorm(groups, channels), nn.SiLU(), nn.Conv1d(channels, channels, 3, padding=1, groups=groups),
        )

    def forward(self, x_BCT: torch.Tensor) -> torch.Tensor:
        return x_BCT + self.net(x_BCT)


class MultiScaleActionVQ(nn.Module):
    """Normalized action chunks <-> a coarse-to-fine list of token maps (one [B, G, l_k] index tensor per scale)."""

    def __init__(
        self,
        action_dim: int,
        horizon: int,
        scales: tuple[int, ...] | list[int],
        per_dim: bool = True,
        codebook_size: int = 512,
        code_dim: int = 8,
        hidden_dim: int = 32,
        quant_resi: float = 0.5,
        beta: float = 0.25,
    ):
        super().__init__()
        scales = tuple(int(s) for s in scales)
        if not scales or scales[0] < 1 or any(b <= a for a, b in zip(scales, scales[1:])):
            raise ValueError(f"tokenizer scales must be strictly increasing positive lengths, got {list(scales)}")
        latent_len = scales[-1]
        ratio = horizon // latent_len
        if horizon % latent_len or ratio & (ratio - 1):
            raise ValueError(
                f"horizon={horizon} must be a power-of-two multiple of the latent length scales[-1]={latent_len} "
                "(the conv encoder halves the length with strided convolutions)"
            )
        self.action_dim, self.horizon, self.scales, self.latent_len = action_dim, horizon, scales, latent_len
        self.groups = action_dim if per_dim else 1
        self.codebook_size, self.code_dim, self.quant_resi, self.beta = codebook_size, code_dim, quant_resi, beta
        g, hid, lat = self.groups, self.groups * hidden_dim, self.groups * code_dim
        n_down = int(math.log2(ratio))

        enc: list[nn.Module] = [nn.Conv1d(action_dim, hid, 3, padding=1, groups=g)]
        for _ in range(n_down):
            enc += [GroupedResBlock(hid, g), nn.Conv1d(hid, hid, 4, stride=2, padding=1, groups=g)]
        enc += [GroupedResBlock(hid, g), nn.GroupNorm(g, hid), nn.SiLU(), nn.Conv1d(hid, lat, 1, groups=g)]
        self.encoder = nn.Sequential(*enc)

        dec: list[nn.Module] = [nn.Conv1d(lat, hid, 3, padding=1, groups=g), GroupedResBlock(hid, g)]
        for _ in range(n_down):
            dec += [nn.ConvTranspose1d(hid, hid, 4, stride=2, padding=1, groups=g), GroupedResBlock(hid, g)]
        dec += [nn.GroupNorm(g, hid), nn.SiLU(), nn.Conv1d(hid, action_dim, 3, padding=1, groups=g)]
        self.decoder = nn.Sequential(*dec)

        # One codebook per group, shared by every scale (the VAR design), looked up by cosine similarity.
        self.codebook = nn.Parameter(torch.empty(g, codebook_size, code_dim).uniform_(-1.0, 1.0) / math.sqrt(code_dim))
        # phi_k: a small residual convolution after each upsampling, one per scale.
        self.phi = nn.ModuleList(nn.Conv1d(lat, lat, 3, padding=1, groups=g) for _ in scales)

    # ---- shared helpers ----
    def _down(self, f_BCL: torch.Tensor, length: int) -> torch.Tensor:
        return f_BCL if length == self.latent_len else F.interpolate(f_BCL, size=length, mode="area")

    def _lookup(self, rest_BGCl: torch.Tensor) -> torch.Tensor:
        """Nearest codebook entry by cosine similarity, per group -> idx [B, G, l]."""
        sim_BGlV = torch.einsum("bgcl,gvc->bglv", F.normalize(rest_BGCl, dim=2), F.normalize(self.codebook, dim=-1))
        return sim_BGlV.argmax(dim=-1)

    def _embed_up(self, k: int, idx_BGl: torch.Tensor) -> torch.Tensor:
        """Scale-k token map -> its contribution to f_hat [B, G*C, L] (codebook lookup, upsample, phi_k)."""
        g_idx = torch.arange(self.groups, device=idx_BGl.device)[None, :, None]
        z_BGlC = self.codebook[g_idx, idx_BGl]
        z_BCl = rearrange(z_BGlC, "b g l c -> b (g c) l")
        if z_BCl.shape[-1] != self.latent_len:
            z_BCl = F.interpolate(z_BCl, size=self.latent_len, mode="linear", align_corners=False)
        return (1.0 - self.quant_resi) * z_BCl + self.quant_resi * self.phi[k](z_BCl)

    def _check_actions(self, actions_BHA: torch.Tensor) -> None:
        if actions_BHA.ndim != 3 or tuple(actions_BHA.shape[1:]) != (self.horizon, self.action_dim):
            raise ValueError(f"tokenizer expects actions [B, {self.horizon}, {self.action_dim}], got {list(actions_BHA.shape)}")

    # ---- training: encode, quantize with straight-through, decode ----
    def encode(self, actions_BHA: torch.Tensor) -> torch.Tensor:
        """Normalized actions [B, H, A] -> continuous latent f [B, G*C, L]."""
        self._check_actions(actions_BHA)
        return self.encoder(actions_BHA.transpose(1, 2))

    def decode(self, f_hat_BCL: torch.Tensor) -> torch.Tensor:
        """Latent [B, G*C, L] -> normalized actions [B, H, A]."""
        return self.decoder(f_hat_BCL).transpose(1, 2)

    def quantize(self, f_BCL: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
        """-> (f_hat with a straight-through gradient to f, idx per scale [B, G, l_k], VQ loss).

        VQ loss, averaged over scales: ||sg(f_hat_k) - f||^2 * beta (commitment, trains the encoder) +
        ||f_hat_k - sg(f)||^2 (trains codebook and phi), where f_hat_k is the sum of the first k+1 scales.
        """
        b = f_BCL.shape[0]
        f_nograd = f_BCL.detach()
        rest = f_nograd.clone()
        f_hat = torch.zeros_like(f_BCL)
        idx_list, loss = [], f_BCL.new_zeros(())
        for k, length in enumerate(self.scales):
            rest_BGCl = self._down(rest, length).reshape(b, self.groups, self.code_dim, length)
            idx = self._lookup(rest_BGCl)
            z = self._embed_up(k, idx)
            f_hat = f_hat + z
            rest = rest - z.detach()
            idx_list.append(idx)
            loss = loss + self.beta * F.mse_loss(f_hat.detach(), f_BCL) + F.mse_loss(f_hat, f_nograd)
        f_hat_st = f_BCL + (f_hat - f_BCL).detach()
        return f_hat_st, idx_list, loss / len(self.scales)

    def codebook_usage(self, idx_list: list[torch.Tensor]) -> torch.Tensor:
        """Fraction of codebook entries used in this batch (over all scales), averaged over groups."""
        flat_GN = torch.cat([rearrange(i, "b g l -> g (b l)") for i in idx_list], dim=1)
        used = torch.zeros(self.groups, self.codebook_size, device=flat_GN.device)
        used.scatter_(1, flat_GN, 1.0)
        return used.mean()

    # ---- stage 2 interface: tokens, teacher-forcing inputs, incremental decoding ----
    @torch.no_grad()
    def tokenize(self, actions_BHA: torch.Tensor) -> list[torch.Tensor]:
        """Normalized actions [B, H, A] -> idx per scale, each [B, G, l_k]."""
        return self.quantize(self.encode(actions_BHA))[1]

    def add_scale(self, k: int, idx_BGl: torch.Tensor, f_hat_BCL: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Add scale k's tokens to f_hat -> (new f_hat [B, G*C, L], next transformer input [B, G, C, l_{k+1}] or None
        after the last scale). The next input is the cumulative f_hat area-downsampled to the next scale's length."""
        z = self._embed_up(k, idx_BGl)
        f_hat = z if f_hat_BCL is None else f_hat_BCL + z
        if k + 1 == len(self.scales):
            return f_hat, None
        length = self.scales[k + 1]
        return f_hat, self._down(f_hat, length).reshape(f_hat.shape[0], self.groups, self.code_dim, length)

    def teacher_inputs(self, idx_list: list[torch.Tensor]) -> list[torch.Tensor]:
        """Ground-truth token maps -> the transformer's inputs for scales 1..K-1, each [B, G, C, l_k]."""
        f_hat, inputs = None, []
        for k, idx in enumerate(idx_list[:-1]):
            f_hat, nxt = self.add_scale(k, idx, f_hat)
            inputs.append(nxt)
        return inputs

    @torch.no_grad()
    def tokenize_with_errors(self, f_BCL: torch.Tensor, proposals: list[torch.Tensor], use_proposal: list[torch.Tensor]
                             ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Residual quantization of latent f in which, at every scale, the positions where use_proposal [B, G, l_k] is
        True take the proposed token instead of the best one.

        -> (targets: the best token at each scale given the tokens used at coarser scales, each [B, G, l_k]; the
        transformer's inputs for scales 1..K-1 built from the tokens used). With use_proposal all False these are
        `quantize`'s tokens and `teacher_inputs` of them. CARP trains on it so that a wrong coarse token (its own
        kind of error) is followed by the finer tokens that correct it, as residual quantization would.
        """
        b = f_BCL.shape[0]
        f_hat, targets, inputs = None, [], []
        for k, length in enumerate(self.scales):
            rest = f_BCL if f_hat is None else f_BCL - f_hat
            best = self._lookup(self._down(rest, length).reshape(b, self.groups, self.code_dim, length))
            targets.append(best)
            f_hat, nxt = self.add_scale(k, torch.where(use_proposal[k], proposals[k], best), f_hat)
            if nxt is not None:
                inputs.append(nxt)
        return targets, inputs

    def decode_tokens(self, idx_list: list[torch.Tensor]) -> torch.Tensor:
        """idx per scale -> normalized actions [B, H, A]."""
        f_hat = None
        for k, idx in enumerate(idx_list):
            f_hat, _ = self.add_scale(k, idx, f_hat)
        return self.decode(f_hat)
