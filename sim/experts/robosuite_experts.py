"""Privileged scripted grasp-and-place experts for the robosuite tasks (OSC_POSE delta actions).

Each reads object poses from ``env.privileged()`` and steers the end effector through way-points with a
proportional controller: position error (m) times ``pos_gain`` -> action in [-1, 1] (1 = 5 cm per step),
yaw error (rad) times ``yaw_gain`` -> the base-frame z rotation action.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from vmp.sim.experts.base import Expert

OPEN, CLOSE = -1.0, 1.0


class _NutOverPeg(NamedTuple):
    """The held square nut against the peg: hole centre, xy offset to the peg's axis, yaw error to the peg's faces,
    bottom height, peg top height and the hole centre's height when hovering just above the peg top (m, rad)."""

    held: np.ndarray
    xy_off: np.ndarray
    yaw_err: float
    bottom: float
    peg_top: float
    hover_z: float


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

    def _release(self, eef: np.ndarray, next_phase: int) -> np.ndarray:
        """Open standing still for ``release_steps``, then go to ``next_phase``."""
        self._count += 1
        if self._count >= self.release_steps:
            self.phase, self._count = next_phase, 0
        return self._move(eef, OPEN)

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
            return self._release(eef, 7)
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
    """Pick the square nut by its handle and fit it over the square peg (peg 1), closed loop with retries.

    The fingers close across the handle (not along it: along it one finger ends up inside the hole and lands on
    the peg top). The hand is kept pointing straight down (roll and pitch servoed too, so the nut hangs level even
    under action noise). Carry and lower servo the hole's centre (not the hand) onto the peg's axis and turn the
    nut's yaw to a multiple of 90 degrees; above the peg top the nut descends only while centred and aligned.
    Retries: a grasp that does not lift the nut (or a nut lost on the way) opens, backs off and approaches again;
    a nut that stalls above the peg is lifted clear, re-centred and lowered again.
    """

    name = "square"
    phase_names = ("approach nut handle", "descend to nut handle", "grasp nut handle", "lift nut",
                   "carry nut over the square peg", "lower nut onto the peg", "release nut", "retreat",
                   "open and back off to grasp the nut again", "lift nut off the peg top to retry")
    APPROACH, DESCEND, GRASP, LIFT, CARRY, LOWER, RELEASE, RETREAT, REGRASP, UNJAM = range(10)

    lift_z = 1.02  # end-effector height for carrying (m): the nut's bottom clears the peg top (0.95 m)
    yaw_symmetry = np.pi  # the two fingers are interchangeable
    handle_reach = 1.15  # grasp point: this far out along centre -> handle site (clear of the hole's wall)
    tilt_gain = 1.0  # roll/pitch error (rad) -> rotation action
    hover_gap = 0.012  # nut bottom above the peg top before the insertion (m)
    hole_half, peg_half = 0.0227, 0.016  # half widths (m) of the nut's square hole and of the square peg (robosuite)
    entry_margin = 0.0025  # the nut enters the peg only with this clearance (m) left at its xy and yaw error
    entry_step = 0.006  # m per step while entering
    insert_step = 0.03  # m per step at most once on the peg
    insert_gain = 20.0  # position gain over the peg: a stiffer servo holds the nut centred against action noise
    nut_half_height = 0.01
    max_retries = 6  # regrasps and unjams together, per episode

    def reset(self, seed: int | None = None) -> None:
        super().reset(seed)
        self._retries = 0
        self._hold_xy: np.ndarray | None = None
        self._grasp_offset: np.ndarray | None = None  # handle point -> hand, at the grasp
        self._nut_goal_yaw: float | None = None
        self._rim_steps, self._lowest, self._since_lowest = 0, np.inf, 0

    # ---- geometry ----
    def _site(self, name: str) -> np.ndarray:
        sim = self.env.rs_env.sim
        return np.array(sim.data.site_xpos[sim.model.site_name2id(name)])

    def _grasp(self):
        p = self._priv()
        centre, handle = self._site("SquareNut_center_site"), self._site("SquareNut_handle_site")
        return centre + self.handle_reach * (handle - centre), p["SquareNut_quat"]

    def _held_point(self):
        # the hole's centre: the mean of the nut's four wall geoms
        sim = self.env.rs_env.sim
        ids = [sim.model.geom_name2id(f"SquareNut_g{i}") for i in range(4)]
        return np.mean([sim.data.geom_xpos[i] for i in ids], axis=0)

    def _peg(self) -> tuple[np.ndarray, float]:
        """(peg axis xy, peg top z)."""
        env = self.env.rs_env
        sim = env.sim
        gid = next(i for i in range(sim.model.ngeom) if sim.model.geom_bodyid[i] == env.peg1_body_id)
        top = float(sim.data.geom_xpos[gid][2] + sim.model.geom_size[gid][2])
        return np.array(sim.data.body_xpos[env.peg1_body_id][:2]), top

    def _place_point(self):
        env = self.env.rs_env
        xy, _ = self._peg()
        return np.array([xy[0], xy[1], env.table_offset[2] + 0.03])

    def _carry_yaw_err(self) -> float:
        # the peg's faces are axis-aligned: turn the nut's yaw to a multiple of 90 degrees, but not to 0 (the
        # handle, and so the hand, would point away from the robot, at the edge of its reach over the peg)
        yaw = yaw_of(self._priv()["SquareNut_quat"])
        if self._nut_goal_yaw is None:  # chosen once per carry (a choice remade every step can dither)
            goal = yaw + wrap(0.0 - yaw, np.pi / 2)
            if abs(wrap(goal, 2 * np.pi)) < 0.1:
                goal = np.pi / 2 if yaw > 0 else -np.pi / 2
            self._nut_goal_yaw = float(goal)
        return wrap(self._nut_goal_yaw - yaw, 2 * np.pi)

    # ---- control ----
    def _move(self, target: np.ndarray, gripper: float, yaw_err: float = 0.0, max_action: float = 1.0,
              gain: float | None = None) -> np.ndarray:
        a = super()._move(target, gripper, yaw_err)
        eef = self._priv()["robot0_eef_pos"]
        a[:3] = np.clip((gain or self.pos_gain) * (np.asarray(target) - eef), -max_action, max_action)
        # roll/pitch: the rotation (base frame) that turns the hand's approach axis straight down
        approach = quat_to_mat(self._priv()["robot0_eef_quat"])[:, 2]
        tilt = np.cross(approach, [0.0, 0.0, -1.0])
        a[3:5] = np.clip(self.tilt_gain * tilt[:2], -1.0, 1.0)
        return a

    def _entry_margin(self, xy_off: np.ndarray, yaw_err: float) -> float:
        """Clearance (m) left between the peg and the hole's walls at this centring and yaw error."""
        yaw = abs(wrap(yaw_err, np.pi / 2))
        return self.hole_half - self.peg_half * (np.cos(yaw) + np.sin(yaw)) - float(np.linalg.norm(xy_off))

    def _nut_touches_peg(self) -> bool:
        sim = self.env.rs_env.sim
        nut, peg = self.env.rs_env.obj_body_id["SquareNut"], self.env.rs_env.peg1_body_id
        for c in sim.data.contact[: sim.data.ncon]:
            bodies = {sim.model.geom_bodyid[c.geom1], sim.model.geom_bodyid[c.geom2]}
            if bodies == {nut, peg}:
                return True
        return False

    def _nut_in_hand(self) -> bool:
        """The fingers still hold the handle: not closed on nothing, and the handle near where it was grasped."""
        if self._grasp_offset is None:
            return False
        p = self._priv()
        width = float(p["robot0_gripper_qpos"][0] - p["robot0_gripper_qpos"][1])
        grasp, _ = self._grasp()
        return width > 0.02 and bool(np.linalg.norm(p["robot0_eef_pos"] - grasp - self._grasp_offset) < 0.04)

    def _retry(self, phase: int) -> None:
        self._retries += 1
        self._rim_steps, self._lowest, self._since_lowest = 0, np.inf, 0
        self.phase, self._count, self._z_hist = phase, 0, []

    def _act(self, obs):
        eef = self._priv()["robot0_eef_pos"]
        if self.phase <= self.GRASP:
            return self._reach_handle(eef)
        if self.phase == self.REGRASP:  # open, rise, and approach the handle again
            self._count += 1
            if self._count >= 8:
                self.phase, self._count, self._z_hist = self.APPROACH, 0, []
            return self._move(np.array([eef[0], eef[1], max(eef[2], self._grasp()[0][2] + 0.08)]), OPEN)
        if self.phase == self.RELEASE:
            return self._release(eef, self.RETREAT)
        if self.phase == self.RETREAT:
            return self._move(np.array([eef[0], eef[1], eef[2] + 0.1]), OPEN)
        if not self._nut_in_hand() and self._retries < self.max_retries:
            self._retry(self.REGRASP)  # grasp failed or the nut slipped out: open and start over
            return self._move(eef, OPEN)
        nut = self._nut_over_peg()
        holding = {self.LIFT: self._lift, self.CARRY: self._carry, self.UNJAM: self._unjam}
        return holding.get(self.phase, self._lower)(eef, nut)

    def _reach_handle(self, eef: np.ndarray) -> np.ndarray:
        """APPROACH (hover over the handle, yaw aligned), DESCEND onto it, GRASP (close for a few steps)."""
        grasp, quat = self._grasp()
        yaw_err = self._yaw_err(quat, self.yaw_symmetry)
        if self.phase == self.APPROACH:
            hover = grasp + [0, 0, 0.06]
            over = np.linalg.norm(grasp[:2] - eef[:2]) < 0.005 and abs(eef[2] - hover[2]) < 0.02
            if over and abs(yaw_err) < 0.06:
                self.phase, self._z_hist = self.DESCEND, []
            return self._move(hover, OPEN, yaw_err)
        if self.phase == self.DESCEND:
            if eef[2] - grasp[2] < 0.005 or self._stalled(eef[2]):
                self.phase, self._count = self.GRASP, 0
            return self._move(grasp, OPEN, yaw_err, max_action=0.5)
        self._count += 1
        if self._count >= self.grasp_steps:
            self.phase, self._count = self.LIFT, 0
            self._hold_xy = eef[:2].copy()
            self._grasp_offset = eef - grasp
            self._nut_goal_yaw = None
        return self._move(grasp, CLOSE)

    def _nut_over_peg(self) -> _NutOverPeg:
        """Where the held nut is against the peg (its yaw goal chosen on the first call of a carry)."""
        held = self._held_point()
        peg_xy, peg_top = self._peg()
        return _NutOverPeg(held=held, xy_off=peg_xy - held[:2], yaw_err=self._carry_yaw_err(),
                           bottom=held[2] - self.nut_half_height, peg_top=peg_top,
                           hover_z=peg_top + self.hover_gap + self.nut_half_height)

    def _lift(self, eef: np.ndarray, nut: _NutOverPeg) -> np.ndarray:
        """LIFT: straight up to the carry height."""
        if eef[2] > self.lift_z - 0.02:
            self.phase = self.CARRY
        return self._move(np.array([*self._hold_xy, self.lift_z]), CLOSE, max_action=0.6)

    def _carry(self, eef: np.ndarray, nut: _NutOverPeg) -> np.ndarray:
        """CARRY: over the peg at carry height, nut yaw aligned, descending to the hover height once near it."""
        if np.linalg.norm(nut.xy_off) < 0.01 and abs(nut.yaw_err) < 0.1:
            self.phase, self._z_hist = self.LOWER, []
        to_hover = nut.hover_z - nut.held[2]
        dz = max(self.lift_z - eef[2], to_hover) if np.linalg.norm(nut.xy_off) > 0.03 else to_hover
        target = eef + np.array([nut.xy_off[0], nut.xy_off[1], dz])
        return self._move(target, CLOSE, nut.yaw_err, max_action=0.6)

    def _unjam(self, eef: np.ndarray, nut: _NutOverPeg) -> np.ndarray:
        """UNJAM: lift the nut clear of the peg top, then lower again."""
        target = eef + np.array([nut.xy_off[0], nut.xy_off[1], nut.hover_z + 0.01 - nut.held[2]])
        if nut.held[2] > nut.hover_z + 0.005:
            self.phase, self._z_hist = self.LOWER, []
        return self._move(target, CLOSE, nut.yaw_err, max_action=0.4, gain=self.insert_gain)

    def _lower(self, eef: np.ndarray, nut: _NutOverPeg) -> np.ndarray:
        """LOWER: centred and aligned, the nut enters the peg; otherwise it waits just above the peg top while the
        servo centres it; once its bottom is past the peg top the peg guides it: slide down to the release height."""
        place_z = self._place_point()[2]
        engaged = nut.bottom < nut.peg_top - 0.001
        if engaged:
            dz = max(place_z - nut.held[2], -self.insert_step)
        elif self._entry_margin(nut.xy_off, nut.yaw_err) > self.entry_margin and nut.bottom < nut.peg_top + 0.008:
            dz = -self.entry_step
        else:
            dz = float(np.clip(nut.peg_top + 0.005 - nut.bottom, -self.entry_step, 0.01))
        target = eef + np.array([nut.xy_off[0], nut.xy_off[1], dz])
        if nut.held[2] < place_z + 0.005:
            self.phase, self._count = self.RELEASE, 0
        elif self._retries < self.max_retries:
            self._watch_for_jam(float(nut.held[2]), engaged)
        return self._move(target, CLOSE, nut.yaw_err, max_action=0.6, gain=self.insert_gain)

    def _watch_for_jam(self, held_z: float, engaged: bool) -> None:
        """While lowering: a nut resting on the peg top's rim, or one that stopped sinking on the peg, is lifted clear
        and centred again (UNJAM)."""
        self._rim_steps = self._rim_steps + 1 if not engaged and self._nut_touches_peg() else 0
        if held_z < self._lowest - 0.002:
            self._lowest, self._since_lowest = held_z, 0
        elif engaged:
            self._since_lowest += 1
        if self._rim_steps >= 3 or self._since_lowest >= 20:
            self._retry(self.UNJAM)
