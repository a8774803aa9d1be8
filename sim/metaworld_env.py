"""Meta-World (v3, Sawyer) tasks behind one gymnasium wrapper: single task (MT1) or the 50-task MT50 set.

Observation keys: ``state`` [39] float32 (Meta-World's full observation: hand xyz, gripper opening,
object poses, the previous frame, and the goal: MT benchmarks are fully observable), ``eef_pos`` [3],
``gripper`` [1], ``task_onehot`` [50] (MT50 index), and ``<camera>_image`` [H, W, 3] uint8 from Meta-World
cameras (``corner``, ``corner2``, ``corner3``, ``topview``, ``behindGripper``, ``gripperPOV``).
Action: [4] in [-1, 1]: hand xyz delta (1 = 1 cm) and gripper effort.

Each seed draws its own object/goal placement (Meta-World's seeded random vector), so episode i of an
evaluation is the same scene whatever worker runs it. In multitask mode episode ``seed`` runs task
``MT50_TASKS[seed % 50]`` unless ``reset(options={"task_name": ...})`` names one; one Meta-World env
per task is built lazily and kept.
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

# One instruction per task (PAD and Diffusion-VLA condition on it).
INSTRUCTIONS: dict[str, str] = {
    "assembly-v3": "put the ring onto the peg",
    "basketball-v3": "dunk the basketball into the hoop",
    "bin-picking-v3": "move the cube from one bin to the other",
    "box-close-v3": "put the lid on the box",
    "button-press-topdown-v3": "press the button from the top",
    "button-press-topdown-wall-v3": "press the button from the top behind the wall",
    "button-press-v3": "press the button",
    "button-press-wall-v3": "press the button behind the wall",
    "coffee-button-v3": "push the button on the coffee machine",
    "coffee-pull-v3": "pull the mug out of the coffee machine",
    "coffee-push-v3": "push the mug under the coffee machine",
    "dial-turn-v3": "turn the dial",
    "disassemble-v3": "pick the ring off the peg",
    "door-close-v3": "close the door",
    "door-lock-v3": "lock the door by turning the lock",
    "door-open-v3": "open the door",
    "door-unlock-v3": "unlock the door by turning the lock",
    "hand-insert-v3": "insert the gripper into the hole",
    "drawer-close-v3": "close the drawer",
    "drawer-open-v3": "open the drawer",
    "faucet-open-v3": "turn the faucet on",
    "faucet-close-v3": "turn the faucet off",
    "hammer-v3": "hammer the nail into the wall",
    "handle-press-side-v3": "press the handle down from the side",
    "handle-press-v3": "press the handle down",
    "handle-pull-side-v3": "pull the handle up from the side",
    "handle-pull-v3": "pull the handle up",
    "lever-pull-v3": "pull the lever up",
    "pick-place-wall-v3": "pick up the puck and place it at the goal behind the wall",
    "pick-out-of-hole-v3": "pick the puck out of the hole",
    "pick-place-v3": "pick up the puck and place it at the goal",
    "plate-slide-v3": "slide the plate into the cabinet",
    "plate-slide-side-v3": "slide the plate into the cabinet from the side",
    "plate-slide-back-v3": "slide the plate out of the cabinet",
    "plate-slide-back-side-v3": "slide the plate out of the cabinet sideways",
    "peg-insert-side-v3": "insert the peg into the hole from the side",
    "peg-unplug-side-v3": "unplug the peg from the side",
    "soccer-v3": "kick the ball into the goal",
    "stick-push-v3": "grasp the stick and push the box with it",
    "stick-pull-v3": "grasp the stick and pull the box with it",
    "push-v3": "push the puck to the goal",
    "push-wall-v3": "push the puck around the wall to the goal",
    "push-back-v3": "push the puck backwards to the goal",
    "reach-v3": "reach the goal position",
    "reach-wall-v3": "reach the goal position over the wall",
    "shelf-place-v3": "place the puck on the shelf",
    "sweep-into-v3": "sweep the puck into the hole",
    "sweep-v3": "sweep the puck off the table",
    "window-open-v3": "slide the window open",
    "window-close-v3": "slide the window closed",
}
MT50_TASKS: tuple[str, ...] = tuple(INSTRUCTIONS)


def _build_task_env(task_name: str):
    """A Meta-World env for ``task_name`` that draws a fresh placement per seed, goal in the observation."""
    import metaworld  # noqa: F401  (registers assets)
    from metaworld.env_dict import ALL_V3_ENVIRONMENTS, ML1_ARGS_KWARGS

    if task_name not in ALL_V3_ENVIRONMENTS:
        raise ValueError(f"Meta-World task {task_name!r} unknown; the 50 v3 tasks: {sorted(ALL_V3_ENVIRONMENTS)}")
    env = ALL_V3_ENVIRONMENTS[task_name]()
    kwargs = dict(ML1_ARGS_KWARGS[task_name]["kwargs"])
    kwargs.pop("task_id", None)
    env._set_task_inner(**kwargs)
    env._set_task_called = True
    env._freeze_rand_vec = False
    env.seeded_rand_vec = True  # placements from env.np_random, seeded per episode
    if env._partially_observable:
        env._partially_observable = False
        env.__dict__.pop("sawyer_observation_space", None)  # cached_property: recompute with the goal
    return env


class MetaWorldEnv(gym.Env):
    """One Meta-World task, or all of MT50 (``multitask=True``), with dict observations."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 80}

    def __init__(
        self,
        shape_meta: dict,
        task_name: str = "push-v3",
        multitask: bool = False,
        obs_type: str = "lowdim",
        cameras: list[str] | None = None,
        image_size: int = 84,
        render_mode: str | None = None,
        render_camera: str = "corner2",
        render_size: int = 128,
        fast_render: bool = True,
        control_hz: int = 80,
        language: str | None = None,
        tasks: list[str] | None = None,
        camera_fovy: float | None = None,
        goal_marker_size: float | None = None,
        **unused: Any,
    ):
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be None or 'rgb_array', got {render_mode!r}")
        self.multitask = bool(multitask)
        self.tasks = tuple(tasks) if tasks else (MT50_TASKS if self.multitask else (task_name,))
        unknown = [t for t in self.tasks if t not in INSTRUCTIONS]
        if unknown:
            raise ValueError(f"Meta-World tasks {unknown} unknown; the 50 v3 tasks: {list(MT50_TASKS)}")
        self.obs_keys = list(shape_meta["obs"])
        self.cameras = list(cameras or []) if obs_type != "lowdim" else []
        known = {"state", "eef_pos", "gripper", "task_onehot"} | {f"{c}_image" for c in self.cameras}
        unknown = [k for k in self.obs_keys if k not in known]
        if unknown:
            raise KeyError(f"Meta-World: shape_meta.obs keys {unknown} unknown; available: {sorted(known)}")
        self.observation_space = obs_space_from_shape_meta(shape_meta)
        if tuple(shape_meta["action"]["shape"]) != (4,):
            raise ValueError(f"Meta-World: shape_meta.action.shape must be [4], got {list(shape_meta['action']['shape'])}")
        self.action_space = gym.spaces.Box(-1.0, 1.0, shape=(4,), dtype=np.float32)
        self.image_size, self.render_size = int(image_size), int(render_size)
        self.render_mode, self.render_camera = render_mode, render_camera
        self.fast_render = bool(fast_render)
        if camera_fovy is not None and not 5.0 <= float(camera_fovy) <= 120.0:
            raise ValueError(f"Meta-World: env_kwargs.camera_fovy must be in [5, 120] degrees, got {camera_fovy}")
        if goal_marker_size is not None and not 0.0 < float(goal_marker_size) <= 0.1:
            raise ValueError(f"Meta-World: env_kwargs.goal_marker_size must be in (0, 0.1] m, got {goal_marker_size}")
        self.camera_fovy, self.goal_marker_size = camera_fovy, goal_marker_size
        self._fixed_language = language if not self.multitask else None
        self.metadata = {**self.metadata, "render_fps": control_hz}
        self._envs: dict[str, Any] = {}
        self._renderers: dict[tuple[str, int], mujoco.Renderer] = {}
        self.task_name = self.tasks[0]
        self._mw = self._task_env(self.task_name)
        self._last_obs: np.ndarray | None = None

    def _task_env(self, name: str):
        if name not in self._envs:
            env = _build_task_env(name)
            set_fast_model_settings(env.model, self.fast_render)
            self._adjust_view(env.model)
            self._envs[name] = env
        return self._envs[name]

    def _adjust_view(self, model: mujoco.MjModel) -> None:
        """Narrow the cameras' field of view and enlarge the goal marker: at 64 px the default view leaves the
        objects a pixel or two wide and the goal (a 2 cm sphere) invisible, so an image-only policy could not see
        where to go. Rendering only: sites and cameras take no part in the physics."""
        if self.camera_fovy is not None:
            for camera in {*self.cameras, self.render_camera}:
                cid = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, camera)
                if cid < 0:
                    raise KeyError(f"Meta-World: camera {camera!r} not in the model")
                model.cam_fovy[cid] = float(self.camera_fovy)
        if self.goal_marker_size is not None:
            sid = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_SITE, "goal")
            if sid >= 0:
                model.site_size[sid, 0] = float(self.goal_marker_size)

    @property
    def language(self) -> str:
        return self._fixed_language or INSTRUCTIONS[self.task_name]

    # ---- observations ----
    def _convert(self, raw: np.ndarray) -> dict[str, np.ndarray]:
        self._last_obs = np.asarray(raw, dtype=np.float64)
        out: dict[str, np.ndarray] = {}
        for key in self.obs_keys:
            if key == "state":
                out[key] = self._last_obs.astype(np.float32)
            elif key == "eef_pos":
                out[key] = self._last_obs[:3].astype(np.float32)
            elif key == "gripper":
                out[key] = self._last_obs[3:4].astype(np.float32)
            elif key == "task_onehot":
                onehot = np.zeros(len(MT50_TASKS), dtype=np.float32)
                onehot[MT50_TASKS.index(self.task_name)] = 1.0
                out[key] = onehot
            else:
                out[key] = self._render(key[: -len("_image")], self.image_size)
        return out

    def _render(self, camera: str, size: int) -> np.ndarray:
        key = (self.task_name, size)
        r = self._renderers.get(key)
        if r is None:
            r = mujoco.Renderer(self._mw.model, size, size)
            self._renderers[key] = r
            close_at_exit(self)
        r.update_scene(self._mw.data, camera=camera)
        set_fast_scene_flags(r.scene, self.fast_render)
        img = r.render()
        # Meta-World's corner cameras are mounted upside down
        return np.ascontiguousarray(img[::-1, ::-1]) if camera.startswith("corner") else img.copy()

    def render(self) -> np.ndarray | None:
        if self.render_mode != "rgb_array":
            return None
        return self._render(self.render_camera, self.render_size)

    def privileged(self) -> dict[str, Any]:
        """The full Meta-World observation vector (goal included) and the task: for the scripted experts."""
        return {"state": self._last_obs, "task_name": self.task_name}

    # ---- gym API ----
    def _info(self, success: bool) -> dict[str, Any]:
        return {"success": bool(success), "language": self.language, "task_name": self.task_name}

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        if options and options.get("task_name"):
            name = options["task_name"]
        elif self.multitask:
            index = seed if seed is not None else int(self.np_random.integers(len(self.tasks)))
            name = self.tasks[index % len(self.tasks)]
        else:
            name = self.tasks[0]
        if name not in self.tasks:
            raise ValueError(f"task_name {name!r} is not among this env's tasks {list(self.tasks)}")
        self.task_name = name
        self._mw = self._task_env(name)
        self._mw.seed(int(seed) if seed is not None else int(self.np_random.integers(2**31)))
        raw, _ = self._mw.reset()
        return self._convert(raw), self._info(False)

    def step(self, action: np.ndarray):
        action = np.asarray(action, dtype=np.float32).reshape(-1)
        if action.shape != (4,):
            raise ValueError(f"Meta-World: action must have shape (4,), got {action.shape}")
        if not np.isfinite(action).all():
            raise FloatingPointError(f"Meta-World: non-finite action {action}")
        raw, reward, _, truncated, info = self._mw.step(np.clip(action, -1.0, 1.0))
        success = bool(info.get("success", 0.0) > 0.5)
        if self._mw.curr_path_length >= self._mw.max_path_length:
            truncated = True
        return self._convert(raw), float(reward), success, bool(truncated), self._info(success)

    def close(self) -> None:
        for r in self._renderers.values():
            r.close()
        self._renderers.clear()
        for env in self._envs.values():
            env.close()
        self._envs.clear()
