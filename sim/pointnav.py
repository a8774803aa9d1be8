"""PointNav: drive a round mobile base to a point goal through procedural indoor scenes (MuJoCo, MJCF built in code).

In the spirit of NavDP (Cai et al. 2025). Every episode seed makes its own scene: an 8 m x 8 m floor with outer
walls, 1-3 full-span interior walls with a door in every stretch between crossings (so all rooms connect), and
furniture-like boxes (``difficulty``: ``sparse`` ~5, ``cluttered`` ~20; ``maze`` ~10 boxes, doors just wide enough for
the base and 2-5 dead-end alcoves, the scenes where the choice among candidate paths decides the outcome).
``scene_split`` picks disjoint scene sets:
the scene seed is ``2 * seed`` (train) or ``2 * seed + 1`` (heldout), so no train seed ever makes a held-out scene.
Start and goal lie in free space with a safety margin, in one connected region, at least ``min_goal_distance``
apart (straight-line and geodesic) and at most ``max_goal_distance`` (geodesic); with ``min_detour`` > 1 the
geodesic distance is at least that many times the straight line, so heading straight at the goal meets an obstacle.

The base moves kinematically (no dynamics) by unicycle commands: action [v (m/s), omega (rad/s)] float32, clipped to
``[v_min, v_max]`` x ``[-omega_max, omega_max]``, integrated in substeps. A substep that would bring the base
within ``ROBOT_RADIUS`` of an obstacle (exact rectangle distance) is not taken: the base stops there, ``collision``
is set and, with ``terminate_on_collision`` (default), the episode ends as a failure. The episode ends when the
base gets within ``goal_radius`` of the goal; success if it did so without any collision.

Observation (keys chosen by ``shape_meta``): ``front_image`` [H, W, 3] uint8 and ``front_depth`` [H, W] float32
(metres along the optical axis, clipped to ``max_depth``) from a camera on the base (~90 deg fov, fast render
settings), ``goal`` [2] float32 (goal in the robot frame: x forward, y left) and ``goal_polar`` [2] (distance,
bearing). ``info``: success, collision, collisions, distance_to_goal, path_length, shortest_path_length (to the
goal disc), spl, scene_seed. Reward: the episode's SPL on the success step, -1 on a collision step, else 0, so a
``vmp-eval`` episode return (terminating on collision) is its SPL, or -1 for a collision.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import cv2
import gymnasium as gym
import mujoco
import numpy as np
from scipy import ndimage
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import dijkstra

from vmp.sim.render import close_at_exit, set_fast_model_settings, set_fast_scene_flags
from vmp.sim.spaces import obs_space_from_shape_meta

FLOOR_HALF = 4.0  # the floor is [-4, 4]^2 m inside the outer walls
WALL_HALF_THICK = 0.05
WALL_HEIGHT = 1.2
ROBOT_RADIUS = 0.2
ROBOT_HEIGHT = 0.3
CAMERA_HEIGHT = 0.45
CAMERA_PITCH = np.deg2rad(10.0)  # looking slightly down so the floor ahead is in view
GRID_RES = 0.05  # m per occupancy cell
PLAN_MARGIN = 0.15  # start, goal and the expert's path keep this clearance beyond the robot radius
DOOR_WIDTH = {"sparse": (1.0, 1.25), "cluttered": (1.0, 1.25), "maze": (0.8, 0.95)}  # m; maze: the base + margin
BOX_COUNTS = {"sparse": (4, 7), "cluttered": (18, 23), "maze": (8, 12)}  # [low, high) boxes per scene
ALCOVES = {"maze": (3, 6)}  # [low, high) dead-end alcoves drawn per scene (one that finds no free floor is left out)
ALCOVE_HEIGHT = 0.8
SPLITS = ("train", "heldout")
OBS_KEYS = ("front_image", "front_depth", "goal", "goal_polar")


# ---- frames ----
def robot_to_world(points: np.ndarray, pose: np.ndarray) -> np.ndarray:
    """Points [..., 2] in the robot frame (x forward, y left) -> world frame, for pose (x, y, yaw)."""
    x, y, yaw = (float(v) for v in pose)
    c, s = np.cos(yaw), np.sin(yaw)
    p = np.asarray(points, dtype=np.float64)
    return np.stack([c * p[..., 0] - s * p[..., 1] + x, s * p[..., 0] + c * p[..., 1] + y], axis=-1)


def world_to_robot(points: np.ndarray, pose: np.ndarray) -> np.ndarray:
    """Points [..., 2] in the world frame -> robot frame (inverse of ``robot_to_world``)."""
    x, y, yaw = (float(v) for v in pose)
    c, s = np.cos(yaw), np.sin(yaw)
    p = np.asarray(points, dtype=np.float64)
    dx, dy = p[..., 0] - x, p[..., 1] - y
    return np.stack([c * dx + s * dy, -s * dx + c * dy], axis=-1)


# ---- scenes ----
def scene_seed(seed: int, split: str) -> int:
    """The scene an episode seed makes in a split; injective, and train/heldout never share a scene."""
    if split not in SPLITS:
        raise ValueError(f"scene_split must be one of {SPLITS}, got {split!r}")
    return 2 * int(seed) + SPLITS.index(split)


@dataclasses.dataclass(frozen=True)
class Scene:
    """Obstacles as rectangles ``rects`` [R, 5] = (cx, cy, half_x, half_y, yaw), walls first, heights, colours."""

    seed: int
    rects: np.ndarray
    heights: np.ndarray
    colors: np.ndarray  # [R, 3] rgb in [0, 1]
    floor_colors: np.ndarray  # [2, 3] checker colours
    n_walls: int  # rects[:n_walls] are walls


def rect_distance(points: np.ndarray, rects: np.ndarray) -> np.ndarray:
    """Distance from each point [..., 2] to the nearest rectangle (0 inside one); exact, vectorised."""
    p = np.asarray(points, dtype=np.float64)[..., None, :] - rects[:, :2]
    c, s = np.cos(rects[:, 4]), np.sin(rects[:, 4])
    local = np.stack([c * p[..., 0] + s * p[..., 1], -s * p[..., 0] + c * p[..., 1]], axis=-1)
    q = np.maximum(np.abs(local) - rects[:, 2:4], 0.0)
    return np.sqrt((q**2).sum(-1)).min(-1)


def _wall(a: float, b: float, c: float, vertical: bool) -> list[float]:
    """A wall from a to b along one axis at c on the other."""
    mid, half = (a + b) / 2, (b - a) / 2
    return [c, mid, WALL_HALF_THICK, half, 0.0] if vertical else [mid, c, half, WALL_HALF_THICK, 0.0]


def make_scene(seed: int, difficulty: str = "sparse") -> Scene:
    """The procedural scene of ``seed``: outer walls, 1-3 interior walls with doors, boxes clear of the doors."""
    if difficulty not in BOX_COUNTS:
        raise ValueError(f"difficulty must be one of {sorted(BOX_COUNTS)}, got {difficulty!r}")
    rng = np.random.default_rng(seed)
    h, t = FLOOR_HALF, WALL_HALF_THICK
    rects = [_wall(-h - 2 * t, h + 2 * t, s * (h + t), vertical) for vertical in (True, False) for s in (-1, 1)]
    lines: list[tuple[bool, float]] = []  # (vertical, position) of the interior walls
    for _ in range(int(rng.integers(1, 4))):
        for _try in range(20):
            vertical, c = bool(rng.random() < 0.5), float(rng.uniform(-h + 1.8, h - 1.8))
            if all(v != vertical or abs(c - o) >= 1.8 for v, o in lines):
                lines.append((vertical, c))
                break
    doors = []
    for vertical, c in lines:
        cuts = sorted([-h, h, *(o for v, o in lines if v != vertical)])
        for a, b in zip(cuts[:-1], cuts[1:]):  # a door in every stretch between crossings: all rooms connect
            w = float(rng.uniform(*DOOR_WIDTH[difficulty]))
            d0 = float(rng.uniform(a + t + 0.2, b - t - 0.2 - w))
            rects += [_wall(a, d0, c, vertical), _wall(d0 + w, b, c, vertical)]
            centre = d0 + w / 2
            doors.append((c, centre) if vertical else (centre, c))
    n_walls = len(rects)
    doors_xy = np.array(doors)
    # alcoves first (they need open floor), then boxes clear of doorways and of the alcoves' mouths
    alcoves = (_alcoves(rng, doors_xy, np.array(rects), *ALCOVES[difficulty]) if difficulty in ALCOVES
               else np.zeros((0, 5)))
    n_boxes, boxes = int(rng.integers(*BOX_COUNTS[difficulty])), []
    for _try in range(200):
        if len(boxes) == n_boxes:
            break
        half = rng.uniform(0.15, 0.5, size=2)
        box = np.array([*rng.uniform(-h + 0.3, h - 0.3, size=2), *half, rng.uniform(0, np.pi)])
        if len(doors_xy) and rect_distance(doors_xy, box[None]).min() < 0.9:
            continue  # keep doorways passable
        if len(alcoves) and rect_distance(box[:2], alcoves) < np.hypot(*half) + 0.5:
            continue
        boxes.append(box)
    rects_arr = np.concatenate([np.array(rects), np.array(boxes).reshape(-1, 5), alcoves])
    wall_rgb = rng.uniform(0.55, 0.9, size=3)
    colors = np.concatenate([np.tile(wall_rgb, (n_walls, 1)), rng.uniform(0.15, 0.85, size=(len(boxes), 3)),
                             np.tile(wall_rgb * 0.8, (len(alcoves), 1))])
    heights = np.concatenate([np.full(n_walls, WALL_HEIGHT), rng.uniform(0.3, 1.0, size=len(boxes)),
                              np.full(len(alcoves), ALCOVE_HEIGHT)])
    floor = rng.uniform(0.35, 0.7, size=3)
    return Scene(int(seed), rects_arr, heights, colors, np.stack([floor, floor * 0.8]), n_walls)


def _alcoves(rng: np.random.Generator, doors_xy: np.ndarray, walls: np.ndarray, low: int, high: int) -> np.ndarray:
    """Dead ends: ``[low, high)`` three-sided alcoves (0.9-1.4 m deep, wide enough to drive in), each open to one
    side at a random angle, clear of the ``walls`` and of each other and kept 1.2 m from every doorway, as
    rectangles [3 per alcove, 5]."""
    h, t = FLOOR_HALF, WALL_HALF_THICK
    parts: list[list[float]] = []
    for _ in range(int(rng.integers(low, high))):
        for _try in range(200):
            centre, yaw = rng.uniform(-h + 1.0, h - 1.0, size=2), float(rng.uniform(-np.pi, np.pi))
            depth, width = float(rng.uniform(0.9, 1.4)), float(rng.uniform(0.8, 1.1))
            reach = max(depth, width) / 2 + 0.4  # the alcove's extent and a lane around it
            others = np.concatenate([walls, np.array(parts).reshape(-1, 5)])
            if (rect_distance(centre, others) >= reach
                    and (not len(doors_xy) or np.linalg.norm(doors_xy - centre, axis=-1).min() >= 1.2 + depth / 2)):
                break
        else:
            continue
        rot = np.array([[np.cos(yaw), -np.sin(yaw)], [np.sin(yaw), np.cos(yaw)]])
        # local frame: the opening faces +x; two side walls and a back wall
        for (lx, ly), (hx, hy) in (((0.0, width / 2 + t), (depth / 2, t)), ((0.0, -width / 2 - t), (depth / 2, t)),
                                   ((-depth / 2 - t, 0.0), (t, width / 2 + 2 * t))):
            parts.append([*(centre + rot @ np.array([lx, ly])), hx, hy, yaw])
    return np.array(parts, dtype=np.float64).reshape(-1, 5)


def _mjcf(scene: Scene, image_size: int, fovy: float) -> str:
    geoms = "\n    ".join(
        f'<geom type="box" pos="{cx:.4f} {cy:.4f} {hz / 2:.4f}" size="{hx:.4f} {hy:.4f} {hz / 2:.4f}" '
        f'euler="0 0 {yaw:.5f}" rgba="{r:.3f} {g:.3f} {b:.3f} 1"/>'
        for (cx, cy, hx, hy, yaw), hz, (r, g, b) in zip(scene.rects, scene.heights, scene.colors)
    )
    (r1, g1, b1), (r2, g2, b2) = scene.floor_colors
    cp, sp = np.cos(CAMERA_PITCH), np.sin(CAMERA_PITCH)
    size = max(int(image_size), 64)
    return f"""
