"""A tiny deterministic reaching task for tests and benchmarks of the daemon (no MuJoCo, starts instantly).

A point at ``pos`` [2] moves by ``gain * action`` [2] per step towards ``target`` [2]; success within ``tol``.
With ``image_size > 0`` it also renders a small ``camera_image`` [S, S, 3] uint8, so camera paths are exercised.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np


class ToyReachEnv(gym.Env):
    metadata = {"render_modes": [], "control_hz": 50}

    def __init__(self, image_size: int = 0, gain: float = 0.05, tol: float = 0.05, max_episode_steps: int = 100):
        self.image_size, self.gain, self.tol, self.max_episode_steps = image_size, gain, tol, max_episode_steps
        spaces = {
            "pos": gym.spaces.Box(-1.0, 1.0, (2,), np.float32),
            "target": gym.spaces.Box(-1.0, 1.0, (2,), np.float32),
        }
        if image_size:
            spaces["camera_image"] = gym.spaces.Box(0, 255, (image_size, image_size, 3), np.uint8)
        self.observation_space = gym.spaces.Dict(spaces)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
        self._pos = np.zeros(2, np.float32)
        self._target = np.zeros(2, np.float32)
        self._t = 0

    def _obs(self) -> dict[str, np.ndarray]:
        obs = {"pos": self._pos.copy(), "target": self._target.copy()}
        if self.image_size:
            img = np.zeros((self.image_size, self.image_size, 3), np.uint8)
            ij = np.clip(((self._pos + 1) / 2 * (self.image_size - 1)).round().astype(int), 0, self.image_size - 1)
            img[ij[1], ij[0]] = 255
            obs["camera_image"] = img
        return obs

    def render(self) -> np.ndarray | None:
        """The camera frame (None without a camera): what vmp-eval's videos show."""
        return self._obs().get("camera_image")

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        self._pos = self.np_random.uniform(-0.8, 0.8, 2).astype(np.float32)
        self._target = self.np_random.uniform(-0.8, 0.8, 2).astype(np.float32)
        self._t = 0
        return self._obs(), {"success": False}

    def step(self, action: np.ndarray):
        action = np.clip(np.asarray(action, np.float32), -1.0, 1.0)
        self._pos = np.clip(self._pos + self.gain * action, -1.0, 1.0).astype(np.float32)
        self._t += 1
        success = bool(np.linalg.norm(self._pos - self._target) < self.tol)
        return self._obs(), float(success), success, self._t >= self.max_episode_steps, {"success": success}


def reach_teleop(obs: dict[str, np.ndarray]) -> np.ndarray:
    """A scripted stand-in for a person teleoperating `ToyReachEnv`: full speed towards the target, slowing near it."""
    return np.clip(4.0 * (np.asarray(obs["target"]) - np.asarray(obs["pos"])), -1.0, 1.0).astype(np.float32)
