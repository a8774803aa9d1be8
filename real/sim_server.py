"""The SimRobot server: one simulated task behind a socket, in its own process (our stand-in for hardware).

Run as ``python -m vmp.real.sim_server CONFIG_JSON``. It binds loopback on an ephemeral port and prints
``VMP_SIM_PORT <port> <token>`` on stdout (a pipe only its parent reads). A client proves it holds the token in its
``hello``; until then it gets nothing but errors, so no other local process can reset, drive or stop the robot.
Each client has a thread of its own (up to ``max_clients``; more are told the server is busy, after a short grace
for a slot that a leaving client is about to free, so a client that reconnects at once is not refused); the env is
driven under one lock. A client that stays idle for ``idle_timeout_s`` or takes longer than ``frame_timeout_s`` to
send a frame's bytes is dropped; a malformed frame or field gets an error reply, never a crash. The env steps once per
``act`` (lock-step with the daemon's ticks), so simulated time advances at
the daemon's control rate. Faults are injected here so that the daemon sees them through the real wire:
``latency_s``/``jitter_s`` delay observation replies, ``drop_prob`` drops camera frames (the reply carries
no arrays and ``dropped=True``), ``exit_after_steps`` kills the process abruptly after that many steps.

A status file (optional) records what the robot really received: the per-dimension min/max of commanded
actions, the largest per-step change, and whether it was stopped. Tests read it to check the safety layer
from the robot's side.
"""

from __future__ import annotations

import hmac
import importlib
import json
import logging
import os
import secrets
import socket
import sys
import threading
import time
from typing import Any

import numpy as np

from vmp.real import wire
from vmp.real.robot import RobotSpec
from vmp.real.cpu_slice import short_slice

log = logging.getLogger("vmp.real.sim_server")


def build_env(env_cfg: dict[str, Any]):
    """{"task": <task config dict>} -> vmp.sim.make(task); {"target": "module:Class", "kwargs": {...}} -> Class(**kwargs)."""
    if "task" in env_cfg:
        from omegaconf import OmegaConf

        import vmp.sim

        task = OmegaConf.create(env_cfg["task"])
        return vmp.sim.make(task), float(task.control_hz), str(task.name)
    if "target" in env_cfg:
        module, _, attr = env_cfg["target"].partition(":")
        cls = getattr(importlib.import_module(module), attr)
        env = cls(**env_cfg.get("kwargs", {}))
        return env, float(env_cfg.get("control_hz", env.metadata.get("control_hz", 20))), attr
    raise ValueError(f"sim env config needs 'task' or 'target', got keys {sorted(env_cfg)}")