<mujoco model="pointnav">
  <compiler angle="radian"/>
  <statistic extent="10" center="0 0 0.5"/>
  <visual>
    <global offwidth="{size}" offheight="{size}"/>
    <quality shadowsize="512"/>
    <map znear="0.002" zfar="3"/>
    <headlight ambient="0.45 0.45 0.45" diffuse="0.4 0.4 0.4" specular="0 0 0"/>
  </visual>
  <default><geom contype="0" conaffinity="0"/></default>
  <asset>
    <texture name="floor" type="2d" builtin="checker" width="64" height="64"
             rgb1="{r1:.3f} {g1:.3f} {b1:.3f}" rgb2="{r2:.3f} {g2:.3f} {b2:.3f}"/>
    <material name="floor" texture="floor" texrepeat="8 8"/>
    <texture type="skybox" builtin="gradient" rgb1="0.85 0.85 0.88" rgb2="0.55 0.55 0.6" width="32" height="32"/>
  </asset>
  <worldbody>
    <light directional="true" pos="0 0 5" dir="0.3 0.2 -1" diffuse="0.5 0.5 0.5" castshadow="false"/>
    <geom name="floor" type="plane" size="{FLOOR_HALF + 0.2} {FLOOR_HALF + 0.2} 0.05" material="floor"/>
    {geoms}
    <body name="base" pos="0 0 0">
      <joint name="base_x" type="slide" axis="1 0 0"/>
      <joint name="base_y" type="slide" axis="0 1 0"/>
      <joint name="base_yaw" type="hinge" axis="0 0 1"/>
      <geom type="cylinder" pos="0 0 {ROBOT_HEIGHT / 2}" size="{ROBOT_RADIUS} {ROBOT_HEIGHT / 2}"
            rgba="0.15 0.15 0.2 1"/>
      <camera name="front" pos="0.15 0 {CAMERA_HEIGHT}" xyaxes="0 -1 0 {sp:.5f} 0 {cp:.5f}" fovy="{fovy}"/>
    </body>
  </worldbody>
