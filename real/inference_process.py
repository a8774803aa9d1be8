"""The policy in a process of its own (``vmp-deploy engine.process=true``, the default).

The control loop's process then runs no model code: neither the GIL nor a long inference can delay a tick. The
inference process builds the `InferenceEngine` (from a picklable builder) and serves requests one at a time.
Observation windows, RTC prefixes and action chunks cross in shared memory blocks sized once from the policy's
shapes (no pickling); the small headers around them (and the rare goal, as .npz bytes) go over a pipe.

`ProcessEngine` offers the engine's interface to the control loop (``infer``, ``reset``, ``warmup``, shapes) and is
also its asynchronous worker (``submit``, ``idle``, ``error``). A reader thread takes the replies; when the process
dies, its pipe reads as end-of-file and ``error`` names the exit, so the loop stops the robot at its next tick.
"""

from __future__ import annotations

import io
import json
import logging
import multiprocessing as mp
import threading
import time
from multiprocessing import shared_memory
from typing import Any, Callable

import numpy as np

from vmp.policies.base import Prediction
from vmp.real.loop import InferenceError

log = logging.getLogger(__name__)


class InferenceProcessError(InferenceError):
    """The inference process died, or failed a request."""


def _json_extras(extras: dict[str, Any]) -> dict[str, Any]:
    """What of a head's extras crosses to the control process: text, and small arrays (scores) as lists."""
    out = {}
    for name, value in extras.items():
        if isinstance(value, str):
            out[name] = value
        elif isinstance(value, np.ndarray) and value.size <= 256:
            out[name] = value.tolist()
    return out


