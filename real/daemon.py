"""``vmp-deploy``: run a checkpoint on a robot with the real-time control loop.

    vmp-deploy robot=sim checkpoint=PATH n_episodes=20 seed=100000

Start-up refuses a checkpoint whose observation keys the robot does not provide. SIGINT/SIGTERM stop the robot,
record the episode in progress and exit. Episodes go to the recording store; metrics are served at
http://127.0.0.1:<metrics.port>/metrics while running; a summary JSON is written at exit.
"""

from __future__ import annotations

import logging
import signal
import sys
import time
from pathlib import Path
from typing import Any, Callable

import hydra
from omegaconf import DictConfig, OmegaConf

from vmp.disk import exit_on_full_disk, write_json

log = logging.getLogger("vmp.real.daemon")


def build_engine(cfg: DictConfig):
    """-> (engine, task cfg or None, policy name). ``engine.process=true``: the engine runs in a process of its own
    (`ProcessEngine`), so this one, the control loop's, runs no model code."""
    if cfg.engine.get("process", False):
        import functools

        from vmp.real.inference_process import ProcessEngine

        task_cfg = None
        if cfg.checkpoint:
            from vmp.policies.checkpoint import read_checkpoint

            train_cfg = OmegaConf.create(read_checkpoint(str(cfg.checkpoint))["cfg"])
            from vmp.policies.checkpoint import refuse_stage_one

            refuse_stage_one(str(cfg.checkpoint), train_cfg)
            task_cfg = train_cfg.task
        elif cfg.policy is None:
            raise ValueError("vmp-deploy needs checkpoint=PATH (or a `policy` node: a Policy built directly)")
        keep = {k: OmegaConf.to_container(cfg[k], resolve=True) if OmegaConf.is_config(cfg[k]) else cfg[k]
                for k in ("checkpoint", "policy", "device", "seed", "engine")}
        engine = ProcessEngine(functools.partial(_engine_in_this_process, keep))
        return engine, task_cfg, engine.name
    from vmp.real.engine import InferenceEngine

    kw = dict(bf16=cfg.engine.bf16, compile=cfg.engine.compile, cuda_graphs=cfg.engine.cuda_graphs, seed=int(cfg.seed))
    if cfg.checkpoint:
        engine, train_cfg = InferenceEngine.from_checkpoint(str(cfg.checkpoint), device=cfg.device, **kw)
        return engine, train_cfg.task, str(train_cfg.policy.get("name", "policy"))
    if cfg.policy is None:
        raise ValueError("vmp-deploy needs checkpoint=PATH (or a `policy` node: a Policy built directly)")
    policy = hydra.utils.instantiate(cfg.policy)
    return InferenceEngine(policy, device=cfg.device, **kw), None, policy.name


def _engine_in_this_process(settings: dict[str, Any]):
    """The inference process's builder: the same engine, built here."""
    cfg = OmegaConf.create({**settings, "engine": {**settings["engine"], "process": False}})
    return build_engine(cfg)[0]


def build_robot(rcfg: DictConfig, task_cfg: Any):
    """The robot of a robot config, wrapped with its `cameras` (threaded OpenCV captures) when it lists any."""
    robot = _bare_robot(rcfg, task_cfg)
    cams = rcfg.get("cameras") or []
    if cams:
        from vmp.real.camera import Camera, CameraRobot

        cameras = {str(c.name): Camera(c.source, c.get("width"), c.get("height"), c.get("fps"), name=str(c.name)) for c in cams}
        robot = CameraRobot(robot, cameras, float(rcfg.get("camera_max_age_s", 0.1)))
    return robot


