"""Teleoperators for `vmp-record`: what a person (or a stand-in for one) commands the robot to do, tick by tick.

    teleop.connect(robot)            once, after the robot connected (its spec says the action size)
    teleop.start_episode() / teleop.end_episode()   around each episode
    teleop.action(obs) -> [A]        every tick: the command for this observation
    teleop.end_requested() -> bool   the person asked to end the episode (a teleoperator reading the terminal)
    teleop.disconnect()

Kinds: ``lerobot`` (a LeRobot teleoperator: leader arm, keyboard, gamepad; `pip install 'vmp[lerobot]'`),
``keyboard`` (keys of the terminal nudge action dimensions: simulation, delta/velocity actions) and ``scripted``
(a function of the observation: the stand-in that lets the whole record -> train -> deploy path run unattended).
"""

from __future__ import annotations

import logging
import select
import sys
import time
from typing import Any, Callable, TextIO

import numpy as np

from vmp.real.robot import import_function

log = logging.getLogger(__name__)

TELEOP_KINDS = ("scripted", "keyboard", "lerobot")


class Teleop:
    """Defaults of the interface above: no terminal, no end request, nothing to do around episodes or at the end."""

    reads_terminal = False

    def end_requested(self) -> bool:
        return False

    def start_episode(self) -> None:
        pass

    def end_episode(self) -> None:
        pass

    def disconnect(self) -> None:
        pass


class ScriptedTeleop(Teleop):
    """``fn(observation dict) -> action``, e.g. a proportional controller towards a known target."""

    def __init__(self, fn: Callable[[dict[str, np.ndarray]], np.ndarray]):
        self.fn = fn
        self.action_dim = 0

    def connect(self, robot: Any) -> None:
        self.action_dim = robot.spec.action_dim

    def action(self, obs: Any) -> np.ndarray:
        action = np.asarray(self.fn(obs.data), np.float32).reshape(-1)
        if action.shape[0] != self.action_dim:
            raise ValueError(f"teleop.target returned {action.shape[0]} action dims, the robot takes {self.action_dim}")
        return action


class KeyboardTeleop(Teleop):
    """Terminal keys nudge action dimensions: ``bindings`` {key: [dim, sign]}; a key press commands ``sign * scale``
    on its dimension for ``hold_s`` (terminals repeat a held key, so holding it keeps it moving). Enter ends the
    episode. The other dimensions command ``rest`` (zero: no motion, for delta or velocity actions)."""

    reads_terminal = True

    def __init__(self, bindings: dict[str, list], scale: float = 1.0, hold_s: float = 0.15, rest: Any = 0.0,
                 stream: TextIO | None = None, clock: Callable[[], float] = time.monotonic):
        self.bindings = {str(k): (int(v[0]), float(v[1])) for k, v in bindings.items()}
        self.scale, self.hold_s, self.rest = float(scale), float(hold_s), rest
        self.stream, self.clock = stream, clock
        self.pressed: dict[int, tuple[float, float]] = {}  # dim -> (value, until)
        self._end = False
        self._saved_tty: Any = None
        self.action_dim = 0

    def connect(self, robot: Any) -> None:
        self.action_dim = robot.spec.action_dim
        bad = sorted({dim for dim, _ in self.bindings.values() if not -self.action_dim <= dim < self.action_dim})
        if bad:
            raise ValueError(f"teleop.bindings name action dims {bad}; the robot has {self.action_dim}")
        if self.stream is None:
            self.stream = sys.stdin
        print("keyboard teleop: " + ", ".join(f"{k}: dim {d} {'+' if s > 0 else '-'}" for k, (d, s) in
                                              self.bindings.items()) + "; Enter ends the episode", file=sys.stderr)

    def feed(self, keys: str) -> None:
        """Apply key presses (what `action` reads from the terminal; tests call it directly)."""
        now = self.clock()
        for key in keys:
            if key in ("\n", "\r"):
                self._end = True
            elif key in self.bindings:
                dim, sign = self.bindings[key]
                self.pressed[dim % self.action_dim] = (sign * self.scale, now + self.hold_s)

    def _poll(self) -> None:
        if self.stream is None or not hasattr(self.stream, "fileno"):
            return
        while select.select([self.stream], [], [], 0)[0]:
            key = self.stream.read(1)
            if not key:
                return
            self.feed(key)

    def action(self, obs: Any) -> np.ndarray:
        self._poll()
        now = self.clock()
        action = np.broadcast_to(np.asarray(self.rest, np.float32), (self.action_dim,)).copy()
        for dim, (value, until) in list(self.pressed.items()):
            if now < until:
                action[dim] = value
            else:
                del self.pressed[dim]
        return action

    def end_requested(self) -> bool:
        end, self._end = self._end, False
        return end

    def start_episode(self) -> None:
        """On a terminal, keys arrive one by one during the episode (no Enter, no echo); the operator's answers
        between episodes are typed as usual."""
        self.pressed.clear()
        self._end = False
        if self.stream is sys.stdin and sys.stdin.isatty() and self._saved_tty is None:
            import termios
            import tty

            self._saved_tty = termios.tcgetattr(sys.stdin)
            tty.setcbreak(sys.stdin.fileno())

    def end_episode(self) -> None:
        if self._saved_tty is not None:
            import termios

            termios.tcsetattr(sys.stdin, termios.TCSADRAIN, self._saved_tty)
            self._saved_tty = None

    def disconnect(self) -> None:
        self.end_episode()