def _npz(arrays: dict[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _engine_main(conn: Any, build: Callable[[], Any]) -> None:
    """The inference process: build the engine, report its shapes, attach the shared blocks, serve requests."""
    import os
    import signal

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    logging.basicConfig(level=logging.WARNING)
    # Ctrl-C reaches the whole process group: the control process handles it (stops the robot, records the
    # episode) and then closes this process; dying here first would read as an inference fault
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        engine = build()
        kinds = engine.policy.obs_kinds
        example = engine.example_window()
        meta = {"obs": {k: [list(v.shape[1:]), str(v.dtype), kinds[k]] for k, v in example.items()},
                "n_obs_steps": engine.n_obs_steps, "horizon": engine.horizon, "n_action_steps": engine.n_action_steps,
                "action_dim": engine.action_dim, "supports_prefix": bool(engine.supports_prefix),
                "device": str(engine.device), "name": getattr(engine.policy, "name", "policy")}
    except BaseException as exc:
        conn.send_bytes(json.dumps({"op": "error", "message": f"{type(exc).__name__}: {exc}"}).encode())
        return
    conn.send_bytes(json.dumps({"op": "ready", **meta}).encode())
    blocks = {name: shared_memory.SharedMemory(name=shm) for name, shm in json.loads(conn.recv_bytes()).items()}
    views = _views(blocks, meta)
    try:
        while True:
            try:
                msg = json.loads(conn.recv_bytes())
            except EOFError:
                return
            op, reply = msg["op"], {"op": "ok", "seq": msg.get("seq")}
            try:
                if op == "close":
                    return
                if op == "reset":
                    engine.reset()
                elif op == "instruction":
                    engine.instruction = msg["text"]
                elif op == "warmup":
                    engine.warmup(engine.example_window(), n=int(msg["n"]))
                elif op == "infer":
                    window = {k: views[f"obs_{k}"].copy() for k in meta["obs"]}
                    goal = None
                    if msg.get("goal"):
                        with np.load(io.BytesIO(conn.recv_bytes()), allow_pickle=False) as npz:
                            goal = {k: npz[k] for k in npz.files}
                    prefix = weights = None
                    if msg.get("prefix"):
                        n = int(msg["prefix"])
                        prefix, weights = views["prefix"][:n].copy(), views["prefix_weights"][:n].copy()
                    pred = engine.infer(window, goal=goal, prefix=prefix, prefix_weights=weights, step=int(msg["step"]))
                    views["actions"][:] = pred.actions
                    reply.update(op="chunk", extras=_json_extras(pred.extras))
            except Exception as exc:  # a failed request, reported; the process serves on
                reply = {"op": "error", "seq": msg.get("seq"), "message": f"{type(exc).__name__}: {exc}"}
            conn.send_bytes(json.dumps(reply).encode())
    finally:
        views.clear()  # numpy views pin the shared buffers: a block with live views cannot close
        for block in blocks.values():
            block.close()


def _views(blocks: dict[str, shared_memory.SharedMemory], meta: dict[str, Any]) -> dict[str, np.ndarray]:
    h, a = int(meta["horizon"]), int(meta["action_dim"])
    shapes = {f"obs_{k}": ((meta["n_obs_steps"], *shape), dtype) for k, (shape, dtype, _) in meta["obs"].items()}
    shapes.update(prefix=((h, a), "float32"), prefix_weights=((h,), "float32"), actions=((h, a), "float32"))
    return {name: np.ndarray(shape, dtype=np.dtype(dtype), buffer=blocks[name].buf) for name, (shape, dtype) in shapes.items()}


class ProcessEngine:
    """The control process's side of the inference process: the engine interface plus the asynchronous worker."""

    def __init__(self, build: Callable[[], Any], start_timeout_s: float = 600.0):
        ctx = mp.get_context("spawn")  # CUDA and torch state must not be forked
        self._conn, child = ctx.Pipe(duplex=True)
        self.proc = ctx.Process(target=_engine_main, args=(child, build), name="vmp-inference", daemon=True)
        self.proc.start()
        child.close()  # the child holds the only other end: its death reads as EOF here
        if not self._conn.poll(start_timeout_s):
            self.proc.kill()
            raise InferenceProcessError(f"the inference process did not start within {start_timeout_s:.0f} s")
        try:
            meta = json.loads(self._conn.recv_bytes())
        except EOFError:
            self.proc.join(5)
            raise InferenceProcessError(f"the inference process exited while starting (exit code {self.proc.exitcode})") from None
        if meta["op"] == "error":
            self.proc.join(5)
            raise InferenceProcessError(f"the inference process could not build the engine: {meta['message']}")
        self.meta = meta
        self.obs_shapes = {k: tuple(shape) for k, (shape, _, _) in meta["obs"].items()}
        self.obs_kinds = {k: kind for k, (_, _, kind) in meta["obs"].items()}
        self._obs_dtypes = {k: np.dtype(dtype) for k, (_, dtype, _) in meta["obs"].items()}
        self.n_obs_steps, self.horizon = int(meta["n_obs_steps"]), int(meta["horizon"])
        self.n_action_steps, self.action_dim = int(meta["n_action_steps"]), int(meta["action_dim"])
        self.supports_prefix, self.device, self.name = bool(meta["supports_prefix"]), meta["device"], meta["name"]
        sizes = {f"obs_{k}": int(np.prod((self.n_obs_steps, *self.obs_shapes[k]))) * self._obs_dtypes[k].itemsize
                 for k in self.obs_shapes}
        sizes.update(prefix=self.horizon * self.action_dim * 4, prefix_weights=self.horizon * 4,
                     actions=self.horizon * self.action_dim * 4)
        self._blocks = {name: shared_memory.SharedMemory(create=True, size=max(size, 1)) for name, size in sizes.items()}
        self._views = _views(self._blocks, meta)
        self._conn.send_bytes(json.dumps({n: b.name for n, b in self._blocks.items()}).encode())

        self._cv = threading.Condition()
        self._busy = False
        self._seq = 0
        self._pending: tuple[int, Any] | None = None  # (seq, Request) of an asynchronous chunk, or (seq, None): a call
        self._reply: dict[str, Any] | None = None
        self._instruction: str | None = None
        self._on_chunk: Callable[[Any, Any, float], None] | None = None
        self._clock: Any = None
        self._sent_at = 0.0
        self.latencies_ms: list[float] = []
        self.error: BaseException | None = None
        # multiprocessing's join / is_alive / exitcode reap the child with waitpid and are not thread-safe: two threads
        # reaping at once leave one with ECHILD, which reads as "still alive". Every look at the process takes this lock.
        self._proc_lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, name="inference-replies", daemon=True)
        self._reader.start()

    # ---- the engine interface (blocking calls) ----
    @property
    def instruction(self) -> str | None:
        return self._instruction

    @instruction.setter
    def instruction(self, text: str | None) -> None:
        self._instruction = text
        self._call({"op": "instruction", "text": text})

    def reset(self) -> None:
        self._call({"op": "reset"})

    def warmup(self, obs_window: dict[str, np.ndarray] | None = None, n: int = 3) -> None:
        self._call({"op": "warmup", "n": int(n)}, timeout_s=None)
        self.latencies_ms.clear()

    def latency_summary(self) -> dict[str, Any]:
        """Request-to-chunk times seen from this process (shared-memory and pipe hand-over included)."""
        from vmp.results import latency_summary

        return latency_summary(self.latencies_ms)

    def infer(self, obs_window: dict[str, np.ndarray], goal: dict[str, np.ndarray] | None = None,
              prefix: np.ndarray | None = None, prefix_weights: np.ndarray | None = None, step: int = 0) -> Prediction:
        reply = self._call(self._infer_header(obs_window, goal, prefix, prefix_weights, step), goal=goal)
        return Prediction(self._views["actions"].copy(), reply.get("extras") or {})

    def check_robot_keys(self, robot_obs: dict[str, tuple[tuple[int, ...], str]]) -> None:
        from vmp.real.engine import check_robot_keys

        check_robot_keys(self.obs_shapes, robot_obs)

    def example_window(self) -> dict[str, np.ndarray]:
        return {k: np.zeros((self.n_obs_steps, *s), self._obs_dtypes[k]) for k, s in self.obs_shapes.items()}

    # ---- the asynchronous worker interface (the control loop's) ----
    def start_worker(self, on_chunk: Callable[[Any, Any, float], None], clock: Any) -> "_LoopWorker":
        self._on_chunk, self._clock = on_chunk, clock
        return _LoopWorker(self)

    @property
    def idle(self) -> bool:
        with self._cv:
            return not self._busy

    def submit(self, req: Any, window: dict[str, np.ndarray], goal: Any = None) -> None:
        header = self._infer_header(window, goal, req.prefix, req.prefix_weights, req.k_obs)
        with self._cv:
            if self._busy:
                raise RuntimeError("the inference process is busy")
            self._busy, self._pending = True, (header["seq"], req)
        self._send(header, goal)

    def wait_idle(self, timeout: float) -> bool:
        with self._cv:
            return self._cv.wait_for(lambda: not self._busy, timeout)

    def close(self) -> None:
        """Stop the inference process and free the shared blocks (a process stuck in a request is killed)."""
        with self._proc_lock:
            if self.proc.is_alive() and not self.idle:
                self.proc.kill()
            if self.proc.is_alive():
                try:
                    self._conn.send_bytes(json.dumps({"op": "close"}).encode())
                except OSError:
                    pass
                self.proc.join(5)
                if self.proc.is_alive():
                    self.proc.kill()
                    self.proc.join(5)
        self._conn.close()
        for block in self._blocks.values():
            block.close()
            block.unlink()
        self._blocks = {}

    # ---- internals ----
    def _infer_header(self, window: dict[str, np.ndarray], goal: Any, prefix: np.ndarray | None,
                      weights: np.ndarray | None, step: int) -> dict[str, Any]:
        for k in self.obs_shapes:  # the window into shared memory (the process is idle: nothing reads it now)
            if k not in window:
                raise KeyError(f"observation window lacks key {k!r}; the policy reads {sorted(self.obs_shapes)}")
            view = self._views[f"obs_{k}"]
            if np.shape(window[k]) != view.shape:
                raise ValueError(f"observation {k!r}: expected shape {view.shape} (n_obs_steps x per-step shape), "
                                 f"got {np.shape(window[k])}")
            view[:] = window[k]
        n = 0
        if prefix is not None:
            n = len(prefix)
            self._views["prefix"][:n] = prefix
            self._views["prefix_weights"][:n] = weights
        self._seq += 1
        return {"op": "infer", "seq": self._seq, "step": int(step), "prefix": n, "goal": goal is not None}

    def _send(self, header: dict[str, Any], goal: Any = None) -> None:
        self._sent_at = time.perf_counter()
        try:
            self._conn.send_bytes(json.dumps(header).encode())
            if header.get("goal"):
                self._conn.send_bytes(_npz({k: np.asarray(v) for k, v in goal.items()}))
        except OSError as exc:
            with self._proc_lock:
                code = self.proc.exitcode
            self._fail(InferenceProcessError(f"the inference process is gone ({exc}; exit code {code})"))

    def _call(self, header: dict[str, Any], goal: Any = None, timeout_s: float | None = 60.0) -> dict[str, Any]:
        """One blocking request (the worker idle first): -> its reply; an error reply or a dead process raises."""
        if not self.wait_idle(timeout_s or 1e9):
            raise InferenceProcessError(f"the inference process is still busy after {timeout_s} s")
        if self.error is not None:
            with self._proc_lock:
                dead = not self.proc.is_alive()
            if dead:
                raise self.error
        if "seq" not in header:
            self._seq += 1
            header["seq"] = self._seq
        with self._cv:
            self._busy, self._pending, self._reply = True, (header["seq"], None), None
        self._send(header, goal)
        with self._cv:
            deadline = None if timeout_s is None else time.monotonic() + timeout_s
            while self._busy:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise InferenceProcessError(f"the inference process did not answer {header['op']!r} within {timeout_s} s")
                self._cv.wait(left)
            reply = self._reply
        if reply is None or reply["op"] == "error":
            raise self.error if reply is None else InferenceProcessError(f"inference failed: {reply['message']}")
        return reply

    def _fail(self, exc: BaseException) -> None:
        with self._cv:
            self.error, self._busy, self._pending = exc, False, None
            self._cv.notify_all()

    def _read(self) -> None:
        while True:
            try:
                reply = json.loads(self._conn.recv_bytes())
            except (EOFError, OSError):
                with self._proc_lock:
                    self.proc.join(1)
                    code = self.proc.exitcode
                why = f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"
                self._fail(InferenceProcessError(f"the inference process died ({why})"))
                return
            with self._cv:
                pending = self._pending
            if pending is None or reply.get("seq") != pending[0]:
                continue  # a reply nobody waits for any more
            seq, req = pending
            if reply["op"] == "chunk":
                self.latencies_ms.append((time.perf_counter() - self._sent_at) * 1e3)
            if req is None:  # a blocking call: hand the reply over
                with self._cv:
                    self._reply, self._busy, self._pending = reply, False, None
                    self._cv.notify_all()
                continue
            if reply["op"] == "error":
                self._fail(InferenceProcessError(f"{reply['message']} (the chunk for tick {req.k_obs})"))
                continue
            pred = Prediction(self._views["actions"].copy(), reply.get("extras") or {})
            try:
                if not np.isfinite(pred.actions).all():
                    raise InferenceProcessError(f"inference returned non-finite actions for tick {req.k_obs}")
                self._on_chunk(pred, req, self._clock.now())
            except Exception as exc:
                self._fail(exc)
                continue
            with self._cv:
                self._busy, self._pending = False, None
                self._cv.notify_all()


class _LoopWorker:
    """The control loop's view of a `ProcessEngine` as its asynchronous worker; closing it leaves the process to
    its owner (the daemon closes the engine after its summary)."""

    def __init__(self, engine: ProcessEngine):
        self.engine = engine

    @property
    def idle(self) -> bool:
        return self.engine.idle

    @property
    def error(self) -> BaseException | None:
        return self.engine.error

    @error.setter
    def error(self, value: BaseException | None) -> None:
        self.engine.error = value

    def submit(self, req: Any, window: dict[str, np.ndarray], goal: Any = None) -> None:
        self.engine.submit(req, window, goal)

    def wait_idle(self, timeout: float) -> bool:
        return self.engine.wait_idle(timeout)

    def close(self) -> None:
        pass
