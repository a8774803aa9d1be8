"""BlockPush: a planar pusher, two blocks, two targets (our own MuJoCo scene, MJCF built in code).

In the spirit of the Block Push benchmark used by BESO: the demonstrations are multimodal (either block
first, either block to either target). Success: both blocks inside targets, one block per target; in goal
mode (``goal_conditioned=True``) the env samples an assignment at reset, returns it as ``info["goal"]``
(the block positions it implies) and success requires each block in its assigned target.

Observation (low-dim): ``pusher_pos`` [2] (m), ``block_pos`` [4] (red xy, blue xy), ``block_yaw`` [2]
(rad, wrapped to [-pi/4, pi/4): the blocks are square). Image variant: ``overhead_image`` [H, W, 3] uint8
plus ``pusher_pos``. Action: [2] in [-1, 1], the pusher's target position relative to where it is, in
units of ``max_delta`` metres (position servo on two slide joints).
"""

from __future__ import annotations

import logging
from typing import Any

import gymnasium as gym
import mujoco
import numpy as np

from vmp.sim.render import close_at_exit, set_fast_model_settings, set_fast_scene_flags
from vmp.sim.spaces import obs_space_from_shape_meta

log = logging.getLogger(__name__)

BLOCK_NAMES = ("red", "blue")
TARGET_NAMES = ("left", "right")
TARGETS = np.array([[-0.15, 0.18], [0.15, 0.18]])  # fixed target centres (m)
TARGET_HALF = 0.05  # a block is inside a target when its centre is within this half-size
BLOCK_HALF = 0.02
PUSHER_RADIUS = 0.015
ARENA_HALF = 0.3


def _mjcf(timestep: float, image_size: int) -> str:
    targets = "\n".join(
        f'<geom name="target_{n}" type="box" pos="{x} {y} 0.0005" size="{TARGET_HALF} {TARGET_HALF} 0.0005" '
        f'rgba="{c}" contype="0" conaffinity="0"/>'
        for n, (x, y), c in zip(TARGET_NAMES, TARGETS, ("0.9 0.9 0.3 1", "0.3 0.9 0.9 1"))
    )
    blocks = "\n".join(
        f"""<body name="block_{n}" pos="0 0 {BLOCK_HALF}">
          <joint name="block_{n}_x" type="slide" axis="1 0 0" damping="0.5"/>
          <joint name="block_{n}_y" type="slide" axis="0 1 0" damping="0.5"/>
          <joint name="block_{n}_yaw" type="hinge" axis="0 0 1" damping="0.002"/>
          <geom type="box" size="{BLOCK_HALF} {BLOCK_HALF} {BLOCK_HALF}" mass="0.05" rgba="{c}" friction="0.5 0.005 0.0001"/>
        </body>"""
        for n, c in zip(BLOCK_NAMES, ("0.85 0.15 0.15 1", "0.15 0.25 0.85 1"))
    )
    walls = "\n".join(
        f'<geom type="box" pos="{x} {y} 0.02" size="{sx} {sy} 0.02" rgba="0.5 0.5 0.5 1"/>'
        for x, y, sx, sy in (
            (ARENA_HALF + 0.01, 0, 0.01, ARENA_HALF + 0.02),
            (-ARENA_HALF - 0.01, 0, 0.01, ARENA_HALF + 0.02),
            (0, ARENA_HALF + 0.01, ARENA_HALF + 0.02, 0.01),
            (0, -ARENA_HALF - 0.01, ARENA_HALF + 0.02, 0.01),
        )
    )
    return f"""
<mujoco model="blockpush">
  <option timestep="{timestep}" gravity="0 0 -9.81"/>
  <visual><global offwidth="{max(image_size, 256)}" offheight="{max(image_size, 256)}"/><quality shadowsize="1024"/></visual>
  <default><geom friction="0.5 0.005 0.0001" condim="3"/></default>
  <worldbody>
    <light pos="0 0 1.5" dir="0 0 -1" diffuse="0.8 0.8 0.8"/>
    <camera name="overhead" pos="0 0 0.95" quat="1 0 0 0" fovy="40"/>
    <geom name="floor" type="plane" size="{ARENA_HALF + 0.05} {ARENA_HALF + 0.05} 0.01" rgba="0.92 0.92 0.9 1"/>
    {targets}
    {walls}
    {blocks}
    <body name="pusher" pos="0 0 0.02">
      <joint name="pusher_x" type="slide" axis="1 0 0" damping="2" range="-{ARENA_HALF} {ARENA_HALF}" limited="true"/>
      <joint name="pusher_y" type="slide" axis="0 1 0" damping="2" range="-{ARENA_HALF} {ARENA_HALF}" limited="true"/>
      <geom type="cylinder" size="{PUSHER_RADIUS} 0.02" mass="0.2" rgba="0.2 0.2 0.2 1"/>
    </body>
  </worldbody>
  <actuator>
    <position name="pusher_x" joint="pusher_x" kp="60" ctrlrange="-{ARENA_HALF} {ARENA_HALF}" ctrllimited="true"/>
    <position name="pusher_y" joint="pusher_y" kp="60" ctrlrange="-{ARENA_HALF} {ARENA_HALF}" ctrllimited="true"/>
  </actuator>
</mujoco>
"""


