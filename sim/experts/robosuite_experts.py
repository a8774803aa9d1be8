"""Privileged scripted grasp-and-place experts for the robosuite tasks (OSC_POSE delta actions).

Each reads object poses from ``env.privileged()`` and steers the end effector through way-points with a
proportional controller: position error (m) times ``pos_gain`` -> action in [-1, 1] (1 = 5 cm per step),
yaw error (rad) times ``yaw_gain`` -> the base-frame z rotation action.
"""

from __future__ import annotations

import numpy as np

from vmp.sim.experts.base import Expert

OPEN, CLOSE = -1.0, 1.0


def quat_to_mat(q_xyzw: np.ndarray) -> np.ndarray:
    x, y, z, w = q_xyzw
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


def yaw_of(q_xyzw: np.ndarray) -> float:
    """Heading of the body's x axis in the world xy plane."""
    m = quat_to_mat(q_xyzw)
    return float(np.arctan2(m[1, 0], m[0, 0]))


def wrap(angle: float, period: float) -> float:
    """Angle wrapped to [-period/2, period/2)."""
    return float((angle + period / 2) % period - period / 2)


class _ArmExpert(Expert):
    pos_gain = 12.0
    yaw_gain = 2.0

    def _priv(self) -> dict[str, np.ndarray]:
        return self.env.privileged()

    def _move(self, target: np.ndarray, gripper: float, yaw_err: float = 0.0) -> np.ndarray:
        eef = self._priv()["robot0_eef_pos"]
        a = np.zeros(7, dtype=np.float32)
        a[:3] = np.clip(self.pos_gain * (np.asarray(target) - eef), -1.0, 1.0)
        a[5] = np.clip(self.yaw_gain * yaw_err, -1.0, 1.0)
        a[6] = gripper
        return a

    def _yaw_err(self, obj_quat: np.ndarray, symmetry: float, offset: float = 0.0) -> float:
        """Rotation (about world z) that aligns the gripper's fingers with the object's faces."""
        grip_yaw = yaw_of(self._priv()["robot0_eef_quat"])
        return wrap(yaw_of(obj_quat) + offset - grip_yaw, symmetry)


class LiftExpert(_ArmExpert):
    """approach (above the cube, yaw aligned) -> descend -> grasp (close for a few steps) -> lift."""

    name = "lift"
    phase_names = ("approach cube", "descend to cube", "grasp cube", "lift cube")
    hover = 0.08
    grasp_steps = 8
    lift_height = 0.15

    def reset(self, seed: int | None = None) -> None:
        super().reset(seed)
        self._grasp_count = 0
        self._lift_z: float | None = None

    def _act(self, obs):
        p = self._priv()
        cube, eef = p["cube_pos"], p["robot0_eef_pos"]
        yaw_err = self._yaw_err(p["cube_quat"], np.pi / 2)
        xy_err = np.linalg.norm(cube[:2] - eef[:2])
        if self.phase == 0:  # approach
            if xy_err < 0.01 and abs(yaw_err) < 0.1 and abs(eef[2] - (cube[2] + self.hover)) < 0.03:
                self.phase = 1
            return self._move(cube + [0, 0, self.hover], OPEN, yaw_err)
        if self.phase == 1:  # descend
            if eef[2] - cube[2] < 0.01:
                self.phase = 2
            return self._move(cube + [0, 0, -0.005], OPEN, yaw_err)
        if self.phase == 2:  # grasp
            self._grasp_count += 1
            if self._grasp_count >= self.grasp_steps:
                self.phase = 3
                self._lift_z = float(eef[2] + self.lift_height)
            return self._move(cube + [0, 0, -0.005], CLOSE)
        target = np.array([eef[0], eef[1], self._lift_z])
        return self._move(target, CLOSE)


