"""SimRobot: the `Robot` protocol over a socket to a simulated task in a separate process (`sim_server`).

Every request has a timeout, so a dead or wedged server surfaces as `RobotConnectionError` naming the
process's exit status, never as a hang.
"""

from __future__ import annotations

import json
import logging
import selectors
import socket
import subprocess
import sys
import threading
import time
from typing import Any

import numpy as np

from vmp.real import wire
from vmp.real.robot import Observation, RobotConnectionError, RobotError, RobotSpec

log = logging.getLogger(__name__)


class SimRobot:
    """Spawns ``python -m vmp.real.sim_server`` and talks to it.

    env: {"task": task_config_dict} or {"target": "module:Class", "kwargs": {...}}; faults: see sim_server.
    ``timeout_s`` bounds every request; ``start_timeout_s`` bounds the server start (robosuite imports).
    """

    def __init__(self, env: dict[str, Any], faults: dict[str, Any] | None = None, timeout_s: float = 2.0,
                 start_timeout_s: float = 120.0, host: str = "127.0.0.1", status_file: str | None = None,
                 fault_seed: int = 0, server: dict[str, Any] | None = None):
        # server: the server's own limits (idle_timeout_s, frame_timeout_s, max_clients; see sim_server)
        self.server_cfg = {"env": env, "faults": dict(faults or {}), "host": host, "status_file": status_file,
                           "fault_seed": fault_seed, **dict(server or {})}
        self.timeout_s, self.start_timeout_s, self.host = timeout_s, start_timeout_s, host
        self.process: subprocess.Popen | None = None
        self.sock: socket.socket | None = None
        self.spec: RobotSpec | None = None
        self._last_obs: Observation | None = None
        self._link = threading.Lock()  # one request at a time: a set-point stream's thread shares the link

    # ---- lifecycle ----
    def connect(self) -> RobotSpec:
        """Start the server process if it is not running, connect, and exchange versions -> its spec."""
        if self.process is None or self.process.poll() is not None:
            self._spawn()
        try:
            self.sock = socket.create_connection((self.host, self._port), timeout=self.timeout_s)
        except OSError as exc:
            raise RobotConnectionError(f"cannot connect to SimRobot server at {self.host}:{self._port}: {exc}") from exc
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        reply = self._request(wire.Message("hello", {"version": wire.VERSION, "token": self._token}), expect="spec")
        self.spec = RobotSpec.from_fields(reply.fields)
        log.info("connected to %s (pid %d): obs %s, action_dim %d, %.0f Hz", self.spec.name, self.process.pid,
                 sorted(self.spec.obs), self.spec.action_dim, self.spec.control_hz)
        return self.spec

    def _spawn(self) -> None:
        cmd = [sys.executable, "-m", "vmp.real.sim_server", json.dumps(self.server_cfg)]
        self.process = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=None, text=True)
        sel = selectors.DefaultSelector()
        sel.register(self.process.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + self.start_timeout_s
        try:
            while True:
                left = deadline - time.monotonic()
                if left <= 0 or not sel.select(timeout=left):
                    self.process.kill()
                    raise RobotConnectionError(f"SimRobot server did not start within {self.start_timeout_s:.0f} s")
                line = self.process.stdout.readline()
                if not line:
                    code = self.process.wait(timeout=5)
                    raise RobotConnectionError(f"SimRobot server exited during start with status {code} (see its stderr above)")
                if line.startswith("VMP_SIM_PORT "):
                    _, port, self._token = line.split()
                    self._port = int(port)
                    return
        finally:
            sel.close()

    def disconnect(self, shutdown: bool = True) -> None:
        """Say goodbye (the server exits when ``shutdown``) and reap the process."""
        if self.sock is not None:
            try:
                wire.send(self.sock, wire.Message("bye", {"shutdown": shutdown}))
                wire.recv(self.sock)
            except (OSError, wire.ConnectionClosed, wire.ProtocolError):
                pass  # the server is already gone: nothing left to say goodbye to
            self.sock.close()
            self.sock = None
        if shutdown and self.process is not None:
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            if self.process.stdout:
                self.process.stdout.close()
            self.process = None

    def kill(self) -> None:
        """Test hook: kill the server process like a power cut."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()

    def __enter__(self) -> "SimRobot":
        self.connect()
        return self

    def __exit__(self, *exc: Any) -> None:
        try:
            if self.sock is not None:
                self.stop()
        except (RobotConnectionError, RobotError):
            log.warning("could not send stop on exit: the robot link is down")
        self.disconnect()

    # ---- requests ----
    def _request(self, msg: wire.Message, expect: str) -> wire.Message:
        with self._link:
            return self._request_locked(msg, expect)

    def _request_locked(self, msg: wire.Message, expect: str) -> wire.Message:
        if self.sock is None:
            raise RobotConnectionError("SimRobot is not connected")
        try:
            wire.send(self.sock, msg)
            reply = wire.recv(self.sock)
        except (OSError, wire.ConnectionClosed) as exc:  # socket.timeout is an OSError
            status = None
            if self.process is not None:
                try:  # a crashed server closes its socket a moment before it can be reaped
                    status = self.process.wait(timeout=0.5)
                except subprocess.TimeoutExpired:
                    status = None
            why = f"server process exited with status {status}" if status is not None else "server process still running"
            self.sock.close()
            self.sock = None
            raise RobotConnectionError(f"lost SimRobot link during {msg.type!r}: {exc!r} ({why})") from exc
        if reply.type == "error":
            raise RobotError(f"SimRobot refused {msg.type!r}: {reply.fields.get('message')}")
        if reply.type != expect:
            raise RobotError(f"SimRobot answered {msg.type!r} with {reply.type!r}, expected {expect!r}")
        return reply

    def _to_obs(self, reply: wire.Message) -> Observation:
        f = reply.fields
        dropped = bool(f.get("dropped", False))
        data = {k: v for k, v in reply.arrays.items() if not k.startswith("goal/")}
        goal = {k[5:]: v for k, v in reply.arrays.items() if k.startswith("goal/")} or None
        if dropped:
            if self._last_obs is None:
                raise RobotError("first observation of an episode was dropped")
            data = self._last_obs.data
        obs = Observation(data, float(f["timestamp"]), int(f.get("step", 0)), dropped, bool(f.get("success")), bool(f.get("done")), goal)
        if not dropped:
            self._last_obs = obs
        return obs

    def reset(self, seed: int | None = None) -> Observation:
        """Start an episode. A link the server dropped while the robot sat idle (an operator resetting the scene for
        longer than the server's ``idle_timeout_s``) is re-established here, where nothing is in motion."""
        self._last_obs = None
        msg = wire.Message("reset", {"seed": seed})
        try:
            return self._to_obs(self._request(msg, expect="obs"))
        except RobotConnectionError:
            if not self.alive:
                raise
            log.warning("SimRobot link dropped while idle: reconnecting before the episode")
            self.connect()
            return self._to_obs(self._request(msg, expect="obs"))

    def observe(self) -> Observation:
        return self._to_obs(self._request(wire.Message("observe"), expect="obs"))

    def act(self, action: np.ndarray) -> np.ndarray:
        action = np.asarray(action, dtype=np.float32)
        reply = self._request(wire.Message("act", {}, {"action": action}), expect="ack")
        return reply.arrays["action"]

    def stop(self) -> None:
        self._request(wire.Message("stop"), expect="ack")

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None
