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
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from vmp.real.metrics import Metrics
from vmp.real.recorder import EpisodeBuffer, EpisodeRecorder
from vmp.real.robot import Robot, RobotConnectionError, RobotError
from vmp.real.safety import SafetyLayer
from vmp.real.cpu_slice import short_slice
from vmp.real.scheduler import ActionScheduler, Chunk, Request

if TYPE_CHECKING:  # the engine module imports torch; the loop itself does not need it
    from vmp.real.engine import Engine

log = logging.getLogger(__name__)


class RealClock:
    """time.monotonic with a hybrid sleep: OS sleep until ``spin_s`` before the deadline, then spin. No spin by
    default: at normal priority with a short scheduler slice (``LoopConfig.sched_slice_us``) a spin spends the slice
    just before the deadline, and the thread is preempted at the tick; spin under SCHED_FIFO (the daemon's spin_ms),
    where nothing preempts it (`vmp-bench deploy` measures both)."""

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


class SetpointStream:
    """Set-points between ticks: ``n`` per control tick on a fixed grid, the j-th of tick k at ``t0 + k * dt + j *
    dt / n``. A thread of the loop's process sends the ones between ticks; the loop thread sends each tick's last one
    (the tick's command itself) when it wakes for the next tick, before that tick observes (one wake-up at the tick,
    not two threads racing for it). The loop thread only posts each tick's command: the stream between ticks never
    waits for an observation, the policy or the loop's work, so a driver that expects a steady stream (UR's RTDE,
    Franka's) gets one. Each set-point moves ``1 / slots_left`` of the way from the previous set-point to the newest
    command; a command posted after its tick's first slot makes the early slots repeat the previous set-point (a
    hold) and the later ones catch up, within the safety layer's per-set-point rate limit. If the loop thread misses
    a tick's last slot by a whole slot, the stream sends it. Created with the loop (before its episodes' short slice
    is applied to every thread), idle between episodes."""

    def __init__(self, robot: Any, safety: SafetyLayer, dt: float, n: int, clock: Any):
        self.robot, self.safety, self.dt, self.n, self.clock = robot, safety, dt, n, clock
        self.metrics = Metrics()  # the episode's, from start()
        self._cv = threading.Condition()
        self._sending = threading.Lock()  # held while a set-point is made and sent: one at a time, in slot order
        self._t0: float | None = None  # tick 0's time while an episode streams, None when idle
        self._sent = 0  # slots sent this episode
        self._command: np.ndarray | None = None
        self._pending_o2a: tuple[int, float] | None = None  # (tick, its start): the first slot moving to its command
        self._last_send: float | None = None
        self._closed = False
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="setpoint-stream", daemon=True)
        self.thread.start()

    def start(self, t0: float, metrics: Metrics) -> None:
        """Stream an episode whose tick 0 is at ``t0``; until the first command, slots hold the last set-point."""
        with self._cv:
            self.metrics = metrics
            self._t0, self._sent, self._command, self._pending_o2a, self._last_send = t0, 0, None, None, None
            self.error = None
            self._cv.notify_all()

    def post(self, k: int, command: np.ndarray, tick_start: float) -> None:
        """Tick ``k``'s command (already through the safety filter); ``tick_start`` for the latency metric."""
        with self._cv:
            self._command = np.asarray(command, np.float32).copy()
            self._pending_o2a = (k, tick_start)

    def end_tick(self, k: int) -> None:
        """From the loop thread at tick ``k``'s start: tick ``k - 1``'s last set-point, if it is the next one due."""
        self._send(k * self.n)

    def stop(self) -> None:
        """End the episode's stream; once this returns no set-point is in flight or will be sent."""
        with self._cv:
            self._t0 = None
            self._cv.notify_all()
        with self._sending:
            pass

    def close(self) -> None:
        with self._cv:
            self._closed, self._t0 = True, None
            self._cv.notify_all()
        self.thread.join(timeout=5)

    def _run(self) -> None:
        while True:
            with self._cv:
                self._cv.wait_for(lambda: self._closed or self._t0 is not None)
                if self._closed:
                    return
                t0, slot = self._t0, self._sent + 1
            due = t0 + slot * self.dt / self.n
            if slot % self.n == 0:  # the loop thread's, at its tick; the stream's only if the loop is a slot late
                with self._cv:
                    timeout = due + self.dt / self.n - self.clock.now()
                    if self._cv.wait_for(lambda: self._sent >= slot or self._t0 != t0, max(timeout, 0.0)):
                        continue
            else:
                self.clock.sleep_until(due)
            self._send(slot, t0)

    def _send(self, slot: int, t0: float | None = None) -> None:
        """Send set-point ``slot`` of the episode started at ``t0`` (None: the running one) unless it was sent or the
        stream stopped meanwhile."""
        with self._sending:
            with self._cv:
                if self._t0 is None or (t0 is not None and self._t0 != t0) or self._sent + 1 != slot:
                    return
                left = self.n - (slot - 1) % self.n  # slots left in this tick, this one included
                last = self.safety.last_setpoint
                target = last if self._command is None else last + (self._command - last) / left
                point = self.safety.setpoint(target, self.n)
                o2a = self._pending_o2a
                moving = o2a is not None and (slot - 1) // self.n == o2a[0]
            now = self.clock.now()
            try:
                self.robot.servo(point)
            except Exception as exc:  # reported to the loop, which stops the robot
                with self._cv:
                    self.error, self._t0 = exc, None
                    self._cv.notify_all()
                return
            if self._last_send is not None:
                self.metrics.observe("servo_period_seconds", now - self._last_send,
                                     "time between consecutive set-points")
            self._last_send = now
            if moving:
                self.metrics.observe("obs_to_action_seconds", now - o2a[1], "tick start (observe) to command delivered")
            with self._cv:
                if moving:
                    self._pending_o2a = None
                self._sent = slot
                self._cv.notify_all()


