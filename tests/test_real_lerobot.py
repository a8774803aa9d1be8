"""LeRobot adapter: dict <-> vector mapping against a stand-in driver; the real import where LeRobot is installed."""

import numpy as np
import pytest

from vmp.real.lerobot_robot import LeRobotRobot


class FakeArm:
    """Duck-typed like a lerobot Robot (observation_features, action_features, get_observation, send_action)."""

    def __init__(self):
        self.is_connected = False
        self.sent = []
        self.q = {f"j{i}.pos": float(i) for i in range(3)}

    @property
    def observation_features(self):
        return {**{k: float for k in self.q}, "wrist": (4, 6, 3)}

    @property
    def action_features(self):
        return {k: float for k in self.q}

    def connect(self):
        self.is_connected = True

    def disconnect(self):
        self.is_connected = False

    def get_observation(self):
        return {**self.q, "wrist": np.full((4, 6, 3), 7, np.uint8)}

    def send_action(self, action):
        self.sent.append(dict(action))
        self.q.update(action)
        return {k: min(v, 1.5) for k, v in action.items()}  # the driver clips


def test_adapter_maps_dicts_and_stops_by_holding_position():
    arm = FakeArm()
    with LeRobotRobot(arm, control_hz=30, action_low=-2, action_high=2) as robot:
        spec = robot.spec
        assert spec.obs == {"state": ((3,), "float32"), "wrist_image": ((4, 6, 3), "uint8")}
        obs = robot.reset()
        assert np.allclose(obs.data["state"], [0, 1, 2]) and obs.data["wrist_image"].shape == (4, 6, 3)
        sent = robot.act(np.array([0.5, 1.0, 2.0], np.float32))
        assert np.allclose(sent, [0.5, 1.0, 1.5])  # what the driver really sent
        with pytest.raises(Exception, match="dims"):
            robot.act(np.zeros(2, np.float32))
    assert arm.sent[-1] == {"j0.pos": 0.5, "j1.pos": 1.0, "j2.pos": 2.0}  # stop held the measured position
    assert not arm.is_connected


def test_stop_holds_position_whatever_the_obs_groups():
    arm = FakeArm()
    with LeRobotRobot(arm, 30, -2, 2, obs_groups={"arm": ["j0.pos", "j1.pos"], "grip": ["j2.pos"]}) as robot:
        robot.act(np.array([0.25, 0.5, 0.75], np.float32))
        n_sent = len(arm.sent)
    assert len(arm.sent) == n_sent + 1 and arm.sent[-1] == {"j0.pos": 0.25, "j1.pos": 0.5, "j2.pos": 0.75}


def test_unknown_obs_group_features_refused():
    with pytest.raises(KeyError, match="nope"):
        LeRobotRobot(FakeArm(), 30, -1, 1, obs_groups={"joint_pos": ["j0.pos", "nope"]})


@pytest.mark.lerobot
def test_lerobot_registry_builds_so101_config():
    pytest.importorskip("lerobot.robots")
    from vmp.real.lerobot_robot import robot_config_class

    cls = robot_config_class("so101_follower")
    assert cls(port="/dev/null", id="t").port == "/dev/null"
