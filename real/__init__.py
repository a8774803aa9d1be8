"""The deployment daemon: robots, cameras, the inference engine, the real-time loop, safety, recording, metrics.

Module map (each small and tested on its own): `wire` (framing), `robot` (protocol), `sim_server`/`sim_robot`
(SimRobot), `lerobot_robot`, `camera`, `engine`, `scheduler` (plan, staleness, blending), `safety`, `recorder`,
`metrics`, `loop` (the fixed-rate loop), `replay` (simulated-clock harness), `daemon` (`vmp-deploy`).
"""

from vmp.real.robot import Observation, Robot, RobotConnectionError, RobotError, RobotSpec
from vmp.real.safety import SafetyLayer
from vmp.real.scheduler import ActionScheduler, Chunk, DelayTracker, prefix_weights

__all__ = ["Observation", "Robot", "RobotConnectionError", "RobotError", "RobotSpec", "SafetyLayer", "ActionScheduler",
           "Chunk", "DelayTracker", "prefix_weights"]
