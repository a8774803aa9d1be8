"""Record every deployed episode into an `EpisodeStore` (appended whole at the episode's end; the store itself is
crash-safe, so a kill leaves every earlier episode readable).

Per tick: the robot's observation keys, ``action`` (the command actually sent, after safety), ``policy_action``
(what the plan asked for; the previous value on a hold), ``tick_time`` [1] seconds since the episode's tick 0, and
``command_status`` [1] int8 (0 ok, 1 clamped, 2 hold). Episode text holds the outcome.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from vmp.real.robot import RobotSpec

log = logging.getLogger(__name__)
STATUS_CODES = {"ok": 0, "clamped": 1, "hold": 2}


class EpisodeBuffer:
    """Per-tick rows of one episode, kept in memory until the episode ends."""

    def __init__(self, obs_keys: list[str]):
        self.obs_keys = obs_keys
        self.rows: dict[str, list[np.ndarray]] = {k: [] for k in [*obs_keys, "action", "policy_action", "tick_time", "command_status"]}

    def add(self, obs: dict[str, np.ndarray], command: np.ndarray, policy_action: np.ndarray, tick_time: float, status: str) -> None:
        for k in self.obs_keys:
            self.rows[k].append(np.asarray(obs[k]))
        self.rows["action"].append(np.asarray(command, np.float32))
        self.rows["policy_action"].append(np.asarray(policy_action, np.float32))
        self.rows["tick_time"].append(np.array([tick_time], np.float64))
        self.rows["command_status"].append(np.array([STATUS_CODES.get(status, 3)], np.int8))

    def __len__(self) -> int:
        return len(self.rows["action"])

    def arrays(self) -> dict[str, np.ndarray]:
        return {k: np.stack(v) for k, v in self.rows.items()}


def robot_episode_schema(spec: RobotSpec) -> dict[str, Any]:
    """The one schema of a robot's episodes, whether `vmp-deploy` or `vmp-record` drove it: the robot's observation
    keys, the command sent, what the policy or teleoperator asked for, the tick time and the safety layer's status."""
    from vmp.data import KeySpec

    schema = {k: KeySpec(shape, dtype, f"robot observation {k}") for k, (shape, dtype) in spec.obs.items()}
    schema["action"] = KeySpec((spec.action_dim,), "float32", "command sent to the robot, after the safety layer")
    schema["policy_action"] = KeySpec((spec.action_dim,), "float32",
                                      "action the plan or teleoperator asked for (last one on a hold)")
    schema["tick_time"] = KeySpec((1,), "float64", "seconds since the episode's tick 0 (monotonic clock)")
    schema["command_status"] = KeySpec((1,), "int8", "0 ok, 1 clamped, 2 hold")
    return schema


class EpisodeRecorder:
    """Owns the store: a new one, or an existing one with this robot's schema (`EpisodeStore.open_or_create`)."""

    def __init__(self, path: str | Path, spec: RobotSpec, attrs: dict[str, Any]):
        from vmp.data import EpisodeStore

        self.path = Path(path)
        self.obs_keys = sorted(spec.obs)
        try:
            self.store = EpisodeStore.open_or_create(self.path, robot_episode_schema(spec), attrs)
        except OSError as err:  # e.g. a disk already full: zarr's error names no file
            if err.errno is None or err.filename is not None:
                raise
            raise OSError(err.errno, f"could not open or create the recording store {self.path}: "
                                     f"{err.strerror}") from err

    def new_episode(self) -> EpisodeBuffer:
        return EpisodeBuffer(self.obs_keys)

    def append(self, buf: EpisodeBuffer, text: dict[str, Any]) -> int | None:
        """Append the episode (skipped when it has no ticks); returns its index.

        A write that fails (a full disk) raises, so the run stops: the episode is lost but the store keeps every
        earlier one, and each further episode would be lost too. The control loop appends after it has stopped the
        robot."""
        if len(buf) == 0:
            log.warning("episode with no ticks not recorded (%s)", text)
            return None
        try:
            i = self.store.append_episode(buf.arrays(), text=text)
        except OSError as err:
            if err.errno is None:
                raise
            seed = f" (seed {text['seed']})" if isinstance(text, dict) and "seed" in text else ""
            error = OSError(err.errno, f"the deployed episode{seed} was not recorded: {err.strerror}. Recording "
                                       f"stops the run; free some space, then deploy again (it appends to {self.path})")
            log.error("%s", error.strerror)
            raise error from err
        log.info("recorded episode %d (%d ticks) to %s", i, len(buf), self.path)
        return i

    def close(self) -> None:
        self.store.close()
