"""The control loop against a real SimRobot process: stalls, crashes, dropped frames, recording."""

import json
import time

import pytest

from vmp.data import EpisodeStore
from vmp.real.engine import InferenceEngine
from vmp.real.loop import ControlLoop, InferenceError, LoopConfig, RealClock
from vmp.real.recorder import EpisodeRecorder
from vmp.real.robot import RobotConnectionError
from vmp.real.safety import SafetyLayer
from vmp.real.sim_robot import SimRobot
from vmp.real.testing import ReachPolicy


def toy(image_size=0, tol=0.0, steps=1000):
    return {"target": "vmp.real.toy:ToyReachEnv", "kwargs": {"image_size": image_size, "tol": tol, "max_episode_steps": steps},
            "control_hz": 50}


def make_loop(robot, policy, low=-0.5, high=0.5, max_delta=0.2, watchdog_s=1.0, blend="none", s=3, max_ticks=60,
              recorder=None, stop_on_success=False, servo_hz=None):
    engine = InferenceEngine(policy)
    safety = SafetyLayer([low] * 2, [high] * 2, max_delta=max_delta, watchdog_s=watchdog_s, hold="zero")
    cfg = LoopConfig(control_hz=50, exec_horizon=s, blend=blend, max_ticks=max_ticks, stop_on_success=stop_on_success,
                     servo_hz=servo_hz)
    return ControlLoop(robot, engine, safety, cfg, recorder=recorder)


def test_inference_stall_holds_within_limits_and_resumes(tmp_path):
    status = tmp_path / "status.json"
    # chunks of 6 actions every 3 ticks; the 4th inference stalls 300 ms (15 ticks at 50 Hz)
    policy = ReachPolicy(n_obs_steps=1, horizon=6, n_action_steps=3, offset_scale=1.0, stall={3: 0.3}, seed=0)
    with SimRobot(toy(), status_file=str(status)) as robot:
        loop = make_loop(robot, policy, max_ticks=60)
        try:
            res = loop.run_episode(seed=0)
        finally:
            loop.close()
    # the loop kept ticking through the stall (>= : a tick started late on a busy machine skips the ones it missed)
    assert res.reason == "max_ticks" and res.ticks >= 60
    assert res.counters["safety_hold"] >= 5 and res.counters["underrun"] >= 5
    assert loop.metrics.counter("chunks") > 4  # chunks flowed again after the stall
    st = json.loads(status.read_text())
    assert st["state"] == "stopped" and st["steps"] == res.ticks - loop.metrics.counter("missed_ticks")
    assert min(st["action_min"]) >= -0.5 and max(st["action_max"]) <= 0.5  # robot-side: never beyond limits
    assert st["max_step_delta"] <= 0.2 + 1e-6


def test_watchdog_stops_robot_on_long_stall(tmp_path):
    status = tmp_path / "status.json"
    policy = ReachPolicy(n_obs_steps=1, horizon=6, n_action_steps=3, stall={2: 1.5}, seed=0)
    with SimRobot(toy(), status_file=str(status)) as robot:
        loop = make_loop(robot, policy, watchdog_s=0.3, max_ticks=200)
        try:
            with pytest.raises(InferenceError, match=r"inference stalled: no action chunk within the watchdog's 0.3 s") as info:
                loop.run_episode(seed=0)
        finally:
            loop.close()
    assert info.value.result.reason == "inference_stalled" and info.value.result.ticks < 200
    assert json.loads(status.read_text())["state"] == "stopped"


@pytest.mark.parametrize("servo_hz", [None, 200])
def test_killed_robot_process_stops_safely_and_records(tmp_path, servo_hz):
    """Also while set-points stream (the robot dies under a set-point, in whichever thread sent it)."""
    from vmp.real.testing import StreamingRobot

    policy = ReachPolicy(n_obs_steps=2, horizon=16, seed=0)
    sim = SimRobot(toy(), faults={"exit_after_steps": 25}, timeout_s=1.0)
    spec = sim.connect()
    robot = StreamingRobot(sim, per_tick=4) if servo_hz else sim
    rec = EpisodeRecorder(tmp_path / "rec.zarr", spec, {"task": "toy", "control_hz": 50})
    loop = make_loop(robot, policy, s=8, max_ticks=100, recorder=rec, servo_hz=servo_hz)
    try:
        with pytest.raises(RobotConnectionError, match="exited with status 3") as info:
            loop.run_episode(seed=0)
    finally:
        loop.close()
        sim.disconnect()
        rec.close()
    assert info.value.result.reason == "robot_disconnected"
    with EpisodeStore.open(tmp_path / "rec.zarr") as store:
        assert store.n_episodes == 1 and store.episode_text(0)["outcome"] == "robot_disconnected"
        assert 20 <= len(store.episode(0)["action"]) <= 25


