"""``vmp-record``: teleoperated demonstrations into a store, one episode at a time, with an operator in the loop.

    vmp-record robot=so101 teleop=so101_leader out=stores/my_task.zarr n_episodes=50 instruction="put the cube in the bowl"
    vmp-record robot=toy teleop=toy_scripted out=stores/toy.zarr n_episodes=10 operator.kind=none

Per episode: the operator resets the scene and starts; the teleoperator drives the robot at its control rate
(through the robot config's safety limits) until the episode ends (the operator's Enter on a terminal, a simulated
task's success, or ``max_ticks``); the robot stops; the operator saves, discards (next seed) or re-records (same
seed) it, and marks success. Saved episodes hold the robot's observation keys (camera frames resized to
``image_size`` when set) and what `vmp-deploy` records beside them (``action``, the command sent; ``policy_action``,
what the teleoperator asked for; ``tick_time``; ``command_status``); their text the instruction, success and who
judged it. The store is appended episode by episode (crash-safe): a new run adds to it.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
import numpy as np
from omegaconf import DictConfig

from vmp.data import EpisodeStore
from vmp.disk import DISK_FULL, exit_on_full_disk
from vmp.real.recorder import EpisodeBuffer, robot_episode_schema

log = logging.getLogger(__name__)

CHOICES = {"s": "save", "d": "discard", "r": "re-record"}


def record_episode(robot: Any, teleop: Any, safety: Any, operator: Any, seed: int, control_hz: float,
                   max_ticks: int, stop_on_success: bool) -> tuple[dict[str, np.ndarray], bool, str]:
    """One teleoperated episode -> (arrays, the robot's success flag, why it ended: the control loop's end reasons).
    Ticks on the control loop's clock (`RealClock`) at fixed deadlines. The robot is stopped on return."""
    from vmp.real.loop import RealClock

    clock, dt = RealClock(), 1.0 / control_hz
    buf = EpisodeBuffer(sorted(robot.spec.obs))
    success, reason = False, "max_ticks"
    obs = robot.reset(seed)
    t0 = clock.now()
    safety.reset(t0)
    teleop.start_episode()
    try:
        for k in range(max_ticks):
            clock.sleep_until(t0 + k * dt)
            if k > 0:
                obs = robot.observe()
            if obs.success:
                success = True
                if stop_on_success:
                    reason = "success"
                    break
            if obs.done:
                reason = "done"
                break
            if teleop.end_requested() or (operator is not None and not teleop.reads_terminal and operator.stop_requested()):
                reason = "operator"
                break
            asked = teleop.action(obs)
            command, status = safety.filter(asked, clock.now())
            if status == "stop":
                reason = "watchdog"
                break
            sent = robot.act(command)
            buf.add(obs.data, command if sent is None else sent, asked, k * dt, status)  # tick_time as the loop's
    finally:
        teleop.end_episode()
        robot.stop()
    return (buf.arrays() if len(buf) else {}), success, reason


@dataclass
class _Rig:
    """What every episode of a session is recorded with: the connected robot, what drives it, where episodes go."""

    robot: Any
    teleop: Any
    safety: Any
    operator: Any
    store: Any
    control_hz: float
    max_ticks: int


def run(cfg: DictConfig) -> dict[str, Any]:
    """The recording session, callable from tests -> a summary (also printed)."""
    from vmp.real.daemon import RobotSession, build_robot
    from vmp.real.operator import build_operator
    from vmp.real.teleop import build_teleop

    if int(cfg.n_episodes) < 1:
        raise ValueError(f"n_episodes must be >= 1, got {cfg.n_episodes}")
    robot = build_robot(cfg.robot, None)
    teleop = build_teleop(cfg.teleop)
    operator = build_operator(cfg.operator, str(cfg.robot.kind))
    out = Path(cfg.out)
    with RobotSession(robot, log) as session:
        session.close_first(teleop.disconnect)
        rig = _set_up(cfg, session, teleop, operator, out)
        saved, attempts = _record_episodes(cfg, rig, out)
    summary = {"out": str(out), "saved": len(saved), "attempts": attempts,
               "successes": sum(int(e["success"]) for e in saved), "episodes": saved}
    return summary


def _set_up(cfg: DictConfig, session: Any, teleop: Any, operator: Any, out: Path) -> _Rig:
    """Connect the robot (its camera frames resized to ``image_size`` when set) and the teleoperator, open the
    store (registered with ``session`` to close after the robot)."""
    from vmp.real.camera import ResizingRobot
    from vmp.real.daemon import build_safety

    spec = session.robot.connect()
    if cfg.image_size is not None:
        size = (int(cfg.image_size[0]), int(cfg.image_size[1]))
        cams = [k for k in spec.obs if k.endswith("_image") or k.endswith("_depth")]
        if not cams:
            raise ValueError(f"image_size={list(size)} but the robot has no camera keys (keys: {sorted(spec.obs)})")
        session.robot = ResizingRobot(session.robot, {k: size for k in cams})
        spec = session.robot.spec
    teleop.connect(session.robot)
    control_hz = float(cfg.robot.control_hz or spec.control_hz)
    max_ticks = int(cfg.max_ticks or cfg.robot.max_ticks)
    task = str(cfg.task_name or out.stem)
    store = _open_store(out, spec, {"task": task, "control_hz": control_hz, "robot": spec.name,
                                    "recorded_by": "vmp-record", "max_episode_steps": max_ticks})
    session.close_last(store.close)
    safety = build_safety(cfg.robot, spec)
    log.info("recording %d episodes of %s on %s at %.0f Hz into %s (teleop %s)", cfg.n_episodes, task, spec.name,
             control_hz, out, cfg.teleop.kind)
    return _Rig(session.robot, teleop, safety, operator, store, control_hz, max_ticks)


