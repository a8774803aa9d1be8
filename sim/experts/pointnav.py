"""Privileged planner expert for PointNav, and the per-step training targets of a NavDP-style head.

Planning: one Dijkstra search per episode from the goal over the occupancy grid inflated by the robot radius plus
``PLAN_MARGIN``, each edge's length weighted up near obstacles (``1 + w * max(0, 1 - (d - r) / d_pref)``, d the
distance field), keeps the path clear of obstacles. It is A* without a heuristic run to completion: it yields the
optimal path from every cell, so the follower re-plans from wherever the base is (after DART noise too) by tracing
predecessors. Each step the traced cell path is resampled to 5 cm and smoothed (moving average), and a pure-pursuit
follower turns it into [v, omega]: turn in place when the look-ahead point is far off the heading ("turn"), follow
the path ("drive"), slow down along it once the goal is near ("arrive"). A step that would graze an obstacle is
replaced by turning in place.

Training keys (``extra_specs`` / ``extras``, robot frame, x forward, y left), written by ``vmp-collect``:
``nav_path`` [K, 2], the planned path ahead at fixed arc-length spacing (the goal repeated past it);
``critic_paths`` [M, K, 2], index 0 the planned path, then it rotated about the robot by +-30, +-90 and 180 deg,
a smoothly perturbed copy, and the straight line that comes closest to an obstacle (a colliding one when the
horizon reaches one); ``critic_scores`` [M], the critic target of each (``critic_scores``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from vmp.sim.experts.base import Expert
from vmp.sim.pointnav import cost_to_go, path_length, resample, robot_to_world, trace, world_to_robot

ROTATIONS_DEG = (30.0, -30.0, 90.0, -90.0, 180.0)
N_CANDIDATES = 1 + len(ROTATIONS_DEG) + 2  # planned, rotations, perturbed, closest-to-obstacle line
N_HEADINGS = 16  # straight lines tried for the closest-to-obstacle candidate
# critic target (see critic_scores)
UNSAFE_CLEARANCE = 0.1  # m between the robot's edge and an obstacle below which a waypoint counts as colliding
COLLISION_WEIGHT = 5.0
CLEARANCE_WEIGHT = 0.5
CLEARANCE_CAP = 1.0  # m: beyond this, more clearance earns nothing
PROGRESS_WEIGHT = 1.0


def critic_scores(paths: np.ndarray, pose: np.ndarray, privileged: dict[str, Any], horizon: float) -> np.ndarray:
    """Critic targets [M] of world-frame paths [M, K, 2] starting at ``pose``, from privileged distance fields.

    ``c = -5 * mean_k[d_k < 0.1 or k >= hit] + 0.5 * (min(d_e, 1) - min(d_0, 1)) + 1.0 * (g_0 - g_e) / horizon``

    d_k is the clearance at waypoint k (distance field minus robot radius, m), d_0 at the robot; ``hit`` is the first
    waypoint inside an obstacle (d < 0) and e the one before it (the path's end when none; the robot when k = 0):
    a path is scored as driven, so it stops where it first collides and every waypoint after counts as colliding
    (a path through a thin wall is not let off for the waypoints beyond). g is the geodesic distance to the goal.
    This is NavDP's ``-5 mean(d < 0.1) + 0.5 sum(dd)`` (collisions penalised, moving away from obstacles rewarded;
    the sum telescopes to d_e - d_0, capped at 1 m so open space earns no more) plus progress toward the goal
    normalised by the horizon length, about [-1, 1]: mild next to the collision term, as the critic does not see
    the goal at inference.
    """
    grid, r = privileged["grid"], float(privileged["robot_radius"])
    d = grid.lookup(grid.clearance, paths) - r  # [M, K]
    d0 = float(grid.lookup(grid.clearance, pose[:2])) - r
    g = grid.lookup(privileged["goal_distance"], paths)
    g0 = float(grid.lookup(privileged["goal_distance"], pose[:2]))
    hit = np.cumsum(d < 0.0, axis=-1) > 0
    unsafe = (d < UNSAFE_CLEARANCE) | hit
    end = np.where(hit.any(-1), hit.argmax(-1), d.shape[-1]) - 1  # last waypoint driven; -1: none, the robot
    rows = np.arange(len(d))
    d_end = np.where(end >= 0, d[rows, end], d0)
    g_end = np.where(end >= 0, g[rows, end], g0)
    away = np.minimum(d_end, CLEARANCE_CAP) - min(d0, CLEARANCE_CAP)
    return -COLLISION_WEIGHT * unsafe.mean(-1) + CLEARANCE_WEIGHT * away + PROGRESS_WEIGHT * (g0 - g_end) / horizon


def _rotate(points: np.ndarray, angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return points @ np.array([[c, s], [-s, c]])


class PointNavExpert(Expert):
    """Plan on the privileged grid, follow by pure pursuit; ``extras()`` gives the step's training targets.

    Args:
        horizon: K, waypoints of ``nav_path`` and each critic path.
        spacing: arc length between waypoints (m).
        lookahead: pure-pursuit look-ahead distance (m).
        arrive_distance: slow down when the path left is shorter than this (m).
        clearance_weight, preferred_clearance: the planner's near-obstacle edge weighting (see module docstring).
    """

    name = "pointnav"
    phase_names = ("turn", "drive", "arrive")
    turn_enter, turn_exit = 0.9, 0.25  # rad heading error: start / stop turning in place

    def __init__(self, env: Any = None, seed: int | None = None, horizon: int = 24, spacing: float = 0.1,
                 lookahead: float = 0.45, arrive_distance: float = 0.8, clearance_weight: float = 3.0,
                 preferred_clearance: float = 0.5):
        super().__init__(env, seed)
        self.horizon, self.spacing, self.lookahead = int(horizon), float(spacing), float(lookahead)
        self.arrive_distance = float(arrive_distance)
        self.clearance_weight, self.preferred_clearance = float(clearance_weight), float(preferred_clearance)
        self._plan_key: tuple | None = None
        self._last: tuple[np.ndarray, np.ndarray, dict[str, Any]] | None = None
        self._turning = False

    def reset(self, seed: int | None = None) -> None:
        super().reset(seed)
        self._plan_key, self._last, self._turning = None, None, False

    # ---- planning ----
    def _ensure_plan(self, s: dict[str, Any]) -> None:
        """The cost-to-go field of this scene and goal (computed once per episode)."""
        key = (s["scene_seed"], *np.round(s["goal"], 6))
        if key == self._plan_key:
            return
        grid, r = s["grid"], float(s["robot_radius"])
        free = grid.clearance >= r + float(s["plan_margin"])
        goal_cell = tuple(grid.cell(s["goal"]))
        free[goal_cell] = True
        near = self.clearance_weight * np.clip(1.0 - (grid.clearance - r) / self.preferred_clearance, 0.0, None)
        self._dist, self._pred = cost_to_go(free, goal_cell, grid.res, near)
        self._plan_key = key

    def _path(self, s: dict[str, Any]) -> np.ndarray:
        """The smoothed world path [L, 2] from the base to the goal."""
        grid, pos, goal = s["grid"], s["pose"][:2], s["goal"]
        i, j = grid.cell(pos)
        if not np.isfinite(self._dist[i, j]):  # off the planning free space: join it at the cheapest nearby cell
            lo_i, lo_j = max(0, i - 8), max(0, j - 8)
            win = self._dist[lo_i:i + 9, lo_j:j + 9]
            cells = np.indices(win.shape).transpose(1, 2, 0) + (lo_i, lo_j)
            score = win + 4.0 * np.linalg.norm(grid.centre(cells) - pos, axis=-1)
            if not np.isfinite(score).any():
                return np.stack([pos, goal])
            i, j = np.unravel_index(int(np.argmin(score)), score.shape)
            i, j = i + lo_i, j + lo_j
        pts = grid.centre(trace(self._pred, (i, j), grid.occupancy.shape))
        pts = resample(np.concatenate([pos[None], pts[1:-1], goal[None]]), 0.05)
        if len(pts) > 9:
            k = np.ones(9) / 9
            padded = np.pad(pts, ((4, 4), (0, 0)), mode="edge")
            pts = np.stack([np.convolve(padded[:, 0], k, "valid"), np.convolve(padded[:, 1], k, "valid")], axis=-1)
        pts[0], pts[-1] = pos, goal
        return pts

    # ---- acting ----
    def _act(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        s = self.env.privileged()
        self._ensure_plan(s)
        pose = s["pose"]
        path = self._path(s)
        self._last = (pose, path, s)
        v_max, w_max = (float(x) for x in self.env.action_space.high)
        left = path_length(path)
        arrive = left < self.arrive_distance
        local = world_to_robot(resample(path, self.lookahead, 1)[0], pose)
        alpha = float(np.arctan2(local[1], local[0]))
        self._turning = abs(alpha) > (self.turn_exit if self._turning else self.turn_enter)
        if self._turning:
            self.phase = 0
            return np.array([0.0, np.clip(2.0 * alpha, -w_max, w_max)])
        self.phase = 2 if arrive else 1
        v = v_max * np.cos(alpha)
        if arrive:
            v = min(v, 0.6 * left + 0.15)
        w = v * 2.0 * np.sin(alpha) / max(float(np.linalg.norm(local)), 1e-6)  # pure-pursuit curvature times speed
        if abs(w) > w_max:
            v, w = v * w_max / abs(w), float(np.sign(w)) * w_max
        nxt = robot_to_world(np.array([v * self.env.dt, 0.0]), pose)
        if self.env.clearance(nxt) < s["robot_radius"] + 0.03:  # would graze: turn toward the path instead
            v = 0.0
            w = float(np.clip(2.0 * alpha, -w_max, w_max)) if abs(alpha) > 0.05 else w_max
        return np.array([v, w])

    # ---- training targets ----
    def extra_specs(self) -> dict[str, Any]:
        """The per-step keys ``extras()`` returns, as store KeySpecs (``vmp-collect`` adds them to its schema)."""
        from vmp.data import KeySpec

        k, m = self.horizon, N_CANDIDATES
        frame = "robot frame (x forward, y left), m"
        return {
            "nav_path": KeySpec((k, 2), "float32",
                                f"expert's planned path ahead, {k} waypoints every {self.spacing} m, {frame}"),
            "critic_paths": KeySpec((m, k, 2), "float32", f"critic candidates (0: planned path, then rotations "
                                    f"{list(ROTATIONS_DEG)} deg, perturbed, closest-to-obstacle line), {frame}"),
            "critic_scores": KeySpec((m,), "float32", "critic target per candidate: -5 mean(clearance < 0.1 or past "
                                     "a collision) + 0.5 (clearance gain, capped 1 m) + geodesic progress / horizon"),
        }

    def extras(self) -> dict[str, np.ndarray]:
        """Training targets for the step of the last ``act``: nav_path, critic_paths, critic_scores."""
        if self._last is None:
            raise RuntimeError("PointNavExpert.extras() needs an act() first")
        pose, path, s = self._last
        ahead = world_to_robot(resample(path, self.spacing, self.horizon), pose)
        cands = [ahead, *(_rotate(ahead, np.deg2rad(a)) for a in ROTATIONS_DEG), self._perturb(ahead)]
        steps = self.spacing * np.arange(1, self.horizon + 1)
        heads = 2 * np.pi * np.arange(N_HEADINGS) / N_HEADINGS
        lines = np.stack([np.cos(heads)[:, None] * steps, np.sin(heads)[:, None] * steps], axis=-1)  # [H, K, 2]
        grid = s["grid"]
        closest = np.argmin(grid.lookup(grid.clearance, robot_to_world(lines, pose)).min(axis=-1))
        cands.append(lines[closest])
        paths = np.stack(cands)
        scores = critic_scores(robot_to_world(paths, pose), pose, s, self.spacing * self.horizon)
        return {"nav_path": ahead.astype(np.float32), "critic_paths": paths.astype(np.float32),
                "critic_scores": scores.astype(np.float32)}

    def _perturb(self, path: np.ndarray) -> np.ndarray:
        """The path with each segment's heading bent by a random walk: a smooth, plausible-looking near miss."""
        seg = np.diff(np.concatenate([np.zeros((1, 2)), path]), axis=0)
        bend = self.rng.normal(0.0, 0.3) + np.cumsum(self.rng.normal(0.0, 0.08, size=len(seg)))
        c, s = np.cos(bend), np.sin(bend)
        seg = np.stack([c * seg[:, 0] - s * seg[:, 1], s * seg[:, 0] + c * seg[:, 1]], axis=-1)
        return np.cumsum(seg, axis=0)
