"""robosuite tasks (Panda, OSC_POSE control) behind one gymnasium wrapper.

Observation keys are robosuite's with the ``robot0_`` prefix dropped (``eef_pos``, ``eef_quat``,
``gripper_qpos``, ``joint_pos``, ...), ``object`` for robosuite's ``object-state`` vector, and
``<camera>_image`` uint8 [H, W, 3] (``robot0_eye_in_hand`` becomes ``eye_in_hand_image``), flipped
upright. Only the keys of the task config's ``shape_meta.obs`` are returned, so they match the store.
Action: float32 [7] = OSC_POSE delta (dx, dy, dz in units of 5 cm, axis-angle in units of 0.5 rad,
base frame) + gripper (-1 open, +1 close), all in [-1, 1].
"""

from __future__ import annotations

import logging
from typing import Any

import gymnasium as gym
import numpy as np

from vmp.sim.render import close_at_exit, set_fast_model_settings, set_fast_scene_flags
from vmp.sim.spaces import obs_space_from_shape_meta

log = logging.getLogger(__name__)

# task name -> (robosuite env name, extra robosuite kwargs, language instruction)
ROBOSUITE_TASKS: dict[str, tuple[str, dict[str, Any], str]] = {
    "Lift": ("Lift", {}, "lift the red cube"),
    "Stack": ("Stack", {}, "stack the red cube on the green cube"),
    "PickPlaceCan": ("PickPlaceCan", {}, "put the can into its bin"),
    "NutAssemblySquare": ("NutAssemblySquare", {}, "fit the square nut onto the square peg"),
}

# Where an episode got to, which vmp-eval reports beside success (``info["metrics"]``, averaged in ``env_metrics``):
# ``lifted``: the object the task moves rose LIFTED_M above where it started, at some step; ``at_goal`` (tasks with a
# goal place): it lies there now, by robosuite's own test without the hand-away condition that success adds;
# ``over_goal``: it is now above or in the goal's footprint at any height (the same test at the goal's height), so
# ``over_goal - at_goal`` is an object held or jammed over its goal (a nut stuck on the peg's top).
# task -> (the moved object's body id, its goal test or None, a height at which that test passes inside the footprint)
LIFTED_M = 0.03
_STAGES: dict[str, tuple[Any, Any, Any]] = {
    "Lift": (lambda env: env.cube_body_id, None, None),
    "Stack": (lambda env: env.cubeA_body_id, None, None),
    "PickPlaceCan": (lambda env: env.obj_body_id["Can"],
                     lambda env, pos: not env.not_in_bin(pos, env.object_to_id["can"]),
                     lambda env: env.bin2_pos[2] + 0.05),
    "NutAssemblySquare": (lambda env: env.obj_body_id["SquareNut"], lambda env, pos: env.on_peg(pos, 0),
                          lambda env: env.table_offset[2]),
}


def _store_key(rs_key: str) -> str:
    """robosuite observation name -> store key."""
    if rs_key == "object-state":
        return "object"
    key = rs_key[len("robot0_"):] if rs_key.startswith("robot0_") else rs_key
    return key


def _camera_key(camera: str, kind: str = "image") -> str:
    return _store_key(camera) + "_" + kind


