"""Replay harness on a simulated clock (the seam, invariant and latency tests): recorded observations drive an engine; inference
"returns" after an injected delay; the same `ActionScheduler` as the live loop builds the plan. No wall clock,
no threads: every mode sees the same observations, delays and seeds, so seam metrics compare modes fairly.
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Any, Callable, Sequence

import numpy as np

from vmp.real.scheduler import ActionScheduler, Chunk


@dataclasses.dataclass
class ReplayResult:
    commands: np.ndarray  # [T, action_dim] what each tick sent (holds repeat the previous command)
    sources: np.ndarray  # [T] int chunk id per tick (-1 on a hold)
    holds: int
    counters: dict[str, Any]
    requests: list = dataclasses.field(default_factory=list)  # (Request, arrival tick) per inference
    chunks: list = dataclasses.field(default_factory=list)  # Chunk objects as produced


def replay(engine: Any, observations: Sequence[dict[str, np.ndarray]], control_hz: float, blend: str,
           exec_horizon: int, delay_s: float | Callable[[int], float] = 0.0, ensemble_m: float = 0.01,
           prefix_schedule: str = "exp", epsilon_s: float = 0.010) -> ReplayResult:
    """observations: one dict per tick (the recorded episode). delay_s: a constant or f(request index) -> seconds.

    Tick k happens at k*dt; a request made at tick k is ready at k*dt + delay and merged at that instant.
    """
    dt = 1.0 / control_hz
    sched = ActionScheduler(dt, engine.horizon, engine.n_obs_steps, exec_horizon, blend, ensemble_m, prefix_schedule,
                            epsilon_s)
    sched.reset(0.0)
    engine.reset()
    n_obs = engine.n_obs_steps
    history: collections.deque = collections.deque([observations[0]] * n_obs, maxlen=n_obs)
    delay_fn = delay_s if callable(delay_s) else (lambda i: float(delay_s))
    pending: list[tuple[float, Chunk]] = []
    commands, sources, requests, chunks = [], [], [], []
    last = None
    holds = n_req = chunk_id = 0
    for k, obs in enumerate(observations):
        t = k * dt
        if k > 0:
            history.append(obs)
        # arrivals strictly before this tick are merged at their own time
        for ready, chunk in sorted([p for p in pending if p[0] < t], key=lambda p: p[0]):
            sched.add_chunk(chunk, ready)
        pending = [p for p in pending if p[0] >= t]
        if not pending and sched.should_request(k):
            req = sched.make_request(k)
            window = {key: np.stack([h[key] for h in history]) for key in engine.obs_shapes}
            out = engine.infer(window, prefix=req.prefix, prefix_weights=req.prefix_weights, step=k).actions
            ready = t + max(0.0, delay_fn(n_req))
            n_req += 1
            chunk_id += 1
            c = Chunk(out[n_obs - 1:], k, t, ready, chunk_id, req.d_hat)
            if k == 0:  # the live loop computes the first chunk before tick 0
                sched.add_chunk(dataclasses.replace(c, ready_time=t - dt), t - dt)
            else:
                pending.append((ready, c))
            requests.append(req)
            chunks.append(c)
        action, src = sched.pop(k)
        if action is None:
            holds += 1
            action = last if last is not None else np.zeros(engine.action_dim, np.float32)
            src = -1
        sched.mark_sent(k, action)
        commands.append(action)
        sources.append(src)
        last = action
    return ReplayResult(np.stack(commands), np.asarray(sources), holds, sched.stats(), requests, chunks)


def seam_metrics(commands: np.ndarray, sources: np.ndarray, scale: np.ndarray | float = 1.0, dt: float = 1.0) -> dict[str, float]:
    """Seam quality of commanded actions [T, A] (divided by ``scale``, e.g. the dataset's action std).

    seam_jump: max ||a_k - a_{k-1}||_inf at ticks whose source chunk differs from the previous tick's;
    seam_jerk: max ||third difference||_inf / dt^3 within +-2 ticks of a seam; interior_p95: p95 of the
    step change away from seams (seam_jump_ratio = seam_jump / interior_p95).
    """
    a = np.asarray(commands, np.float64) / scale
    step = np.abs(np.diff(a, axis=0)).max(axis=1)  # step[k-1] = change into tick k
    seams = np.flatnonzero(sources[1:] != sources[:-1]) + 1
    seams = seams[(sources[seams] >= 0) & (sources[seams - 1] >= 0)]
    seam_mask = np.zeros(len(a), bool)
    seam_mask[seams] = True
    seam_jump = float(step[seams - 1].max()) if seams.size else 0.0
    interior = step[~seam_mask[1:]]
    interior_p95 = float(np.percentile(interior, 95)) if interior.size else 0.0
    jerk = np.abs(np.diff(a, n=3, axis=0)).max(axis=1) / dt**3 if len(a) > 3 else np.zeros(0)
    near = np.zeros(len(jerk), bool)
    for s in seams:
        near[max(0, s - 5): s + 3] = True  # third differences touching ticks s-2..s+2
    seam_jerk = float(jerk[near].max()) if near.any() else 0.0
    return {"seam_jump": seam_jump, "seam_jerk": seam_jerk, "interior_p95": interior_p95,
            "seam_jump_ratio": seam_jump / interior_p95 if interior_p95 > 0 else float("inf"), "n_seams": int(seams.size)}
