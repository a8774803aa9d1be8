"""The fixed-rate control loop: tick on absolute deadlines, never wait for inference.

Per tick k (time t0 + k*dt): observe -> maybe start inference on the newest observation window (worker thread)
-> take the plan's action for k -> safety -> act -> record. The worker merges a finished chunk into the plan the
moment it is ready (under a lock), so staleness is judged at the true arrival time. Every episode starts with
`engine.reset()` (the policy's per-episode state), then its first chunk is computed before tick 0 (the robot is at
rest then), so the loop starts with a plan. Extras a head returns with its chunks (reasoning text, candidates,
future frames) are logged, and reasoning text is recorded with the episode.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import logging
import math
import os
import threading
import time
from typing import Any, Callable

import numpy as np

from vmp.real.metrics import Metrics
from vmp.real.recorder import EpisodeBuffer, EpisodeRecorder
from vmp.real.robot import RobotConnectionError, RobotError
from vmp.real.safety import SafetyLayer
from vmp.real.sched import short_slice
from vmp.real.scheduler import ActionScheduler, Chunk, Request

log = logging.getLogger(__name__)


class RealClock:
    """time.monotonic with a hybrid sleep: OS sleep until ``spin_s`` before the deadline, then spin. No spin by
    default: at normal priority with a short scheduler slice (``LoopConfig.sched_slice_us``) a spin spends the slice
    just before the deadline, and the thread is preempted at the tick (p99 about 4 ms on a loaded 2-core machine,
    against 0.3 ms sleeping); spin under SCHED_FIFO (the daemon's spin_ms), where nothing preempts it."""

    def __init__(self, spin_s: float = 0.0):
        if spin_s < 0:
            raise ValueError(f"the clock's spin (spin_ms) must be >= 0, got {spin_s * 1e3:g} ms")
        self.spin_s = spin_s

    def now(self) -> float:
        return time.monotonic()

    def sleep_until(self, t: float) -> None:
        left = t - time.monotonic()
        if left > self.spin_s:
            time.sleep(left - self.spin_s)
        while time.monotonic() < t:
            pass


class InferenceError(RuntimeError):
    """The policy failed during deployment (the robot was stopped first)."""


class InferenceWorker:
    """One background thread running ``engine.infer`` on the newest request; results go to ``on_chunk``."""

    def __init__(self, engine: Any, on_chunk: Callable[[Any, Request, float], None], clock: RealClock):
        self.engine, self.on_chunk, self.clock = engine, on_chunk, clock
        self._cv = threading.Condition()
        self._job: tuple[Request, dict, Any] | None = None
        self._busy = False
        self._closed = False
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="inference", daemon=True)
        self.thread.start()

    @property
    def idle(self) -> bool:
        with self._cv:
            return not self._busy

    def submit(self, req: Request, window: dict[str, np.ndarray], goal: Any = None) -> None:
        with self._cv:
            if self._busy:
                raise RuntimeError("inference worker is busy")
            self._job, self._busy = (req, window, goal), True
            self._cv.notify()

    def wait_idle(self, timeout: float) -> bool:
        with self._cv:
            return self._cv.wait_for(lambda: not self._busy, timeout)

    def _run(self) -> None:
        while True:
            with self._cv:
                while self._job is None and not self._closed:
                    self._cv.wait()
                if self._closed:
                    return
                req, window, goal = self._job
                self._job = None
            try:
                pred = self.engine.infer(window, goal=goal, prefix=req.prefix, prefix_weights=req.prefix_weights,
                                         step=req.k_obs)
                self.on_chunk(pred, req, self.clock.now())
            except Exception as exc:  # reported to the control loop, which stops the robot and re-raises
                self.error = exc
            with self._cv:
                self._busy = False
                self._cv.notify_all()

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify_all()
        self.thread.join(timeout=5)


@dataclasses.dataclass
class LoopConfig:
    control_hz: float
    exec_horizon: int = 8
    blend: str = "prefix"
    ensemble_m: float = 0.01
    prefix_schedule: str = "exp"
    epsilon_s: float = 0.010
    delay_window: int = 10
    max_ticks: int = 200
    stop_on_success: bool = True
    warn_late_frac: float = 0.5  # a tick later than this fraction of dt counts as an overrun
    drain_timeout_s: float = 5.0
    rt_priority: int = 0  # > 0: run the loop thread SCHED_FIFO at this priority (Linux; needs CAP_SYS_NICE)
    sched_slice_us: int = 100  # normal priority: the slice the loop's threads ask for (Linux EEVDF, 6.12+; 0 = default)
    servo_hz: float | None = None  # stream interpolated set-points at this rate (a multiple of control_hz) via robot.servo