class LeRobotTeleop(Teleop):
    """A LeRobot teleoperator (``get_action() -> {feature: value}``): its features are matched by name to the
    robot's action features (a LeRobot robot's ``action_names``), else taken in the teleoperator's own order."""

    def __init__(self, driver: Any):
        self.driver = driver
        self.names: list[str] = []

    @classmethod
    def from_config(cls, tcfg: Any) -> "LeRobotTeleop":
        try:
            from lerobot.teleoperators import TeleoperatorConfig, make_teleoperator_from_config
        except ImportError as exc:
            raise ImportError("teleop.kind=lerobot needs LeRobot: pip install 'vmp[lerobot]'") from exc
        from omegaconf import OmegaConf

        import lerobot.teleoperators

        from vmp.real.lerobot_robot import registered_config_class

        config_cls = registered_config_class(lerobot.teleoperators, TeleoperatorConfig, str(tcfg.lerobot.type),
                                             "teleoperator")
        kwargs = OmegaConf.to_container(tcfg.lerobot.kwargs, resolve=True) or {}
        return cls(make_teleoperator_from_config(config_cls(**kwargs)))

    def connect(self, robot: Any) -> None:
        if not getattr(self.driver, "is_connected", False):
            self.driver.connect()
        own = list(self.driver.action_features)
        wanted = list(getattr(robot, "action_names", None) or getattr(getattr(robot, "robot", None), "action_names", None) or own)
        missing = sorted(set(wanted) - set(own))
        if missing:
            raise KeyError(f"the teleoperator gives {own}; the robot's action features {missing} are not among them")
        if len(wanted) != robot.spec.action_dim:
            raise ValueError(f"the teleoperator gives {len(wanted)} action features, the robot takes {robot.spec.action_dim}")
        self.names = wanted

    def action(self, obs: Any) -> np.ndarray:
        values = self.driver.get_action()
        return np.asarray([values[n] for n in self.names], np.float32)

    def disconnect(self) -> None:
        if getattr(self.driver, "is_connected", False):
            self.driver.disconnect()


def build_teleop(tcfg: Any) -> Teleop:
    from omegaconf import OmegaConf

    kind = str(tcfg.kind)
    if kind == "scripted":
        return ScriptedTeleop(import_function(tcfg.target, "teleop.target"))
    if kind == "keyboard":
        bindings = OmegaConf.to_container(tcfg.bindings, resolve=True)
        return KeyboardTeleop(bindings, float(tcfg.scale), float(tcfg.hold_s), tcfg.rest)
    if kind == "lerobot":
        return LeRobotTeleop.from_config(tcfg)
    raise ValueError(f"teleop.kind must be one of {TELEOP_KINDS}, got {kind!r}")
