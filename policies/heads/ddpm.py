"""DDPM baseline: diffusion_policy's default head (epsilon prediction, 100 training and sampling steps) on the same
transformer denoiser and encoders as BESO, so success and latency compare like with like. DDIM with fewer steps is an
inference option. Schedulers are diffusers' `DDPMScheduler` / `DDIMScheduler` (squared-cosine betas, clipped samples).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from diffusers import DDIMScheduler, DDPMScheduler

from vmp.policies.base import ConditionalPolicy, DiffusionHeadConfig
from vmp.policies.nn import TransformerDenoiser


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


class DDPMPolicy(ConditionalPolicy):
    name = "ddpm"
    config_class = DDPMConfig

    def __init__(self, config: DDPMConfig, encoder, normalizer, action_dim: int):
        super().__init__(config, encoder, normalizer, action_dim)
        self.denoiser = TransformerDenoiser(
            action_dim, config.horizon, encoder.n_tokens, config.d_model, config.n_layers, config.n_heads, config.dropout
        )
        self.train_scheduler = DDPMScheduler(
            num_train_timesteps=config.num_train_timesteps, beta_schedule=config.beta_schedule,
            prediction_type="epsilon", clip_sample=True,
        )

    def compute_loss(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        actions, cond = self.training_inputs(batch)
        b = actions.shape[0]
        noise = torch.randn_like(actions)
        t = torch.randint(0, self.config.num_train_timesteps, (b,), device=actions.device)
        noisy = self.train_scheduler.add_noise(actions, noise, t)
        pred = self.denoiser(noisy, t, cond)
        return {"loss": self.masked_mse(pred, noise, batch.get("action_is_pad"))}

    @torch.no_grad()
    def predict_action_chunk(self, obs, goal=None, generator: torch.Generator | None = None) -> torch.Tensor:
        cond = self.condition(obs, goal)
        b, device = cond.shape[0], cond.device
        scheduler_cls = DDPMScheduler if self.config.sampler == "ddpm" else DDIMScheduler
        scheduler = scheduler_cls.from_config(self.train_scheduler.config)
        scheduler.set_timesteps(self.config.n_steps, device=device)
        x = torch.randn(b, self.horizon, self.action_dim, generator=generator, device=device)
        for t in scheduler.timesteps:
            eps = self.denoiser(x, t.expand(b), cond)
            x = scheduler.step(eps, t, x, generator=generator).prev_sample
        return self.normalizer.unnormalize("action", x.clamp(-1.0, 1.0))
