"""Adapter from a LeRobot robot driver (lerobot>=0.4, optional extra ``vmp[lerobot]``) to the `Robot` protocol.

LeRobot robots speak flat dicts: ``get_observation() -> {"shoulder_pan.pos": float, ..., "wrist": HxWx3 uint8}``
and ``send_action({"shoulder_pan.pos": float, ...}) -> what was really sent``. We pack the scalar features into
vectors (``obs_groups``: {our key: [feature names]}, default all scalars in one ``state``, as LeRobot's own
recorder stores ``observation.state`` and `vmp-data import-lerobot` imports it), cameras into ``<name>_image``, and
actions into one vector in ``action_features`` order.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np

from vmp.data.schema import STATE_KEY
from vmp.real.robot import Observation, RobotConnectionError, RobotError, RobotSpec

log = logging.getLogger(__name__)


def registered_config_class(package: Any, base: Any, kind: str, what: str):
    """LeRobot's config class of ``kind`` under ``base`` (RobotConfig, TeleoperatorConfig). LeRobot registers a kind
    only when the module defining it has been imported, and module names do not always match kinds (so101_follower
    lives in `lerobot.robots.so_follower` in 0.4), so import ``package``'s modules until the kind is known."""
    import importlib
    import pkgutil

    for module in [kind] + [m.name for m in pkgutil.iter_modules(package.__path__)]:
        if kind in base.get_known_choices():
            break
        try:
            importlib.import_module(f"{package.__name__}.{module}")
        except ImportError:
            continue  # an optional SDK is missing, or no module of that name
    try:
        return base.get_choice_class(kind)
    except KeyError as exc:
        raise KeyError(f"LeRobot knows no {what} type {kind!r}; known: {sorted(base.get_known_choices())}") from exc


def robot_config_class(robot_type: str):
    """LeRobot's config class for a robot type (e.g. "so101_follower")."""
    import lerobot.robots
    from lerobot.robots import RobotConfig

    return registered_config_class(lerobot.robots, RobotConfig, robot_type, "robot")


class LeRobotRobot:
    """driver: a connected-or-not LeRobot ``Robot`` (or anything with the same methods)."""

    def __init__(self, driver: Any, control_hz: float, action_low: Any, action_high: Any,
                 obs_groups: dict[str, list[str]] | None = None, home: Any = None):
        self.driver, self.control_hz = driver, float(control_hz)
        self.action_names = list(driver.action_features)
        n = len(self.action_names)
        self.action_low = np.broadcast_to(np.asarray(action_low, np.float32), (n,)).copy()
        self.action_high = np.broadcast_to(np.asarray(action_high, np.float32), (n,)).copy()
        feats = driver.observation_features
        scalars = [k for k, v in feats.items() if not isinstance(v, tuple)]
        self.cameras = {f"{k}_image": k for k, v in feats.items() if isinstance(v, tuple)}
        self.obs_groups = {k: list(v) for k, v in (obs_groups or {STATE_KEY: scalars}).items()}
        unknown = sorted({f for names in self.obs_groups.values() for f in names} - set(scalars))
        if unknown:
            raise KeyError(f"obs_groups name LeRobot features {unknown} the robot does not have (it has {scalars})")
        self.home = None if home is None else np.asarray(home, np.float32)
        self.spec: RobotSpec | None = None
        self._step = 0

    @classmethod
    def from_config(cls, rcfg: Any) -> "LeRobotRobot":
        """robot config: lerobot.type (a registered LeRobot robot type), lerobot.kwargs, control_hz, safety bounds."""
        try:
            from lerobot.robots import make_robot_from_config
        except ImportError as exc:
            raise ImportError("robot.kind=lerobot needs LeRobot: pip install 'vmp[lerobot]' (see `make test-lerobot`)") from exc
        from omegaconf import OmegaConf

        kwargs = OmegaConf.to_container(rcfg.lerobot.kwargs, resolve=True) or {}
        config = robot_config_class(str(rcfg.lerobot.type))(**kwargs)
        groups = OmegaConf.to_container(rcfg.obs_groups, resolve=True) if rcfg.get("obs_groups") else None
        return cls(make_robot_from_config(config), rcfg.control_hz, rcfg.safety.low, rcfg.safety.high, groups,
                   rcfg.get("home"))

    def connect(self) -> RobotSpec:
        if not getattr(self.driver, "is_connected", False):
            try:
                self.driver.connect()
            except (OSError, ConnectionError) as exc:
                raise RobotConnectionError(f"LeRobot {type(self.driver).__name__}: connect failed: {exc}") from exc
        feats = self.driver.observation_features
        obs = {k: ((len(v),), "float32") for k, v in self.obs_groups.items()}
        obs.update({k: (tuple(feats[name]), "uint8") for k, name in self.cameras.items()})
        self.spec = RobotSpec(obs, len(self.action_names), self.control_hz, self.action_low, self.action_high,
                              name=f"lerobot:{type(self.driver).__name__}")
        return self.spec

    def _read(self) -> dict[str, np.ndarray]:
        try:
            raw = self.driver.get_observation()
        except (OSError, ConnectionError) as exc:
            raise RobotConnectionError(f"LeRobot read failed: {exc}") from exc
        out = {k: np.asarray([raw[n] for n in names], np.float32) for k, names in self.obs_groups.items()}
        out.update({k: np.asarray(raw[name], np.uint8) for k, name in self.cameras.items()})
        return out

    def reset(self, seed: int | None = None) -> Observation:
        """Real arms do not reset themselves: move to ``home`` if configured, then observe."""
        if self.home is not None:
            self.act(self.home)
        self._step = 0
        return self.observe()

    def observe(self) -> Observation:
        return Observation(self._read(), time.monotonic(), self._step)

    def act(self, action: np.ndarray) -> np.ndarray:
        action = np.asarray(action, np.float32).reshape(-1)
        if action.shape[0] != len(self.action_names):
            raise RobotError(f"action has {action.shape[0]} dims, the robot's action_features {len(self.action_names)}")
        try:
            sent = self.driver.send_action({n: float(a) for n, a in zip(self.action_names, action)})
        except (OSError, ConnectionError) as exc:
            raise RobotConnectionError(f"LeRobot send_action failed: {exc}") from exc
        self._step += 1
        return np.asarray([sent.get(n, a) for n, a in zip(self.action_names, action)], np.float32)

    def stop(self) -> None:
        """Position-controlled arms stop by holding where they are: command the measured position of every action
        feature (read by name, whatever the observation groups)."""
        try:
            raw = self.driver.get_observation()
        except (OSError, ConnectionError) as exc:
            raise RobotConnectionError(f"LeRobot read failed: {exc}") from exc
        if all(name in raw for name in self.action_names):
            self.act(np.asarray([raw[name] for name in self.action_names], np.float32))
        else:
            log.warning("stop: the robot does not report its action features %s: no hold command sent", self.action_names)

    def disconnect(self) -> None:
        if getattr(self.driver, "is_connected", False):
            self.driver.disconnect()

    def __enter__(self) -> "LeRobotRobot":
        self.connect()
        return self

    def __exit__(self, *exc: Any) -> None:
        try:
            self.stop()
        finally:
            self.disconnect()