@dataclasses.dataclass
class EpisodeResult:
    seed: int | None
    success: bool
    ticks: int
    # success | done | max_ticks | operator | watchdog | signal | robot_disconnected | inference_error | inference_stalled
    reason: str
    counters: dict[str, Any]
    episode_index: int | None = None
    marked_by: str = "robot"  # who judged success: the robot (simulation) or the operator


class ControlLoop:
    """Drives one robot with one engine; ``run_episode`` is the unit. ``stop_event`` ends the current episode
    safely (signal handlers set it)."""

    def __init__(self, robot: Any, engine: Any, safety: SafetyLayer, cfg: LoopConfig, metrics: Metrics | None = None,
                 recorder: EpisodeRecorder | None = None, clock: RealClock | None = None, text: dict | None = None,
                 judge: Callable[[EpisodeResult], bool] | None = None,
                 end_requested: Callable[[], bool] | None = None):
        self.robot, self.engine, self.safety, self.cfg = robot, engine, safety, cfg
        self.judge = judge  # after the robot stopped: the episode's success (an operator's mark), recorded with it
        self.end_requested = end_requested  # polled every tick: the operator ends the episode (reason "operator")
        self.metrics = metrics or Metrics()
        self.recorder, self.text = recorder, dict(text or {})
        self.clock = clock or RealClock()
        self.dt = 1.0 / cfg.control_hz
        self.servo_steps = 1  # set-points per tick: > 1 streams them through robot.servo
        if cfg.sched_slice_us < 0:
            raise ValueError(f"sched_slice_us={cfg.sched_slice_us} must be >= 0 (0: the kernel's default slice)")
        if cfg.servo_hz:
            ratio = float(cfg.servo_hz) / cfg.control_hz
            if ratio < 2 or abs(ratio - round(ratio)) > 1e-6:
                raise ValueError(f"servo_hz={cfg.servo_hz:g} must be a whole multiple (>= 2) of the control rate "
                                 f"{cfg.control_hz:g} Hz")
            if not callable(getattr(robot, "servo", None)):
                raise ValueError(f"servo_hz={cfg.servo_hz:g}: robot {type(robot).__name__} has no servo(setpoint) method; "
                                 f"set-point streaming needs a driver that takes a stream (leave servo_hz null)")
            self.servo_steps = int(round(ratio))
        self.scheduler = ActionScheduler(self.dt, engine.horizon, engine.n_obs_steps, cfg.exec_horizon, cfg.blend,
                                         cfg.ensemble_m, cfg.prefix_schedule, cfg.epsilon_s, cfg.delay_window)
        self.lock = threading.Lock()
        self.stop_event = threading.Event()
        self.worker = engine.start_worker(self._on_chunk, self.clock)  # a thread, or the engine's own process
        self._chunk_id = 0
        self._episode = 0
        self._last_warn = -math.inf
        self._texts: dict[str, list[tuple[int, str]]] = {}  # text extras of this episode: name -> [(tick, text)]
        self.last_episode: EpisodeBuffer | None = None
        self._last_servo: float | None = None
        self._pending_setpoint: np.ndarray | None = None  # the last tick's command: its final set-point, due now

    # called from the worker thread
    def _on_chunk(self, pred: Any, req: Request, now: float) -> None:
        first = self.engine.n_obs_steps - 1
        with self.lock:
            if req.episode != self._episode:
                log.warning("dropping a chunk that finished after its episode ended")
                return
            self._chunk_id += 1
            c = Chunk(pred.actions[first:], req.k_obs, req.obs_time, now, self._chunk_id, req.d_hat)
            stale = self.scheduler.add_chunk(c, now)
        self._log_extras(pred.extras, req.k_obs)
        self.metrics.observe("inference_latency_seconds", now - req.obs_time, "observation-to-chunk latency")
        self.metrics.inc("chunks", help="action chunks merged into the plan")
        self.metrics.inc("stale_actions", stale, help="chunk actions dropped because their tick had passed")

    def _log_extras(self, extras: dict[str, Any], tick: int) -> None:
        """Reasoning text is logged when it changes and kept for the episode's record; arrays at debug level."""
        for name, value in extras.items():
            if isinstance(value, str):
                if not self._texts.get(name) or self._texts[name][-1][1] != value:
                    self._texts.setdefault(name, []).append((tick, value))
                    log.info("tick %d %s: %s", tick, name, value)
                    self.metrics.inc(f"{name}_changes", help=f"times the policy's {name} text changed")
            else:
                log.debug("tick %d %s: %s %s", tick, name, getattr(value, "dtype", type(value).__name__),
                          getattr(value, "shape", ""))
        if "candidate_scores" in extras:
            self.metrics.observe("best_candidate_score", float(np.max(extras["candidate_scores"])),
                                 "critic score of the executed candidate")

    def _window(self, history: collections.deque) -> dict[str, np.ndarray]:
        keys = self.engine.obs_shapes
        return {k: np.stack([h[k] for h in history]) for k in keys}

    def close(self) -> None:
        self.worker.close()

    def run_episode(self, seed: int | None = None) -> EpisodeResult:
        """Reset the robot, run until success/done/max_ticks/stop, stop the robot, record. Raises
        RobotConnectionError / InferenceError after recording what was run."""
        with self._realtime():
            return self._run_episode(seed)

    @contextlib.contextmanager
    def _realtime(self):
        """While an episode runs, the calling (loop) thread gets SCHED_FIFO if configured and permitted; otherwise, at
        normal priority, a short scheduler slice and 1 ns timer slack (both unprivileged), so that its wake-up at a
        deadline preempts whatever keeps the cores busy."""
        prio = self.cfg.rt_priority
        if prio > 0 and hasattr(os, "sched_setscheduler"):
            try:
                os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(prio))
            except PermissionError:
                log.warning("rt_priority=%d needs CAP_SYS_NICE (or an rtprio limit): running at normal priority", prio)
            else:
                try:
                    yield
                finally:
                    os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
                return
        with short_slice(self.cfg.sched_slice_us):
            yield

    def _run_episode(self, seed: int | None) -> EpisodeResult:
        cfg, m = self.cfg, self.metrics
        buf = self.recorder.new_episode() if self.recorder else EpisodeBuffer(sorted(self.robot.spec.obs))
        self.last_episode = buf
        reason, success, k, error = "max_ticks", False, 0, None
        with self.lock:
            self._episode += 1
        self.worker.error = None
        self._texts = {}
        try:
            self.engine.reset()
            obs = self.robot.reset(seed)
            history: collections.deque = collections.deque([obs.data] * self.engine.n_obs_steps, maxlen=self.engine.n_obs_steps)
            # First chunk before tick 0: the robot is at rest, nothing is late yet.
            goal = obs.goal
            pred = self.engine.infer(self._window(history), goal=goal, step=0)
            self._log_extras(pred.extras, 0)
            first = pred.actions
            t0 = self.clock.now() + self.dt
            with self.lock:
                self.scheduler.reset(t0)
                self.scheduler.last_request_tick = 0
                self._chunk_id += 1
                self.scheduler.add_chunk(Chunk(first[self.engine.n_obs_steps - 1:], 0, t0, t0 - self.dt, self._chunk_id), t0 - self.dt)
            self.safety.reset(t0)
            self._last_servo, self._pending_setpoint = None, None
            prev_t = None
            while True:
                deadline = t0 + k * self.dt
                self.clock.sleep_until(deadline)
                now = self.clock.now()
                late = now - deadline
                if prev_t is not None:
                    m.observe("loop_period_seconds", now - prev_t, "time between consecutive ticks")
                m.observe("tick_lateness_seconds", late, "tick start minus its deadline")
                prev_t = now
                if self._pending_setpoint is not None:  # the last tick's stream ends on its command, on time
                    self._servo(self._pending_setpoint)
                    self._pending_setpoint = None
                if late > cfg.warn_late_frac * self.dt:
                    m.inc("overruns", help="ticks started later than warn_late_frac*dt")
                    if now - self._last_warn > 1.0:
                        self._last_warn = now
                        log.warning("control loop below its target rate: tick %d started %.1f ms late (dt %.1f ms)", k, late * 1e3, self.dt * 1e3)
                    skipped = int(late // self.dt)
                    if skipped:
                        m.inc("missed_ticks", skipped, help="ticks skipped because the loop fell behind")
                        k += skipped
                        continue
                if self.stop_event.is_set():
                    reason = "signal"
                    break
                if self.end_requested is not None and self.end_requested():
                    reason = "operator"
                    break
                if self.worker.error is not None:
                    reason, error = "inference_error", InferenceError(f"inference failed: {self.worker.error}")
                    break
                if k > 0:
                    obs = self.robot.observe()
                    if obs.dropped:
                        m.inc("dropped_frames", help="observations whose camera frame was not refreshed")
                    history.append(obs.data)
                if obs.success:
                    success = True
                    if cfg.stop_on_success:
                        reason = "success"
                        break
                if obs.done:
                    reason = "done"
                    break
                if k >= cfg.max_ticks:
                    reason = "max_ticks"
                    break
                with self.lock:
                    if self.worker.idle and self.scheduler.should_request(k):
                        req = self.scheduler.make_request(k)
                        req.episode = self._episode
                        self.worker.submit(req, self._window(history), goal)
                    action, _ = self.scheduler.pop(k)
                command, status = self.safety.filter(action, now)
                if status == "stop":
                    reason = "watchdog"
                    if not self.worker.idle:  # no command for watchdog_s because no chunk came: a fault to report
                        reason = "inference_stalled"
                        error = InferenceError(f"inference stalled: no action chunk within the watchdog's "
                                               f"{self.safety.watchdog_s:g} s (tick {k})")
                    break
                if status == "hold":
                    m.inc("holds", help="ticks that held the previous command (no planned action)")
                if self.servo_steps > 1:
                    self._stream(command, deadline, now)
                else:
                    self.robot.act(command)
                    m.observe("obs_to_action_seconds", self.clock.now() - now, "tick start (observe) to command delivered")
                with self.lock:
                    self.scheduler.mark_sent(k, command)
                buf.add(obs.data, command, action if action is not None else command, deadline - t0, status)
                m.set("tick", k)
                k += 1
        except RobotConnectionError as exc:
            reason, error = "robot_disconnected", exc
            log.error("robot link lost at tick %d: %s", k, exc)
        except InferenceError as exc:  # a blocking call to an inference process that died or failed
            reason, error = "inference_error", exc
        finally:
            self._stop_robot(reason)
            self.worker.wait_idle(cfg.drain_timeout_s)
            with self.lock:
                for name, v in self.scheduler.counters.items():
                    m.set(f"scheduler_{name}", v)
            counters = dict(self.scheduler.counters)
            counters.update({f"safety_{n}": v for n, v in self.safety.counters.items()})
            result = EpisodeResult(seed, success, k, reason, counters)
            if self.judge is not None and reason != "signal":
                try:
                    result.success = success = bool(self.judge(result))
                    result.marked_by = "operator"
                except (EOFError, ValueError) as exc:  # nobody left to ask: keep the robot's verdict, end the run
                    log.error("no success mark for this episode: %s; stopping after it", exc)
                    self.stop_event.set()
            if self.recorder is not None:
                texts = {name: [{"tick": t, "text": v} for t, v in items] for name, items in self._texts.items()}
                result.episode_index = self.recorder.append(buf, {**self.text, **texts, "outcome": reason,
                                                                 "success": success, "success_marked_by": result.marked_by,
                                                                 "seed": seed})
            m.inc("episodes", help="episodes run")
            if success:
                m.inc("successes", help="episodes that reached the task's success")
        if error is not None:
            error.result = result  # type: ignore[attr-defined]
            raise error
        return result

    def _stream(self, command: np.ndarray, deadline: float, tick_start: float) -> None:
        """This tick's command as ``servo_steps`` set-points linearly interpolated from the previous set-point, on a
        fixed grid: the j-th at ``deadline + j * dt / n`` for j = 1..n-1, and the last one (the command itself) at the
        next tick's start, before it observes. So set-points never wait for an observation or the policy (their timing
        stays as regular as the loop's ticks), at the price of reaching the robot up to dt / n later than right after
        the tick's work. Each passes the safety layer when it is sent."""
        n = self.servo_steps
        start = self.safety.last_setpoint.copy()
        for j in range(1, n):
            self.clock.sleep_until(deadline + j * self.dt / n)
            self._servo(start + j / n * (command - start))
            if j == 1:
                self.metrics.observe("obs_to_action_seconds", self.clock.now() - tick_start,
                                     "tick start (observe) to command delivered")
        self._pending_setpoint = np.asarray(command).copy()

    def _servo(self, point: np.ndarray) -> None:
        t = self.clock.now()
        self.robot.servo(self.safety.setpoint(point, self.servo_steps))
        if self._last_servo is not None:
            self.metrics.observe("servo_period_seconds", t - self._last_servo, "time between consecutive set-points")
        self._last_servo = t

    def _stop_robot(self, reason: str) -> None:
        try:
            self.robot.stop()
            log.info("robot stopped (%s)", reason)
        except (RobotConnectionError, RobotError) as exc:
            log.error("could not command a stop (%s): %s", reason, exc)