def _open_store(out: Path, spec: Any, attrs: dict[str, Any]) -> EpisodeStore:
    """The store at ``out``, created when new. A full disk's error names the store: zarr's names no file."""
    try:
        return EpisodeStore.open_or_create(out, robot_episode_schema(spec), attrs)
    except OSError as err:
        if err.errno not in DISK_FULL or err.filename is not None:
            raise
        raise OSError(err.errno, f"could not open or create store {out}: {err.strerror}") from err


def _record_episodes(cfg: DictConfig, rig: _Rig, out: Path) -> tuple[list[dict[str, Any]], int]:
    """Episodes until ``n_episodes`` are saved; the operator (when there is one) keeps, discards (next seed) or
    re-records (same seed) each. -> (the saved episodes' summaries, the attempts)."""
    saved: list[dict[str, Any]] = []
    attempts, seed_index = 0, 0
    operator = rig.operator
    while len(saved) < int(cfg.n_episodes):
        seed = int(cfg.seed) + seed_index
        label = f"episode {len(saved) + 1}/{cfg.n_episodes} (seed {seed})"
        if operator is not None and cfg.operator.reset_pause:
            operator.wait(f"{label}: reset the scene, then start")
        arrays, robot_success, reason = record_episode(rig.robot, rig.teleop, rig.safety, operator, seed,
                                                       rig.control_hz, rig.max_ticks, bool(cfg.stop_on_success))
        attempts += 1
        n = len(arrays.get("action", ()))
        choice = "s"
        if operator is not None:
            choice = operator.choose(f"{label} ended ({reason}, {n} steps): keep it?", CHOICES)
        if choice == "r":
            log.info("%s: re-recording", label)
            continue
        seed_index += 1
        if choice == "d" or n == 0:
            log.info("%s: discarded%s", label, " (no steps)" if n == 0 and choice != "d" else "")
            continue
        saved.append(_save_episode(cfg, rig, out, arrays, label, seed, robot_success, reason, len(saved)))
    return saved, attempts


def _save_episode(cfg: DictConfig, rig: _Rig, out: Path, arrays: dict[str, np.ndarray], label: str, seed: int,
                  robot_success: bool, reason: str, n_saved: int) -> dict[str, Any]:
    """Mark success (the operator's word when ``operator.mark_success``, else the robot's) and append the episode
    -> its entry in the summary. A failed write stops the session: every further episode would fail too."""
    n = len(arrays["action"])
    success, marked_by = robot_success, "robot"
    if rig.operator is not None and cfg.operator.mark_success:
        success = rig.operator.choose(f"{label}: did it succeed?", {"y": "success", "n": "failure"}) == "y"
        marked_by = "operator"
    text = {"success": success, "success_marked_by": marked_by, "seed": seed, "outcome": reason}
    if cfg.instruction:
        text["language"] = str(cfg.instruction)
    try:
        index = rig.store.append_episode(arrays, text=text)
    except OSError as err:  # the robot is stopped (record_episode)
        if err.errno is None:
            raise
        raise OSError(err.errno, f"{label} was not saved: {err.strerror}. Recording stopped (the robot is "
                                 f"stopped) with {n_saved} episode(s) saved in this session: free some "
                                 f"space, then run vmp-record again to add to {out}") from err
    log.info("%s: saved as episode %d (%d steps, %s)", label, index, n, "success" if success else "failure")
    return {"index": index, "seed": seed, "steps": n, "success": success, "marked_by": marked_by}


@hydra.main(config_path="pkg://vmp.configs", config_name="record", version_base=None)
def main(cfg: DictConfig) -> None:
    try:
        with exit_on_full_disk("vmp-record"):
            summary = run(cfg)
    except (KeyError, ValueError, FileNotFoundError, ImportError) as exc:
        log.error("vmp-record: %s", exc.args[0] if exc.args else exc)
        sys.exit(2)
    except EOFError as exc:
        log.error("vmp-record: %s (episodes saved so far are in the store)", exc)
        sys.exit(1)
    print(f"vmp-record: saved {summary['saved']} episode(s) of {summary['attempts']} attempt(s) into {summary['out']}; "
          f"{summary['successes']} marked successful. Next: vmp-data task --from-store {summary['out']}")


if __name__ == "__main__":
    main()
