"""The `Robot` protocol the daemon drives, and the spec a robot announces when it connects.

Every robot (SimRobot over a socket, a LeRobot arm) looks the same to the control loop:
``connect() -> RobotSpec``, ``reset(seed) -> Observation``, ``observe() -> Observation``,
``act(action[action_dim]) -> sent action``, ``stop()``, ``disconnect()``. Robots are context managers,
so leaving a ``with`` block always stops and disconnects. A robot whose driver expects a stream of set-points (UR's
RTDE servoj, Franka's) also offers ``servo(setpoint[action_dim])``, non-blocking; ``vmp-deploy servo_hz=...`` then
streams interpolated set-points through it between control ticks instead of calling ``act``, from a thread of its own
as well as the loop's (one call at a time, possibly while the loop thread is in ``observe``).
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any, Protocol, runtime_checkable

import numpy as np


class RobotError(RuntimeError):
    """The robot refused a command or reported a fault."""


class RobotConnectionError(ConnectionError):
    """The link to the robot is gone (process died, socket closed, timed out)."""


@dataclasses.dataclass
class RobotSpec:
    """What a robot offers: observation keys/shapes/dtypes [per step], action_dim, control rate, action bounds."""

    obs: dict[str, tuple[tuple[int, ...], str]]  # key -> (shape, dtype)
    action_dim: int
    control_hz: float
    action_low: np.ndarray  # [action_dim]
    action_high: np.ndarray  # [action_dim]
    name: str = "robot"
    info: dict[str, Any] = dataclasses.field(default_factory=dict)

    def to_fields(self) -> dict[str, Any]:
        return {
            "obs": {k: [list(s), d] for k, (s, d) in self.obs.items()},
            "action_dim": self.action_dim,
            "control_hz": self.control_hz,
            "action_low": [float(x) for x in self.action_low],
            "action_high": [float(x) for x in self.action_high],
            "name": self.name,
            "info": self.info,
        }

    @classmethod
    def from_fields(cls, f: dict[str, Any]) -> "RobotSpec":
        try:
            return cls(
                obs={k: (tuple(int(x) for x in s), str(d)) for k, (s, d) in f["obs"].items()},
                action_dim=int(f["action_dim"]),
                control_hz=float(f["control_hz"]),
                action_low=np.asarray(f["action_low"], dtype=np.float32),
                action_high=np.asarray(f["action_high"], dtype=np.float32),
                name=str(f.get("name", "robot")),
                info=dict(f.get("info", {})),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise RobotError(f"malformed robot spec {f!r}: {exc}") from exc


@dataclasses.dataclass
class Observation:
    """One observation: arrays {key: [*shape]}, the robot-side capture time (time.monotonic seconds of the
    robot process; compare only with the same robot), and status flags.

    ``dropped`` is True when the camera frame was not refreshed (the arrays are the last good ones).
    ``success``/``done`` come from simulated tasks; real robots leave them False.
    """

    data: dict[str, np.ndarray]
    timestamp: float
    step: int = 0
    dropped: bool = False
    success: bool = False
    done: bool = False
    goal: dict[str, np.ndarray] | None = None  # goal-conditioned tasks, on reset only


@runtime_checkable
class Robot(Protocol):
    spec: RobotSpec | None

    def connect(self) -> RobotSpec: ...

    def reset(self, seed: int | None = None) -> Observation: ...

    def observe(self) -> Observation: ...

    def act(self, action: np.ndarray) -> np.ndarray: ...

    def stop(self) -> None: ...

    def disconnect(self) -> None: ...


def import_function(target: str, what: str) -> Any:
    """``"module:attr"`` -> the attribute, or a ValueError naming ``what``."""
    module, _, name = str(target or "").partition(":")
    if not module or not name:
        raise ValueError(f"{what} must be 'module:name', got {target!r}")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"{what} {target!r} cannot be imported: {exc}") from exc