def _bare_robot(rcfg: DictConfig, task_cfg: Any):
    if rcfg.kind == "sim":
        from vmp.real.sim_robot import SimRobot

        if rcfg.env is not None:
            env = OmegaConf.to_container(rcfg.env, resolve=True)
        else:
            if rcfg.task is not None:
                from vmp.sim import load_task_cfg

                task_cfg = load_task_cfg(str(rcfg.task))
            if task_cfg is None:
                raise ValueError("robot=sim needs a task: robot.task=<name>, robot.env=..., or a checkpoint that names one")
            env = {"task": OmegaConf.to_container(task_cfg, resolve=True)}
        return SimRobot(env, faults=OmegaConf.to_container(rcfg.faults, resolve=True), timeout_s=float(rcfg.timeout_s),
                        start_timeout_s=float(rcfg.start_timeout_s), host=str(rcfg.host),
                        status_file=rcfg.status_file, fault_seed=int(rcfg.fault_seed),
                        server=OmegaConf.to_container(rcfg.server, resolve=True) if rcfg.get("server") else None)
    if rcfg.kind == "lerobot":
        from vmp.real.lerobot_robot import LeRobotRobot

        return LeRobotRobot.from_config(rcfg)
    if rcfg.kind == "custom":
        return custom_robot(rcfg)
    raise ValueError(f"robot.kind must be 'sim', 'lerobot' or 'custom', got {rcfg.kind!r}")


def custom_robot(rcfg: DictConfig):
    """robot.kind=custom: your own class implementing the `Robot` protocol, ``robot.target: "module:Class"``,
    built with ``robot.kwargs``."""
    from vmp.real.robot import import_function

    cls = import_function(rcfg.get("target"), "robot.target")
    kwargs = OmegaConf.to_container(rcfg.kwargs, resolve=True) if rcfg.get("kwargs") else {}
    return cls(**kwargs)


def build_safety(rcfg: DictConfig, spec: Any):
    import numpy as np

    from vmp.real.safety import SafetyLayer

    s = rcfg.safety
    low = spec.action_low if s.low is None else np.asarray(s.low, np.float32)
    high = spec.action_high if s.high is None else np.asarray(s.high, np.float32)
    keep = [d % spec.action_dim for d in s.keep_dims]
    return SafetyLayer(low, high, s.max_delta, float(s.watchdog_s), str(s.hold), keep)


ZARR_IO_THREADS = 4  # the recorder's store writes: a few arrays at a time, between episodes


class RobotSession:
    """What a robot session opened, closed in the order that keeps the robot safe: first what commands the robot (the
    control loop, a teleoperator), so that nothing drives it while it disconnects; then the robot, whose OSError is
    logged rather than raised (a lost connection is often why the session ends); then what only holds data (a
    recorder, a store, the metrics server), in the order registered. Parts register as they open, so a failure
    part-way closes exactly what was opened. Shared by `vmp-deploy` and `vmp-record`."""

    def __init__(self, robot: Any, logger: logging.Logger) -> None:
        self.robot = robot  # replaced by its wrapper (`ResizingRobot`) when one is put around it
        self._log = logger
        self._first: list[Callable[[], Any]] = []
        self._last: list[Callable[[], Any]] = []

    def close_first(self, close: Callable[[], Any]) -> None:
        """``close`` runs before the robot disconnects: a part that sends it commands."""
        self._first.append(close)

    def close_last(self, close: Callable[[], Any]) -> None:
        """``close`` runs after the robot disconnects: a part that only holds data."""
        self._last.append(close)

    def close(self) -> None:
        """Every part is closed even when one before it raises (the robot is always disconnected, the store
        always closed); the first error is raised once all have run, the others are logged."""
        errors: list[BaseException] = []

        def run(close: Callable[[], Any]) -> None:
            try:
                close()
            except Exception as exc:  # noqa: BLE001 - kept, raised after the rest have closed
                self._log.error("closing %s: %s", getattr(close, "__qualname__", close), exc)
                errors.append(exc)

        for close in self._first:
            run(close)
        try:
            self.robot.disconnect()
        except OSError as exc:
            self._log.warning("disconnect: %s", exc)
        except Exception as exc:  # noqa: BLE001
            self._log.error("disconnect: %s", exc)
            errors.append(exc)
        for close in self._last:
            run(close)
        if errors:
            raise errors[0]

    def __enter__(self) -> "RobotSession":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class _SignalStop:
    """SIGINT/SIGTERM stop the robot: the first sets the control loop's stop event (at once, or as soon as the loop
    exists) and is noted for the summary; a second ends the process at once. `restore` puts back the handlers."""

    def __init__(self) -> None:
        self.signal: str | None = None
        self._loop: Any = None
        self._previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.signal = signal.Signals(signum).name
        log.warning("%s received: stopping the robot", signal.Signals(signum).name)
        if self._loop is not None:
            self._loop.stop_event.set()
        signal.signal(signum, signal.SIG_DFL)

    def attach(self, loop: Any) -> None:
        self._loop = loop
        if self.signal:
            loop.stop_event.set()

    def restore(self) -> None:
        for s, h in self._previous.items():
            signal.signal(s, h)


