"""Scripted, privileged pusher for BlockPush whose choices are random, so its demonstrations are multimodal.

Per episode it draws which block goes first and (without a goal) which target each block goes to. For each
block: approach a point behind it on the line to its target (going around blocks in the way), push along
that line with the pusher aimed slightly into the block (re-approach when the block slides off), then
retreat before the next block.
"""

from __future__ import annotations

import numpy as np

from vmp.sim.blockpush import BLOCK_HALF, BLOCK_NAMES, PUSHER_RADIUS, TARGET_NAMES, TARGETS
from vmp.sim.experts.base import Expert

CLEARANCE = BLOCK_HALF * 1.45 + PUSHER_RADIUS + 0.008  # pusher centre to block centre when going around


def _phase_names() -> tuple[str, ...]:
    names = []
    for b in BLOCK_NAMES:
        names.append(f"approach {b} block")
        names += [f"push {b} block to {t} target" for t in TARGET_NAMES]
    return (*names, "retreat")


class BlockPushExpert(Expert):
    name = "blockpush"
    phase_names = _phase_names()
    behind = 0.06  # approach point distance behind the block centre
    push_step = 0.025
    place_tol = 0.02  # block centre within this of the target centre: done with it
    lane_y = 0.08  # blocks are first pushed straight up to this line, clear of the other block, then to the target

    def reset(self, seed: int | None = None) -> None:
        super().reset(seed)
        self.order = self.rng.permutation(2)
        self.assignment = self.rng.permutation(2)
        self._k = 0
        self._mode = "approach"
        self._retreat_from: np.ndarray | None = None
        self._goal_assignment: np.ndarray | None = None

    def set_goal(self, goal) -> None:
        """Follow the assignment a goal implies ({"block_pos": [4]}: each block to the target nearest its goal)."""
        if goal is None or "block_pos" not in goal:
            return
        g = np.asarray(goal["block_pos"], dtype=float).reshape(2, 2)
        self.assignment = np.array([int(np.argmin(np.linalg.norm(TARGETS - g[i], axis=1))) for i in range(2)])

    def _act(self, obs):
        s = self.env.privileged()
        if s.get("assignment") is not None and self._goal_assignment is None:
            self._goal_assignment = s["assignment"]
        p, blocks = s["pusher_pos"], s["block_pos"]
        # skip blocks already sitting in their target
        while self._k < 2 and np.linalg.norm(blocks[self.order[self._k]] - TARGETS[self.assignment[self.order[self._k]]]) < self.place_tol:
            self._k += 1
            self._mode = "retreat"
            self._retreat_from = p.copy()
        if self._k >= 2 or self._mode == "retreat":
            self.phase = len(self.phase_names) - 1
            if self._k >= 2:
                return np.zeros(2)
            back = self._retreat_from + np.array([0.0, -0.08])
            if np.linalg.norm(p - back) < 0.01 or np.linalg.norm(p - self._retreat_from) > 0.07:
                self._mode = "approach"
            return self._to(p, back, blocks)
        b = self.order[self._k]
        t = self.assignment[b]
        B, T = blocks[b], TARGETS[t]
        if B[1] < self.lane_y - 0.015:
            T = np.array([B[0], self.lane_y])  # leave the start band without sweeping the other block
        d = (T - B) / max(np.linalg.norm(T - B), 1e-6)
        if self._mode == "approach":
            self.phase = 3 * b
            pa = B - d * self.behind
            if np.linalg.norm(p - pa) < 0.012:
                self._mode = "push"
            else:
                return self._to(p, pa, blocks)
        # push
        self.phase = 3 * b + 1 + t
        rel = B - p
        along = float(rel @ d)
        lateral = abs(float(rel[0] * d[1] - rel[1] * d[0]))
        if lateral > 0.018 or along > self.behind + 0.03 or along < BLOCK_HALF:
            self._mode = "approach"
            self.phase = 3 * b
            return self._to(p, B - d * self.behind, blocks)
        step = min(self.push_step, float(np.linalg.norm(T - B)) + 0.005)
        target = B - d * (BLOCK_HALF + PUSHER_RADIUS) + d * step
        return self._cmd(p, target)

    def _cmd(self, p: np.ndarray, target: np.ndarray) -> np.ndarray:
        return np.clip((target - p) / self.env.max_delta, -1.0, 1.0)

    def _to(self, p: np.ndarray, goal: np.ndarray, blocks: np.ndarray) -> np.ndarray:
        """Move toward ``goal``; if a block lies on the straight path, aim at a way-point beside it."""
        seg = goal - p
        L = float(np.linalg.norm(seg))
        if L < 1e-6:
            return np.zeros(2)
        u = seg / L
        best = None
        for o in blocks:
            s_ = float(np.clip((o - p) @ u, 0.0, L))
            closest = p + u * s_
            dist = float(np.linalg.norm(o - closest))
            if dist < CLEARANCE and s_ > 0.0 and (best is None or s_ < best[0]):
                best = (s_, o, closest)
        if best is None:
            return self._cmd(p, p + u * min(L, self.env.max_delta))
        _, o, closest = best
        side = closest - o
        if np.linalg.norm(side) < 1e-6:
            side = np.array([-u[1], u[0]])
        side = side / np.linalg.norm(side)
        waypoint = o + side * (CLEARANCE + 0.015)
        w = waypoint - p
        n = float(np.linalg.norm(w))
        return self._cmd(p, p + w / max(n, 1e-6) * min(n, self.env.max_delta))