class RobosuiteEnv(gym.Env):
    """One robosuite manipulation task as a gymnasium env with dict observations.

    Args:
        task: one of ``ROBOSUITE_TASKS``.
        shape_meta: the task config's ``shape_meta`` (obs keys and shapes, action shape).
        cameras: camera names rendered into ``<camera>_image`` observations (image/rgbd tasks).
        image_size: square camera resolution in pixels.
        fast_render: anti-aliasing, shadows and reflections off.
        render_mode: ``"rgb_array"`` enables ``render()`` (videos) from ``render_camera``.
        control_hz: control frequency of the OSC controller.
        model_seed: seeds numpy's global generator while the model is built (robosuite draws e.g. the
            Lift cube's size there), so every worker's env is the same scene and seeds reproduce episodes.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 20}

    def __init__(
        self,
        task: str,
        shape_meta: dict,
        obs_type: str = "lowdim",
        cameras: list[str] | None = None,
        image_size: int = 84,
        depth: bool = False,
        fast_render: bool = True,
        render_mode: str | None = None,
        render_camera: str = "agentview",
        render_size: int = 128,
        control_hz: int = 20,
        language: str | None = None,
        model_seed: int = 0,
        robosuite_kwargs: dict | None = None,
        **unused: Any,
    ):
        if task not in ROBOSUITE_TASKS:
            raise ValueError(f"robosuite task {task!r} unknown; expected one of {sorted(ROBOSUITE_TASKS)}")
        if obs_type not in ("lowdim", "image", "rgbd"):
            raise ValueError(f"obs_type must be lowdim | image | rgbd, got {obs_type!r}")
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be None or 'rgb_array', got {render_mode!r}")
        import robosuite as suite
        from robosuite.controllers import load_composite_controller_config

        _quiet_robosuite()
        rs_name, extra, default_language = ROBOSUITE_TASKS[task]
        self.task = task
        self.language = language or default_language
        self.render_mode = render_mode
        self.render_camera = render_camera
        self.render_size = int(render_size)
        self.fast_render = bool(fast_render)
        self.metadata = {**self.metadata, "render_fps": control_hz}
        self.cameras = list(cameras or []) if obs_type != "lowdim" else []
        self.image_size = int(image_size)
        self.depth = bool(depth) or obs_type == "rgbd"
        self.obs_keys = list(shape_meta["obs"].keys())
        self.observation_space = obs_space_from_shape_meta(shape_meta)
        action_dim = int(shape_meta["action"]["shape"][0])
        if action_dim != 7:
            raise ValueError(f"shape_meta.action.shape must be [7] for robosuite OSC_POSE + gripper, got {action_dim}")
        self.action_space = gym.spaces.Box(-1.0, 1.0, shape=(7,), dtype=np.float32)

        controller = load_composite_controller_config(controller="BASIC", robot="Panda")
        offscreen = bool(self.cameras) or render_mode == "rgb_array"
        kwargs = dict(
            robots="Panda",
            controller_configs=controller,
            has_renderer=False,
            has_offscreen_renderer=offscreen,
            use_camera_obs=bool(self.cameras),
            use_object_obs=True,  # privileged state for the experts, cheap
            control_freq=control_hz,
            horizon=100000,  # the gymnasium TimeLimit truncates, not robosuite
            ignore_done=True,
            reward_shaping=False,
            hard_reset=False,  # keep one sim and one renderer for the env's whole life
        )
        if self.cameras:
            kwargs.update(
                camera_names=self.cameras,
                camera_heights=self.image_size,
                camera_widths=self.image_size,
                camera_depths=self.depth,
            )
        kwargs.update(extra)
        kwargs.update(robosuite_kwargs or {})
        rng_state = np.random.get_state()
        np.random.seed(model_seed)
        try:
            self.rs_env = suite.make(rs_name, **kwargs)
        finally:
            np.random.set_state(rng_state)
        self._setup_renderer()
        self._raw_obs: dict[str, np.ndarray] = {}
        self._start_z: float | None = None
        self._lifted = False
        self._check_keys()

    # ---- rendering ----
    def _setup_renderer(self) -> None:
        ctx = getattr(self.rs_env.sim, "_render_context_offscreen", None)
        if ctx is None:
            return
        set_fast_model_settings(self.rs_env.sim.model._model, self.fast_render)
        if self.fast_render:
            # The MjrContext reads offsamples when it is created: rebuild it once.
            ctx.gl_ctx.make_current()
            ctx.con.free()
            ctx._set_mujoco_context_and_buffers()
        set_fast_scene_flags(ctx.scn, self.fast_render)
        close_at_exit(self)

    def render(self) -> np.ndarray | None:
        """uint8 [render_size, render_size, 3] from ``render_camera`` (only with render_mode='rgb_array')."""
        if self.render_mode != "rgb_array":
            return None
        img = self.rs_env.sim.render(camera_name=self.render_camera, width=self.render_size, height=self.render_size)
        return np.ascontiguousarray(img[::-1])

    # ---- gym API ----
    def _check_keys(self) -> None:
        raw = self.rs_env._get_observations(force_update=True)
        available = {_store_key(k) for k in raw}
        available |= {_camera_key(c) for c in self.cameras}
        missing = [k for k in self.obs_keys if k not in available]
        if missing:
            raise KeyError(
                f"robosuite task {self.task}: shape_meta.obs keys {missing} are not produced; available: {sorted(available)}"
            )

    def _convert(self, raw: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self._raw_obs = raw
        out: dict[str, np.ndarray] = {}
        for rs_key, value in raw.items():
            key = _store_key(rs_key)
            if key not in self.obs_keys:
                continue
            arr = np.asarray(value)
            if key.endswith("_image"):
                arr = np.ascontiguousarray(arr[::-1])  # OpenGL rows are bottom-up
            elif key.endswith("_depth"):
                arr = np.ascontiguousarray(arr[::-1, :, 0]).astype(np.float32)
            else:
                arr = arr.astype(np.float32)
            out[key] = arr
        return out

    def _info(self) -> dict[str, Any]:
        body, at_goal, goal_height = _STAGES[self.task]
        pos = np.array(self.rs_env.sim.data.body_xpos[body(self.rs_env)])
        if self._start_z is None:
            self._start_z = float(pos[2])
        self._lifted = self._lifted or float(pos[2]) > self._start_z + LIFTED_M
        metrics = {"lifted": float(self._lifted)}
        if at_goal is not None:
            metrics["at_goal"] = float(bool(at_goal(self.rs_env, pos)))
            metrics["over_goal"] = float(bool(at_goal(self.rs_env, np.array([pos[0], pos[1],
                                                                             goal_height(self.rs_env)]))))
        return {"success": bool(self.rs_env._check_success()), "language": self.language, "metrics": metrics}

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        if seed is not None:
            # robosuite samples placements and joint noise from numpy's global generator.
            np.random.seed(seed)
        self.rs_env.reset()
        # robosuite's reset computes the object-to-gripper sensors (Can, Square: the first 7 of `object`) before it
        # caches the gripper's pose, so they read zero in the first observation only, which looks like a hand at the
        # object (a policy closed on nothing); reading the same state again gives them
        raw = self.rs_env._get_observations(force_update=True)
        self._start_z, self._lifted = None, False
        return self._convert(raw), {**self._info(), "start": self._start(raw)}

    def _start(self, raw: dict[str, np.ndarray]) -> dict[str, Any]:
        """Where the episode starts (privileged; vmp-eval keeps it per episode, so that failures can be traced to
        start states): the moved object's table position and yaw, and its horizontal distance from the hand."""
        from vmp.sim.experts.robosuite_experts import yaw_of

        pos, quat = self.moved_object_pose()
        hand = np.asarray(raw["robot0_eef_pos"])
        return {"object_xy": [float(v) for v in pos[:2]], "object_yaw_deg": float(np.degrees(yaw_of(quat))),
                "hand_to_object_m": float(np.linalg.norm(pos[:2] - hand[:2]))}

    def step(self, action: np.ndarray):
        action = np.asarray(action, dtype=np.float64).reshape(-1)
        if action.shape != (7,):
            raise ValueError(f"{self.task}: action must have shape (7,), got {action.shape}")
        if not np.isfinite(action).all():
            raise FloatingPointError(f"{self.task}: non-finite action {action}")
        raw, reward, _, _ = self.rs_env.step(np.clip(action, -1.0, 1.0))
        info = self._info()
        return self._convert(raw), float(reward), bool(info["success"]), False, info

    def moved_object_pose(self) -> tuple[np.ndarray, np.ndarray]:
        """The position and quaternion (x, y, z, w, as robosuite's observations give it) of the object the task
        moves, from the simulator (privileged)."""
        body = _STAGES[self.task][0](self.rs_env)
        data = self.rs_env.sim.data
        return np.array(data.body_xpos[body]), np.roll(data.body_xquat[body], -1)  # MuJoCo's (w, x, y, z)

    def privileged(self) -> dict[str, np.ndarray]:
        """Full robosuite state observation of the last step (object poses): for the scripted experts."""
        return self._raw_obs

    def close(self) -> None:
        """Free the GL context explicitly so nothing is torn down by the garbage collector at exit."""
        if getattr(self, "_closed", False):
            return
        self._closed = True
        sim = getattr(getattr(self, "rs_env", None), "sim", None)
        ctx = getattr(sim, "_render_context_offscreen", None) if sim is not None else None
        if ctx is not None:
            try:
                ctx.con.free()
                ctx.gl_ctx.free()
            finally:
                # Neutralise robosuite's __del__ (it would free again during interpreter teardown).
                ctx.__class__ = _FreedContext
                sim._render_context_offscreen = None
        if hasattr(self, "rs_env"):
            self.rs_env.close()


class _FreedContext:
    """Stand-in class for an already freed robosuite render context: nothing left to free."""

    def __del__(self) -> None:
        pass


def _quiet_robosuite() -> None:
    """robosuite logs a screen of warnings per env (missing macros, unused controller parts)."""
    for name in ("robosuite", "robosuite_logs"):
        logging.getLogger(name).setLevel(logging.ERROR)