def run(cfg: DictConfig, out_dir: Path) -> dict[str, Any]:
    """The daemon, callable from tests. Returns the summary dict (also written to JSON). The summary is written
    whatever ends the run (an exception still propagates after it), covering the episodes that ended."""
    import zarr

    from vmp.real.metrics import Metrics

    sys.setswitchinterval(float(cfg.switch_interval_s))
    # zarr writes through a thread pool that otherwise grows on demand up to min(32, CPUs + 4) threads over a long
    # run (one more thread hours in, measured by the soak); a fixed pool keeps the control process's threads constant
    zarr.config.set({"threading.max_workers": ZARR_IO_THREADS})
    stops = _SignalStop()
    engine = None
    try:  # a checkpoint or robot refused: the handlers are put back and an inference process ended
        engine, task_cfg, policy_name = build_engine(cfg)
        session = RobotSession(build_robot(cfg.robot, task_cfg), log)
    except BaseException:
        stops.restore()
        if engine is not None:
            engine.close()
        raise
    metrics = Metrics()
    results: list[dict[str, Any]] = []
    summary: dict[str, Any] = {}
    exit_error: str | None = None
    settings: dict[str, Any] = {}  # what the run actually used (the blend may fall back), for the summary
    try:
        loop, operator = _start(cfg, session, engine, task_cfg, policy_name, metrics, stops, settings)
        exit_error = _run_episodes(cfg, loop, session.robot, operator, metrics, results)
    finally:
        session.close()
        stops.restore()
        summary = {**_summary(cfg, results, metrics, engine, stops.signal, exit_error), **settings}
        engine.close()
        summary["summary_path"] = str(_write_summary(cfg, out_dir, summary))
        if cfg.results_json and results:  # a run that never reached an episode measured nothing
            _write_results(cfg, summary, task_cfg, policy_name)
    return summary


def _start(cfg: DictConfig, session: RobotSession, engine: Any, task_cfg: Any, policy_name: str, metrics: Any,
           stops: _SignalStop, settings: dict[str, Any]) -> tuple[Any, Any]:
    """Connect the robot and build what the episodes run on, each part registered with ``session`` as it opens.
    Fills ``settings`` with what the run uses. -> (the control loop, the operator or None)."""
    from vmp.real.loop import ControlLoop, RealClock
    from vmp.real.operator import build_operator

    spec = _connect(session, engine)
    blend = _blend(cfg, engine, policy_name)
    control_hz = float(cfg.robot.control_hz or spec.control_hz)
    settings.update(control_hz=control_hz, blend=blend, device=str(engine.device))
    loop_cfg = _loop_config(cfg, engine, task_cfg, control_hz, blend)
    recorder = _recorder(cfg, spec, task_cfg, policy_name, control_hz, blend)
    if recorder is not None:
        session.close_last(recorder.close)
    instruction = cfg.instruction or (task_cfg.get("language") if task_cfg is not None else None)
    engine.instruction = str(instruction) if instruction else None
    text = {"language": engine.instruction} if engine.instruction else {}
    engine.warmup(engine.example_window(), n=int(cfg.engine.warmup))
    operator = build_operator(cfg.operator, str(cfg.robot.kind))
    loop = ControlLoop(session.robot, engine, build_safety(cfg.robot, spec), loop_cfg, metrics, recorder,
                       clock=RealClock(float(cfg.spin_ms) / 1e3), text=text, judge=_judge(cfg, operator),
                       end_requested=operator.stop_requested if operator is not None else None)
    session.close_first(loop.close)
    stops.attach(loop)
    if cfg.metrics.enabled:
        server = _serve_metrics(cfg, metrics)
        session.close_last(lambda: server.__exit__(None, None, None))
    log.info("deploying %s on %s at %.0f Hz, blend=%s, s=%d", policy_name, spec.name, control_hz, blend,
             loop_cfg.exec_horizon)
    return loop, operator