def wrap_yaw(yaw: np.ndarray) -> np.ndarray:
    """Square blocks look the same every 90 degrees: yaw wrapped to [-pi/4, pi/4)."""
    return (np.asarray(yaw) + np.pi / 4) % (np.pi / 2) - np.pi / 4


class BlockPushEnv(gym.Env):
    """Push the red and blue blocks into the two targets.

    Args:
        shape_meta: obs keys to return (subset of pusher_pos, block_pos, block_yaw, overhead_image).
        goal_conditioned: sample a block->target assignment at reset and require it for success.
        max_delta: metres per unit action (pusher target offset per control step).
        substeps: physics steps per control step (timestep * substeps = 1 / control_hz).
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(
        self,
        shape_meta: dict,
        obs_type: str = "lowdim",
        control_hz: int = 10,
        goal_conditioned: bool = False,
        max_delta: float = 0.03,
        timestep: float = 0.005,
        image_size: int = 96,
        render_mode: str | None = None,
        render_size: int = 128,
        fast_render: bool = True,
        language: str | None = None,
        goal_keys: list[str] | None = None,
        **unused: Any,
    ):
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be None or 'rgb_array', got {render_mode!r}")
        self.obs_keys = list(shape_meta["obs"])
        known = {"pusher_pos", "block_pos", "block_yaw", "overhead_image"}
        unknown = [k for k in self.obs_keys if k not in known]
        if unknown:
            raise KeyError(f"BlockPush: shape_meta.obs keys {unknown} unknown; available: {sorted(known)}")
        self.observation_space = obs_space_from_shape_meta(shape_meta)
        if tuple(shape_meta["action"]["shape"]) != (2,):
            raise ValueError(f"BlockPush: shape_meta.action.shape must be [2], got {list(shape_meta['action']['shape'])}")
        self.action_space = gym.spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)
        self.goal_conditioned = bool(goal_conditioned)
        self.max_delta = float(max_delta)
        self.substeps = max(1, int(round(1.0 / (control_hz * timestep))))
        self.render_mode, self.render_size = render_mode, int(render_size)
        self.image_size = int(shape_meta["obs"]["overhead_image"]["shape"][0]) if "overhead_image" in self.obs_keys else int(image_size)
        self.fast_render = bool(fast_render)
        self.base_language = language or "push the red and blue blocks into the two targets"
        self.metadata = {**self.metadata, "render_fps": control_hz}

        self.model = mujoco.MjModel.from_xml_string(_mjcf(timestep, max(self.image_size, self.render_size)))
        set_fast_model_settings(self.model, self.fast_render)
        self.data = mujoco.MjData(self.model)
        j = lambda name: self.model.joint(name).qposadr[0]  # noqa: E731
        self._pusher_adr = np.array([j("pusher_x"), j("pusher_y")])
        self._block_adr = np.array([[j(f"block_{n}_x"), j(f"block_{n}_y"), j(f"block_{n}_yaw")] for n in BLOCK_NAMES])
        self._renderers: dict[int, mujoco.Renderer] = {}
        self.assignment = np.array([0, 1])  # block i -> target assignment[i]
        self.language = self.base_language

    # ---- state ----
    def pusher_pos(self) -> np.ndarray:
        return self.data.qpos[self._pusher_adr].copy()

    def block_pos(self) -> np.ndarray:
        """[2 blocks, xy]."""
        return self.data.qpos[self._block_adr[:, :2]].copy()

    def block_yaw(self) -> np.ndarray:
        return wrap_yaw(self.data.qpos[self._block_adr[:, 2]])

    def privileged(self) -> dict[str, np.ndarray]:
        return {"pusher_pos": self.pusher_pos(), "block_pos": self.block_pos(), "block_yaw": self.block_yaw(),
                "targets": TARGETS.copy(), "assignment": self.assignment.copy() if self.goal_conditioned else None}

    def in_targets(self) -> np.ndarray:
        """[2 blocks, 2 targets] bool: block centre inside target."""
        d = np.abs(self.block_pos()[:, None, :] - TARGETS[None, :, :])
        return np.all(d < TARGET_HALF, axis=-1)

    def is_success(self) -> bool:
        inside = self.in_targets()
        if self.goal_conditioned:
            return bool(inside[0, self.assignment[0]] and inside[1, self.assignment[1]])
        return bool((inside[0, 0] and inside[1, 1]) or (inside[0, 1] and inside[1, 0]))

    # ---- gym API ----
    def _obs(self) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        if "pusher_pos" in self.obs_keys:
            out["pusher_pos"] = self.pusher_pos().astype(np.float32)
        if "block_pos" in self.obs_keys:
            out["block_pos"] = self.block_pos().reshape(4).astype(np.float32)
        if "block_yaw" in self.obs_keys:
            out["block_yaw"] = self.block_yaw().astype(np.float32)
        if "overhead_image" in self.obs_keys:
            out["overhead_image"] = self._render(self.image_size)
        return out

    def goal(self) -> dict[str, np.ndarray]:
        """The block positions the assignment implies: {"block_pos": [4]} (red xy, blue xy)."""
        return {"block_pos": TARGETS[self.assignment].reshape(4).astype(np.float32)}

    def _info(self) -> dict[str, Any]:
        info = {"success": self.is_success(), "language": self.language}
        if self.goal_conditioned:
            info["goal"] = self.goal()
        return info

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        rng = self.np_random
        mujoco.mj_resetData(self.model, self.data)
        # blocks in the lower half, apart from each other; pusher below them
        red_x = rng.uniform(-0.16, -0.06)
        blue_x = rng.uniform(0.06, 0.16)
        if rng.random() < 0.5:  # either block may start on either side
            red_x, blue_x = blue_x, red_x
        ys = rng.uniform(-0.12, -0.02, size=2)
        for i, (x, y) in enumerate(((red_x, ys[0]), (blue_x, ys[1]))):
            self.data.qpos[self._block_adr[i]] = [x, y, rng.uniform(-np.pi / 4, np.pi / 4)]
        # bodies sit at the origin, so slide-joint positions are world xy
        self.data.qpos[self._pusher_adr] = [rng.uniform(-0.1, 0.1), rng.uniform(-0.26, -0.2)]
        self.data.ctrl[:] = self.pusher_pos()
        mujoco.mj_forward(self.model, self.data)
        self.assignment = rng.permutation(2) if self.goal_conditioned else np.array([0, 1])
        if self.goal_conditioned:
            t = [TARGET_NAMES[a] for a in self.assignment]
            self.language = f"push the red block into the {t[0]} target and the blue block into the {t[1]} target"
        else:
            self.language = self.base_language
        return self._obs(), self._info()

    def step(self, action: np.ndarray):
        action = np.asarray(action, dtype=np.float64).reshape(-1)
        if action.shape != (2,):
            raise ValueError(f"BlockPush: action must have shape (2,), got {action.shape}")
        if not np.isfinite(action).all():
            raise FloatingPointError(f"BlockPush: non-finite action {action}")
        target = self.pusher_pos() + np.clip(action, -1.0, 1.0) * self.max_delta
        self.data.ctrl[:] = np.clip(target, -ARENA_HALF + PUSHER_RADIUS, ARENA_HALF - PUSHER_RADIUS)
        mujoco.mj_step(self.model, self.data, nstep=self.substeps)
        info = self._info()
        reward = float(info["success"])
        return self._obs(), reward, bool(info["success"]), False, info

    # ---- rendering ----
    def _render(self, size: int) -> np.ndarray:
        r = self._renderers.get(size)
        if r is None:
            r = mujoco.Renderer(self.model, size, size)
            set_fast_scene_flags(r.scene, self.fast_render)
            self._renderers[size] = r
            close_at_exit(self)
        r.update_scene(self.data, camera="overhead")
        set_fast_scene_flags(r.scene, self.fast_render)
        return r.render().copy()

    def render(self) -> np.ndarray | None:
        if self.render_mode != "rgb_array":
            return None
        return self._render(self.render_size)

    def close(self) -> None:
        for r in self._renderers.values():
            r.close()
        self._renderers.clear()
