"""PAD: prediction with action (Guo et al., NeurIPS 2024): one DiT jointly denoises future image latents and the
action chunk, conditioned on the current image latent, the robot's proprioception and the instruction.

Two stages, as CARP's:
- `pad_vae` (stage one): a small `diffusers.AutoencoderKL` trained on the task's camera images (the paper uses the
  frozen Stable Diffusion VAE, which we cannot download). It tracks its latents' per-channel mean and spread, so the
  DiT sees latents of unit scale. A pretrained diffusers VAE directory on disk can stand in for it (`policy.vae`).
- `pad`: the frozen VAE lives inside the head (its weights are in PAD's state dict). Before training, every frame of
  each store is encoded once (`precompute`, cached on disk by store and VAE), so training never runs the VAE.

Token sequence (positions fixed, learned position embeddings; `token_layout`):
    [current latent patches x n_obs_steps | proprioception x n_obs_steps | future latent patches x F | action chunk]
The first two groups are clean context; the future latents and the action chunk (one token, as in the paper) are
noised with ONE diffusion timestep and denoised together. The timestep and the instruction embedding condition every
block through adaLN-Zero. Image tokens may not attend to the action token (the paper's mask), so image prediction
never depends on actions and action-free video trains it alone. Loss: per-modality weighted epsilon MSE; the action
term is masked by ``action_is_pad`` (all True for action-free samples: exactly zero action loss and gradient), the
image term by ``future_is_pad``. Sampling: DDIM (or DDPM) over `policy.n_steps` of diffusers' schedule.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from einops import rearrange
from torch import nn

from vmp.data.schema import LANGUAGE_KEY
from vmp.policies.base import BatchSpec, Capabilities, Policy, Prediction, StageOneModel, has_action_stats
from vmp.policies.nn import MLP, DiscreteTimeDiffusion, DiTDenoiser
from vmp.policies.nn.text import make_text_encoder

log = logging.getLogger(__name__)

LATENT_SUFFIX = "_latent"  # the cached latents of camera key K travel under K + "_latent"


# ---------------------------------------------------------------------------------------------- stage one: the VAE
@dataclasses.dataclass
class PADVAEConfig:
    n_obs_steps: int = 1  # the trainer's window: one frame at a time
    horizon: int = 1
    n_action_steps: int = 1
    camera: str | None = None  # the rgb key to encode; null: the task's only one
    block_out_channels: list = dataclasses.field(default_factory=lambda: [16, 32, 64, 64])  # 3 downsamplings: 8x
    layers_per_block: int = 1
    latent_channels: int = 4
    norm_num_groups: int = 8
    kl_weight: float = 1.0e-6  # Stable Diffusion's autoencoder weight on the KL term

    def __post_init__(self) -> None:
        if any(int(c) % int(self.norm_num_groups) for c in self.block_out_channels):
            raise ValueError(f"policy.block_out_channels {list(self.block_out_channels)} must be multiples of "
                             f"policy.norm_num_groups={self.norm_num_groups}")
        if self.kl_weight < 0:
            raise ValueError(f"policy.kl_weight must be >= 0, got {self.kl_weight}")

    def architecture(self) -> dict[str, Any]:
        """`AutoencoderKL` keyword arguments."""
        n = len(self.block_out_channels)
        return dict(in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * n,
                    up_block_types=["UpDecoderBlock2D"] * n, block_out_channels=[int(c) for c in self.block_out_channels],
                    layers_per_block=int(self.layers_per_block), latent_channels=int(self.latent_channels),
                    norm_num_groups=int(self.norm_num_groups), mid_block_add_attention=False)


def _autoencoder(arch: dict[str, Any]):
    from diffusers import AutoencoderKL

    return AutoencoderKL.from_config({k: v for k, v in arch.items() if not k.startswith("_")})


def _to_unit(images: torch.Tensor) -> torch.Tensor:
    """uint8 [N, 3, H, W] -> float in [-1, 1] (what the autoencoder reads and writes)."""
    return images.float() / 127.5 - 1.0


def _to_uint8(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] [..., 3, H, W] -> uint8 [..., H, W, 3]."""
    return ((x.clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8).movedim(-3, -1)


def _single_camera(camera: str | None, image_keys: list[str], where: str) -> str:
    if camera is not None:
        if camera not in image_keys:
            raise KeyError(f"policy.camera={camera!r} is not an rgb key of {where}; rgb keys: {image_keys}")
        return camera
    if len(image_keys) != 1:
        raise ValueError(f"{where} has rgb keys {image_keys}: name the one to encode with policy.camera=<key>")
    return image_keys[0]


def _rgb_keys(task: Any) -> list[str]:
    return sorted(k for k, m in task.shape_meta.obs.items() if m.get("type") == "rgb")


class PADVAE(StageOneModel):
    """Stage one: reconstructs camera frames (MSE + KL); logs recon_mse and kl. Its running latent statistics
    (per channel, from the posterior means it sees in training) scale the latents PAD works on."""

    name = "pad_vae"
    config_class = PADVAEConfig

    def __init__(self, config: PADVAEConfig, normalizer, action_dim: int):
        super().__init__()
        self.config = config
        self.vae = _autoencoder(config.architecture())
        c = config.latent_channels
        self.register_buffer("latent_mean", torch.zeros(c))
        self.register_buffer("latent_var", torch.ones(c))
        self.register_buffer("n_seen", torch.zeros((), dtype=torch.long))

    @classmethod
    def batch_spec(cls, config: PADVAEConfig, task: Any) -> BatchSpec:
        return BatchSpec(keys=(_single_camera(config.camera, _rgb_keys(task), f"task {task.name}"),))

    def compute_loss(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        key = _single_camera(self.config.camera, [k for k in batch["obs"] if k != LANGUAGE_KEY], "the batch")
        frames = batch["obs"][key]
        x = _to_unit(frames.reshape(-1, *frames.shape[-3:]))
        posterior = self.vae.encode(x).latent_dist
        recon = self.vae.decode(posterior.sample()).sample
        recon_mse = (recon - x).pow(2).mean()
        kl = posterior.kl().mean()
        if self.training:
            self._update_stats(posterior.mean.detach())
        return {"loss": recon_mse + self.config.kl_weight * kl, "recon_mse": recon_mse.detach(), "kl": kl.detach()}

    @torch.no_grad()
    def _update_stats(self, z: torch.Tensor) -> None:
        """Running per-channel mean and variance: a plain average over the first 1000 batches, then an EMA."""
        mean, var = z.mean(dim=(0, 2, 3)), z.var(dim=(0, 2, 3))
        rate = max(1.0 / float(self.n_seen + 1), 1e-3)
        if int(self.n_seen) == 0:
            self.latent_mean.copy_(mean)
            self.latent_var.copy_(var)
        else:
            self.latent_mean.lerp_(mean, rate)
            self.latent_var.lerp_(var, rate)
        self.n_seen += 1


def load_vae(path: str) -> tuple[Any, torch.Tensor, torch.Tensor]:
    """-> (AutoencoderKL in eval mode, per-channel shift, per-channel scale): normalized latent = (z - shift) * scale.

    ``path``: a `vmp-train policy=pad_vae` checkpoint (file or run folder), or a diffusers AutoencoderKL directory on
    disk (config.json + weights, e.g. Stable Diffusion's VAE; its ``scaling_factor``/``shift_factor`` apply).
    """
    p = Path(path)
    if (p / "config.json").is_file():
        from diffusers import AutoencoderKL

        vae = AutoencoderKL.from_pretrained(str(p), local_files_only=True)
        c = vae.config.latent_channels
        shift = torch.full((c,), float(vae.config.get("shift_factor") or 0.0))
        return vae.eval(), shift, torch.full((c,), float(vae.config.get("scaling_factor") or 1.0))
    from vmp.policies.checkpoint import load_model, resolve_checkpoint

    try:
        ckpt = resolve_checkpoint(p)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"policy.vae={path!r}: no pad_vae checkpoint or diffusers VAE directory there; train one "
                                f"first (vmp-train task=<task> policy=pad_vae) ({e})") from e
    model, cfg = load_model(ckpt)
    if not isinstance(model, PADVAE):
        raise ValueError(f"policy.vae={path} holds a {cfg.policy.name!r} model, not pad_vae")
    if int(model.n_seen) == 0:
        raise ValueError(f"policy.vae={path}: the autoencoder has no latent statistics (never trained)")
    return model.vae.eval(), model.latent_mean.clone(), model.latent_var.clamp(min=1e-8).rsqrt()


# ------------------------------------------------------------------------------------------------- stage two: PAD
@dataclasses.dataclass
class PADConfig:
    n_obs_steps: int = 1
    horizon: int = 16
    n_action_steps: int = 8
    camera: str | None = None  # the rgb key whose future is predicted; null: the task's only one
    vae: str | None = None  # pad_vae checkpoint / run folder, or a diffusers AutoencoderKL directory
    vae_arch: dict = dataclasses.field(default_factory=dict)  # filled from `vae` when training starts
    predict_future: bool = True  # false: the action-only ablation (no future-frame tokens, no image loss)
    future_offsets: list = dataclasses.field(default_factory=lambda: [8, 16])  # steps after the current frame
    patch_size: int = 2
    width: int = 192
    depth: int = 6
    n_heads: int = 4
    mlp_ratio: float = 4.0
    dropout: float = 0.0
    text_encoder: str = "learned"
    image_weight: float = 1.0
    action_weight: float = 1.0
    num_train_timesteps: int = 100
    beta_schedule: str = "squaredcos_cap_v2"
    # inference-time settings
    sampler: str = "ddim"
    n_steps: int = 10

    def __post_init__(self) -> None:
        if self.sampler not in ("ddpm", "ddim"):
            raise ValueError(f"policy.sampler must be ddpm or ddim, got {self.sampler!r}")
        if not 1 <= self.n_steps <= self.num_train_timesteps:
            raise ValueError(f"policy.n_steps must be in [1, {self.num_train_timesteps}], got {self.n_steps}")
        if self.predict_future and (not self.future_offsets or any(int(o) < 1 for o in self.future_offsets)):
            raise ValueError(f"policy.future_offsets must be positive step offsets, got {list(self.future_offsets)}")
        if self.image_weight < 0 or self.action_weight <= 0:
            raise ValueError(f"need policy.image_weight >= 0 and policy.action_weight > 0, got "
                             f"{self.image_weight}, {self.action_weight}")
        if self.width % self.n_heads:
            raise ValueError(f"policy.width={self.width} must be divisible by policy.n_heads={self.n_heads}")


class PADPolicy(Policy):
    name = "pad"
    config_class = PADConfig
    capabilities = Capabilities(prefix=True, instruction=True, extras=("future_frames",))
    own_encoder = True  # built from shape_meta: images go through its VAE, not the shared ObsEncoder

    def __init__(self, config: PADConfig, shape_meta: dict[str, Any], normalizer, action_dim: int):
        obs_meta = shape_meta["obs"]
        super().__init__(config.n_obs_steps, config.horizon, config.n_action_steps, action_dim,
                         obs_shapes={k: tuple(m["shape"]) for k, m in obs_meta.items()},
                         obs_kinds={k: m.get("type", "low_dim") for k, m in obs_meta.items()})
        self.config, self.normalizer = config, normalizer
        rgb = sorted(k for k, m in obs_meta.items() if m.get("type") == "rgb")
        self.camera = _single_camera(config.camera, rgb, "the task's shape_meta.obs")
        self.lowdim_keys = sorted(k for k, m in obs_meta.items() if m.get("type", "low_dim") == "low_dim")
        unused = sorted(set(obs_meta) - {self.camera, *self.lowdim_keys})
        if unused:
            raise ValueError(f"the pad head reads one camera and low-dim keys; shape_meta.obs also has {unused}")

        source = None
        if has_action_stats(normalizer):  # training: the autoencoder comes from policy.vae
            if not config.vae:
                raise ValueError("policy.vae is null: train the autoencoder first (vmp-train policy=pad_vae) and point "
                                 "policy.vae at it, or at a diffusers AutoencoderKL directory")
            source = load_vae(config.vae)
            config.vae_arch = {k: list(v) if isinstance(v, tuple) else v for k, v in source[0].config.items()
                               if not k.startswith("_")}
        elif not config.vae_arch:
            raise ValueError("policy.vae_arch is empty: this pad config was never trained (vae_arch is recorded in the "
                             "checkpoint when training starts)")
        self.vae = _autoencoder(config.vae_arch)
        self.register_buffer("latent_shift", torch.zeros(self.vae.config.latent_channels))
        self.register_buffer("latent_scale", torch.ones(self.vae.config.latent_channels))
        if source is not None:
            self.vae.load_state_dict(source[0].state_dict())
            self.latent_shift.copy_(source[1])
            self.latent_scale.copy_(source[2])
        self.vae.requires_grad_(False).eval()

        height, width = self.obs_shapes[self.camera][:2]
        down = 2 ** (len(self.vae.config.block_out_channels) - 1)
        c, p = self.vae.config.latent_channels, config.patch_size
        if height % down or width % down or (height // down) % p or (width // down) % p:
            raise ValueError(f"camera {self.camera!r} is {height}x{width}: with the autoencoder's {down}x downsampling "
                             f"and policy.patch_size={p} it must be a multiple of {down * p} on each side")
        self.latent_shape = (c, height // down, width // down)
        self.n_patches = (height // down // p) * (width // down // p)
        self.n_future = len(config.future_offsets) if config.predict_future else 0
        # which frames `predict` returns as future_frames (vmp-eval sets the real ones beside them)
        self.future_offsets = [int(o) for o in config.future_offsets] if self.n_future else []
        self.layout = token_layout(config.n_obs_steps, self.n_patches, self.n_future)
        w = config.width
        self.patch_in = nn.Linear(c * p * p, w)
        self.patch_out = nn.Linear(w, c * p * p)
        lowdim_dim = sum(int(np.prod(obs_meta[k]["shape"])) for k in self.lowdim_keys)
        self.proprio_in = MLP(lowdim_dim, w, w) if self.lowdim_keys else None
        self.action_in = nn.Linear(config.horizon * action_dim, w)
        self.action_out = nn.Linear(w, config.horizon * action_dim)
        self.text = make_text_encoder(config.text_encoder, w)
        self.dit = DiTDenoiser(w, config.depth, config.n_heads, config.mlp_ratio, config.dropout,
                               max_len=self.layout["length"], cond_dim=w)
        self.register_buffer("mask", attention_mask(self.layout), persistent=False)
        self.diffusion = DiscreteTimeDiffusion(config.num_train_timesteps, config.beta_schedule, "epsilon", clip_sample=False)

    # ---- what training reads ----
    @classmethod
    def batch_spec(cls, config: PADConfig, task: Any) -> BatchSpec:
        """The camera's cached latents (never its frames) and, when predicting, their future at `future_offsets`."""
        camera = _single_camera(config.camera, _rgb_keys(task), f"task {task.name}")
        latent = camera + LATENT_SUFFIX
        lowdim = sorted(k for k, m in task.shape_meta.obs.items() if m.get("type", "low_dim") == "low_dim")
        if not config.predict_future:
            return BatchSpec(keys=(*lowdim, latent))
        return BatchSpec(keys=(*lowdim, latent), future_keys=(latent,),
                         future_offsets=tuple(int(o) for o in config.future_offsets))

    @classmethod
    def precompute(cls, config: PADConfig, task: Any, store: Any) -> dict[str, np.ndarray]:
        """{camera_latent: [n_steps, C, h, w] float32}: every frame of ``store`` encoded once by the frozen VAE
        (posterior mean, unscaled) at the task's image size (frames of another size are resized first, as the
        sampler resizes the frames it reads), cached under $VMP_CACHE (default ~/.cache/vmp) by store content, size
        and VAE file."""
        if not config.vae:
            raise ValueError("policy.vae is null: point it at a pad_vae checkpoint or a diffusers VAE directory")
        camera = _single_camera(config.camera, _rgb_keys(task), f"task {task.name}")
        if camera not in store.schema:
            raise KeyError(f"store {store.path} has no {camera!r} frames to encode; keys: {store.keys}")
        size = tuple(int(d) for d in task.shape_meta.obs[camera].shape[:2])
        return {camera + LATENT_SUFFIX: cached_latents(store, camera, config.vae, size)}

    def checkpoint_settings(self) -> dict[str, Any]:
        """Settings fixed only once training reads its inputs: the autoencoder's architecture."""
        return {"vae_arch": dict(self.config.vae_arch)}

    # ---- the network ----
    def encode_frames(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 [..., 3, H, W] -> normalized latents [..., C, h, w]."""
        lead = frames.shape[:-3]
        z = self.vae.encode(_to_unit(frames.reshape(-1, *frames.shape[-3:]))).latent_dist.mean
        return self._normalize(z.reshape(*lead, *z.shape[1:]))

    def _normalize(self, z: torch.Tensor) -> torch.Tensor:
        return (z.float() - self.latent_shift[:, None, None]) * self.latent_scale[:, None, None]

    def decode_latents(self, z: torch.Tensor) -> torch.Tensor:
        """normalized latents [..., C, h, w] -> uint8 frames [..., H, W, 3]."""
        lead = z.shape[:-3]
        z = z.reshape(-1, *z.shape[-3:]) / self.latent_scale[:, None, None] + self.latent_shift[:, None, None]
        x = self.vae.decode(z).sample
        return _to_uint8(x).reshape(*lead, *x.shape[-2:], 3)

    def _patchify(self, z: torch.Tensor) -> torch.Tensor:
        """[B, F, C, h, w] -> [B, F * n_patches, C p p]."""
        p = self.config.patch_size
        return rearrange(z, "b f c (h p1) (w p2) -> b (f h w) (c p1 p2)", p1=p, p2=p)

    def _unpatchify(self, tokens: torch.Tensor, frames: int) -> torch.Tensor:
        c, h, w = self.latent_shape
        p = self.config.patch_size
        return rearrange(tokens, "b (f h w) (c p1 p2) -> b f c (h p1) (w p2)", f=frames, h=h // p, w=w // p, c=c, p1=p, p2=p)

    def _context(self, obs: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """obs -> (clean context tokens [B, n_obs * (n_patches + 1), W], instruction vector [B, W])."""
        latent_key = self.camera + LATENT_SUFFIX
        z = self._normalize(obs[latent_key]) if latent_key in obs else self.encode_frames(obs[self.camera])
        b, t = z.shape[:2]
        if t != self.n_obs_steps:
            raise ValueError(f"observation window has {t} steps, the policy was built for n_obs_steps={self.n_obs_steps}")
        tokens = [self.patch_in(self._patchify(z))]
        if self.proprio_in is not None:
            flat = torch.cat([self.normalizer.normalize(k, obs[k]).reshape(b, t, -1).float() for k in self.lowdim_keys], -1)
            tokens.append(self.proprio_in(flat))
        if obs.get(LANGUAGE_KEY) is None:
            raise KeyError(f"the pad head is language-conditioned: give the instruction with set_language(text), or as "
                           f"obs[{LANGUAGE_KEY!r}] = [B strings] in a batch")
        instructions = obs[LANGUAGE_KEY]
        if isinstance(instructions, str) or len(instructions) != b:
            raise TypeError(f"obs[{LANGUAGE_KEY!r}] must be a list of {b} instruction strings")
        return torch.cat(tokens, dim=1), self.text(list(instructions))[:, 0]

    def _denoise(self, x_BN: torch.Tensor, t_B: torch.Tensor, context: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """Noisy [future latents | actions] flattened [B, N] + timesteps -> predicted noise [B, N]."""
        b = x_BN.shape[0]
        n_img = self.n_future * int(np.prod(self.latent_shape))
        seq = [context]
        if self.n_future:
            seq.append(self.patch_in(self._patchify(x_BN[:, :n_img].reshape(b, self.n_future, *self.latent_shape))))
        seq.append(self.action_in(x_BN[:, n_img:])[:, None])
        out = self.dit(torch.cat(seq, dim=1), t_B.float(), cond, self.mask)
        pred = [self.action_out(out[:, -1])]
        if self.n_future:
            start, stop = self.layout["future"]
            pred.insert(0, self._unpatchify(self.patch_out(out[:, start:stop]), self.n_future).flatten(1))
        return torch.cat(pred, dim=1)

    # ---- training ----
    def compute_loss(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        context, cond = self._context(batch["obs"])
        actions = self.normalizer.normalize("action", batch["action"])
        b = actions.shape[0]
        parts = []
        if self.n_future:
            latent_key = self.camera + LATENT_SUFFIX  # cached latents; frames are encoded here
            future = batch["future"]
            future = self._normalize(future[latent_key]) if latent_key in future else self.encode_frames(future[self.camera])
            parts.append(future.flatten(1))
        parts.append(actions.flatten(1))
        x0 = torch.cat(parts, dim=1)
        noisy, t_B, target = self.diffusion.training_target(x0)
        err = (self._denoise(noisy, t_B, context, cond) - target).pow(2)
        n_img = self.n_future * int(np.prod(self.latent_shape))
        act_err = err[:, n_img:].reshape(b, self.horizon, self.action_dim).mean(-1)  # [B, H]
        is_pad = batch.get("action_is_pad")
        act_keep = torch.ones_like(act_err) if is_pad is None else (~is_pad).to(act_err.dtype)
        action_loss = (act_err * act_keep).sum() / act_keep.sum().clamp(min=1.0)
        out = {"action_loss": action_loss.detach()}
        loss = self.config.action_weight * action_loss
        if self.n_future:
            img_err = err[:, :n_img].reshape(b, self.n_future, -1).mean(-1)  # [B, F]
            f_pad = batch.get("future_is_pad")
            img_keep = torch.ones_like(img_err) if f_pad is None else (~f_pad).to(img_err.dtype)
            image_loss = (img_err * img_keep).sum() / img_keep.sum().clamp(min=1.0)
            loss = loss + self.config.image_weight * image_loss
            out["image_loss"] = image_loss.detach()
        out["loss"] = loss
        return out

    # ---- sampling ----
    def _sample(self, obs: dict[str, Any], generator: torch.Generator | None, prefix: torch.Tensor | None = None,
                prefix_weights: torch.Tensor | None = None, noise: torch.Tensor | None = None,
                future: torch.Tensor | None = None) -> torch.Tensor:
        """Joint sample [B, future latents + actions]. prefix [B, L, A] / prefix_weights [L]: real-time chunking's
        prefix, inpainted into the action part at every step (the future images are left free). future [B, F, C, h,
        w] (normalized latents): inpainted into the image part instead of predicted (`sample_joint`)."""
        context, cond = self._context(obs)
        b = context.shape[0]
        n_img = self.n_future * int(np.prod(self.latent_shape))
        n_act = self.horizon * self.action_dim
        known = weights = None
        if prefix is not None or future is not None:
            device = context.device
            known = torch.zeros(b, n_img + n_act, device=device)
            weights = torch.zeros(1, n_img + n_act, device=device)
            if prefix is not None:
                y, w = self.prefix_target(prefix, prefix_weights, b)
                known[:, n_img:] = y.reshape(b, -1)
                weights[:, n_img:] = w.expand(1, -1, self.action_dim).reshape(1, -1)
            if future is not None:
                if not self.n_future or tuple(future.shape) != (b, self.n_future, *self.latent_shape):
                    raise ValueError(f"future must be latents [{b}, {self.n_future}, {', '.join(map(str, self.latent_shape))}]"
                                     f" of a head that predicts frames, got {tuple(future.shape)}")
                known[:, :n_img] = future.reshape(b, -1)
                weights[:, :n_img] = 1.0
        return self.diffusion.sample(lambda x, t: self._denoise(x, t, context, cond), (b, n_img + n_act),
                                     self.config.n_steps, self.config.sampler, generator=generator, device=context.device,
                                     noise=noise, known=known, known_weights=weights)

    def _actions(self, x: torch.Tensor) -> torch.Tensor:
        n_img = self.n_future * int(np.prod(self.latent_shape))
        actions = x[:, n_img:].reshape(x.shape[0], self.horizon, self.action_dim)
        return self.normalizer.unnormalize("action", actions.clamp(-1.0, 1.0))

    @torch.no_grad()
    def predict_action_chunk(self, obs, goal=None, generator: torch.Generator | None = None,
                             prefix: torch.Tensor | None = None, prefix_weights: torch.Tensor | None = None) -> torch.Tensor:
        """obs {key: [B, n_obs_steps, ...]} + obs["language"] -> actions [B, horizon, action_dim] (unnormalized)."""
        return self._actions(self._sample(obs, generator, prefix, prefix_weights))

    @torch.no_grad()
    def sample_joint(self, obs: dict[str, Any], noise: torch.Tensor, future: torch.Tensor | None = None
                     ) -> tuple[torch.Tensor | None, torch.Tensor]:
        """(future latents [B, F, C, h, w] or None, actions [B, horizon, A]), both normalized, from the starting
        ``noise`` [B, F * C * h * w + horizon * A]. ``future``: real latents put in place of the predicted ones, so
        a caller can ask what the actions would be had the head foreseen the future exactly (`vmp-bench pad-probe`)."""
        x = self._sample(obs, None, noise=noise, future=future)
        n_img = self.n_future * int(np.prod(self.latent_shape))
        frames = x[:, :n_img].reshape(x.shape[0], self.n_future, *self.latent_shape) if self.n_future else None
        return frames, x[:, n_img:].reshape(x.shape[0], self.horizon, self.action_dim)

    @torch.no_grad()
    def predict(self, obs, goal=None, generator: torch.Generator | None = None, **kwargs: Any) -> Prediction:
        """The chunk plus the predicted future frames, decoded by the VAE (``future_frames`` uint8 [B, F, H, W, 3])."""
        x = self._sample(obs, generator, kwargs.get("prefix"), kwargs.get("prefix_weights"))
        extras = {}
        if self.n_future and self.decode_frames:
            n_img = self.n_future * int(np.prod(self.latent_shape))
            extras["future_frames"] = self.decode_latents(x[:, :n_img].reshape(x.shape[0], self.n_future, *self.latent_shape))
        return Prediction(self._actions(x), extras)


def token_layout(n_obs_steps: int, n_patches: int, n_future: int) -> dict[str, Any]:
    """Where each group sits in PAD's sequence: {group: (start, stop)} for current, proprio, future, action,
    plus length."""
    bounds, pos = {}, 0
    for group, size in (("current", n_obs_steps * n_patches), ("proprio", n_obs_steps),
                        ("future", n_future * n_patches), ("action", 1)):
        bounds[group] = (pos, pos + size)
        pos += size
    bounds["length"] = pos
    return bounds


def attention_mask(layout: dict[str, Any]) -> torch.Tensor:
    """bool [S, S], True where query i may attend to key j: everything, except that no token but the action
    token itself attends to the action token (image prediction stays independent of actions)."""
    s = layout["length"]
    mask = torch.ones(s, s, dtype=torch.bool)
    a0, a1 = layout["action"]
    mask[:a0, a0:a1] = False
    return mask


def latent_cache_path(store: Any, camera: str, vae_path: str, size: tuple[int, int] | None = None) -> Path:
    """Where `cached_latents` keeps the latents of ``store[camera]`` (at frame ``size``) under the VAE at
    ``vae_path``: a file named by the store (path, size), the frame size and the VAE (file, size, mtime), under
    $VMP_CACHE (default ~/.cache/vmp)."""
    vae_file = Path(vae_path)
    if not (vae_file / "config.json").is_file():
        from vmp.policies.checkpoint import resolve_checkpoint

        vae_file = resolve_checkpoint(vae_file)
    stat = vae_file.stat() if vae_file.is_file() else (vae_file / "config.json").stat()
    from vmp.data.store import is_url

    where = str(store.path) if is_url(store.path) else str(Path(store.path).resolve())
    size = tuple(store.schema[camera].shape[:2]) if size is None else tuple(int(d) for d in size)
    key = hashlib.sha1(repr((where, store.n_steps, store.n_episodes, camera, size,
                             str(vae_file.resolve()), stat.st_size, stat.st_mtime_ns)).encode()).hexdigest()[:16]
    cache_dir = Path(os.environ.get("VMP_CACHE", Path.home() / ".cache" / "vmp")) / "latents"
    return cache_dir / f"{Path(str(store.path)).stem}-{camera}-{key}.npy"


def cached_latents(store: Any, camera: str, vae_path: str, size: tuple[int, int] | None = None,
                   batch_size: int = 256) -> np.ndarray:
    """The VAE posterior means of every committed frame of ``store[camera]``, resized to ``size`` (H, W) first when
    given -> float32 [n_steps, C, h, w], read from the on-disk cache (`latent_cache_path`) when this store, size and
    VAE were encoded before."""
    from vmp.progress import progress

    from vmp.data.images import resize_frames

    n = store.n_steps
    path = latent_cache_path(store, camera, vae_path, size)
    if path.is_file():
        latents = np.load(path)
        if latents.shape[0] == n:
            return latents
    vae, _, _ = load_vae(vae_path)
    frames = store.array(camera)
    chunks = []
    with torch.inference_mode():
        for start in progress(range(0, n, batch_size), desc=f"encode {camera} latents", unit="batch"):
            batch = np.asarray(frames[start : min(start + batch_size, n)])
            if size is not None:
                batch = resize_frames(batch, size)
            x = torch.from_numpy(np.ascontiguousarray(batch)).permute(0, 3, 1, 2)
            chunks.append(vae.encode(_to_unit(x)).latent_dist.mean.float().numpy())
    latents = np.concatenate(chunks) if chunks else np.zeros((0,), np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.npy")
    np.save(tmp, latents)
    os.replace(tmp, path)
    log.info("encoded %d frames of %s into %s", n, camera, path)
    return latents