def _connect(session: RobotSession, engine: Any) -> Any:
    """Connect the robot -> its spec, after fitting its camera frames to the checkpoint's size; refuses (KeyError)
    a robot without the checkpoint's observation keys."""
    from vmp.real.camera import ResizingRobot, camera_resizes

    spec = session.robot.connect()
    resizes = camera_resizes(engine.obs_shapes, spec.obs)
    if resizes:  # the camera gives more pixels than the policy trained on
        log.info("resizing camera frames to the checkpoint's size: %s", resizes)
        session.robot = ResizingRobot(session.robot, resizes)
        spec = session.robot.spec
    engine.check_robot_keys(spec.obs)
    return spec


def _blend(cfg: DictConfig, engine: Any, policy_name: str) -> str:
    """The configured blend, or its fallback when the head cannot take a prefix."""
    blend = str(cfg.blend)
    if blend == "prefix" and not engine.supports_prefix:
        log.warning("blend=prefix needs a head whose sampler accepts prefix/prefix_weights; %s does not: "
                    "using blend=%s", policy_name, cfg.blend_fallback)
        blend = str(cfg.blend_fallback)
    return blend


def _loop_config(cfg: DictConfig, engine: Any, task_cfg: Any, control_hz: float, blend: str) -> Any:
    """The control loop's settings: the config's, else the task's or the engine's defaults."""
    from vmp.real.loop import LoopConfig

    task_limit = task_cfg.get("max_episode_steps") if task_cfg is not None else None
    max_ticks = int(cfg.max_ticks or task_limit or cfg.robot.max_ticks)  # a task may not state its own limit
    exec_horizon = int(cfg.exec_horizon) if cfg.exec_horizon is not None else int(engine.n_action_steps)
    return LoopConfig(control_hz=control_hz, exec_horizon=exec_horizon, blend=blend,
                      ensemble_m=float(cfg.ensemble_m), prefix_schedule=str(cfg.prefix_schedule),
                      epsilon_s=float(cfg.epsilon_s), delay_window=int(cfg.delay_window), max_ticks=max_ticks,
                      stop_on_success=bool(cfg.stop_on_success), warn_late_frac=float(cfg.warn_late_frac),
                      rt_priority=int(cfg.rt_priority), sched_slice_us=int(cfg.sched_slice_us),
                      servo_hz=float(cfg.servo_hz) if cfg.get("servo_hz") else None)


def _recorder(cfg: DictConfig, spec: Any, task_cfg: Any, policy_name: str, control_hz: float, blend: str) -> Any:
    """The episode recorder when ``record.enabled``, else None."""
    from vmp.real.recorder import EpisodeRecorder

    if not cfg.record.enabled:
        return None
    task_name = str(task_cfg.name) if task_cfg is not None else spec.name
    return EpisodeRecorder(cfg.record.path, spec, {"task": task_name, "control_hz": control_hz, "robot": spec.name,
                                                   "policy": policy_name, "blend": blend,
                                                   "checkpoint": str(cfg.checkpoint)})


