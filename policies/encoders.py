"""`ObsEncoder`: observation window -> conditioning tokens, shared by every head.

Token layout per observation step: one token for all low-dim keys together (concatenated after normalization, then an
MLP), then per camera (RGB or depth) either one token (backbone -> spatial softmax -> linear) or, with
``image_output: tokens``, ``token_grid**2`` tokens (the feature map pooled to a grid, one token per cell), or with
``tokens_and_keypoints`` both: the spatial-softmax token first, then the grid (where things are, beside what is in
each cell). A goal
observation (the keys in `goal_keys`) becomes one extra token through its own MLP (``goal_in_lowdim`` also appends it to
every step's low-dim vector, so that one MLP relates goal and state), and with ``language=True`` the
episode's instruction one more (`vmp.policies.nn.text`). Which keys feed which branch comes from the task's
`shape_meta` (`type: low_dim | rgb | depth`), so the encoder is chosen by config, never by head.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from vmp.policies.nn import MLP, SpatialSoftmax, make_backbone
from vmp.policies.nn.text import make_text_encoder

OBS_TYPES = ("low_dim", "rgb", "depth")
IMAGE_OUTPUTS = ("spatial_softmax", "tokens", "tokens_and_keypoints")


def _crop(images: torch.Tensor, size: tuple[int, int], random: bool) -> torch.Tensor:
    """[N, C, H, W] -> [N, C, h, w]; a random crop per image in training, the centre crop otherwise."""
    n, _, height, width = images.shape
    h, w = size
    if (h, w) == (height, width):
        return images
    if not random:
        top, left = (height - h) // 2, (width - w) // 2
        return images[:, :, top : top + h, left : left + w]
    tops = torch.randint(0, height - h + 1, (n,), device=images.device)
    lefts = torch.randint(0, width - w + 1, (n,), device=images.device)
    rows = (tops[:, None] + torch.arange(h, device=images.device))[:, None, :, None]  # [N, 1, h, 1]
    cols = (lefts[:, None] + torch.arange(w, device=images.device))[:, None, None, :]  # [N, 1, 1, w]
    batch = torch.arange(n, device=images.device)[:, None, None, None]
    return images.permute(0, 2, 3, 1)[batch, rows, cols].squeeze(1).permute(0, 3, 1, 2)


class ImageEncoder(nn.Module):
    """One camera: images [N, C, H, W] (uint8 or float in [0, 1] for RGB; metres for depth) -> [N, n_tokens, d_model]."""

    def __init__(self, shape: tuple[int, ...], obs_type: str, d_model: int, backbone: str, backbone_kwargs: dict,
                 n_keypoints: int, crop_ratio: float, output: str = "spatial_softmax", token_grid: int = 3):
        super().__init__()
        if output not in IMAGE_OUTPUTS:
            raise ValueError(f"encoder.image_output must be one of {IMAGE_OUTPUTS}, got {output!r}")
        height, width = shape[:2]
        self.in_channels = 1 if obs_type == "depth" else shape[2]
        self.obs_type, self.output = obs_type, output
        self.crop_size = (int(round(height * crop_ratio)), int(round(width * crop_ratio)))
        self.backbone = make_backbone(backbone, self.in_channels, **backbone_kwargs)
        if output == "spatial_softmax":
            self.n_tokens = 1
            self.pool = SpatialSoftmax(self.backbone.out_channels, n_keypoints)
            self.proj = nn.Linear(self.pool.out_dim, d_model)
        else:
            self.n_tokens = token_grid * token_grid
            self.pool = nn.AdaptiveAvgPool2d(token_grid)
            self.proj = nn.Linear(self.backbone.out_channels, d_model)
            self.cell_emb = nn.Parameter(torch.randn(1, self.n_tokens, d_model) * 0.02)
        if output == "tokens_and_keypoints":  # own names: checkpoints of the other two outputs load as before
            self.n_tokens += 1
            self.keypoint_pool = SpatialSoftmax(self.backbone.out_channels, n_keypoints)
            self.keypoint_proj = nn.Linear(self.keypoint_pool.out_dim, d_model)

    def backbone_features(self, images: torch.Tensor) -> torch.Tensor:
        """Images -> the backbone's feature maps [N, C', h, w], cropped as the mode says (random in training)."""
        if self.obs_type == "rgb":
            x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
        else:
            x = images.float()
            if x.ndim == 3:  # [N, H, W] depth
                x = x[:, None]
        return self.backbone(_crop(x, self.crop_size, random=self.training))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        feat = self.backbone_features(images)
        if self.output == "spatial_softmax":
            return self.proj(self.pool(feat))[:, None]
        grid = self.proj(self.pool(feat).flatten(2).transpose(1, 2)) + self.cell_emb
        if self.output == "tokens":
            return grid
        return torch.cat([self.keypoint_proj(self.keypoint_pool(feat))[:, None], grid], dim=1)


class ObsEncoder(nn.Module):
    def __init__(
        self,
        shape_meta: dict[str, Any],
        n_obs_steps: int,
        d_model: int = 128,
        goal_keys: tuple[str, ...] | list[str] = (),
        backbone: str = "compact_cnn",
        backbone_kwargs: dict | None = None,
        n_keypoints: int = 32,
        crop_ratio: float = 0.9,
        lowdim_hidden: int = 256,
        image_output: str = "spatial_softmax",
        token_grid: int = 3,
        language: bool = False,
        text_encoder: str = "learned",
        goal_in_lowdim: bool = False,
    ):
        super().__init__()
        obs_meta = shape_meta["obs"]
        for key, meta in obs_meta.items():
            if meta.get("type", "low_dim") not in OBS_TYPES:
                raise ValueError(f"shape_meta.obs.{key}.type must be one of {OBS_TYPES}, got {meta.get('type')!r}")
        self.n_obs_steps, self.d_model = n_obs_steps, d_model
        self.lowdim_keys = sorted(k for k, m in obs_meta.items() if m.get("type", "low_dim") == "low_dim")
        self.image_keys = sorted(k for k, m in obs_meta.items() if m.get("type") in ("rgb", "depth"))
        self.goal_keys = sorted(goal_keys)
        self.shapes = {k: tuple(obs_meta[k]["shape"]) for k in obs_meta}  # per step, as stored (images HWC)
        self.kinds = {k: obs_meta[k].get("type", "low_dim") for k in obs_meta}
        for key in self.goal_keys:
            if key not in self.shapes or key not in self.lowdim_keys:
                raise ValueError(f"goal key {key!r} must be a low_dim key of shape_meta.obs; low_dim keys: {self.lowdim_keys}")
        if not self.lowdim_keys and not self.image_keys:
            raise ValueError("shape_meta.obs has no keys to encode")
        goal_dim = sum(_numel(self.shapes[k]) for k in self.goal_keys)
        if goal_in_lowdim and not self.goal_keys:  # goal keys are low-dim keys (checked above), so the MLP exists
            raise ValueError("encoder.goal_in_lowdim needs a task with goal_keys")
        self.goal_in_lowdim, self.goal_dim = goal_in_lowdim, goal_dim
        lowdim_dim = sum(_numel(self.shapes[k]) for k in self.lowdim_keys) + (goal_dim if goal_in_lowdim else 0)
        self.lowdim = MLP(lowdim_dim, lowdim_hidden, d_model) if self.lowdim_keys else None
        self.images = nn.ModuleDict(
            {
                k: ImageEncoder(self.shapes[k], obs_meta[k]["type"], d_model, backbone, dict(backbone_kwargs or {}),
                                n_keypoints, crop_ratio, image_output, token_grid)
                for k in self.image_keys
            }
        )
        self.goal = MLP(goal_dim, lowdim_hidden, d_model) if self.goal_keys else None
        self.text = make_text_encoder(text_encoder, d_model) if language else None
        self.step_emb = nn.Parameter(torch.zeros(1, n_obs_steps, 1, d_model))
        nn.init.normal_(self.step_emb, std=0.02)
        # Deployment: with n_obs_steps > 1 every frame is in n_obs_steps consecutive windows. `cache_frames` (set by
        # the inference engine on its eager path) keeps each camera's features per frame, keyed by the frame's bytes,
        # so a frame is encoded once. Eval mode, batch 1 only: in eval the encoding of a frame depends on nothing else.
        self.cache_frames = False
        self._frame_features: dict[str, dict[bytes, torch.Tensor]] = {}

    @property
    def tokens_per_step(self) -> int:
        return (1 if self.lowdim_keys else 0) + sum(net.n_tokens for net in self.images.values())

    @property
    def n_tokens(self) -> int:
        """Conditioning tokens after flattening: n_obs_steps * tokens_per_step, one goal token, one instruction token."""
        return self.n_obs_steps * self.tokens_per_step + (1 if self.goal_keys else 0) + (1 if self.text is not None else 0)

    @property
    def obs_keys(self) -> list[str]:
        return self.lowdim_keys + self.image_keys

    def forward(self, obs: dict[str, torch.Tensor], goal: dict[str, torch.Tensor] | None = None,
                drop_goal: torch.Tensor | None = None) -> torch.Tensor:
        """obs {key: [B, T, *shape]} (low-dim already normalized) -> tokens [B, T, tokens_per_step, D].

        goal (normalized, {key: [B, *shape]}) and drop_goal (bool [B]) are read only with `goal_in_lowdim`, which
        appends the flat goal to every step's low-dim vector: zeros (the normalized data mean) where it is missing or
        dropped. The goal token's learned null token is what tells a missing goal apart.
        """
        missing = [k for k in self.obs_keys if k not in obs]
        if missing:
            raise KeyError(f"observation is missing keys {missing}; the encoder needs {self.obs_keys}")
        any_key = self.obs_keys[0]
        b, t = obs[any_key].shape[:2]
        if t != self.n_obs_steps:
            raise ValueError(f"observation window has {t} steps, the policy was built for n_obs_steps={self.n_obs_steps}")
        tokens = []
        if self.lowdim is not None:
            parts = [obs[k].reshape(b, t, -1).float() for k in self.lowdim_keys]
            if self.goal_in_lowdim:
                flat_goal = parts[0].new_zeros(b, self.goal_dim) if goal is None else self._flat_goal(goal)
                if goal is not None and drop_goal is not None:
                    flat_goal = flat_goal.masked_fill(drop_goal[:, None], 0.0)
                parts.append(flat_goal[:, None].expand(-1, t, -1))
            flat = torch.cat(parts, dim=-1)
            tokens.append(self.lowdim(flat)[:, :, None])
        for key, net in self.images.items():
            images = obs[key]
            if self.cache_frames and not self.training and b == 1:
                tokens.append(self._cached_features(key, net, images[0])[None])
            else:
                tokens.append(net(images.reshape(b * t, *images.shape[2:])).reshape(b, t, net.n_tokens, -1))
        return torch.cat(tokens, dim=2) + self.step_emb

    def _cached_features(self, key: str, net: nn.Module, frames: torch.Tensor) -> torch.Tensor:
        """frames [T, *shape] of one window -> features [T, n_tokens, D], encoding only frames not seen in the last
        window (the cache keeps this window's frames)."""
        import hashlib

        cache = self._frame_features.get(key, {})
        keys = [hashlib.blake2b(f.detach().cpu().numpy().tobytes(), digest_size=16).digest() for f in frames]
        new = [i for i, k in enumerate(keys) if k not in cache]
        if new:
            encoded = net(frames[new])
            cache = {**cache, **{keys[i]: encoded[j] for j, i in enumerate(new)}}
        self._frame_features[key] = {k: cache[k] for k in keys}
        return torch.stack([cache[k] for k in keys])

    def _flat_goal(self, goal: dict[str, torch.Tensor]) -> torch.Tensor:
        """goal {key: [B, *shape]} -> [B, goal_dim], keys in sorted order."""
        b = goal[self.goal_keys[0]].shape[0]
        return torch.cat([goal[k].reshape(b, -1).float() for k in self.goal_keys], dim=-1)

    def encode_goal(self, goal: dict[str, torch.Tensor]) -> torch.Tensor:
        """goal {key: [B, *shape]} (normalized) -> [B, 1, D]."""
        return self.goal(self._flat_goal(goal))[:, None]

    def encode_language(self, instructions: list[str] | tuple[str, ...]) -> torch.Tensor:
        """B instruction strings -> [B, 1, D]."""
        if isinstance(instructions, str) or not all(isinstance(t, str) for t in instructions):
            raise TypeError(f"language must be a list of B instruction strings, got {type(instructions).__name__}")
        return self.text(list(instructions))


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n
