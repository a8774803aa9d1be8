"""gymnasium spaces from a task config's ``shape_meta``."""

from __future__ import annotations

import gymnasium as gym
import numpy as np


def obs_space_from_shape_meta(shape_meta: dict) -> gym.spaces.Dict:
    """``shape_meta.obs`` {key: {shape, type}} -> Dict space (rgb: uint8 [H, W, 3]; depth: float32; low_dim: float32)."""
    if "obs" not in shape_meta or "action" not in shape_meta:
        raise KeyError(f"shape_meta needs 'obs' and 'action' entries, got keys {list(shape_meta)}")
    spaces = {}
    for key, meta in shape_meta["obs"].items():
        if "shape" not in meta:
            raise KeyError(f"shape_meta.obs.{key} has no 'shape'")
        shape = tuple(int(s) for s in meta["shape"])
        kind = meta.get("type", "low_dim")
        if kind == "rgb":
            if len(shape) != 3 or shape[-1] != 3:
                raise ValueError(f"shape_meta.obs.{key}: rgb shape must be [H, W, 3], got {list(shape)}")
            spaces[key] = gym.spaces.Box(0, 255, shape=shape, dtype=np.uint8)
        elif kind == "depth":
            spaces[key] = gym.spaces.Box(0.0, np.inf, shape=shape, dtype=np.float32)
        elif kind == "low_dim":
            spaces[key] = gym.spaces.Box(-np.inf, np.inf, shape=shape, dtype=np.float32)
        else:
            raise ValueError(f"shape_meta.obs.{key}.type must be rgb | depth | low_dim, got {kind!r}")
    return gym.spaces.Dict(spaces)