def test_dropped_frames_are_counted_not_fatal(tmp_path):
    policy = ReachPolicy(n_obs_steps=2, horizon=16, seed=0)
    with SimRobot(toy(image_size=8), faults={"drop_prob": 0.3}) as robot:
        spec = robot.spec
        rec = EpisodeRecorder(tmp_path / "rec.zarr", spec, {"task": "toy", "control_hz": 50})
        loop = make_loop(robot, policy, s=8, max_ticks=50, recorder=rec)
        try:
            res = loop.run_episode(seed=1)
        finally:
            loop.close()
            rec.close()
    assert res.reason == "max_ticks"
    assert loop.metrics.counter("dropped_frames") >= 5
    executed = res.ticks - int(loop.metrics.counter("missed_ticks"))  # a busy machine may skip a late tick
    with EpisodeStore.open(tmp_path / "rec.zarr") as store:
        ep = store.episode(0)
        assert ep["camera_image"].shape == (executed, 8, 8, 3) and ep["action"].shape == (executed, 2)


def test_reaches_targets_with_each_blend_mode():
    for blend, s in (("none", 8), ("ensemble", 2), ("prefix", 8)):
        policy = ReachPolicy(n_obs_steps=2, horizon=16, offset_scale=0.05, seed=0)
        with SimRobot(toy(tol=0.05, steps=300)) as robot:
            loop = make_loop(robot, policy, low=-1, high=1, max_delta=1.0, blend=blend, s=s, max_ticks=300,
                             stop_on_success=True)
            try:
                results = [loop.run_episode(seed=i) for i in range(2)]
            finally:
                loop.close()
        assert all(r.success for r in results), (blend, results)


def test_policy_failure_stops_robot_and_raises(tmp_path):
    status = tmp_path / "status.json"
    policy = ReachPolicy(n_obs_steps=1, horizon=6, n_action_steps=3, nan_at=2, seed=0)
    with SimRobot(toy(), status_file=str(status)) as robot:
        loop = make_loop(robot, policy, max_ticks=100)
        try:
            with pytest.raises(InferenceError, match="non-finite"):
                loop.run_episode(seed=0)
        finally:
            loop.close()
        assert json.loads(status.read_text())["state"] == "stopped"


def test_setpoints_stream_between_ticks_within_the_safety_limits():
    """50 Hz control, 200 Hz set-points: four per tick, interpolated from the previous set-point to the tick's
    command (the last of the four is the command), each within bounds and a quarter of the per-tick rate limit."""
    import numpy as np

    from vmp.real.testing import StreamingRobot

    policy = ReachPolicy(n_obs_steps=2, horizon=16, offset_scale=0.05, seed=0)
    with SimRobot(toy(tol=0.05, steps=300)) as sim:
        robot = StreamingRobot(sim, per_tick=4)
        engine = InferenceEngine(policy)
        safety = SafetyLayer([-0.5] * 2, [0.5] * 2, max_delta=0.2, watchdog_s=1.0, hold="zero")
        cfg = LoopConfig(control_hz=50, exec_horizon=8, blend="none", max_ticks=300, servo_hz=200)
        loop = ControlLoop(robot, engine, safety, cfg)
        try:
            res = loop.run_episode(seed=0)
        finally:
            loop.close()
        record = loop.last_episode.arrays()
    assert res.success, res
    points = np.stack([p for _, p in robot.setpoints])
    assert 4 * res.ticks <= len(points) < 4 * res.ticks + 4  # the stream ends with the episode (+ holds while it stops)
    # What the stream guarantees under any load (timing decides only which case a tick is in): each tick's last
    # set-point lands on the newest command posted when it was made, its own or (posted late, after that slot) the
    # previous tick's, unless the per-set-point rate limit stopped it short. Ticks the loop skipped have no command.
    ticks = np.rint(record["tick_time"][:, 0] * 50).astype(int)
    own = record["action"]
    previous = np.concatenate([np.zeros((1, 2), np.float32), own[:-1]])
    last, before = points[4 * ticks + 3], points[4 * ticks + 2]
    lands = np.isclose(last, own, atol=1e-6).all(axis=1) | np.isclose(last, previous, atol=1e-6).all(axis=1)
    limited = (np.abs(last - before) >= 0.2 / 4 - 1e-6).any(axis=1)
    assert (lands | limited).all(), np.flatnonzero(~(lands | limited))
    assert lands.any()
    assert points.min() >= -0.5 and points.max() <= 0.5
    steps = np.abs(np.diff(np.concatenate([np.zeros((1, 2), np.float32), points]), axis=0))
    assert steps.max() <= 0.2 / 4 + 1e-6
    assert loop.metrics.samples("servo_period_seconds").size == len(points) - 1
    with pytest.raises(ValueError, match=r"servo_hz=120 must be a whole multiple \(>= 2\) of the control rate 50 Hz"):
        ControlLoop(robot, engine, safety, LoopConfig(control_hz=50, servo_hz=120))
    with pytest.raises(ValueError, match="robot SimRobot has no servo"):
        ControlLoop(sim, engine, safety, LoopConfig(control_hz=50, servo_hz=200))
    with pytest.raises(ValueError, match=r"sched_slice_us=-1 must be >= 0"):
        ControlLoop(sim, engine, safety, LoopConfig(control_hz=50, sched_slice_us=-1))
    with pytest.raises(ValueError, match=r"spin \(spin_ms\) must be >= 0, got -2 ms"):
        RealClock(-0.002)


