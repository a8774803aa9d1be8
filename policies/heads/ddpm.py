"""DDPM baseline: diffusion_policy's default head (epsilon prediction, 100 training and sampling steps) on the same
transformer denoiser and encoders as BESO, so success and latency compare like with like. DDIM with fewer steps is an
inference option. Training and sampling are `DiscreteTimeDiffusion`'s, on diffusers' `DDPMScheduler` / `DDIMScheduler`
(squared-cosine betas, clipped samples).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from vmp.policies.base import Capabilities, DiffusionHeadConfig, SharedEncoderPolicy
from vmp.policies.nn import DiscreteTimeDiffusion, TransformerDenoiser


@dataclasses.dataclass
class DDPMConfig(DiffusionHeadConfig):
    num_train_timesteps: int = 100
    beta_schedule: str = "squaredcos_cap_v2"
    # inference-time settings
    sampler: str = "ddpm"  # ddpm | ddim
    n_steps: int = 100

    def __post_init__(self) -> None:
        if self.sampler not in ("ddpm", "ddim"):
            raise ValueError(f"policy.sampler must be ddpm or ddim, got {self.sampler!r}")
        if not 1 <= self.n_steps <= self.num_train_timesteps:
            raise ValueError(f"policy.n_steps must be in [1, {self.num_train_timesteps}], got {self.n_steps}")


class DDPMPolicy(SharedEncoderPolicy):
    name = "ddpm"
    config_class = DDPMConfig
    capabilities = Capabilities(prefix=True)

    def __init__(self, config: DDPMConfig, encoder, normalizer, action_dim: int):
        super().__init__(config, encoder, normalizer, action_dim)
        self.denoiser = TransformerDenoiser(
            action_dim, config.horizon, encoder.n_tokens, config.d_model, config.n_layers, config.n_heads, config.dropout
        )
        self.diffusion = DiscreteTimeDiffusion(
            config.num_train_timesteps, config.beta_schedule, prediction_type="epsilon", clip_sample=True
        )

    def compute_loss(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        actions, cond = self.training_inputs(batch)
        is_pad = batch.get("action_is_pad")
        loss = self.diffusion.loss(lambda x, t: self.denoiser(x, t, cond), actions, None if is_pad is None else ~is_pad)
        return {"loss": loss}

    @torch.no_grad()
    def predict_action_chunk(self, obs, goal=None, generator: torch.Generator | None = None,
                             prefix: torch.Tensor | None = None, prefix_weights: torch.Tensor | None = None) -> torch.Tensor:
        """obs {key: [B, n_obs_steps, ...]} -> actions [B, horizon, action_dim] (unnormalized). prefix [B, L, A] /
        prefix_weights [L]: real-time chunking's prefix, inpainted at every denoising step."""
        cond = self.condition(obs, goal)
        known, weights = self.prefix_target(prefix, prefix_weights, cond.shape[0]) if prefix is not None else (None, None)
        x = self.diffusion.sample(lambda x, t: self.denoiser(x, t, cond), (cond.shape[0], self.horizon, self.action_dim),
                                  self.config.n_steps, self.config.sampler, generator=generator, device=cond.device,
                                  known=known, known_weights=weights)
        return self.normalizer.unnormalize("action", x.clamp(-1.0, 1.0))
