"""BESO: goal-conditioned score-based diffusion policy (Reuss et al., RSS 2023) on EDM preconditioning.

Choices:
- Denoiser D(a; sigma, c) = c_skip a + c_out F(c_in a, c_noise, c) with Karras et al.'s scalings, sigma_data = 0.5
  (actions are min-max normalized to [-1, 1]). The loss is written in F-space, MSE(F, (a - c_skip x) / c_out), which is
  exactly EDM's weighted loss lambda(sigma) ||D - a||^2 with lambda = 1 / c_out^2.
- Training sigmas come from a log-logistic (the authors' default: location ln sigma_data, scale 0.5) or log-normal
  distribution truncated to [sigma_min, sigma_max] (inverse-CDF draws, not clipping: with the defaults clipping put a
  fifth of all samples exactly at sigma_max). Sampling is decoupled from training: the sampler (euler = DDIM /
  DPM-Solver-1, euler_ancestral, dpmpp_2m), the sigma schedule (exponential, karras) and the step count (3 by default)
  are inference settings. The sigma schedule comes from diffusers' EDM schedulers; the samplers and the scalings are
  `vmp.policies.nn.samplers`'.
- Goal dropout (p = 0.1) trains the goal-free policy in the same network; with a goal and guidance_weight w != 1 the
  sampler mixes F_uncond + w (F_cond - F_uncond) from one doubled batch.
- `prefix` / `prefix_weights` inpaint the start of the chunk for real-time chunking (vmp-deploy blend=prefix): at every step the
  denoised estimate is replaced by W*Y + (1-W)*D inside the `denoise` closure, so every sampler applies it.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
from diffusers import EDMDPMSolverMultistepScheduler, EDMEulerScheduler

from vmp.policies.base import Capabilities, DiffusionHeadConfig, SharedEncoderPolicy
from vmp.policies.nn import TransformerDenoiser
from vmp.policies.nn.samplers import SAMPLERS, edm_scalings, noise_draws


@dataclasses.dataclass
class BESOConfig(DiffusionHeadConfig):
    sigma_data: float = 0.5
    sigma_min: float = 0.001
    sigma_max: float = 1.0
    noise_distribution: str = "loglogistic"  # loglogistic | lognormal
    noise_loc: float | None = None  # default: ln(sigma_data) for loglogistic, -1.2 for lognormal
    noise_scale: float = 0.5
    goal_dropout: float = 0.1
    # inference-time settings
    sampler: str = "euler"
    n_steps: int = 3
    sigma_schedule: str = "exponential"  # exponential | karras
    guidance_weight: float = 1.0

    def __post_init__(self) -> None:
        if self.sampler not in SAMPLERS:
            raise ValueError(f"policy.sampler must be one of {tuple(SAMPLERS)}, got {self.sampler!r}")
        if self.noise_distribution not in ("loglogistic", "lognormal"):
            raise ValueError(f"policy.noise_distribution must be loglogistic or lognormal, got {self.noise_distribution!r}")
        if self.sigma_schedule not in ("exponential", "karras"):
            raise ValueError(f"policy.sigma_schedule must be exponential or karras, got {self.sigma_schedule!r}")
        if not 0 < self.sigma_min < self.sigma_max:
            raise ValueError(f"need 0 < sigma_min < sigma_max, got {self.sigma_min}, {self.sigma_max}")
        if self.n_steps < 1:
            raise ValueError(f"policy.n_steps must be >= 1, got {self.n_steps}")
        if not 0.0 <= self.goal_dropout < 1.0:
            raise ValueError(f"policy.goal_dropout must be in [0, 1), got {self.goal_dropout}")


class BESOPolicy(SharedEncoderPolicy):
    name = "beso"
    config_class = BESOConfig
    capabilities = Capabilities(prefix=True)

    def __init__(self, config: BESOConfig, encoder, normalizer, action_dim: int):
        super().__init__(config, encoder, normalizer, action_dim)
        self.denoiser = TransformerDenoiser(
            action_dim, config.horizon, encoder.n_tokens, config.d_model, config.n_layers, config.n_heads, config.dropout,
            noise_embed_scale=100.0,
        )

    # ---- EDM preconditioning ----
    def scalings(self, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """sigma [B] -> (c_skip, c_out, c_in, c_noise), each [B]."""
        return edm_scalings(sigma, self.config.sigma_data)

    def sample_training_sigmas(self, n: int, device: torch.device) -> torch.Tensor:
        """Draws from the noise distribution truncated to [sigma_min, sigma_max] by inverse-CDF sampling (as the
        authors' code does): clamping instead would pile the tail's mass onto sigma_max itself."""
        cfg = self.config
        lo, hi = math.log(cfg.sigma_min), math.log(cfg.sigma_max)
        if cfg.noise_distribution == "loglogistic":
            loc = math.log(cfg.sigma_data) if cfg.noise_loc is None else cfg.noise_loc
            cdf = lambda x: 1.0 / (1.0 + math.exp(-(x - loc) / cfg.noise_scale))  # noqa: E731
            u = torch.empty(n, device=device).uniform_(cdf(lo), cdf(hi))
            log_sigma = loc + cfg.noise_scale * torch.logit(u)
        else:
            loc = -1.2 if cfg.noise_loc is None else cfg.noise_loc
            cdf = lambda x: 0.5 * (1.0 + math.erf((x - loc) / (cfg.noise_scale * math.sqrt(2.0))))  # noqa: E731
            u = torch.empty(n, device=device).uniform_(cdf(lo), cdf(hi))
            log_sigma = loc + cfg.noise_scale * torch.special.ndtri(u)
        return log_sigma.clamp(lo, hi).exp()  # the clamp only absorbs float rounding at the ends

    def compute_loss(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        actions, cond = self.training_inputs(batch)
        b = actions.shape[0]
        sigma = self.sample_training_sigmas(b, actions.device)
        c_skip, c_out, c_in, c_noise = (s[:, None, None] for s in self.scalings(sigma))
        noisy = actions + sigma[:, None, None] * torch.randn_like(actions)
        pred = self.denoiser(c_in * noisy, c_noise.flatten(), cond)
        target = (actions - c_skip * noisy) / c_out
        loss = self.masked_mse(pred, target, batch.get("action_is_pad"))
        return {"loss": loss}

    # ---- sampling ----
    def _scheduler(self):
        cfg = self.config
        kwargs = dict(sigma_min=cfg.sigma_min, sigma_max=cfg.sigma_max, sigma_data=cfg.sigma_data, sigma_schedule=cfg.sigma_schedule)
        if cfg.sampler == "dpmpp_2m":
            return EDMDPMSolverMultistepScheduler(**kwargs, solver_order=2, algorithm_type="dpmsolver++")
        return EDMEulerScheduler(**kwargs)

    def sigma_schedule(self) -> list[float]:
        """The inference noise levels, sigma_max ... 0 (n_steps + 1 floats), from diffusers' EDM scheduler for the
        configured sampler; computed once per setting, so sampling itself never touches the host."""
        cfg = self.config
        key = (cfg.sampler, cfg.n_steps, cfg.sigma_schedule, cfg.sigma_min, cfg.sigma_max, cfg.sigma_data)
        if getattr(self, "_sigmas_key", None) != key:
            scheduler = self._scheduler()
            scheduler.set_timesteps(cfg.n_steps)
            self._sigmas, self._sigmas_key = [float(x) for x in scheduler.sigmas], key
        return self._sigmas

    def sampling_noise_shape(self, batch: int) -> tuple[int, ...]:
        """The Gaussian noise one chunk consumes: the start, plus a fresh draw per step for euler_ancestral."""
        return (noise_draws(self.config.sampler, self.config.n_steps), batch, self.horizon, self.action_dim)

    def _model_output(self, x_in: torch.Tensor, c_noise: float, cond: torch.Tensor, cond_free: torch.Tensor | None) -> torch.Tensor:
        b = x_in.shape[0]
        noise_b = torch.full((b,), c_noise, device=x_in.device)
        if cond_free is None:
            return self.denoiser(x_in, noise_b, cond)
        both = self.denoiser(torch.cat([x_in, x_in]), torch.cat([noise_b, noise_b]), torch.cat([cond, cond_free]))
        f_cond, f_free = both[:b], both[b:]
        return f_free + self.config.guidance_weight * (f_cond - f_free)

    @torch.no_grad()
    def predict_action_chunk(
        self,
        obs: dict[str, torch.Tensor],
        goal: dict[str, torch.Tensor] | None = None,
        generator: torch.Generator | None = None,
        prefix: torch.Tensor | None = None,
        prefix_weights: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """obs {key: [B, n_obs_steps, ...]} -> actions [B, horizon, action_dim] (unnormalized).

        prefix: [B, L, A] unnormalized actions to keep at the chunk start, weighted by prefix_weights [L] in [0, 1].
        noise: the standard Gaussian draws to use, `sampling_noise_shape(B)` (default: drawn from ``generator``).
        The samplers run over precomputed float sigmas, with no host synchronisation, so the whole chunk can be
        captured in a CUDA graph.
        """
        cfg = self.config
        cond = self.condition(obs, goal)
        cond_free = None
        if goal is not None and self.null_goal is not None and cfg.guidance_weight != 1.0:
            cond_free = self.condition(obs, None)
        b, device = cond.shape[0], cond.device
        target_y, target_w = self.prefix_target(prefix, prefix_weights, b) if prefix is not None else (None, None)
        shape = self.sampling_noise_shape(b)
        if noise is None:
            noise = torch.randn(shape, generator=generator, device=device)
        elif tuple(noise.shape) != shape:
            raise ValueError(f"noise must have shape {shape} (sampling_noise_shape), got {tuple(noise.shape)}")

        def denoise(x: torch.Tensor, sigma: float) -> torch.Tensor:
            c_skip, c_out, c_in, c_noise = edm_scalings(sigma, cfg.sigma_data)
            denoised = c_skip * x + c_out * self._model_output(c_in * x, c_noise, cond, cond_free)
            return denoised if target_y is None else target_w * target_y + (1 - target_w) * denoised

        sigmas = self.sigma_schedule()
        x = SAMPLERS[cfg.sampler](denoise, noise[0] * sigmas[0], sigmas, noise[1:])
        return self.normalizer.unnormalize("action", x.clamp(-1.0, 1.0))