@dataclasses.dataclass(kw_only=True)
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


@dataclasses.dataclass
class _Episode:
    """What one episode carries from tick to tick."""

    seed: int | None
    buf: EpisodeBuffer
    obs: Any = None
    history: collections.deque | None = None
    goal: Any = None
    t0: float = 0.0
    k: int = 0
    prev_t: float | None = None
    success: bool = False
    reason: str = "max_ticks"
    error: BaseException | None = None


class ControlLoop:
    """Drives one robot with one engine; ``run_episode`` is the unit. ``stop_event`` ends the current episode
    safely (signal handlers set it)."""

    def __init__(self, robot: Robot, engine: Engine, safety: SafetyLayer, cfg: LoopConfig, metrics: Metrics | None = None,
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
        self.stream = (SetpointStream(robot, safety, self.dt, self.servo_steps, self.clock)
                       if self.servo_steps > 1 else None)
        self.fifo = False  # whether the last episode ran SCHED_FIFO (rt_priority asked for and granted)

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
        """Reasoning text is logged when it changes, shown in the metrics (its current value) and kept for the
        episode's record; arrays at debug level."""
        for name, value in extras.items():
            if isinstance(value, str):
                if not self._texts.get(name) or self._texts[name][-1][1] != value:
                    self._texts.setdefault(name, []).append((tick, value))
                    log.info("tick %d %s: %s", tick, name, value)
                    self.metrics.inc(f"{name}_changes", help=f"times the policy's {name} text changed")
                    self.metrics.info(name, {"text": value}, help=f"the policy's current {name} text")
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
        if self.stream is not None:
            self.stream.close()

    def run_episode(self, seed: int | None = None) -> EpisodeResult:
        """Reset the robot, run until success/done/max_ticks/stop, stop the robot, record. Raises
        RobotConnectionError / InferenceError after recording what was run."""
        with self._realtime():
            return self._run_episode(seed)

    @contextlib.contextmanager
    def _realtime(self):
        """While an episode runs, the calling (loop) thread and the set-point stream's get SCHED_FIFO if configured and
        permitted; otherwise, at normal priority, every thread a short scheduler slice and the loop thread 1 ns timer
        slack (both unprivileged), so that a wake-up at a deadline preempts whatever keeps the cores busy."""
        prio = self.cfg.rt_priority
        if prio > 0 and hasattr(os, "sched_setscheduler"):
            # the loop thread and the set-point stream's
            tids = [0] + ([self.stream.thread.native_id] if self.stream is not None else [])
            done = []
            try:
                for tid in tids:
                    os.sched_setscheduler(tid, os.SCHED_FIFO, os.sched_param(prio))
                    done.append(tid)
            except PermissionError:
                for tid in done:  # all of them or none
                    os.sched_setscheduler(tid, os.SCHED_OTHER, os.sched_param(0))
                log.warning("rt_priority=%d needs CAP_SYS_NICE (or an rtprio limit): running at normal priority", prio)
            else:
                self.fifo = True
                try:
                    yield
                finally:
                    for tid in tids:
                        os.sched_setscheduler(tid, os.SCHED_OTHER, os.sched_param(0))
                return
        self.fifo = False
        with short_slice(self.cfg.sched_slice_us):
            yield

    def _run_episode(self, seed: int | None) -> EpisodeResult:
        ep = _Episode(seed, self.recorder.new_episode() if self.recorder else EpisodeBuffer(sorted(self.robot.spec.obs)))
        self.last_episode = ep.buf
        with self.lock:
            self._episode += 1
        self.worker.error = None
        self._texts = {}
        try:
            self._start(ep)
            while self._tick(ep):
                pass
        except RobotConnectionError as exc:
            ep.reason, ep.error = "robot_disconnected", exc
            log.error("robot link lost at tick %d: %s", ep.k, exc)
        except InferenceError as exc:  # a blocking call to an inference process that died or failed
            ep.reason, ep.error = "inference_error", exc
        finally:
            result = self._finish(ep)
        if ep.error is not None:
            ep.error.result = result  # type: ignore[attr-defined]
            raise ep.error
        return result

    def _start(self, ep: "_Episode") -> None:
        """Reset, the first chunk before tick 0 (the robot is at rest, nothing is late yet), the plan and the clocks."""
        self.engine.reset()
        ep.obs = self.robot.reset(ep.seed)
        ep.history = collections.deque([ep.obs.data] * self.engine.n_obs_steps, maxlen=self.engine.n_obs_steps)
        ep.goal = ep.obs.goal
        pred = self.engine.infer(self._window(ep.history), goal=ep.goal, step=0)
        self._log_extras(pred.extras, 0)
        first = pred.actions
        ep.t0 = t0 = self.clock.now() + self.dt
        with self.lock:
            self.scheduler.reset(t0)
            self.scheduler.last_request_tick = 0
            self._chunk_id += 1
            self.scheduler.add_chunk(Chunk(first[self.engine.n_obs_steps - 1:], 0, t0, t0 - self.dt, self._chunk_id), t0 - self.dt)
        self.safety.reset(t0)
        if self.stream is not None:
            self.stream.start(t0, self.metrics)

    def _tick(self, ep: "_Episode") -> bool:
        """Tick ``ep.k``: wait for its deadline, observe, request a chunk when due, command the robot. -> False when
        the episode ends (``ep.reason`` says why)."""
        cfg, m = self.cfg, self.metrics
        k = ep.k
        deadline = ep.t0 + k * self.dt
        self.clock.sleep_until(deadline)
        now = self.clock.now()
        late = now - deadline
        if ep.prev_t is not None:
            m.observe("loop_period_seconds", now - ep.prev_t, "time between consecutive ticks")
        m.observe("tick_lateness_seconds", late, "tick start minus its deadline")
        ep.prev_t = now
        if self.stream is not None:
            if k > 0:
                self.stream.end_tick(k)
            if self.stream.error is not None:  # raised by robot.servo here or in the stream's thread
                exc = self.stream.error
                raise exc if isinstance(exc, RobotConnectionError) else RobotConnectionError(
                    f"the robot refused a set-point: {exc!r}")
        if late > cfg.warn_late_frac * self.dt:
            m.inc("overruns", help="ticks started later than warn_late_frac*dt")
            if now - self._last_warn > 1.0:
                self._last_warn = now
                log.warning("control loop below its target rate: tick %d started %.1f ms late (dt %.1f ms)", k, late * 1e3, self.dt * 1e3)
            skipped = int(late // self.dt)
            if skipped:
                m.inc("missed_ticks", skipped, help="ticks skipped because the loop fell behind")
                ep.k += skipped
                return True
        reason = self._end_reason(ep)
        if reason is not None:
            ep.reason = reason
            return False
        with self.lock:
            if self.worker.idle and self.scheduler.should_request(k):
                req = self.scheduler.make_request(k)
                req.episode = self._episode
                self.worker.submit(req, self._window(ep.history), ep.goal)
            action, _ = self.scheduler.pop(k)
        command, status = self.safety.filter(action, now)
        if status == "stop":
            ep.reason = "watchdog"
            if not self.worker.idle:  # no command for watchdog_s because no chunk came: a fault to report
                ep.reason = "inference_stalled"
                ep.error = InferenceError(f"inference stalled: no action chunk within the watchdog's "
                                          f"{self.safety.watchdog_s:g} s (tick {k})")
            return False
        if status == "hold":
            m.inc("holds", help="ticks that held the previous command (no planned action)")
        if self.stream is not None:
            self.stream.post(k, command, now)
        else:
            self.robot.act(command)
            m.observe("obs_to_action_seconds", self.clock.now() - now, "tick start (observe) to command delivered")
        with self.lock:
            self.scheduler.mark_sent(k, command)
        ep.buf.add(ep.obs.data, command, action if action is not None else command, deadline - ep.t0, status)
        m.set("tick", k)
        ep.k = k + 1
        return True

    def _end_reason(self, ep: "_Episode") -> str | None:
        """Why the episode ends at this tick (signal, operator, inference error, the robot's success or end, the
        tick limit), or None; observes the robot on every tick after the first."""
        if self.stop_event.is_set():
            return "signal"
        if self.end_requested is not None and self.end_requested():
            return "operator"
        if self.worker.error is not None:
            ep.error = InferenceError(f"inference failed: {self.worker.error}")
            return "inference_error"
        if ep.k > 0:
            ep.obs = self.robot.observe()
            if ep.obs.dropped:
                self.metrics.inc("dropped_frames", help="observations whose camera frame was not refreshed")
            ep.history.append(ep.obs.data)
        if ep.obs.success:
            ep.success = True
            if self.cfg.stop_on_success:
                return "success"
        if ep.obs.done:
            return "done"
        if ep.k >= self.cfg.max_ticks:
            return "max_ticks"
        return None

    def _finish(self, ep: "_Episode") -> EpisodeResult:
        """Stop the robot first, then drain inference, count, ask the judge, and record the episode."""
        m = self.metrics
        if self.stream is not None:
            self.stream.stop()
        self._stop_robot(ep.reason)
        self.worker.wait_idle(self.cfg.drain_timeout_s)
        with self.lock:
            for name, v in self.scheduler.counters.items():
                m.set(f"scheduler_{name}", v)
        counters = dict(self.scheduler.counters)
        counters.update({f"safety_{n}": v for n, v in self.safety.counters.items()})
        result = EpisodeResult(ep.seed, ep.success, ep.k, ep.reason, counters)
        if self.judge is not None and ep.reason != "signal":
            try:
                result.success = ep.success = bool(self.judge(result))
                result.marked_by = "operator"
            except (EOFError, ValueError) as exc:  # nobody left to ask: keep the robot's verdict, end the run
                log.error("no success mark for this episode: %s; stopping after it", exc)
                self.stop_event.set()
        if self.recorder is not None:
            texts = {name: [{"tick": t, "text": v} for t, v in items] for name, items in self._texts.items()}
            result.episode_index = self.recorder.append(ep.buf, {**self.text, **texts, "outcome": ep.reason,
                                                                "success": ep.success, "success_marked_by": result.marked_by,
                                                                "seed": ep.seed})
        m.inc("episodes", help="episodes run")
        if ep.success:
            m.inc("successes", help="episodes that reached the task's success")
        return result

    def _stop_robot(self, reason: str) -> None:
        try:
            self.robot.stop()
            log.info("robot stopped (%s)", reason)
        except (RobotConnectionError, RobotError) as exc:
            log.error("could not command a stop (%s): %s", reason, exc)
