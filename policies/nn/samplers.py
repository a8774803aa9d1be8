"""EDM (Karras et al. 2022) preconditioning and samplers over a sigma schedule, in k-diffusion's style.

Each sampler is a small exact function `sample_*(denoise, x, sigmas, noise)`: `denoise(x, sigma)` returns the denoised
estimate D(x; sigma), and whatever a head does to it (classifier-free guidance, inpainting a known prefix) lives in
that closure, so every sampler applies it the same way. `sigmas` are Python floats, sigma_max ... 0, so a chunk runs
with no host synchronisation and can be captured in a CUDA graph. The updates equal diffusers' EDMEulerScheduler and
EDMDPMSolverMultistepScheduler steps (tested); diffusers has no EDM ancestral scheduler, so that one is k-diffusion's.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence, TypeVar

import torch

Sigma = TypeVar("Sigma", float, torch.Tensor)
Denoise = Callable[[torch.Tensor, float], torch.Tensor]


def edm_scalings(sigma: Sigma, sigma_data: float) -> tuple[Sigma, Sigma, Sigma, Sigma]:
    """sigma (a float, or a tensor of per-sample sigmas) -> (c_skip, c_out, c_in, c_noise), EDM's Table 1:
    D(x; sigma) = c_skip x + c_out F(c_in x, c_noise)."""
    sqrt, log = (torch.sqrt, torch.log) if isinstance(sigma, torch.Tensor) else (math.sqrt, math.log)
    c_skip = sigma_data**2 / (sigma**2 + sigma_data**2)
    c_out = sigma * sigma_data / sqrt(sigma**2 + sigma_data**2)
    c_in = 1.0 / sqrt(sigma**2 + sigma_data**2)
    return c_skip, c_out, c_in, log(sigma) / 4.0


def sample_euler(denoise: Denoise, x: torch.Tensor, sigmas: Sequence[float],
                 noise: Sequence[torch.Tensor] | None = None) -> torch.Tensor:
    """The probability-flow ODE's Euler step (= DDIM, DPM-Solver-1) from each sigma to the next."""
    for sigma, sigma_next in zip(sigmas[:-1], sigmas[1:]):
        denoised = denoise(x, sigma)
        x = denoised if sigma_next == 0 else denoised + (sigma_next / sigma) * (x - denoised)
    return x


def sample_euler_ancestral(denoise: Denoise, x: torch.Tensor, sigmas: Sequence[float],
                           noise: Sequence[torch.Tensor] | None = None) -> torch.Tensor:
    """eta = 1: an Euler step down to sigma_down, then fresh noise of sigma_up (noise[i], one draw per step)."""
    if noise is None or len(noise) < len(sigmas) - 1:
        raise ValueError(f"euler_ancestral needs one noise draw per step ({len(sigmas) - 1})")
    for i, (sigma, sigma_next) in enumerate(zip(sigmas[:-1], sigmas[1:])):
        denoised = denoise(x, sigma)
        if sigma_next == 0:
            x = denoised
            continue
        sigma_up = math.sqrt(sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2)
        sigma_down = math.sqrt(sigma_next**2 - sigma_up**2)
        x = denoised + (sigma_down / sigma) * (x - denoised) + sigma_up * noise[i]
    return x


def sample_dpmpp_2m(denoise: Denoise, x: torch.Tensor, sigmas: Sequence[float],
                    noise: Sequence[torch.Tensor] | None = None) -> torch.Tensor:
    """DPM-Solver++(2M) in log-sigma time: second order from the previous step's estimate, first order on the first."""
    old_denoised = None
    for i, (sigma, sigma_next) in enumerate(zip(sigmas[:-1], sigmas[1:])):
        denoised = denoise(x, sigma)
        if sigma_next == 0:
            x = denoised
        else:
            h = math.log(sigma / sigma_next)
            d = denoised
            if old_denoised is not None:
                r = math.log(sigmas[i - 1] / sigma) / h
                d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised
            x = (sigma_next / sigma) * x - math.expm1(-h) * d
        old_denoised = denoised
    return x


SAMPLERS: dict[str, Callable[..., torch.Tensor]] = {
    "euler": sample_euler, "euler_ancestral": sample_euler_ancestral, "dpmpp_2m": sample_dpmpp_2m}


def noise_draws(sampler: str, n_steps: int) -> int:
    """Gaussian draws one sample consumes: the start, plus one per step for the ancestral sampler."""
    return 1 + (n_steps if sampler == "euler_ancestral" else 0)