def _judge(cfg: DictConfig, operator: Any) -> Callable[[Any], bool] | None:
    """The operator marks success when asked to (``operator.mark_success``): a real robot cannot tell."""
    if operator is None or not cfg.operator.mark_success:
        return None

    def judge(result: Any) -> bool:
        return operator.choose(f"episode seed {result.seed} ended ({result.reason}, {result.ticks} ticks): "
                               "did it succeed?", {"y": "success", "n": "failure"}) == "y"

    return judge


def _serve_metrics(cfg: DictConfig, metrics: Any) -> Any:
    """The started metrics server; a port that cannot be served refuses the start (KeyError) with what to do."""
    from vmp.real.metrics import MetricsServer

    try:
        return MetricsServer(metrics, str(cfg.metrics.host), int(cfg.metrics.port)).__enter__()
    except OSError as exc:  # most often a second daemon on the same port
        raise KeyError(f"metrics.port={cfg.metrics.port} on {cfg.metrics.host} cannot be served ({exc.strerror}): "
                       f"is another vmp-deploy running? Set metrics.port=0 (any free port) or "
                       f"metrics.enabled=false") from exc


def _run_episodes(cfg: DictConfig, loop: Any, robot: Any, operator: Any, metrics: Any,
                  results: list[dict[str, Any]]) -> str | None:
    """One episode per seed until ``n_episodes``, a signal, the operator's end of input or an error the run cannot
    go on after. Each episode's result is appended to ``results`` as it ends, so an exception still leaves them for
    the summary. -> the run's error, or None."""
    from vmp.real.loop import InferenceError
    from vmp.real.robot import RobotConnectionError

    n_episodes = int(cfg.n_episodes)
    for i in range(n_episodes):
        if loop.stop_event.is_set():
            break
        seed = int(cfg.seed) + i
        if operator is not None and cfg.operator.reset_pause:
            try:
                operator.wait(f"episode {i + 1}/{cfg.n_episodes} (seed {seed}): reset the scene, then go on")
            except EOFError as exc:
                log.error("%s: stopping", exc)
                break
        try:
            res = loop.run_episode(seed)
        except RobotConnectionError as exc:
            results.append(vars(exc.result))  # type: ignore[attr-defined]
            go_on, error = _connection_lost(cfg, exc, robot, metrics, last=i == n_episodes - 1)
            if go_on:
                continue
            return error
        except InferenceError as exc:
            results.append(vars(exc.result))  # type: ignore[attr-defined]
            log.error("%s; the robot was stopped", exc)
            return str(exc)
        results.append(vars(res))
        log.info("episode %d seed %d: %s after %d ticks", i, seed, res.reason, res.ticks)
        if res.reason == "signal":
            break
    return None


def _connection_lost(cfg: DictConfig, exc: Exception, robot: Any, metrics: Any, last: bool) -> tuple[bool, str | None]:
    """After an episode lost the robot: reconnect when ``reconnect.enabled`` (not needed after the last episode).
    -> (whether the run goes on, its error)."""
    if cfg.reconnect.enabled and last:
        log.error("robot connection lost in the last episode (no reconnection needed): %s", exc)
        return False, None
    if not cfg.reconnect.enabled:
        error = f"robot connection lost: {exc}"
        log.error("%s; the robot was stopped where possible. Set reconnect.enabled=true to reconnect.", error)
        return False, error
    if not _reconnect(robot, cfg.reconnect, metrics):
        error = f"robot connection lost and {cfg.reconnect.attempts} reconnection attempts failed: {exc}"
        log.error(error)
        return False, error
    return True, None


def _reconnect(robot: Any, rc: DictConfig, metrics: Any) -> bool:
    from vmp.real.robot import RobotConnectionError, RobotError

    for attempt in range(1, int(rc.attempts) + 1):
        time.sleep(float(rc.backoff_s) * attempt)
        try:
            robot.disconnect()  # SimRobot: reaps (or kills) the old server; connect() starts a fresh one
            robot.connect()
            metrics.inc("reconnects", help="successful reconnections to the robot")
            log.warning("reconnected to the robot (attempt %d)", attempt)
            return True
        except (RobotConnectionError, RobotError, OSError) as exc:
            log.error("reconnection attempt %d failed: %s", attempt, exc)
    return False


