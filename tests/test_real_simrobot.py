"""SimRobot: a real server process over the wire; faults surface as clear errors, never hangs."""

import json

import numpy as np
import pytest

from vmp.real.robot import Robot, RobotConnectionError, RobotError
from vmp.real.sim_robot import SimRobot
from vmp.real import wire

TOY = {"target": "vmp.real.toy:ToyReachEnv", "kwargs": {"image_size": 8, "max_episode_steps": 50}, "control_hz": 50}


def test_connect_reset_observe_act_stop(tmp_path):
    status = tmp_path / "status.json"
    with SimRobot(TOY, status_file=str(status)) as robot:
        spec = robot.spec
        assert isinstance(robot, Robot)  # the protocol the loop drives
        assert spec.action_dim == 2 and spec.control_hz == 50
        assert spec.obs["camera_image"] == ((8, 8, 3), "uint8") and spec.obs["pos"] == ((2,), "float32")
        o1 = robot.reset(seed=3)
        o2 = robot.reset(seed=3)
        assert np.array_equal(o1.data["pos"], o2.data["pos"])  # seeded like the env
        sent = robot.act(np.array([0.5, -0.5], np.float32))
        assert np.allclose(sent, [0.5, -0.5])
        o3 = robot.observe()
        assert o3.step == 1 and not np.array_equal(o3.data["pos"], o2.data["pos"])
        assert o3.data["camera_image"].dtype == np.uint8
        with pytest.raises(RobotError, match="shape"):
            robot.act(np.zeros(3, np.float32))
        robot.stop()
        assert json.loads(status.read_text())["state"] == "stopped"
    assert json.loads(status.read_text())["action_max"] == [0.5, -0.5]


def test_dropped_frames_reuse_last_good_frame():
    with SimRobot(TOY, faults={"drop_prob": 0.5}, fault_seed=1) as robot:
        robot.reset(seed=0)
        flags = []
        for _ in range(20):
            robot.act(np.array([0.1, 0.1], np.float32))
            o = robot.observe()
            flags.append(o.dropped)
            assert o.data["camera_image"].shape == (8, 8, 3)
        assert any(flags) and not all(flags)


def test_killed_server_raises_connection_error_naming_the_exit():
    robot = SimRobot(TOY, timeout_s=1.0)
    robot.connect()
    robot.reset(seed=0)
    robot.kill()
    with pytest.raises(RobotConnectionError, match="exited with status"):
        robot.observe()
    robot.disconnect()


def test_crash_after_steps_and_reconnect_starts_fresh_server():
    robot = SimRobot(TOY, faults={"exit_after_steps": 3}, timeout_s=1.0)
    robot.connect()
    robot.reset(seed=0)
    with pytest.raises(RobotConnectionError, match="status 3"):
        for _ in range(5):
            robot.act(np.zeros(2, np.float32))
    robot.disconnect()
    robot.connect()  # a fresh server process
    assert robot.alive
    robot.reset(seed=0)
    robot.disconnect()
    assert robot.process is None


def test_version_mismatch_refused():
    with SimRobot(TOY) as robot:
        with pytest.raises(RobotError, match="version"):
            robot._request(wire.Message("hello", {"version": wire.VERSION + 1, "token": robot._token}), expect="spec")


def test_bad_env_config_fails_fast():
    with pytest.raises(RobotConnectionError, match="exited during start"):
        SimRobot({"target": "vmp.real.toy:NoSuchEnv"}, start_timeout_s=30).connect()


def test_reset_reconnects_after_the_server_dropped_an_idle_link():
    """An operator's pause longer than the server's idle timeout: the next episode's reset re-establishes the link;
    a request in the middle of an episode still fails loudly."""
    import time

    with SimRobot(TOY, server={"idle_timeout_s": 0.3}) as robot:
        first = robot.reset(seed=3)
        time.sleep(1.0)  # the server drops the silent client
        with pytest.raises(RobotConnectionError):
            robot.observe()
        again = robot.reset(seed=3)
        assert np.array_equal(first.data["pos"], again.data["pos"]) and robot.alive
