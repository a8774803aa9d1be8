"""DDPM / DDIM training targets, masked loss and sampling on diffusers' schedulers, shared by the diffusion heads.

The heads differ in their denoiser (what `model_fn` wraps) and settings: the DDPM baseline (100 squared-cosine steps,
epsilon), NavDP (10 cosine steps, 16 trajectories sampled at once), Diffusion-VLA (DDIM, 10 steps). The noise maths
stays in diffusers; this class only fixes how a head draws training noise, masks padding and runs a sampling loop.
"""

from __future__ import annotations

from typing import Callable

import torch
from diffusers import DDIMScheduler, DDPMScheduler

PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")
SAMPLERS = ("ddpm", "ddim")

ModelFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x_t, timesteps [B]) -> prediction shaped like x_t


class DiscreteTimeDiffusion:
    """A discrete-time (DDPM) noise schedule: training targets and a loss for it, and DDPM or DDIM sampling over its
    timesteps. (The EDM heads' continuous-sigma samplers are `vmp.policies.nn.samplers`.)

    Not a module: it holds no weights, so a head that owns one keeps its state dict unchanged.
    """

    def __init__(self, num_train_timesteps: int, beta_schedule: str, prediction_type: str = "epsilon", clip_sample: bool = True):
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")
        self.num_train_timesteps, self.prediction_type = num_train_timesteps, prediction_type
        self.scheduler = DDPMScheduler(num_train_timesteps=num_train_timesteps, beta_schedule=beta_schedule,
                                       prediction_type=prediction_type, clip_sample=clip_sample)

    def training_target(self, x0: torch.Tensor, generator: torch.Generator | None = None
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Clean x0 [B, ...] -> (x_t, timesteps [B], what the model should predict), t uniform over training steps."""
        noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        t_B = torch.randint(0, self.num_train_timesteps, (x0.shape[0],), generator=generator, device=x0.device)
        noisy = self.scheduler.add_noise(x0, noise, t_B)
        if self.prediction_type == "epsilon":
            return noisy, t_B, noise
        if self.prediction_type == "sample":
            return noisy, t_B, x0
        return noisy, t_B, self.scheduler.get_velocity(x0, noise, t_B)

    def loss(self, model_fn: ModelFn, x0: torch.Tensor, mask: torch.Tensor | None = None,
             generator: torch.Generator | None = None) -> torch.Tensor:
        """Mean squared error of model_fn's prediction over the kept entries.

        mask: shape a prefix of x0's ([B] per sample, [B, H] per step...), True (or a weight) where the entry counts;
        the error is averaged over the remaining dims first. Combine padding and per-sample masks as m_BH & m_B[:, None].
        Entries whose mask is False add exactly zero to the loss and its gradient.
        """
        if mask is not None and mask.shape != x0.shape[: mask.ndim]:
            raise ValueError(f"mask shape must be a prefix of x0's {tuple(x0.shape)}, got {tuple(mask.shape)}")
        noisy, t_B, target = self.training_target(x0, generator)
        err = (model_fn(noisy, t_B) - target).pow(2)
        if mask is None:
            return err.mean()
        err = err.mean(dim=tuple(range(mask.ndim, err.ndim))) if err.ndim > mask.ndim else err
        keep = mask.to(err.dtype)
        return (err * keep).sum() / keep.sum().clamp(min=1.0)

    def sample(self, model_fn: ModelFn, shape: tuple[int, ...], n_steps: int, sampler: str = "ddpm",
               generator: torch.Generator | None = None, device: torch.device | str | None = None,
               noise: torch.Tensor | None = None, known: torch.Tensor | None = None,
               known_weights: torch.Tensor | None = None) -> torch.Tensor:
        """Denoise from pure noise over `n_steps` of the training schedule -> x0 of `shape`.

        The start is `noise` when given (drawn outside, e.g. for CUDA graphs; it sets the device and dtype), else drawn
        from `generator` on `device`. DDIM (eta = 0) is then deterministic; DDPM adds fresh noise at every step, drawn
        from `generator`.

        Inpainting (real-time chunking's prefix, diffusion_policy's conditional sampling): with ``known`` x0 values
        and ``known_weights`` W in [0, 1] (broadcastable to `shape`), every intermediate sample is blended towards
        ``known`` noised to that step with the sample's own starting noise, W * q(known | t) + (1 - W) * x, and the
        result towards ``known`` itself, so where W = 1 the output is ``known`` exactly.
        """
        if sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
        if not 1 <= n_steps <= self.num_train_timesteps:
            raise ValueError(f"n_steps must be in [1, {self.num_train_timesteps}], got {n_steps}")
        if noise is None:
            noise = torch.randn(shape, generator=generator, device=device)
        elif noise.shape != tuple(shape):
            raise ValueError(f"noise has shape {tuple(noise.shape)}, expected {tuple(shape)}")
        scheduler = (DDPMScheduler if sampler == "ddpm" else DDIMScheduler).from_config(self.scheduler.config)
        scheduler.set_timesteps(n_steps, device=noise.device)
        timesteps = scheduler.timesteps
        x = noise
        if known is not None:
            x = self._blend(x, known, known_weights, noise, timesteps[0])
        for i, t in enumerate(timesteps):
            x = scheduler.step(model_fn(x, t.expand(x.shape[0])), t, x, generator=generator).prev_sample
            if known is not None:
                x = self._blend(x, known, known_weights, noise, timesteps[i + 1] if i + 1 < len(timesteps) else None)
        return x

    def _blend(self, x: torch.Tensor, known: torch.Tensor, weights: torch.Tensor, noise: torch.Tensor,
               t: torch.Tensor | None) -> torch.Tensor:
        """W * known (noised to timestep t; clean when t is None) + (1 - W) * x."""
        target = known if t is None else self.scheduler.add_noise(known, noise, t.reshape(1).expand(known.shape[0]))
        return weights * target + (1 - weights) * x
