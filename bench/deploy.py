"""Benchmark the deployment loop: tick jitter and observation-to-action latency at a fixed rate, on this machine.

A SimRobot process serves the toy task; the policy burns real CPU (matrix products standing in for a diffusion
head's denoising steps) in an inference thread of the loop's process (``--thread``, where it competes for the GIL) or
in a process of its own (the daemon's default). ``--servo-hz`` streams set-points between ticks and reports their
jitter. ``--load`` runs, for the whole measurement, a `vmp-train` process and a process running a real checkpoint's
inference back to back, at normal priority: both cores busy, as on a robot computer that trains beside its loop.
``--slice-us`` is the scheduler slice the loop's threads (and the simulated robot's) ask for, as the daemon's
``sched_slice_us``; ``--slice-us 0 --spin-ms 2`` is the kernel's default slice with a 2 ms spin before each tick.
Writes one results record (JSON) per run::

    python -m vmp.bench.deploy --hz 50 --seconds 20 --out results/bench_deploy_cpu.json
    python -m vmp.bench.deploy --hz 50 --servo-hz 200 --load --out results/bench_deploy_cpu_load_servo.json
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vmp.bench.common import device_name, given_args, write_result
from vmp.results import latency_summary
from vmp.real.engine import InferenceEngine
from vmp.real.loop import ControlLoop, LoopConfig, RealClock
from vmp.real.safety import SafetyLayer
from vmp.real.sim_robot import SimRobot
from vmp.real.testing import ReachPolicy

log = logging.getLogger("vmp.bench.deploy")


class BusyReachPolicy(ReachPolicy):
    """ReachPolicy plus ``n_steps`` MLP passes of width ``width`` per chunk: CPU work that holds the GIL in bursts."""

    name = "bench_busy_reach"

    def __init__(self, n_steps: int = 10, width: int = 512, **kw):
        super().__init__(**kw)
        self.n_steps = n_steps
        self.net = torch.nn.Sequential(torch.nn.Linear(width, width), torch.nn.Mish(), torch.nn.Linear(width, width))
        self.x = torch.randn(self.horizon, width)

    def predict_action_chunk(self, obs, goal=None, generator=None, prefix=None, prefix_weights=None):
        x = self.x
        for _ in range(self.n_steps):
            x = self.net(x)
        return super().predict_action_chunk(obs, goal, generator, prefix, prefix_weights)


def busy_engine(n_steps: int, width: int, policy_sleep_s: float) -> InferenceEngine:
    """The benchmark's engine (module level: the inference process builds it from this)."""
    torch.set_num_threads(1)
    policy = BusyReachPolicy(n_steps=n_steps, width=width, n_obs_steps=2, horizon=16, seed=0, delay_s=policy_sleep_s)
    return InferenceEngine(policy)