</mujoco>
"""


# ---- occupancy grid and planning ----
@dataclasses.dataclass(frozen=True)
class Grid:
    """Occupancy grid over the floor and its walls; cell (i, j) centres at origin + ((j + 0.5) res, (i + 0.5) res)."""

    occupancy: np.ndarray  # [H, W] bool
    clearance: np.ndarray  # [H, W] float32: metres to the nearest obstacle (0 in one), a slight underestimate
    origin: np.ndarray  # [2] world xy of the grid corner
    res: float

    def cell(self, points: np.ndarray) -> np.ndarray:
        """World points [..., 2] -> (row, col) int [..., 2], clipped to the grid."""
        ij = np.floor((np.asarray(points)[..., ::-1] - self.origin[::-1]) / self.res).astype(np.int64)
        return np.clip(ij, 0, np.array(self.occupancy.shape) - 1)

    def centre(self, cells: np.ndarray) -> np.ndarray:
        """(row, col) [..., 2] -> world xy of the cell centres."""
        return self.origin + (np.asarray(cells)[..., ::-1] + 0.5) * self.res

    def lookup(self, field: np.ndarray, points: np.ndarray) -> np.ndarray:
        """A per-cell field at world points [..., 2] (nearest cell)."""
        ij = self.cell(points)
        return field[ij[..., 0], ij[..., 1]]


def rasterize(rects: np.ndarray, res: float = GRID_RES) -> Grid:
    """Occupancy (a cell is occupied when it overlaps a rectangle) and distance field of a scene."""
    extent = FLOOR_HALF + 2 * WALL_HALF_THICK
    n = int(round(2 * extent / res))
    origin = np.array([-extent, -extent])
    centres = origin + (np.stack(np.meshgrid(np.arange(n), np.arange(n), indexing="ij"), -1)[..., ::-1] + 0.5) * res
    occ = rect_distance(centres, rects) <= res * 0.5  # centre within a rectangle grown by half a cell: they overlap
    clearance = np.maximum(ndimage.distance_transform_edt(~occ) * res - res / 2, 0.0).astype(np.float32)
    return Grid(occ, clearance, origin, float(res))


_OFFSETS = [(-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1)]


def cost_to_go(free: np.ndarray, target: tuple[int, int], res: float, cell_cost: np.ndarray | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
    """Dijkstra from ``target`` over 8-connected ``free`` cells -> (cost [H, W] (inf where unreachable), predecessors).

    One search gives the optimal path from every cell (follow ``predecessors`` to the target), so a follower can
    re-plan from wherever it is at no cost. An edge costs its length times 1 + the mean ``cell_cost`` of its ends.
    """
    h, w = free.shape
    idx = np.arange(h * w).reshape(h, w)
    flat = None if cell_cost is None else cell_cost.ravel()
    rows, cols, weights = [], [], []
    for di, dj in _OFFSETS:
        here = (slice(max(0, -di), h - max(0, di)), slice(max(0, -dj), w - max(0, dj)))
        there = (slice(max(0, di), h + min(0, di)), slice(max(0, dj), w + min(0, dj)))
        ok = free[here] & free[there]
        ia, ib = idx[here][ok], idx[there][ok]
        length = res * float(np.hypot(di, dj))
        weights.append(np.full(ia.shape, length) if flat is None else length * (1.0 + 0.5 * (flat[ia] + flat[ib])))
        rows.append(ia)
        cols.append(ib)
    edges = (np.concatenate(rows), np.concatenate(cols))
    graph = coo_matrix((np.concatenate(weights), edges), shape=(h * w, h * w)).tocsr()
    dist, pred = dijkstra(graph, directed=True, indices=int(target[0] * w + target[1]), return_predecessors=True)
    return dist.reshape(h, w), pred


def trace(pred: np.ndarray, start: tuple[int, int], shape: tuple[int, int]) -> np.ndarray:
    """Cells [L, 2] from ``start`` to the search target along the predecessors of ``cost_to_go``."""
    w = shape[1]
    node, cells = int(start[0] * w + start[1]), []
    while node >= 0:
        cells.append(node)
        node = int(pred[node])
    return np.stack(np.divmod(np.array(cells), w), axis=-1)


def line_free(free: np.ndarray, grid: Grid, a: np.ndarray, b: np.ndarray) -> bool:
    """Whether the segment a-b passes only through ``free`` cells (sampled every half cell)."""
    n = max(2, int(np.ceil(np.linalg.norm(b - a) / (grid.res * 0.5))) + 1)
    ij = grid.cell(a + np.linspace(0.0, 1.0, n)[:, None] * (b - a))
    return bool(free[ij[:, 0], ij[:, 1]].all())


def shortcut(points: np.ndarray, free: np.ndarray, grid: Grid) -> np.ndarray:
    """Greedy line-of-sight shortcutting: from each kept point jump to the farthest visible one."""
    out, i = [points[0]], 0
    while i < len(points) - 1:
        j = len(points) - 1
        while j > i + 1 and not line_free(free, grid, points[i], points[j]):
            j -= 1
        out.append(points[j])
        i = j
    return np.array(out)


def path_length(points: np.ndarray) -> float:
    return float(np.linalg.norm(np.diff(points, axis=0), axis=-1).sum()) if len(points) > 1 else 0.0


def resample(points: np.ndarray, spacing: float, n: int | None = None) -> np.ndarray:
    """Points at arc lengths spacing, 2 spacing, ... along a polyline (``n`` of them, the end repeated past it;
    without ``n``: from arc length 0 to the end, the end included)."""
    seg = np.linalg.norm(np.diff(points, axis=0), axis=-1)
    s = np.concatenate([[0.0], np.cumsum(seg)])
    if n is None:
        at = np.append(np.arange(0.0, s[-1], spacing), s[-1])
    else:
        at = np.minimum(spacing * np.arange(1, n + 1), s[-1])
    if s[-1] <= 0:
        return np.repeat(points[-1:], len(at), axis=0)
    return np.stack([np.interp(at, s, points[:, 0]), np.interp(at, s, points[:, 1])], axis=-1)


# ---- env ----
class PointNavEnv(gym.Env):
    """Reach a point goal with a velocity-commanded round base and an RGB-D camera.

    Args:
        shape_meta: obs keys to return (subset of front_image, front_depth, goal, goal_polar).
        difficulty: ``sparse`` (~5 boxes), ``cluttered`` (~20 boxes) or ``maze`` (narrow doors, dead ends).
        scene_split: ``train`` or ``heldout`` scenes (disjoint).
        v_min, v_max, omega_max: action limits (m/s, rad/s).
        goal_radius: success when the base centre is this close to the goal (m).
        min_goal_distance: least start-goal distance, straight-line and geodesic (m).
        max_goal_distance: most start-goal geodesic distance (m), so an episode fits its time limit.
        min_detour: least ratio of geodesic to straight-line start-goal distance (1: any).
        terminate_on_collision: end the episode at the first collision (else the base stops and may go on).
        max_depth: depth is clipped to this (m).
        fovy: the camera's vertical field of view (deg); images are square.
        render_size: side of the top-down ``render()`` frame (px).
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(
        self,
        shape_meta: dict,
        obs_type: str = "rgbd",
        control_hz: int = 10,
        difficulty: str = "sparse",
        scene_split: str = "train",
        v_min: float = -0.2,
        v_max: float = 0.6,
        omega_max: float = 1.5,
        goal_radius: float = 0.4,
        min_goal_distance: float = 2.5,
        max_goal_distance: float = 10.0,
        min_detour: float = 1.0,
        terminate_on_collision: bool = True,
        max_depth: float = 5.0,
        fovy: float = 90.0,
        substeps: int = 4,
        render_mode: str | None = None,
        render_size: int = 256,
        fast_render: bool = True,
        **unused: Any,
    ):
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be None or 'rgb_array', got {render_mode!r}")
        self.obs_keys = list(shape_meta["obs"])
        unknown = [k for k in self.obs_keys if k not in OBS_KEYS]
        if unknown:
            raise KeyError(f"PointNav: shape_meta.obs keys {unknown} unknown; available: {list(OBS_KEYS)}")
        self.observation_space = obs_space_from_shape_meta(shape_meta)
        cams = {k: tuple(shape_meta["obs"][k]["shape"]) for k in ("front_image", "front_depth") if k in self.obs_keys}
        sizes = {s[:2] for s in cams.values()}
        if len(sizes) > 1 or any(h != w for h, w in sizes):
            raise ValueError(f"PointNav: front_image and front_depth come from one square camera, got shapes {cams}")
        if "front_depth" in cams and len(cams["front_depth"]) != 2:
            raise ValueError(f"PointNav: shape_meta.obs.front_depth.shape must be [H, W], got {cams['front_depth']}")
        action_shape = tuple(shape_meta["action"]["shape"])
        if action_shape != (2,):
            raise ValueError(f"PointNav: shape_meta.action.shape must be [2] (v, omega), got {list(action_shape)}")
        if difficulty not in BOX_COUNTS:
            raise ValueError(f"PointNav: difficulty must be one of {sorted(BOX_COUNTS)}, got {difficulty!r}")
        scene_seed(0, scene_split)  # validates the split
        self.action_space = gym.spaces.Box(np.array([v_min, -omega_max], np.float32),
                                           np.array([v_max, omega_max], np.float32), dtype=np.float32)
        self.difficulty, self.scene_split = difficulty, scene_split
        self.goal_radius, self.min_goal_distance = float(goal_radius), float(min_goal_distance)
        self.max_goal_distance = float(max_goal_distance)
        if not 0 < self.min_goal_distance < self.max_goal_distance:
            raise ValueError(f"PointNav: need 0 < min_goal_distance < max_goal_distance, got {min_goal_distance} "
                             f"and {max_goal_distance}")
        if not 1.0 <= float(min_detour) <= 3.0:
            raise ValueError(f"PointNav: min_detour must be in [1, 3] (geodesic / straight-line), got {min_detour}")
        self.min_detour = float(min_detour)
        self.terminate_on_collision = bool(terminate_on_collision)
        self.max_depth, self.fovy = float(max_depth), float(fovy)
        self.dt, self.substeps = 1.0 / control_hz, max(1, int(substeps))
        self.image_size = next(iter(sizes))[0] if sizes else 0
        self.render_mode, self.render_size, self.fast_render = render_mode, int(render_size), bool(fast_render)
        self.metadata = {**self.metadata, "render_fps": control_hz}
        self.scene: Scene | None = None
        self.model: mujoco.MjModel | None = None
        self.data: mujoco.MjData | None = None
        self._renderer: mujoco.Renderer | None = None
        self._map_cache: dict[int, np.ndarray] = {}
        self._last_rgb: np.ndarray | None = None
        self._shown: tuple[np.ndarray, np.ndarray | None] | None = None  # candidates drawn by render(), world frame

    # ---- scene ----
    def _load_scene(self, seed: int) -> None:
        """Build the scene's model, occupancy grid and fields; the old model's renderer is closed."""
        self.close()
        self.scene = make_scene(seed, self.difficulty)
        self.model = mujoco.MjModel.from_xml_string(_mjcf(self.scene, self.image_size, self.fovy))
        set_fast_model_settings(self.model, self.fast_render)
        self.data = mujoco.MjData(self.model)
        self._adr = np.array([self.model.joint(n).qposadr[0] for n in ("base_x", "base_y", "base_yaw")])
        self.grid = rasterize(self.scene.rects)
        self._map_cache = {}

    def clearance(self, points: np.ndarray) -> np.ndarray:
        """Exact distance from points [..., 2] to the nearest obstacle (m)."""
        return rect_distance(points, self.scene.rects)

    def _sample_start_goal(self, rng: np.random.Generator) -> None:
        """Goal and start on cells with the planning margin, connected through them, apart by a geodesic distance
        in [min_goal_distance, max_goal_distance] (and straight-line >= min); the shortest path for SPL."""
        g = self.grid
        safe = g.clearance >= ROBOT_RADIUS + PLAN_MARGIN
        cells = np.argwhere(safe)
        centres = g.centre(np.indices(safe.shape).transpose(1, 2, 0))
        for _try in range(50):
            goal_cell = tuple(cells[rng.integers(len(cells))])
            dist, pred = cost_to_go(safe, goal_cell, g.res)
            goal = g.centre(np.array(goal_cell))
            ok = (dist >= self.min_goal_distance) & (dist <= self.max_goal_distance)
            straight = np.linalg.norm(centres - goal, axis=-1)
            ok &= straight >= self.min_goal_distance
            if self.min_detour > 1.0:  # (1: no constraint, and the draws of the other tasks stay as they were)
                ok &= dist >= self.min_detour * straight
            starts = np.argwhere(ok)
            if len(starts):
                break
        else:
            raise RuntimeError(f"PointNav: scene {self.scene.seed} has no start {self.min_goal_distance}-"
                               f"{self.max_goal_distance} m from a goal (detour >= {self.min_detour})")
        start_cell = tuple(starts[rng.integers(len(starts))])
        self.goal_xy = goal
        self.pose = np.array([*g.centre(np.array(start_cell)), rng.uniform(-np.pi, np.pi)])
        # shortest path: through the cells with the margin, shortened by line of sight needing the radius alone;
        # its length for SPL is up to where it enters the goal disc (where success starts)
        path = g.centre(trace(pred, start_cell, safe.shape))
        self.shortest_path = shortcut(np.concatenate([self.pose[None, :2], path[1:-1], goal[None]]),
                                      g.clearance >= ROBOT_RADIUS, g)
        fine = resample(self.shortest_path, 0.01)
        inside = int(np.argmax(np.linalg.norm(fine - goal, axis=-1) <= self.goal_radius))
        self.shortest_path_length = 0.01 * inside
        # geodesic distance to the goal everywhere: off the safe cells, that of the nearest safe cell plus the gap
        gap, (ii, jj) = ndimage.distance_transform_edt(~np.isfinite(dist), return_indices=True)
        self.goal_distance = (dist[ii, jj] + gap * g.res).astype(np.float32)

    # ---- state ----
    def privileged(self) -> dict[str, Any]:
        """What the expert and the critic targets may read: grid, distance fields, pose, goal."""
        return {"occupancy": self.grid.occupancy, "clearance": self.grid.clearance, "goal_distance": self.goal_distance,
                "grid": self.grid, "resolution": self.grid.res, "origin": self.grid.origin.copy(),
                "pose": self.pose.copy(), "goal": self.goal_xy.copy(), "robot_radius": ROBOT_RADIUS,
                "plan_margin": PLAN_MARGIN, "scene_seed": self.scene.seed}

    def distance_to_goal(self) -> float:
        return float(np.linalg.norm(self.goal_xy - self.pose[:2]))

    def spl(self) -> float:
        """Success weighted by (normalised inverse) path length: shortest / max(travelled, shortest) on success."""
        if not self._success:
            return 0.0
        return self.shortest_path_length / max(self.path_length, self.shortest_path_length, 1e-9)

    # ---- gym API ----
    def _obs(self) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        if "front_image" in self.obs_keys or "front_depth" in self.obs_keys:
            out.update(self._camera())
        local = world_to_robot(self.goal_xy, self.pose)
        if "goal" in self.obs_keys:
            out["goal"] = local.astype(np.float32)
        if "goal_polar" in self.obs_keys:
            out["goal_polar"] = np.array([np.hypot(*local), np.arctan2(local[1], local[0])], dtype=np.float32)
        return out

    def _info(self) -> dict[str, Any]:
        return {"success": self._success, "collision": self._collision, "collisions": self._collisions,
                "distance_to_goal": self.distance_to_goal(), "path_length": self.path_length,
                "shortest_path_length": self.shortest_path_length, "spl": self.spl(), "scene_seed": self.scene.seed,
                # what vmp-eval averages over episodes (the final step's values)
                "metrics": {"spl": self.spl(), "collisions": float(self._collisions),
                            "path_length": self.path_length}}

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        if seed is None:
            seed = int(self.np_random.integers(2**31))
        sid = scene_seed(seed, self.scene_split)
        if self.scene is None or self.scene.seed != sid:
            self._load_scene(sid)
        self._sample_start_goal(np.random.default_rng([sid, 1]))
        self.path_length, self._collisions = 0.0, 0
        self._success = self._collision = False
        self.trail = [self.pose[:2].copy()]
        self._shown = None
        self._set_pose()
        return self._obs(), self._info()

    def step(self, action: np.ndarray):
        action = np.asarray(action, dtype=np.float64)
        if action.shape != (2,):
            raise ValueError(f"PointNav: action must have shape (2,) = [v, omega], got {action.shape}")
        if not np.isfinite(action).all():
            raise FloatingPointError(f"PointNav: non-finite action {action}")
        v, w = np.clip(action, self.action_space.low, self.action_space.high)
        h = self.dt / self.substeps
        self._collision = False
        for _ in range(self.substeps):
            x, y, yaw = self.pose
            mid = yaw + w * h / 2
            nxt = np.array([x + v * h * np.cos(mid), y + v * h * np.sin(mid), yaw + w * h])
            if self.clearance(nxt[:2]) < ROBOT_RADIUS:
                self._collision = True
                break
            self.path_length += abs(float(v)) * h
            self.pose = nxt
        self.pose[2] = (self.pose[2] + np.pi) % (2 * np.pi) - np.pi
        self._collisions += int(self._collision)
        reached = not self._collision and self.distance_to_goal() <= self.goal_radius
        self._success = reached and self._collisions == 0
        self.trail.append(self.pose[:2].copy())
        self._set_pose()
        info = self._info()
        reward = info["spl"] if self._success else (-1.0 if self._collision else 0.0)
        terminated = reached or (self._collision and self.terminate_on_collision)
        return self._obs(), float(reward), bool(terminated), False, info

    def _set_pose(self) -> None:
        self.data.qpos[self._adr] = self.pose
        mujoco.mj_forward(self.model, self.data)

    # ---- rendering ----
    def _camera(self) -> dict[str, np.ndarray]:
        """The front camera's RGB and/or depth (one scene update, one render pass each)."""
        if self._renderer is None:
            self._renderer = mujoco.Renderer(self.model, self.image_size, self.image_size)
            close_at_exit(self)
        r, out = self._renderer, {}
        r.update_scene(self.data, camera="front")
        set_fast_scene_flags(r.scene, self.fast_render)
        if "front_image" in self.obs_keys:
            out["front_image"] = self._last_rgb = r.render().copy()
        if "front_depth" in self.obs_keys:
            r.enable_depth_rendering()
            out["front_depth"] = np.minimum(r.render(), self.max_depth).astype(np.float32)
            r.disable_depth_rendering()
        return out

    def _to_px(self, points: np.ndarray, size: int) -> np.ndarray:
        g = self.grid
        scale = size / (g.occupancy.shape[1] * g.res)
        p = (np.asarray(points) - g.origin) * scale
        return np.stack([p[..., 0], size - p[..., 1]], axis=-1).round().astype(np.int32)

    def render_topdown(self, size: int = 256, trajectories: np.ndarray | None = None, scores: np.ndarray | None = None,
                       frame: str = "robot") -> np.ndarray:
        """Top-down map [size, size, 3] uint8: obstacles, the path so far (blue), goal (green), robot (heading line),
        and optional ``trajectories`` [N, K, 2] (``frame`` "robot" or "world") coloured red (low) to green (high)
        by ``scores`` [N]."""
        if frame not in ("robot", "world"):
            raise ValueError(f"render_topdown: frame must be 'robot' or 'world', got {frame!r}")
        base = self._map_cache.get(size)
        if base is None:
            img = np.where(self.grid.occupancy[::-1, :, None], np.uint8(60), np.uint8(235)).repeat(3, axis=-1)
            base = self._map_cache[size] = cv2.resize(img, (size, size), interpolation=cv2.INTER_NEAREST)
        img = base.copy()
        px_per_m = size / (self.grid.occupancy.shape[1] * self.grid.res)
        goal = tuple(int(v) for v in self._to_px(self.goal_xy, size))
        cv2.circle(img, goal, max(2, int(self.goal_radius * px_per_m)), (60, 200, 60), -1, cv2.LINE_AA)
        cv2.polylines(img, [self._to_px(np.array(self.trail), size)], False, (40, 90, 230), 1, cv2.LINE_AA)
        if trajectories is not None:
            trajs = np.asarray(trajectories, dtype=np.float64).reshape(-1, *np.shape(trajectories)[-2:])
            if frame == "robot":
                trajs = robot_to_world(trajs, self.pose)
            s = np.zeros(len(trajs)) if scores is None else np.asarray(scores, dtype=np.float64).reshape(-1)
            if len(s) != len(trajs):
                raise ValueError(f"render_topdown: {len(s)} scores for {len(trajs)} trajectories")
            u = (s - s.min()) / max(np.ptp(s), 1e-9) if len(s) > 1 and np.ptp(s) > 0 else np.ones(len(s))
            for i in np.argsort(u):  # best drawn last, on top
                color = (int(230 * (1 - u[i])), int(200 * u[i]), 40)
                cv2.polylines(img, [self._to_px(trajs[i], size)], False, color, 1, cv2.LINE_AA)
        centre = tuple(int(v) for v in self._to_px(self.pose[:2], size))
        head = tuple(int(v) for v in self._to_px(robot_to_world(np.array([ROBOT_RADIUS * 1.4, 0.0]), self.pose), size))
        cv2.circle(img, centre, max(2, int(ROBOT_RADIUS * px_per_m)), (30, 30, 30), -1, cv2.LINE_AA)
        cv2.line(img, centre, head, (250, 200, 40), 2, cv2.LINE_AA)
        return img

    def show_candidates(self, candidates: np.ndarray, scores: np.ndarray | None = None) -> None:
        """Draw a planner's robot-frame trajectories [N, K, 2], coloured by ``scores`` [N], in the ``render()`` frames
        that follow: fixed in the world where the robot stands now, until the next call or reset."""
        self._shown = (robot_to_world(candidates, self.pose), None if scores is None else np.asarray(scores))

    def render(self) -> np.ndarray | None:
        """The top-down map (with the trajectories of ``show_candidates``), the last camera image beside it when the
        observation has one."""
        if self.render_mode != "rgb_array":
            return None
        img = self.render_topdown(self.render_size, *(self._shown or ()), frame="world")
        if self._last_rgb is None:
            return img
        view = cv2.resize(self._last_rgb, (self.render_size, self.render_size), interpolation=cv2.INTER_NEAREST)
        return np.concatenate([img, view], axis=1)

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None