class _PickPlaceExpert(_ArmExpert):
    """approach -> descend -> grasp -> lift -> carry -> lower -> release -> retreat, on privileged poses.

    Subclasses say where to grasp (``_grasp``), which object point must end where (``_held_point`` and
    ``_place_point``), and the heights; the carry and lower phases steer the end effector so that the held
    point (not the hand) reaches the goal, which corrects for where in the hand the object sits.
    """

    phase_names = ("approach", "descend", "grasp", "lift", "carry", "lower", "release", "retreat")
    grasp_steps = 10
    release_steps = 8
    lift_z = 1.0  # absolute end-effector height for carrying (m)
    grasp_depth = 0.0  # below the grasp point (m)
    place_tol = 0.01
    yaw_symmetry = np.pi / 2
    grasp_yaw_offset = 0.0

    descend_tol = 0.008
    lower_tol = 0.05  # xy error (m) of the held point under which the lower phase descends
    lower_step = 0.05  # m per step at most while lowering
    retry_stalled = False

    def reset(self, seed: int | None = None) -> None:
        super().reset(seed)
        self._count = 0
        self._z_hist: list[float] = []

    def _stalled(self, z: float, steps: int = 6, tol: float = 0.001) -> bool:
        """The hand stopped moving vertically (it sits on something): stop pushing down."""
        self._z_hist.append(float(z))
        return len(self._z_hist) > steps and abs(self._z_hist[-1 - steps] - self._z_hist[-1]) < tol

    # hooks
    def _grasp(self) -> tuple[np.ndarray, np.ndarray]:
        """(grasp position, object quaternion for yaw alignment)."""
        raise NotImplementedError

    def _held_point(self) -> np.ndarray:
        raise NotImplementedError

    def _place_point(self) -> np.ndarray:
        """Where the held point goes (its z: the release height)."""
        raise NotImplementedError

    def _carry_yaw_err(self) -> float:
        return 0.0

    def _act(self, obs):
        p = self._priv()
        eef = p["robot0_eef_pos"]
        if self.phase <= 2:
            grasp, quat = self._grasp()
            yaw_err = self._yaw_err(quat, self.yaw_symmetry, self.grasp_yaw_offset) if quat is not None else 0.0
            if self.phase == 0:
                hover = grasp + [0, 0, 0.08]
                if np.linalg.norm(grasp[:2] - eef[:2]) < 0.008 and abs(yaw_err) < 0.08 and abs(eef[2] - hover[2]) < 0.03:
                    self.phase = 1
                return self._move(hover, OPEN, yaw_err)
            if self.phase == 1:
                target = grasp - [0, 0, self.grasp_depth]
                if eef[2] - target[2] < self.descend_tol or self._stalled(eef[2]):
                    self.phase, self._z_hist = 2, []
                return self._move(target, OPEN, yaw_err)
            self._count += 1
            if self._count >= self.grasp_steps:
                self.phase, self._count = 3, 0
            return self._move(grasp - [0, 0, self.grasp_depth], CLOSE)
        held, place = self._held_point(), self._place_point()
        offset = place - held  # move the hand by what the held point still lacks
        if self.phase == 3:  # lift straight up
            if eef[2] > self.lift_z - 0.02:
                self.phase = 4
            return self._move(np.array([eef[0], eef[1], self.lift_z]), CLOSE)
        if self.phase == 4:  # carry at height
            yaw_err = self._carry_yaw_err()
            target = np.array([eef[0] + offset[0], eef[1] + offset[1], self.lift_z])
            if np.linalg.norm(offset[:2]) < self.place_tol and abs(yaw_err) < 0.05:
                self.phase = 5
            return self._move(target, CLOSE, yaw_err)
        if self.phase == 5:  # lower to the release height, descending only while centred
            yaw_err = self._carry_yaw_err()
            centred = np.linalg.norm(offset[:2]) < self.lower_tol
            dz = max(offset[2], -self.lower_step) if centred else 0.0
            target = eef + np.array([offset[0], offset[1], dz])
            if offset[2] > -0.005:
                self.phase, self._z_hist = 6, []
            elif self._stalled(eef[2], steps=10) and self.retry_stalled:
                self.phase, self._z_hist = 4, []  # caught on something: back up to carry height and retry
            return self._move(target, CLOSE, yaw_err)
        if self.phase == 6:
            self._count += 1
            if self._count >= self.release_steps:
                self.phase, self._count = 7, 0
            return self._move(eef, OPEN)
        return self._move(np.array([eef[0], eef[1], eef[2] + 0.1]), OPEN)