def run(hz: float, seconds: float, switch_interval_s: float, blend: str, n_steps: int, width: int, rt_priority: int = 0,
        policy_sleep_s: float = 0.0, process: bool = True, servo_hz: float | None = None, spin_s: float = 0.0,
        slice_us: int = 100, flood: bool = False) -> dict:
    import functools

    from vmp.real.inference_process import ProcessEngine
    from vmp.real.testing import StreamingRobot

    sys.setswitchinterval(switch_interval_s)
    ticks = int(seconds * hz)
    env = {"target": "vmp.real.toy:ToyReachEnv", "kwargs": {"tol": 0.0, "max_episode_steps": ticks + 10}, "control_hz": hz}
    build = functools.partial(busy_engine, n_steps, width, policy_sleep_s)
    engine = ProcessEngine(build) if process else build()
    engine.warmup(engine.example_window(), n=3)
    per_tick = int(round(servo_hz / hz)) if servo_hz else 1
    with SimRobot(env, server={"sched_slice_us": slice_us}) as sim:  # the robot side as the loop: --slice-us
        robot = StreamingRobot(sim, per_tick) if servo_hz else sim
        safety = SafetyLayer(sim.spec.action_low, sim.spec.action_high, max_delta=0.5, watchdog_s=1.0, hold="zero")
        loop = ControlLoop(robot, engine, safety, LoopConfig(control_hz=hz, exec_horizon=8, blend=blend, max_ticks=ticks,
                                                             stop_on_success=False, rt_priority=rt_priority,
                                                             sched_slice_us=slice_us, servo_hz=servo_hz),
                           clock=RealClock(spin_s))
        try:
            # burn-in episode (imports, caches, first allocations), then the measured one
            loop.cfg.max_ticks = int(hz)
            loop.run_episode(seed=0)
            from vmp.real.metrics import Metrics, MetricsServer

            loop.metrics = Metrics()
            loop.cfg.max_ticks = ticks
            # the metrics endpoint is served as vmp-deploy serves it; --flood: a neighbour floods it meanwhile
            with MetricsServer(loop.metrics) as server, ThreadCount() as threads:
                with Flood(server.address) if flood else contextlib.nullcontext():
                    res = loop.run_episode(seed=1)
        finally:
            loop.close()
            engine.close()
    m = loop.metrics
    dt = 1.0 / hz
    period = m.samples("loop_period_seconds")
    late = m.samples("tick_lateness_seconds")
    o2a = m.samples("obs_to_action_seconds")
    inf = m.samples("inference_latency_seconds")
    jitter = np.abs(period - dt)

    def named(name: str, seconds: np.ndarray, keys=("p50_ms", "p99_ms", "max_ms")) -> dict[str, float | None]:
        """`latency_summary`'s figures of these seconds as {name}_p50_ms ..."""
        summary = latency_summary(seconds * 1e3)
        return {f"{name}_{k}": summary[k] for k in keys}

    servo = {}
    if servo_hz:
        servo_jitter = np.abs(m.samples("servo_period_seconds") - 1.0 / servo_hz)
        servo = {"servo_hz": servo_hz, **named("servo_jitter", servo_jitter), "n_setpoints": int(servo_jitter.size + 1)}
    return {**servo, **named("jitter", jitter), **named("lateness", late, ("p99_ms",)),
        **named("obs_to_action", o2a, ("p50_ms", "p99_ms")), **named("inference", inf, ("p50_ms", "p99_ms")),
        "control_hz": hz, "n_ticks": int(res.ticks),
        "missed_ticks": m.counter("missed_ticks"), "overruns": m.counter("overruns"),
        "holds": int(res.counters.get("safety_hold", 0)), "switch_interval_ms": switch_interval_s * 1e3,
        "rt_priority": rt_priority if loop.fifo else 0,  # what ran, not what was asked
        "sched_slice_us": slice_us, "spin_ms": spin_s * 1e3,
        "inference": "process" if process else "thread",
        "threads_max": threads.peak, "metrics_connections": dict(server.counts),
    }


class ThreadCount:
    """The most threads this (the control) process held while it was entered, sampled every 50 ms."""

    def __enter__(self) -> "ThreadCount":
        import threading

        self.peak, self._stop = threading.active_count(), threading.Event()

        def sample() -> None:
            while not self._stop.wait(0.05):
                self.peak = max(self.peak, threading.active_count() - 1)  # not this sampler

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()


def _flood(address: tuple[str, int], idle: int, per_s: float, stop: Any) -> None:
    """A neighbour of the robot: ``idle`` connections held open (renewed when the server drops them) and ``per_s``
    connect/close more each second, until ``stop`` is set."""
    import socket
    import time

    held: list[socket.socket] = []
    next_t = time.monotonic()
    while not stop.is_set():
        while len(held) < idle:
            try:
                held.append(socket.create_connection(address, timeout=1))
            except OSError:
                break
        next_t += 1.0 / per_s
        try:
            socket.create_connection(address, timeout=1).close()
        except OSError:
            pass
        held = [c for c in held if not _closed(c)]
        time.sleep(max(0.0, next_t - time.monotonic()))
    for c in held:
        c.close()


def _closed(sock: Any) -> bool:
    import socket

    sock.setblocking(False)
    try:
        return sock.recv(1, socket.MSG_PEEK) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