def _summary(cfg: DictConfig, results: list[dict], metrics: Any, engine: Any, sig: str | None, error: str | None) -> dict[str, Any]:
    n = len(results)
    succ = sum(int(r["success"]) for r in results)
    m = metrics.summary()
    s = m["summaries"]

    def ms(name: str, q: str) -> float | None:
        return s[name][q] * 1e3 if name in s else None

    marked = sorted({r.get("marked_by", "robot") for r in results})
    return {
        "n_episodes": n, "successes": succ, "success_rate": succ / n if n else 0.0, "seed": int(cfg.seed),
        "success_marked_by": marked[0] if len(marked) == 1 else marked,
        "episodes": results, "stopped_by_signal": sig, "error": error,
        "loop_period_p50_ms": ms("loop_period_seconds", "p50"), "loop_period_p99_ms": ms("loop_period_seconds", "p99"),
        "tick_lateness_p99_ms": ms("tick_lateness_seconds", "p99"),
        "obs_to_action_p50_ms": ms("obs_to_action_seconds", "p50"), "obs_to_action_p99_ms": ms("obs_to_action_seconds", "p99"),
        "inference_latency_p50_ms": ms("inference_latency_seconds", "p50"),
        "inference_latency_p99_ms": ms("inference_latency_seconds", "p99"),
        "engine": engine.latency_summary(),
        "counters": m["counters"],
    }


def _write_results(cfg: DictConfig, summary: dict, task_cfg: Any, policy_name: str) -> None:
    from vmp.results import make_record, write_record
    from vmp.sim.evaluate import wilson_interval

    n, k = summary["n_episodes"], summary["successes"]
    lo, hi = wilson_interval(k, n)
    blend = summary.get("blend", cfg.blend)
    variant = (f"vmp-deploy robot={cfg.robot.kind} {summary.get('control_hz', 0):g} Hz blend={blend}"
               f"{f' ({cfg.prefix_schedule})' if blend == 'prefix' else ''} s={cfg.exec_horizon or 'n_action_steps'}")
    record = make_record("success", str(task_cfg.name) if task_cfg is not None else "-",
                         str(task_cfg.obs_type) if task_cfg is not None else "-", policy_name, variant,
                         {"success_rate": summary["success_rate"], "ci95_low": lo, "ci95_high": hi, "n_episodes": n},
                         device=summary.get("device", str(cfg.device)), command="vmp-deploy " + " ".join(sys.argv[1:]))
    write_record(cfg.results_json, record)


def _write_summary(cfg: DictConfig, out_dir: Path, summary: dict[str, Any]) -> Path:
    """The summary JSON, atomically: a crash or a full disk at exit leaves the previous summary or the new one."""
    path = Path(cfg.summary_path) if cfg.summary_path else out_dir / "deploy_summary.json"
    return write_json(path, summary, default=float)  # numpy numbers in the summary


@hydra.main(config_path="pkg://vmp.configs", config_name="deploy", version_base=None)
def main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    out_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        with exit_on_full_disk("vmp-deploy"):
            summary = run(cfg, out_dir)
    except (KeyError, ValueError, FileNotFoundError) as exc:  # checkpoint vs robot keys, a stage-one or missing
        log.error("refusing to start: %s", exc.args[0] if exc.args else exc)  # checkpoint: configuration errors
        sys.exit(2)
    print(f"vmp-deploy: {summary['successes']}/{summary['n_episodes']} successful "
          f"(rate {summary['success_rate']:.1%}); loop period p99 {summary['loop_period_p99_ms']} ms; "
          f"summary {summary['summary_path']}")
    if summary["error"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
