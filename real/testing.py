"""Synthetic policies for tests and benchmarks of the daemon (no training, no GPU).

`ReachPolicy` steers `ToyReachEnv`'s point to its target with a proportional controller and adds a per-chunk
offset (a different one each chunk, seeded), so consecutive chunks disagree and seams show; optional sleeps
stand in for slow inference. With ``honour_prefix`` it accepts RTC's ``prefix``/``prefix_weights`` and blends
them exactly as a guided sampler's output would (W*Y + (1-W)*own).
"""

from __future__ import annotations

import os
import signal
import sys
import time
from typing import Any

import numpy as np
import torch

from vmp.policies.base import Capabilities, Policy



REACH_OBS_SHAPES = {"pos": (2,), "target": (2,)}


class ReachPolicy(Policy):
    name = "synthetic_reach"
    capabilities = Capabilities(prefix=True)

    def __init__(self, n_obs_steps: int = 2, horizon: int = 16, n_action_steps: int | None = None, gain: float = 4.0,
                 offset_scale: float = 0.3, delay_s: float = 0.0, stall: dict[int, float] | None = None, seed: int = 0,
                 nan_at: int | None = None, obs_shapes: dict[str, tuple[int, ...]] | None = None,
                 fault: str | None = None, fault_at_step: int = 0):
        n_action_steps = min(8, horizon - n_obs_steps + 1) if n_action_steps is None else n_action_steps
        super().__init__(n_obs_steps, horizon, n_action_steps, 2, obs_shapes=obs_shapes or REACH_OBS_SHAPES)
        self.gain, self.offset_scale, self.delay_s = gain, offset_scale, delay_s
        self.stall = dict(stall or {})
        self.nan_at = nan_at
        if fault not in (None, "die", "stall", "nan"):
            raise ValueError(f"fault must be die, stall or nan, got {fault!r}")
        self.fault, self.fault_at_step = fault, fault_at_step  # at the first chunk for control step >= fault_at_step
        self.calls = 0
        self.rng = np.random.default_rng(seed)
        self._dummy = torch.nn.Parameter(torch.zeros(1))

    def compute_loss(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        return {"loss": self._dummy.sum()}

    def _chunk(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        pos, target = obs["pos"][:, -1].float(), obs["target"][:, -1].float()  # [B, 2]
        base = torch.clamp(self.gain * (target - pos), -1.0, 1.0)
        offset = torch.as_tensor(self.rng.uniform(-self.offset_scale, self.offset_scale, 2), dtype=torch.float32)
        ramp = torch.linspace(0, 1, self.horizon).view(1, -1, 1) * 0.1
        return (base.unsqueeze(1) + offset + ramp).expand(-1, self.horizon, -1).clone()

    def predict_action_chunk(self, obs: dict[str, torch.Tensor], goal: Any = None, generator: torch.Generator | None = None,
                             prefix: torch.Tensor | None = None, prefix_weights: torch.Tensor | None = None) -> torch.Tensor:
        sleep = self.delay_s + self.stall.get(self.calls, 0.0)
        self.calls += 1
        if sleep:
            time.sleep(sleep)
        out = self._chunk(obs)
        if self.nan_at is not None and self.calls - 1 == self.nan_at:
            out[:] = float("nan")
        if prefix is not None:
            L = prefix.shape[1]
            w = prefix_weights.view(1, L, 1).to(out.dtype)
            out[:, :L] = torch.where(w == 1, prefix.to(out.dtype), w * prefix.to(out.dtype) + (1 - w) * out[:, :L])
        return out


    def predict_window(self, window: dict[str, Any], *args: Any, step: int = 0, **kwargs: Any) -> Any:
        """Deployment faults by control step (warm-up calls are step 0): the process dies (SIGKILL), the call never
        returns (an hour's sleep), or the chunk is NaN."""
        if self.fault is not None and self.fault_at_step > 0 and step >= self.fault_at_step:
            fault, self.fault = self.fault, None
            if fault == "die":
                print(f"ReachPolicy: killing the inference process at control step {step}", file=sys.stderr, flush=True)
                os.kill(os.getpid(), signal.SIGKILL)
            if fault == "stall":
                time.sleep(3600)
            if fault == "nan":
                self.nan_at = self.calls
        return super().predict_window(window, *args, step=step, **kwargs)


class NoPrefixReachPolicy(ReachPolicy):
    """The same policy without the prefix keywords (heads whose sampler cannot inpaint)."""

    name = "synthetic_reach_noprefix"
    capabilities = Capabilities()

    def predict_action_chunk(self, obs: dict[str, torch.Tensor], goal: Any = None,
                             generator: torch.Generator | None = None) -> torch.Tensor:
        return super().predict_action_chunk(obs, goal, generator)



class FakeLeRobotArm:
    """Duck-typed like a LeRobot robot driver (observation_features, action_features, get_observation, send_action)
    with joints ``<name>.pos`` and cameras ``<cam>`` [H, W, 3]: the LeRobot adapter's tests, without hardware."""

    def __init__(self, joints: list[str], cameras: dict[str, list[int]] | None = None):
        self.q = {f"{j}.pos": 0.0 for j in joints}
        self.camera_shapes = {name: tuple(shape) for name, shape in (cameras or {}).items()}
        self.is_connected = False
        self.sent: list[dict[str, float]] = []

    @property
    def observation_features(self) -> dict:
        return {**{k: float for k in self.q}, **self.camera_shapes}

    @property
    def action_features(self) -> dict:
        return {k: float for k in self.q}

    def connect(self) -> None:
        self.is_connected = True

    def disconnect(self) -> None:
        self.is_connected = False

    def get_observation(self) -> dict:
        return {**self.q, **{name: np.full(shape, 100, np.uint8) for name, shape in self.camera_shapes.items()}}

    def send_action(self, action: dict) -> dict:
        self.sent.append(dict(action))
        self.q.update(action)
        return dict(action)


def fake_lerobot_robot(joints: list[str], cameras: dict[str, list[int]] | None = None, control_hz: float = 10.0):
    """robot.kind=custom target for tests: the LeRobot adapter around a `FakeLeRobotArm`, default observation groups."""
    from vmp.real.lerobot_robot import LeRobotRobot

    return LeRobotRobot(FakeLeRobotArm(joints, cameras), control_hz, -10.0, 10.0)


class StreamingRobot:
    """A robot whose driver takes a set-point stream, over any robot: ``servo`` records each set-point with its time
    and hands every ``per_tick``-th one to the inner robot's ``act`` (the simulation steps at the control rate, as a
    real arm's controller would track the stream)."""

    def __init__(self, inner: Any, per_tick: int):
        self.inner, self.per_tick = inner, per_tick
        self.setpoints: list[tuple[float, np.ndarray]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def servo(self, setpoint: np.ndarray) -> None:
        self.setpoints.append((time.monotonic(), np.asarray(setpoint, np.float32).copy()))
        if len(self.setpoints) % self.per_tick == 0:
            self.inner.act(setpoint)

    def act(self, action: np.ndarray) -> Any:
        raise AssertionError("a streaming robot is driven through servo()")