def test_loop_threads_ask_for_a_short_slice_during_an_episode_and_restore_it():
    """At normal priority every thread of the loop's process (here: the loop thread and a helper started before the
    episode) has a short scheduler slice while an episode runs, and the loop thread 1 ns timer slack (read in the
    robot's observe, which the loop thread calls each tick); afterwards both are what they were."""
    import threading

    from vmp.real.cpu_slice import sched_slice_ns, timer_slack_ns

    before = (sched_slice_ns(), timer_slack_ns())
    if not before[0]:  # None: not Linux; 0: a kernel before 6.12, which has no per-thread slice to ask for
        pytest.skip("per-thread scheduler slices need Linux 6.12+ (x86_64, aarch64)")
    release = threading.Event()
    helper = threading.Thread(target=release.wait, daemon=True)
    helper.start()

    class Probe:
        def __init__(self, robot):
            self.robot, self.seen = robot, []

        def __getattr__(self, name):
            return getattr(self.robot, name)

        def observe(self):
            self.seen.append((sched_slice_ns(), timer_slack_ns(), sched_slice_ns(helper.native_id)))
            return self.robot.observe()

    policy = ReachPolicy(n_obs_steps=2, horizon=16, seed=0)
    try:
        with SimRobot(toy()) as sim:
            robot = Probe(sim)
            loop = make_loop(robot, policy, max_ticks=5)
            loop.cfg.sched_slice_us = 200
            try:
                loop.run_episode(seed=0)
            finally:
                loop.close()
        assert robot.seen and set(robot.seen) == {(200_000, 1, 200_000)}
        assert (sched_slice_ns(), timer_slack_ns()) == before
        assert sched_slice_ns(helper.native_id) == before[0]
    finally:
        release.set()


def test_the_simulated_robot_keeps_its_short_slice_while_clients_come_and_go():
    """Every thread of the SimRobot server has the configured slice for the server's life: the first client to leave
    does not hand the threads serving the others back to the kernel's default."""
    import os
    import socket

    from vmp.real.cpu_slice import sched_slice_ns

    if not sched_slice_ns():
        pytest.skip("per-thread scheduler slices need Linux 6.12+ (x86_64, aarch64)")
    with SimRobot(toy(), server={"sched_slice_us": 200}) as sim:
        with socket.create_connection(("127.0.0.1", sim._port), timeout=2.0) as other:  # a second client stays
            sim.disconnect(shutdown=False)  # the first leaves (its thread ends: its exit once reset the slices)
            time.sleep(0.3)
            tids = [int(t) for t in os.listdir(f"/proc/{sim.process.pid}/task")]
            slices = {sched_slice_ns(tid) for tid in tids} - {None}
            other.close()
        sim.connect()
    # the server's accepting thread and the remaining client's (and the first client's, if it has not ended yet)
    assert len(tids) >= 2 and slices == {200_000}