class StackExpert(_PickPlaceExpert):
    """Pick the red cube (A) and put it on the green cube (B)."""

    name = "stack"
    phase_names = ("approach red cube", "descend to red cube", "grasp red cube", "lift red cube",
                   "carry red cube over green cube", "lower red cube onto green cube", "release red cube", "retreat")
    lift_z = 0.95
    grasp_depth = 0.005

    def _grasp(self):
        p = self._priv()
        return p["cubeA_pos"].copy(), p["cubeA_quat"]

    def _held_point(self):
        return self._priv()["cubeA_pos"]

    def _place_point(self):
        b = self._priv()["cubeB_pos"]
        return b + np.array([0.0, 0.0, 0.025 + 0.02 + 0.006])  # B half-height + A half-height + clearance


class PickPlaceCanExpert(_PickPlaceExpert):
    """Pick the can from the left bin and drop it in its place in the right bin."""

    name = "pick_place_can"
    phase_names = ("approach can", "descend to can", "grasp can", "lift can", "carry can over its bin",
                   "lower can into the bin", "release can", "retreat")
    lift_z = 1.05
    grasp_depth = 0.0
    yaw_symmetry = 2 * np.pi  # a cylinder: no yaw alignment needed

    def _grasp(self):
        return self._priv()["Can_pos"].copy(), None

    def _held_point(self):
        return self._priv()["Can_pos"]

    def _place_point(self):
        env = self.env.rs_env
        xy = env.target_bin_placements[env.object_to_id["can"]][:2]
        return np.array([xy[0], xy[1], env.bin2_pos[2] + 0.08])


class SquareExpert(_PickPlaceExpert):
    """Pick the square nut by its handle and fit it over the square peg (peg 1)."""

    name = "square"
    phase_names = ("approach nut handle", "descend to nut handle", "grasp nut handle", "lift nut",
                   "carry nut over the square peg", "lower nut onto the peg", "release nut", "retreat")
    lift_z = 1.05
    grasp_depth = 0.0
    place_tol = 0.003
    lower_tol = 0.003
    lower_step = 0.01
    retry_stalled = True
    handle_reach = 1.0  # grasp point: this far out along centre -> handle site

    def _site(self, name: str) -> np.ndarray:
        sim = self.env.rs_env.sim
        return np.array(sim.data.site_xpos[sim.model.site_name2id(name)])

    def _grasp(self):
        p = self._priv()
        centre, handle = self._site("SquareNut_center_site"), self._site("SquareNut_handle_site")
        return centre + self.handle_reach * (handle - centre), p["SquareNut_quat"]

    def _held_point(self):
        # the hole's centre: the mean of the nut's four wall geoms (the centre site is off the hole)
        sim = self.env.rs_env.sim
        ids = [sim.model.geom_name2id(f"SquareNut_g{i}") for i in range(4)]
        return np.mean([sim.data.geom_xpos[i] for i in ids], axis=0)

    def _place_point(self):
        env = self.env.rs_env
        peg = np.array(env.sim.data.body_xpos[env.peg1_body_id])
        return np.array([peg[0], peg[1], env.table_offset[2] + 0.03])

    def _carry_yaw_err(self) -> float:
        # the peg's faces are axis-aligned: turn the nut's yaw to a multiple of 90 degrees
        return wrap(0.0 - yaw_of(self._priv()["SquareNut_quat"]), np.pi / 2)
