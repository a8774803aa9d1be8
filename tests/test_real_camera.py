"""Camera: the reader thread keeps the newest frame; a stale frame raises instead of blocking."""

import time

import cv2
import numpy as np
import pytest

from vmp.real.camera import Camera, StaleFrameError


def _video(path, n=40, size=(32, 24)):
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 20, size)
    if not w.isOpened():
        pytest.skip("OpenCV build cannot write MJPG video")
    for i in range(n):
        frame = np.zeros((size[1], size[0], 3), np.uint8)
        frame[:, :, 2] = 200  # red in BGR
        frame[0, 0] = i
        w.write(frame)
    w.release()


def test_newest_frame_and_staleness(tmp_path):
    path = tmp_path / "v.avi"
    _video(path)
    with Camera(str(path), width=16, height=12, fps=100, name="test") as cam:
        frame, stamp, seq = cam.read()
        assert frame.shape == (12, 16, 3) and frame.dtype == np.uint8
        assert frame[..., 0].mean() > 150 and frame[..., 2].mean() < 50  # delivered as RGB
        deadline = time.monotonic() + 10
        while cam.read()[2] == seq and time.monotonic() < deadline:
            time.sleep(0.005)
        assert cam.read()[2] > seq  # frames keep coming in the background
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # the file ends: frames go stale
            try:
                cam.read(max_age_s=0.05)
            except StaleFrameError as exc:
                assert "old" in str(exc)
                break
            time.sleep(0.01)
        else:
            pytest.fail("no StaleFrameError after the video ended")


def test_unopenable_source(tmp_path):
    with pytest.raises(ConnectionError, match="cannot open"):
        Camera(str(tmp_path / "missing.avi")).open()


def test_camera_robot_adds_frames_and_counts_stale_ones_as_dropped(tmp_path):
    from vmp.real.camera import CameraRobot
    from vmp.real.engine import InferenceEngine
    from vmp.real.loop import ControlLoop, LoopConfig
    from vmp.real.safety import SafetyLayer
    from vmp.real.sim_robot import SimRobot
    from vmp.real.testing import ReachPolicy

    path = tmp_path / "v.avi"
    _video(path, n=20)  # 0.2 s at 100 fps, then the "camera" freezes
    env = {"target": "vmp.real.toy:ToyReachEnv", "kwargs": {"tol": 0.0}, "control_hz": 50}
    robot = CameraRobot(SimRobot(env), {"wrist": Camera(str(path), 16, 12, fps=100)}, max_age_s=0.05)
    spec = robot.connect()
    assert spec.obs["wrist_image"] == ((12, 16, 3), "uint8")
    engine = InferenceEngine(ReachPolicy())
    loop = ControlLoop(robot, engine, SafetyLayer([-1, -1], [1, 1]), LoopConfig(control_hz=50, max_ticks=40, stop_on_success=False))
    try:
        res = loop.run_episode(seed=0)
    finally:
        loop.close()
        robot.disconnect()
    assert res.reason == "max_ticks"
    assert loop.metrics.counter("dropped_frames") >= 10
    assert loop.last_episode.rows["wrist_image"][-1].shape == (12, 16, 3)