def test_sched_fifo_for_both_threads_or_neither(monkeypatch):
    """rt_priority asks SCHED_FIFO for the loop thread and the set-point stream's: granted for both (and undone after
    the episode), or, where the second is refused, for neither (the first is put back), and the loop says which ran."""
    import os

    from vmp.real.testing import StreamingRobot

    calls = []

    def fake_setscheduler(tid, policy, param):
        calls.append((tid, policy))
        if refuse and tid != 0 and policy == os.SCHED_FIFO:
            raise PermissionError("no CAP_SYS_NICE")

    monkeypatch.setattr(os, "sched_setscheduler", fake_setscheduler)
    policy = ReachPolicy(n_obs_steps=2, horizon=16, seed=0)
    with SimRobot(toy()) as sim:
        loop = make_loop(StreamingRobot(sim, per_tick=4), policy, max_ticks=3, servo_hz=200)
        loop.cfg.rt_priority = 10
        stream = loop.stream.thread.native_id
        try:
            refuse = False
            loop.run_episode(seed=0)
            assert loop.fifo and calls == [(0, os.SCHED_FIFO), (stream, os.SCHED_FIFO),
                                           (0, os.SCHED_OTHER), (stream, os.SCHED_OTHER)]
            calls.clear()
            refuse = True
            loop.run_episode(seed=0)
            assert not loop.fifo and calls == [(0, os.SCHED_FIFO), (stream, os.SCHED_FIFO), (0, os.SCHED_OTHER)]
        finally:
            loop.close()


def test_setpoints_keep_streaming_while_a_tick_observes():
    """10 Hz control, 40 Hz set-points (a slot of 25 ms), observations that take 55 ms: the stream does not wait for
    them. The slots due during a tick's observation repeat the previous set-point (the tick has no command yet), the
    later ones catch up, and the tick ends on its command; each tick observes after the last one's final set-point."""
    import threading
    import time

    import numpy as np

    events: list[tuple[str, float, object]] = []
    lock = threading.Lock()

    class SlowObserving:
        def __init__(self, robot):
            self.robot, self.n = robot, 0

        def __getattr__(self, name):
            return getattr(self.robot, name)

        def observe(self):
            with lock:
                events.append(("observe", time.monotonic(), self.n))
            time.sleep(0.055)
            obs = self.robot.observe()
            with lock:
                events.append(("observed", time.monotonic(), self.n))
            return obs

        def servo(self, setpoint):
            with lock:
                self.n += 1
                events.append(("servo", time.monotonic(), np.asarray(setpoint).copy()))
            if self.n % 4 == 0:
                self.robot.act(setpoint)

    policy = ReachPolicy(n_obs_steps=2, horizon=16, seed=0)
    with SimRobot(toy()) as sim:
        robot = SlowObserving(sim)
        safety = SafetyLayer([-0.5] * 2, [0.5] * 2, max_delta=None, watchdog_s=1.0, hold="zero")
        cfg = LoopConfig(control_hz=10, exec_horizon=8, blend="none", max_ticks=15, servo_hz=40, stop_on_success=False)
        loop = ControlLoop(robot, InferenceEngine(policy), safety, cfg)
        try:
            res = loop.run_episode(seed=0)
        finally:
            loop.close()
        commands = loop.last_episode.arrays()["action"]
    assert res.ticks == 15
    points = [e[2] for e in events if e[0] == "servo"]
    assert len(points) >= 4 * 15
    starts = [e[2] for e in events if e[0] == "observe"]  # set-points sent before each observation began
    assert starts == [4 * k for k in range(1, 16)]  # after the previous tick's final one, never before
    # Tick k observes before it has a command, so a set-point sent meanwhile moves toward tick k-1's command, a 1/left
    # share of the way (a hold when tick k-1 ended on it, as it does unless its command came after its last slot);
    # each tick's last set-point lands on its own command or, posted after that slot, the previous one.
    during, tick, sent, prev = 0, None, 0, np.zeros(2, np.float32)
    for kind, _, value in events:
        if kind == "observe":
            tick = value // 4
        elif kind == "observed":
            tick = None
        else:
            sent += 1
            if tick is not None:
                during += 1
                left = 4 - (sent - 1) % 4
                np.testing.assert_allclose(value, prev + (commands[tick - 1] - prev) / left, atol=1e-6)
            prev = value
    assert during >= 14  # the stream went on through the observations (a blocked one sends none)
    ends = np.stack(points[3:4 * 15:4])
    previous = np.concatenate([np.zeros((1, 2), np.float32), commands[:14]])
    lands = np.isclose(ends, commands[:15], atol=1e-6).all(axis=1) | np.isclose(ends, previous, atol=1e-6).all(axis=1)
    assert lands.all(), np.flatnonzero(~lands)
