"""The action plan: which action each control tick sends, how late chunks are trimmed, how seams are blended.

Timing model: tick k happens at t0 + k*dt. A chunk predicted from the observation taken at tick
``k_obs`` is the executable part of the policy's output (indices n_obs_steps-1 ...), so its action j is for tick
``k_obs + offset + j``. When it arrives, entries for ticks already sent, or due within ``epsilon_s``, are dropped.
The measured delay delta = t_ready - t_obs gives d = ceil(delta/dt); planning uses d_hat = ceil(max(last W deltas)/dt).

Blend modes are pluggable (`BLENDERS`): ``none`` overwrites, ``ensemble`` is ACT's temporal ensemble with running
(num, den) per tick, ``prefix`` is real-time chunking: the request carries the still-planned actions Y and weights W
and the policy inpaints them, so the arrival simply overwrites.

Everything here is pure bookkeeping on tick indices and times passed in by the caller: no clock, no threads,
so the replay harness can drive it with a simulated clock.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import math
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


PREFIX_SCHEDULES = ("exp", "linear", "hard")


def prefix_weights(n_planned: int, d_hat: int, schedule: str = "exp", length: int | None = None) -> np.ndarray:
    """RTC guidance weights W [length] over execution indices i (i=0 is the inference-start tick).

    W_i = 1 for i < d_hat (executed before the chunk can arrive); for d_hat <= i < L (L = n_planned, the old
    actions still in the plan) W_i decays: c = (L-i)/(L-d_hat+1), ``exp``: c(e^c-1)/(e-1), ``linear``: c,
    ``hard``: 0 (the new chunk only has to agree with what runs before it lands); W_i = 0 for i >= L.
    """
    length = n_planned if length is None else length
    if schedule not in PREFIX_SCHEDULES:
        raise ValueError(f"prefix schedule must be one of {PREFIX_SCHEDULES}, got {schedule!r}")
    w = np.zeros(length, dtype=np.float64)
    L = min(n_planned, length)
    for i in range(L):
        if i < d_hat:
            w[i] = 1.0
        else:
            c = (L - i) / (L - d_hat + 1)
            w[i] = {"exp": c * math.expm1(c) / math.expm1(1.0), "linear": c, "hard": 0.0}[schedule]
    return w.astype(np.float32)


class DelayTracker:
    """Recent inference delays (seconds) -> d_hat, the planning delay in ticks."""

    def __init__(self, dt: float, window: int = 10, initial_ticks: int = 1):
        self.dt, self.initial_ticks = dt, initial_ticks
        self.delays: collections.deque[float] = collections.deque(maxlen=window)

    def add(self, delay_s: float) -> None:
        self.delays.append(max(0.0, float(delay_s)))

    def ticks(self, delay_s: float) -> int:
        return int(math.ceil(delay_s / self.dt - 1e-9))

    @property
    def d_hat(self) -> int:
        return self.ticks(max(self.delays)) if self.delays else self.initial_ticks


@dataclasses.dataclass
class Chunk:
    """An executable action chunk: actions [n, action_dim] for ticks start_tick ... start_tick+n-1."""

    actions: np.ndarray
    start_tick: int
    obs_time: float
    ready_time: float
    chunk_id: int = 0
    d_hat: int = 0  # the delay the request planned for (prefix mode)


@dataclasses.dataclass
class Request:
    """What to send the policy when starting inference at tick k_obs (prefix mode fills prefix/weights).

    prefix [horizon, action_dim] and weights [horizon] are in chunk coordinates (index 0 = tick k_obs - n_obs_steps + 1,
    the same indexing as the policy's output [horizon, action_dim]); entries past the planned actions have weight 0.
    """

    k_obs: int
    obs_time: float
    d_hat: int
    prefix: np.ndarray | None = None
    prefix_weights: np.ndarray | None = None
    episode: int = 0  # set by the live loop so a chunk finishing after its episode ended is ignored


class NoneBlend:
    """Fresh actions overwrite the plan."""

    name = "none"

    def add(self, plan: "ActionScheduler", tick: int, action: np.ndarray, chunk_id: int) -> None:
        plan._value[tick] = action.astype(np.float32)
        plan._source[tick] = chunk_id


class PrefixBlend(NoneBlend):
    """RTC: the policy already blended the prefix, so arrival overwrites; the work is in `make_request`."""

    name = "prefix"


class EnsembleBlend:
    """ACT temporal ensemble: a_k = sum_r w_r a_k^(r) / sum_r w_r, w_r = exp(-m r), r = 0 the oldest chunk."""

    name = "ensemble"

    def __init__(self, m: float = 0.01):
        self.m = m
        self._num: dict[int, np.ndarray] = {}
        self._den: dict[int, float] = {}
        self._count: dict[int, int] = {}

    def add(self, plan: "ActionScheduler", tick: int, action: np.ndarray, chunk_id: int) -> None:
        r = self._count.get(tick, 0)
        w = math.exp(-self.m * r)
        self._num[tick] = self._num.get(tick, 0.0) + w * action.astype(np.float64)
        self._den[tick] = self._den.get(tick, 0.0) + w
        self._count[tick] = r + 1
        plan._value[tick] = (self._num[tick] / self._den[tick]).astype(np.float32)
        plan._source[tick] = chunk_id

    def forget(self, tick: int) -> None:
        self._num.pop(tick, None)
        self._den.pop(tick, None)
        self._count.pop(tick, None)


BLENDERS = {"none": NoneBlend, "ensemble": EnsembleBlend, "prefix": PrefixBlend}


class ActionScheduler:
    """Plan tick -> action for one episode.

    dt: control period [s]; exec_horizon (s): ticks between inference starts; n_obs_steps/horizon: the policy's
    window, used to place the prefix in chunk coordinates; epsilon_s: entries due within this margin are stale.
    """

    def __init__(self, dt: float, horizon: int, n_obs_steps: int, exec_horizon: int, blend: str = "prefix",
                 ensemble_m: float = 0.01, prefix_schedule: str = "exp", epsilon_s: float = 0.010,
                 delay_window: int = 10, offset: int = 0, initial_delay_ticks: int = 1):
        if blend not in BLENDERS:
            raise ValueError(f"blend must be one of {sorted(BLENDERS)}, got {blend!r}")
        self.n_exec = horizon - n_obs_steps + 1  # executable actions per chunk
        if not 1 <= exec_horizon <= self.n_exec:
            raise ValueError(f"exec_horizon must be in [1, {self.n_exec}] (horizon - n_obs_steps + 1), got {exec_horizon}")
        self.dt, self.horizon, self.n_obs_steps, self.exec_horizon = dt, horizon, n_obs_steps, exec_horizon
        self.epsilon_s, self.offset, self.prefix_schedule = epsilon_s, offset, prefix_schedule
        self.blend_name = blend
        self.blender = EnsembleBlend(ensemble_m) if blend == "ensemble" else BLENDERS[blend]()
        self.delays = DelayTracker(dt, delay_window, initial_delay_ticks)
        self.counters: collections.Counter = collections.Counter()
        self.reset(0.0)

    def reset(self, t0: float) -> None:
        """New episode: tick 0 is at time t0. Delay statistics are kept (same machine, same policy)."""
        self.t0 = t0
        self.counters.clear()
        self._value: dict[int, np.ndarray] = {}
        self._source: dict[int, int] = {}
        self._sent: dict[int, np.ndarray] = {}
        if isinstance(self.blender, EnsembleBlend):
            self.blender = EnsembleBlend(self.blender.m)
        self.next_tick = 0
        self.last_request_tick: int | None = None
        self._n_chunks = 0

    def tick_time(self, k: int) -> float:
        return self.t0 + k * self.dt

    # ---- requests ----
    def planned_ahead(self, k: int) -> int:
        """How many consecutive ticks from k have an action."""
        n = 0
        while k + n in self._value:
            n += 1
        return n

    def should_request(self, k: int) -> bool:
        """Start inference at tick k (the caller knows the worker is idle)?"""
        if self.last_request_tick is None:
            return True
        return k - self.last_request_tick >= self.exec_horizon or self.planned_ahead(k) <= self.delays.d_hat

    def make_request(self, k: int) -> Request:
        d_hat = self.delays.d_hat
        if d_hat > self.n_exec / 2:
            self.counters["infeasible_delay"] += 1
            if self.counters["infeasible_delay"] == 1:
                log.warning("infeasible_delay: planned delay %d ticks exceeds half the chunk (%d executable actions)", d_hat, self.n_exec)
        self.last_request_tick = k
        req = Request(k, self.tick_time(k), d_hat)
        if self.blend_name == "prefix":
            n_planned = self.planned_ahead(k)
            if n_planned > 0:
                past = self.n_obs_steps - 1
                hist = [self._sent.get(k - past + j) for j in range(past)]
                if all(h is not None for h in hist):
                    # padded to the full horizon with zero weights: one fixed shape (no recompiles under torch.compile)
                    n_planned = min(n_planned, self.horizon - past)
                    w_exec = prefix_weights(n_planned, d_hat, self.prefix_schedule, length=self.horizon - past)
                    planned = [self._value[k + i] for i in range(n_planned)]
                    prefix = np.zeros((self.horizon, planned[0].shape[-1]), np.float32)
                    prefix[: past + n_planned] = np.stack(hist + planned)
                    req.prefix = prefix
                    req.prefix_weights = np.concatenate([np.ones(past, np.float32), w_exec])
        return req

    # ---- arrivals ----
    def add_chunk(self, chunk: Chunk, now: float) -> int:
        """Merge an arrived chunk at time ``now``; returns how many of its actions were stale and dropped."""
        self._n_chunks += 1
        delay = chunk.ready_time - chunk.obs_time
        self.delays.add(delay)
        d = self.delays.ticks(delay)
        if self.blend_name == "prefix" and d > chunk.d_hat:
            self.counters["late_chunk"] += 1
        stale = 0
        for j, action in enumerate(chunk.actions):
            k = chunk.start_tick + self.offset + j
            if k < self.next_tick or self.tick_time(k) <= now + self.epsilon_s:
                stale += 1
                continue
            self.blender.add(self, k, np.asarray(action), chunk.chunk_id)
        self.counters["stale_actions"] += stale
        self.counters["chunks"] += 1
        return stale

    # ---- execution ----
    def pop(self, k: int) -> tuple[np.ndarray | None, int | None]:
        """The action for tick k (None: underrun) and its source chunk id; marks k as sent."""
        if k < self.next_tick:
            raise ValueError(f"tick {k} was already sent (next tick is {self.next_tick})")
        for old in [t for t in self._value if t < k]:
            self._forget(old)
        action, source = self._value.pop(k, None), self._source.pop(k, None)
        if isinstance(self.blender, EnsembleBlend):
            self.blender.forget(k)
        if action is None:
            self.counters["underrun"] += 1
        self.next_tick = k + 1
        return action, source

    def mark_sent(self, k: int, command: np.ndarray) -> None:
        """Remember what tick k really sent (after safety), for the RTC prefix's past context."""
        self._sent[k] = np.asarray(command, np.float32)
        for old in [t for t in self._sent if t < k - self.n_obs_steps]:
            del self._sent[old]

    def _forget(self, k: int) -> None:
        self._value.pop(k, None)
        self._source.pop(k, None)
        if isinstance(self.blender, EnsembleBlend):
            self.blender.forget(k)

    def planned(self) -> dict[int, np.ndarray]:
        return dict(self._value)

    def stats(self) -> dict[str, Any]:
        return {**self.counters, "d_hat": self.delays.d_hat}
