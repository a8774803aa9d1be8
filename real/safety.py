"""The last gate before the robot: clamp, rate-limit, hold on a missing action, stop on a watchdog timeout.

Whatever the policy or the scheduler produce, the command sent satisfies ``low <= a <= high`` and
``|a_k - a_{k-1}| <= max_delta`` (per tick, per dimension). A missing or non-finite action holds: ``last`` repeats
the previous command (position control); ``zero`` sends zeros except ``keep_dims`` (delta/velocity control, where
repeating would keep moving; e.g. keep the gripper). No fresh action for ``watchdog_s`` latches a stop.
Streamed set-points (`setpoint`, between ticks) pass the same bounds, with the rate limit shared out among them.
"""

from __future__ import annotations

import collections
import logging
from typing import Sequence

import numpy as np

log = logging.getLogger(__name__)


class SafetyLayer:
    """low/high/max_delta: [action_dim] or scalars (max_delta None = no rate limit)."""

    def __init__(self, low: Sequence[float] | np.ndarray, high: Sequence[float] | np.ndarray,
                 max_delta: float | Sequence[float] | None = None, watchdog_s: float = 0.5, hold: str = "last",
                 keep_dims: Sequence[int] = ()):
        self.low = np.asarray(low, np.float32).reshape(-1)
        self.high = np.asarray(high, np.float32).reshape(-1)
        if self.low.shape != self.high.shape or not (self.low <= self.high).all():
            raise ValueError(f"safety limits need low <= high of one shape, got low={self.low} high={self.high}")
        self.action_dim = self.low.shape[0]
        self.max_delta = None if max_delta is None else np.broadcast_to(np.asarray(max_delta, np.float32), self.low.shape).copy()
        if self.max_delta is not None and (self.max_delta <= 0).any():
            raise ValueError(f"safety max_delta must be > 0, got {self.max_delta}")
        if hold not in ("last", "zero"):
            raise ValueError(f"safety hold must be 'last' or 'zero', got {hold!r}")
        bad = [d for d in keep_dims if not 0 <= d < self.action_dim]
        if bad:
            raise ValueError(f"safety keep_dims {bad} out of range for action_dim {self.action_dim}")
        self.watchdog_s, self.hold_mode, self.keep_dims = watchdog_s, hold, list(keep_dims)
        self.counters: collections.Counter = collections.Counter()
        self.reset(0.0)

    def reset(self, now: float, initial: np.ndarray | None = None) -> None:
        """New episode at time ``now``; ``initial`` is the command the robot holds now (default: zeros, clamped)."""
        init = np.zeros(self.action_dim, np.float32) if initial is None else np.asarray(initial, np.float32)
        self.last = np.clip(init, self.low, self.high)
        self.last_setpoint = self.last.copy()
        self.last_fresh = now
        self.stopped = False
        self.counters.clear()

    def _hold(self) -> np.ndarray:
        if self.hold_mode == "last":
            return self.last.copy()
        cmd = np.zeros(self.action_dim, np.float32)
        cmd[self.keep_dims] = self.last[self.keep_dims]
        return cmd

    def filter(self, action: np.ndarray | None, now: float) -> tuple[np.ndarray | None, str]:
        """action [action_dim] or None -> (command, status); status is ok | clamped | hold | stop.

        A ``stop`` returns None: the caller must stop the robot and send nothing more this episode.
        """
        if self.stopped:
            return None, "stop"
        status = "ok"
        if action is not None:
            action = np.asarray(action, np.float32).reshape(-1)
            if action.shape[0] != self.action_dim:
                raise ValueError(f"action has {action.shape[0]} dims, the safety limits {self.action_dim}")
            if not np.isfinite(action).all():
                self.counters["nonfinite"] += 1
                action = None
        if action is None:
            if now - self.last_fresh > self.watchdog_s:
                self.stopped = True
                self.counters["watchdog_stop"] += 1
                log.error("watchdog: no fresh action for %.0f ms (limit %.0f ms): stopping", (now - self.last_fresh) * 1e3, self.watchdog_s * 1e3)
                return None, "stop"
            self.counters["hold"] += 1
            cmd, status = self._hold(), "hold"
        else:
            self.last_fresh = now
            cmd = action
        clipped = np.clip(cmd, self.low, self.high)
        if self.max_delta is not None:
            clipped = np.clip(clipped, self.last - self.max_delta, self.last + self.max_delta)
            clipped = np.clip(clipped, self.low, self.high)
        if status == "ok" and not np.array_equal(clipped, cmd):
            status = "clamped"
            self.counters["clamped"] += 1
        self.last = clipped.astype(np.float32)
        return self.last.copy(), status

    def setpoint(self, target: np.ndarray, per_tick: int) -> np.ndarray:
        """One set-point of a stream of ``per_tick`` per control tick -> what may be sent: within low/high, at most
        max_delta / per_tick from the previous set-point, and the previous one again if ``target`` is not finite."""
        target = np.asarray(target, np.float32).reshape(-1)
        if not np.isfinite(target).all():
            self.counters["nonfinite_setpoint"] += 1
            return self.last_setpoint.copy()
        sp = np.clip(target, self.low, self.high)
        if self.max_delta is not None:
            step = self.max_delta / per_tick
            sp = np.clip(np.clip(sp, self.last_setpoint - step, self.last_setpoint + step), self.low, self.high)
        self.last_setpoint = sp.astype(np.float32)
        return self.last_setpoint.copy()
