"""A threaded OpenCV camera that always holds the newest frame and its capture time.

The control loop must never wait for a sensor: a reader thread grabs frames as fast as the device delivers
them, and ``read(max_age_s)`` returns the newest one at once, raising `StaleFrameError` when it is older than
``max_age_s`` (a frozen or unplugged camera) so the caller can count a dropped frame and carry on.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import cv2
import numpy as np

log = logging.getLogger(__name__)


class StaleFrameError(RuntimeError):
    """The newest frame is older than allowed (or none arrived yet)."""


class Camera:
    """source: a device index or a path/URL for `cv2.VideoCapture`; frames are RGB uint8 [height, width, 3],
    resized to (width, height) when given. Use as a context manager."""

    def __init__(self, source: int | str, width: int | None = None, height: int | None = None, fps: float | None = None,
                 name: str = "camera", open_timeout_s: float = 5.0):
        self.source, self.width, self.height, self.fps, self.name = source, width, height, fps, name
        self.open_timeout_s = open_timeout_s
        self._cap: cv2.VideoCapture | None = None
        self._lock = threading.Lock()
        self._new = threading.Event()
        self._stop = threading.Event()
        self._frame: np.ndarray | None = None
        self._stamp = -np.inf
        self._seq = 0
        self.read_failures = 0
        self._thread: threading.Thread | None = None

    def open(self) -> "Camera":
        self._cap = cv2.VideoCapture(self.source)
        if not self._cap.isOpened():
            raise ConnectionError(f"camera {self.name!r}: cannot open source {self.source!r}")
        if self.fps:
            self._cap.set(cv2.CAP_PROP_FPS, self.fps)
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=f"camera-{self.name}", daemon=True)
        self._thread.start()
        if not self._new.wait(self.open_timeout_s):
            self.close()
            raise ConnectionError(f"camera {self.name!r}: no frame within {self.open_timeout_s:.1f} s of opening {self.source!r}")
        return self

    def _run(self) -> None:
        period = 1.0 / self.fps if self.fps else 0.0
        while not self._stop.is_set():
            t_start = time.monotonic()
            ok, frame = self._cap.read()
            stamp = time.monotonic()
            if not ok or frame is None:
                self.read_failures += 1
                time.sleep(0.005)
                continue
            frame = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
            if self.width and self.height and frame.shape[:2] != (self.height, self.width):
                frame = cv2.resize(frame, (self.width, self.height), interpolation=cv2.INTER_AREA)
            with self._lock:
                self._frame, self._stamp = frame, stamp
                self._seq += 1
            self._new.set()
            if period:  # files replay at their nominal rate instead of as fast as they decode
                left = period - (time.monotonic() - t_start)
                if left > 0:
                    time.sleep(left)

    def read(self, max_age_s: float | None = None) -> tuple[np.ndarray, float, int]:
        """-> (frame [H, W, 3] uint8 RGB, capture time (time.monotonic), sequence number). Never blocks."""
        with self._lock:
            frame, stamp, seq = self._frame, self._stamp, self._seq
        if frame is None:
            raise StaleFrameError(f"camera {self.name!r}: no frame yet")
        age = time.monotonic() - stamp
        if max_age_s is not None and age > max_age_s:
            raise StaleFrameError(f"camera {self.name!r}: newest frame is {age * 1e3:.0f} ms old (limit {max_age_s * 1e3:.0f} ms)")
        return frame, stamp, seq

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
            self._thread = None
        if self._cap is not None:
            self._cap.release()
            self._cap = None

    def __enter__(self) -> "Camera":
        return self.open()

    def __exit__(self, *exc: Any) -> None:
        self.close()


class CameraRobot:
    """A `Robot` plus threaded cameras: adds ``<name>_image`` [H, W, 3] uint8 keys to every observation.

    A camera whose newest frame is older than ``max_age_s`` marks the observation ``dropped`` and repeats its
    last good frame, so the loop counts it and carries on instead of waiting for the camera.
    """

    def __init__(self, robot: Any, cameras: dict[str, Camera], max_age_s: float = 0.1):
        self.robot, self.cameras, self.max_age_s = robot, cameras, max_age_s
        self.spec = None
        self._last: dict[str, np.ndarray] = {}

    def connect(self):
        spec = self.robot.connect()
        for cam in self.cameras.values():
            cam.open()
        for name, cam in self.cameras.items():
            frame, _, _ = cam.read()
            spec.obs[f"{name}_image"] = (tuple(frame.shape), "uint8")
            self._last[name] = frame
        self.spec = spec
        return spec

    def _add_frames(self, obs: Any) -> Any:
        for name, cam in self.cameras.items():
            try:
                frame, _, _ = cam.read(self.max_age_s)
                self._last[name] = frame
            except StaleFrameError as exc:
                log.debug("%s", exc)
                obs.dropped = True
                frame = self._last[name]
            obs.data = {**obs.data, f"{name}_image": frame}
        return obs

    def reset(self, seed: int | None = None) -> Any:
        return self._add_frames(self.robot.reset(seed))

    def observe(self) -> Any:
        return self._add_frames(self.robot.observe())

    def act(self, action: np.ndarray) -> np.ndarray:
        return self.robot.act(action)

    def stop(self) -> None:
        self.robot.stop()

    def disconnect(self) -> None:
        try:
            self.robot.disconnect()
        finally:
            for cam in self.cameras.values():
                cam.close()


class ResizingRobot:
    """A `Robot` whose camera frames are resized to ``sizes`` {key: (H, W)}: a policy trained at a smaller size than
    the camera's (the task's shape_meta) sees its own size. Wraps a robot connected or not."""

    def __init__(self, robot: Any, sizes: dict[str, tuple[int, int]]):
        self.robot, self.sizes = robot, {k: (int(h), int(w)) for k, (h, w) in sizes.items()}
        self.spec = self._resized(robot.spec) if getattr(robot, "spec", None) is not None else None

    def _resized(self, spec: Any) -> Any:
        import dataclasses

        obs = dict(spec.obs)
        for key, (h, w) in self.sizes.items():
            shape, dtype = obs[key]
            obs[key] = ((h, w, *shape[2:]), dtype)
        return dataclasses.replace(spec, obs=obs)

    def _resize(self, obs: Any) -> Any:
        from vmp.data.images import resize_frames
        from vmp.data.schema import DEPTH, RGB

        obs.data = {**obs.data, **{k: resize_frames(obs.data[k], size, DEPTH if k.endswith("_depth") else RGB)
                                   for k, size in self.sizes.items()}}
        return obs

    def connect(self) -> Any:
        self.spec = self._resized(self.robot.connect())
        return self.spec

    def reset(self, seed: int | None = None) -> Any:
        return self._resize(self.robot.reset(seed))

    def observe(self) -> Any:
        return self._resize(self.robot.observe())

    def act(self, action: np.ndarray) -> np.ndarray:
        return self.robot.act(action)

    def stop(self) -> None:
        self.robot.stop()

    def disconnect(self) -> None:
        self.robot.disconnect()


def camera_resizes(policy_shapes: dict[str, tuple[int, ...]], robot_obs: dict[str, tuple[tuple[int, ...], str]]
                   ) -> dict[str, tuple[int, int]]:
    """{camera key: the policy's (H, W)} for the robot's frames that differ from the policy's only in height and
    width (the rest, a missing key or other channels, is for `InferenceEngine.check_robot_keys` to refuse)."""
    out = {}
    for key, want in policy_shapes.items():
        if not (key.endswith("_image") or key.endswith("_depth")) or key not in robot_obs:
            continue
        have = tuple(robot_obs[key][0])
        if len(have) == len(want) and have[2:] == tuple(want[2:]) and have[:2] != tuple(want[:2]):
            out[key] = (int(want[0]), int(want[1]))
    return out