class Flood:
    """`_flood` in a process of its own (its work is not the control process's), for the `with` block."""

    def __init__(self, address: tuple[str, int], idle: int = 300, per_s: float = 200.0):
        import multiprocessing as mp

        ctx = mp.get_context("spawn")
        self.stop = ctx.Event()
        self.process = ctx.Process(target=_flood, args=(address, idle, per_s, self.stop), daemon=True)

    def __enter__(self) -> "Flood":
        self.process.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop.set()
        self.process.join(timeout=10)


class Load:
    """Both cores busy for the measurement: a `vmp-train` run (a small BESO on a synthetic Lift store) and a process
    running a checkpoint's inference back to back; both at normal priority, killed on exit."""

    def __init__(self, checkpoint: str | None):
        import subprocess
        import tempfile

        from vmp.data.testing import make_learnable_lift_store

        self.tmp = tempfile.TemporaryDirectory(prefix="vmp_bench_load_")
        store = make_learnable_lift_store(Path(self.tmp.name) / "s.zarr", n_episodes=40)
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        self.procs = [subprocess.Popen(
            [sys.executable, "-m", "vmp.policies.train", "task=lift", f"store={store}", f"run_dir={self.tmp.name}/run",
             "training.steps=1000000", "training.batch_size=256", "training.val_ratio=0", "training.ckpt_every=1000000",
             "training.tensorboard=false"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
        if checkpoint:
            self.procs.append(subprocess.Popen([sys.executable, "-m", "vmp.bench.deploy", "--inference-load", checkpoint],
                                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        self.checkpoint = checkpoint

    def close(self) -> None:
        for proc in self.procs:
            proc.kill()
            proc.wait()
        self.tmp.cleanup()


def inference_load(checkpoint: str) -> None:
    """Run a checkpoint's inference on zero observations until killed (the load process)."""
    from vmp.real.engine import InferenceEngine as Engine

    torch.set_num_threads(1)
    engine, _ = Engine.from_checkpoint(checkpoint, device="cpu")
    window = engine.example_window()
    while True:
        engine.infer(window)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hz", type=float, default=50.0)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--switch-interval-ms", type=float, default=0.5, help="sys.setswitchinterval (the daemon's default)")
    ap.add_argument("--blend", default="prefix", choices=["none", "ensemble", "prefix"])
    ap.add_argument("--n-steps", type=int, default=10, help="MLP passes per chunk (stand-in for denoising steps)")
    ap.add_argument("--width", type=int, default=512)
    ap.add_argument("--rt-priority", type=int, default=0, help="SCHED_FIFO priority of the loop thread (0 = normal)")
    ap.add_argument("--policy-sleep-ms", type=float, default=0.0, help="extra sleep per chunk (2 dt: a policy slower than a tick)")
    ap.add_argument("--seams", action="store_true", help="instead: replay latency sweep (simulated clock), seam metrics vs delay")
    ap.add_argument("--checkpoint", default=None, help="--seams: a trained policy instead of the synthetic one")
    ap.add_argument("--store", default=None, help="--seams --checkpoint: the recorded episodes to replay")
    ap.add_argument("--episodes", type=int, default=8, help="--seams --checkpoint: how many of the store's episodes")
    ap.add_argument("--spin-ms", type=float, default=0.0, help="the loop's clock spins this long before each deadline")
    ap.add_argument("--slice-us", type=int, default=100, help="the scheduler slice the loop's threads ask for at normal priority "
                    "(the daemon's sched_slice_us; 0 = the kernel's default)")
    ap.add_argument("--thread", action="store_true", help="inference in a thread of the loop's process (not its own)")
    ap.add_argument("--servo-hz", type=float, default=None, help="stream set-points at this rate between ticks")
    ap.add_argument("--load", action="store_true", help="a vmp-train run and a checkpoint's inference load the cores")
    ap.add_argument("--load-checkpoint", default="runs/lift_image-beso-dart",
                    help="the checkpoint whose inference loads the CPU with --load (skipped if missing)")
    ap.add_argument("--inference-load", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--flood", action="store_true", help="interleaved quiet / flooded runs: a neighbour holds 300 idle "
                    "connections to the metrics endpoint and opens 200 more a second (tick lateness as a ratio)")
    ap.add_argument("--pairs", type=int, default=3, help="--flood: quiet/flooded pairs")
    ap.add_argument("--out", default="results/bench_deploy_cpu.json")
    args = ap.parse_args(argv)
    if args.inference_load:
        return inference_load(args.inference_load)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    if args.seams:
        return seam_sweep(args, argv)
    if args.flood:
        return flood_pairs(args, argv)
    load = None
    if args.load:
        checkpoint = args.load_checkpoint if Path(args.load_checkpoint).exists() else None
        if checkpoint is None:
            log.warning("--load-checkpoint %s not found: the load is vmp-train alone", args.load_checkpoint)
        load = Load(checkpoint)
        import time

        time.sleep(20)  # both load processes past their start-up, training and inferring
    try:
        metrics = run(args.hz, args.seconds, args.switch_interval_ms / 1e3, args.blend, args.n_steps, args.width,
                      args.rt_priority, args.policy_sleep_ms / 1e3, process=not args.thread, servo_hz=args.servo_hz,
                      spin_s=args.spin_ms / 1e3, slice_us=args.slice_us)
        if load is not None:
            metrics["load_1m_after"] = round(os.getloadavg()[0], 2)
    finally:
        if load is not None:
            load.close()
    write_result(
        Path(args.out).stem, "jitter", "-", "-", "synthetic",
        f"{args.hz:g} Hz, blend={args.blend}, SimRobot(toy) over loopback, {args.n_steps}x MLP{args.width} per chunk, "
                   + ("inference thread, " if args.thread else "inference process, ")
                   + f"GIL switch {args.switch_interval_ms:g} ms"
                   + (f", SCHED_FIFO {args.rt_priority}" if metrics["rt_priority"] else f", slice {args.slice_us} us")
                   + (f", spin {args.spin_ms:g} ms" if args.spin_ms else "")
                   + (f", policy sleeps {args.policy_sleep_ms:g} ms" if args.policy_sleep_ms else "")
                   + (f", {args.servo_hz:g} Hz set-points" if args.servo_hz else "")
                   + (f", under load (vmp-train + {load.checkpoint.removeprefix('runs/') if load.checkpoint else 'no'} inference)"
                      if load is not None else ""),
        metrics, device_name("cuda" if torch.cuda.is_available() else "cpu"),
        " ".join(["python -m vmp.bench.deploy", *given_args(argv)]),
        budget={"seconds": args.seconds}, out_dir=Path(args.out).parent)
    print(f"{args.hz:g} Hz: jitter p50 {metrics['jitter_p50_ms']:.3f} ms p99 {metrics['jitter_p99_ms']:.3f} ms; "
          f"obs->action p50 {metrics['obs_to_action_p50_ms']:.2f} ms p99 {metrics['obs_to_action_p99_ms']:.2f} ms; "
          f"inference p50 {metrics['inference_p50_ms']:.1f} ms -> {args.out}")


def flood_pairs(args: argparse.Namespace, argv: list[str] | None) -> None:
    """Quiet and flooded runs interleaved (the VM's noise drifts over minutes): lateness p99 flooded / quiet per pair,
    and the control process's threads in each."""
    rows = []
    for pair in range(args.pairs):
        for flood in (False, True):
            m = run(args.hz, args.seconds, args.switch_interval_ms / 1e3, args.blend, args.n_steps, args.width,
                    slice_us=args.slice_us, flood=flood)
            rows.append({"pair": pair, "flood": flood, **{k: m[k] for k in (
                "lateness_p99_ms", "jitter_p99_ms", "jitter_max_ms", "missed_ticks", "threads_max", "metrics_connections")}})
            log.info("pair %d %s: lateness p99 %.3f ms, %d threads", pair, "flooded" if flood else "quiet",
                     m["lateness_p99_ms"], m["threads_max"])
    quiet = [r for r in rows if not r["flood"]]
    flooded = [r for r in rows if r["flood"]]
    ratios = [f["lateness_p99_ms"] / q["lateness_p99_ms"] for q, f in zip(quiet, flooded)]
    metrics = {"lateness_p99_ratio_median": float(np.median(ratios)), "lateness_p99_ratios": ratios,
               "threads_max_quiet": max(r["threads_max"] for r in quiet),
               "threads_max_flooded": max(r["threads_max"] for r in flooded), "runs": rows, "control_hz": args.hz}
    write_result(Path(args.out).stem, "jitter", "-", "-", "synthetic",
                 f"{args.hz:g} Hz, metrics endpoint quiet vs flooded (300 idle + 200 connects/s), {args.pairs} "
                 f"interleaved pairs of {args.seconds:g} s, inference process", metrics,
                 device_name("cuda" if torch.cuda.is_available() else "cpu"),
                 " ".join(["python -m vmp.bench.deploy", *given_args(argv)]),
                 budget={"seconds": 2 * args.pairs * args.seconds}, out_dir=Path(args.out).parent)
    print(f"lateness p99 flooded/quiet: median {metrics['lateness_p99_ratio_median']:.2f} ({', '.join(f'{r:.2f}' for r in ratios)}); "
          f"threads quiet {metrics['threads_max_quiet']} flooded {metrics['threads_max_flooded']} -> {args.out}")


def _toy_episodes() -> tuple[list[list[dict]], Any, float]:
    """Eight expert episodes of the toy reach task, one ReachPolicy engine per episode: (episodes, engine(i), scale)."""
    from vmp.real.toy import ToyReachEnv

    env = ToyReachEnv(gain=0.01, tol=0.0, max_episode_steps=150)
    episodes = []
    for seed in range(8):
        obs, _ = env.reset(seed=seed)
        ep = [obs]
        for _ in range(149):
            obs, *_ = env.step(np.clip(4 * (obs["target"] - obs["pos"]), -1, 1))
            ep.append(obs)
        episodes.append(ep)
    return episodes, lambda i: InferenceEngine(ReachPolicy(n_obs_steps=2, horizon=16, seed=i)), 1.0


def _store_episodes(checkpoint: str, store_path: str, n: int) -> tuple[list[list[dict]], Any, np.ndarray, Any]:
    """n episodes spread over a store as per-tick observations for the checkpoint's policy, its engine (the sampling
    noise seeded and the episode's instruction set per episode, so a row is reproducible), the action std of those
    episodes (seam units; dimensions that barely move left out), the training config."""
    import torch

    from vmp.data.store import EpisodeStore

    engine, cfg = InferenceEngine.from_checkpoint(checkpoint, device="cpu")
    keys = list(engine.obs_shapes)
    episodes, actions, instructions = [], [], []
    with EpisodeStore.open(store_path) as store:
        missing = sorted(set(keys) - set(store.keys))
        if missing:
            raise KeyError(f"{store_path} lacks the observation keys {missing} that {checkpoint} reads")
        # spread over the store: a multi-task store keeps its tasks in blocks
        for i in np.unique(np.linspace(0, store.n_episodes - 1, min(n, store.n_episodes)).round().astype(int)):
            ep = store.episode(int(i), keys + ["action"])
            episodes.append([{k: ep[k][t] for k in keys} for t in range(len(ep["action"]))])
            actions.append(ep["action"])
            instructions.append(store.episode_text(int(i)).get("language"))  # language-conditioned heads follow it

    def engine_for(i: int) -> Any:
        torch.manual_seed(i)
        engine.instruction = instructions[i]
        return engine

    std = np.concatenate(actions).std(axis=0)
    scale = np.where(std > 0.01 * std.max(), std, np.inf)  # a dimension the demonstrations never move is left out
    return episodes, engine_for, scale, cfg


def seam_sweep(args: argparse.Namespace, argv: list[str] | None) -> None:
    """The latency sweep as a report: delays with lognormal jitter and 3x spikes, each blend mode, episodes replayed
    on a simulated clock (no wall clock: exactly reproducible). Default: the toy task's expert episodes and a
    synthetic policy, delays {0,1,2,4,6,8}*dt. With --checkpoint and --store: a trained policy on recorded episodes
    of its task (delays {0,1,2}*dt, both prefix schedules), seams in units of the episodes' action std."""
    from vmp.data.schema import RGB
    from vmp.real.replay import replay, seam_metrics

    hz = args.hz
    if args.checkpoint:
        if not args.store:
            raise SystemExit("--seams --checkpoint needs --store: the recorded episodes to replay")
        episodes, engine_for, scale, cfg = _store_episodes(args.checkpoint, args.store, args.episodes)
        hz, task = float(cfg.task.control_hz), str(cfg.task.name)  # the rate the policy was trained to act at
        s = engine_for(0).n_action_steps
        delays, modes = (0, 1, 2), [("none", s, "exp"), ("ensemble", 1, "exp"), ("ensemble", s, "exp")]
        if engine_for(0).supports_prefix:  # a head without prefix conditioning would only repeat blend=none's rows
            modes += [("prefix", s, "exp"), ("prefix", s, "hard")]
    else:
        episodes, engine_for, scale = _toy_episodes()
        delays, modes = (0, 1, 2, 4, 6, 8), [("none", 8, "exp"), ("ensemble", 1, "exp"), ("ensemble", 8, "exp"),
                                             ("prefix", 8, "exp")]
    dt = 1.0 / hz
    rows = []
    for d_ticks in delays:
        for blend, s, schedule in modes:
            agg = {"underrun": 0, "late_chunk": 0, "seam_jump": [], "seam_jerk": [], "seam_jump_ratio": []}
            for i, ep in enumerate(episodes):
                rng = np.random.default_rng(1000 * d_ticks + i)

                def delay(n: int) -> float:
                    base = d_ticks * dt * rng.lognormal(0.0, 0.2)
                    return base * 3 if rng.random() < 0.05 else base  # occasional 3x spikes

                r = replay(engine_for(i), ep, hz, blend, s, delay_s=delay, prefix_schedule=schedule)
                sm = seam_metrics(r.commands, r.sources, scale, dt)
                agg["underrun"] += r.counters.get("underrun", 0)
                agg["late_chunk"] += r.counters.get("late_chunk", 0)
                for k in ("seam_jump", "seam_jerk", "seam_jump_ratio"):
                    agg[k].append(sm[k])
            rows.append({"delay_ticks": d_ticks, "blend": blend, "exec_horizon": s, "underruns": agg["underrun"],
                         **({"prefix_schedule": schedule} if blend == "prefix" and args.checkpoint else {}),
                         "late_chunks": agg["late_chunk"], "seam_jump_median": float(np.median(agg["seam_jump"])),
                         "seam_jerk_median": float(np.median(agg["seam_jerk"])),
                         "seam_jump_ratio_median": float(np.median(agg["seam_jump_ratio"]))})
            log.info("%s", rows[-1])
    command = " ".join(["python -m vmp.bench.deploy", *given_args(argv)])
    if args.checkpoint:
        engine = engine_for(0)
        obs = "image" if RGB in engine.policy.obs_kinds.values() else "lowdim"
        write_result(Path(args.out).stem, "seams", task, obs, getattr(engine.policy, "name", "policy"),
            f"replay latency sweep on {len(episodes)} recorded episodes of {args.store}, {hz:g} Hz, horizon "
            f"{engine.horizon}, n_obs_steps {engine.n_obs_steps}, lognormal(0.2) jitter, 5% 3x spikes; seams in "
            "action-std units", {"rows": rows}, "simulated clock (policy on the CPU)", command,
            out_dir=Path(args.out).parent)
    else:
        write_result(Path(args.out).stem, "seams", "-", "-", "synthetic",
                     f"replay latency sweep, {hz:g} Hz, horizon 16, n_obs_steps 2, 8 toy episodes, lognormal(0.2) "
                     "jitter, 5% 3x spikes", {"rows": rows}, "simulated clock", command, out_dir=Path(args.out).parent)
    print(f"seam sweep: {len(rows)} rows -> {args.out}")


if __name__ == "__main__":
    main()