class SimServer:
    def __init__(self, cfg: dict[str, Any]):
        self.cfg = cfg
        self.token = secrets.token_hex(16)
        self.idle_timeout_s = float(cfg.get("idle_timeout_s", 300.0))
        self.frame_timeout_s = float(cfg.get("frame_timeout_s", 10.0))
        self.max_clients = int(cfg.get("max_clients", 4))
        self.sched_slice_us = int(cfg.get("sched_slice_us", 100))
        self.lock = threading.Lock()  # one env, many client threads
        self.shutdown = threading.Event()
        self.clients = threading.BoundedSemaphore(self.max_clients)
        self.faults = {"latency_s": 0.0, "jitter_s": 0.0, "drop_prob": 0.0, "exit_after_steps": 0, **cfg.get("faults", {})}
        self.rng = np.random.default_rng(cfg.get("fault_seed", 0))
        self.env, control_hz, name = build_env(cfg["env"])
        space = self.env.observation_space
        self.image_keys = [k for k in space.spaces if k.endswith(("_image", "_depth"))]
        self.spec = RobotSpec(
            obs={k: (tuple(s.shape), np.dtype(s.dtype).name) for k, s in space.spaces.items()},
            action_dim=int(self.env.action_space.shape[0]),
            control_hz=control_hz,
            action_low=np.asarray(self.env.action_space.low, np.float32),
            action_high=np.asarray(self.env.action_space.high, np.float32),
            name=f"sim:{name}",
        )
        self.obs: dict[str, np.ndarray] | None = None
        self.success = self.done = False
        self.step_in_episode = self.total_steps = 0
        self.stopped = False
        self.status: dict[str, Any] = {"state": "idle", "steps": 0, "stops": 0, "action_min": None, "action_max": None,
                                       "max_step_delta": 0.0, "last_action": None, "pid": os.getpid()}
        self._last_action: np.ndarray | None = None

    # ---- status file ----
    def write_status(self) -> None:
        path = self.cfg.get("status_file")
        if path:
            tmp = f"{path}.tmp"
            with open(tmp, "w") as f:
                json.dump(self.status, f)
            os.replace(tmp, path)

    def _record_action(self, action: np.ndarray) -> None:
        s = self.status
        a = action.astype(float)
        s["action_min"] = a.tolist() if s["action_min"] is None else np.minimum(s["action_min"], a).tolist()
        s["action_max"] = a.tolist() if s["action_max"] is None else np.maximum(s["action_max"], a).tolist()
        if self._last_action is not None:
            s["max_step_delta"] = max(s["max_step_delta"], float(np.abs(a - self._last_action).max()))
        self._last_action = a
        s["last_action"] = a.tolist()
        s["steps"] = self.total_steps

    # ---- message handlers ----
    def _obs_msg(self, drop: bool = False) -> wire.Message:
        fields = {"timestamp": time.monotonic(), "step": self.step_in_episode, "success": self.success,
                  "done": self.done, "dropped": drop}
        arrays = {} if drop else dict(self.obs)
        return wire.Message("obs", fields, arrays)

    def handle(self, msg: wire.Message) -> wire.Message:
        if msg.type == "hello":
            if msg.fields.get("version") != wire.VERSION:
                return wire.Message("error", {"message": f"client speaks version {msg.fields.get('version')}, server {wire.VERSION}"})
            return wire.Message("spec", self.spec.to_fields())
        if msg.type == "reset":
            seed = msg.fields.get("seed")
            if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**32):
                return wire.Message("error", {"message": f"reset seed must be null or an int in [0, 2**32), got {seed!r}"})
            obs, info = self.env.reset(seed=seed)
            self.obs, self.success, self.done = obs, bool(info.get("success", False)), False
            self.step_in_episode, self.stopped = 0, False
            self._last_action = None
            self.status["state"] = "running"
            self.write_status()
            reply = self._obs_msg()
            goal = info.get("goal")
            if isinstance(goal, dict):  # goal-conditioned tasks: the goal observation travels with the reset
                reply.arrays.update({f"goal/{k}": np.asarray(v) for k, v in goal.items()})
            return reply
        if msg.type == "observe":
            if self.obs is None:
                return wire.Message("error", {"message": "observe before reset"})
            delay = self.faults["latency_s"] + self.faults["jitter_s"] * self.rng.random()
            if delay > 0:
                time.sleep(delay)
            drop = self.faults["drop_prob"] > 0 and self.rng.random() < self.faults["drop_prob"]
            return self._obs_msg(drop)
        if msg.type == "act":
            action = msg.arrays.get("action")
            if action is None or action.shape != (self.spec.action_dim,) or not np.isfinite(action).all():
                return wire.Message("error", {"message": f"act needs a finite 'action' of shape ({self.spec.action_dim},)"})
            if self.obs is None:
                return wire.Message("error", {"message": "act before reset"})
            self._record_action(action)
            if not self.done:
                obs, _, terminated, truncated, info = self.env.step(action)
                self.obs = obs
                self.success = self.success or bool(info.get("success", False))
                self.done = bool(terminated or truncated)
                self.step_in_episode += 1
            self.total_steps += 1
            self.status["steps"] = self.total_steps
            self.stopped = False
            self.status["state"] = "running"
            if self.faults["exit_after_steps"] and self.total_steps >= self.faults["exit_after_steps"]:
                self.write_status()
                os._exit(3)  # simulate a crash: no reply, no cleanup
            return wire.Message("ack", {"success": self.success, "done": self.done, "step": self.step_in_episode},
                                {"action": action})
        if msg.type == "stop":
            self.stopped = True
            self.status["state"] = "stopped"
            self.status["stops"] += 1
            self.write_status()
            return wire.Message("ack", {})
        return wire.Message("error", {"message": f"unknown message type {msg.type!r}"})

    def serve(self, listener: socket.socket) -> None:
        """Accept clients, each on a thread of its own, until an authenticated client says ``bye`` with shutdown or
        the parent process is gone (no orphan servers after a daemon is killed)."""
        # a robot's controller answers on time whatever the computer beside it runs: the server's threads ask for the
        # control loop's short scheduler slice for the server's life (client threads inherit it from this one)
        with short_slice(self.sched_slice_us):
            self._accept(listener)

    def _accept(self, listener: socket.socket) -> None:
        parent = os.getppid()
        listener.settimeout(1.0)
        while not self.shutdown.is_set():
            try:
                conn, _ = listener.accept()
            except socket.timeout:
                if os.getppid() != parent:
                    log.warning("parent process is gone: exiting")
                    return
                continue
            if not self.clients.acquire(timeout=BUSY_GRACE_S):
                _refuse(conn, f"busy: {self.max_clients} clients are connected")
                continue
            threading.Thread(target=self._client, args=(conn,), daemon=True).start()

    def _client(self, conn: socket.socket) -> None:
        try:
            with conn:
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                self._converse(conn)
        finally:
            self.clients.release()

    def _converse(self, conn: socket.socket) -> None:
        authed = False
        while not self.shutdown.is_set():
            conn.settimeout(self.idle_timeout_s)
            try:
                msg = wire.recv(conn, self.frame_timeout_s)
            except (wire.ConnectionClosed, OSError):  # closed, reset, idle or too slow (socket.timeout)
                return
            except wire.ProtocolError as exc:
                log.warning("dropping a client: %s", exc)
                _refuse(conn, f"protocol error: {exc}")
                return
            if msg.type == "hello":
                token = msg.fields.get("token")
                authed = isinstance(token, str) and hmac.compare_digest(token, self.token)
                if not authed:
                    _refuse(conn, "hello needs the server's token (printed to the process that started it)")
                    return
            elif not authed:
                _refuse(conn, f"{msg.type!r} before an authenticated hello")
                return
            if msg.type == "bye":
                shutdown = msg.fields.get("shutdown", True)
                _send(conn, wire.Message("ack", {}))
                if shutdown is not False:
                    with self.lock:
                        self.status["state"] = "stopped" if self.stopped else "exited"
                        self.write_status()
                    self.shutdown.set()
                return
            with self.lock:
                reply = self.handle(msg)
            if not _send(conn, reply):
                return


BUSY_GRACE_S = 0.5  # how long a new client waits for a slot that a closing connection's thread has yet to free


def _send(conn: socket.socket, msg: wire.Message) -> bool:
    """False when the client is gone (it reset the connection before our reply): drop it, keep serving."""
    try:
        conn.settimeout(5.0)
        wire.send(conn, msg)
        return True
    except OSError:
        return False


def _refuse(conn: socket.socket, message: str) -> None:
    _send(conn, wire.Message("error", {"message": message}))
    try:
        conn.close()
    except OSError:
        pass


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        raise SystemExit("usage: python -m vmp.real.sim_server CONFIG_JSON")
    logging.basicConfig(level=logging.INFO, format="[sim_server %(levelname)s] %(message)s", stream=sys.stderr)
    cfg = json.loads(argv[0])
    server = SimServer(cfg)
    listener = socket.create_server((cfg.get("host", "127.0.0.1"), int(cfg.get("port", 0))))
    print(f"VMP_SIM_PORT {listener.getsockname()[1]} {server.token}", flush=True)
    try:
        server.serve(listener)
    finally:
        listener.close()


if __name__ == "__main__":
    main()
