"""vmp-deploy end to end with a SimRobot process: summary JSON, key refusal, SIGTERM mid-episode, reconnection."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
from hydra import compose, initialize_config_module

from vmp.data import EpisodeStore
from vmp.real import daemon

POLICY = "policy={_target_:vmp.real.testing.ReachPolicy,seed:0,offset_scale:0.05}"


def _cfg(tmp_path, *overrides):
    policy = [] if any(o.startswith("policy=") for o in overrides) else [POLICY]
    with initialize_config_module(config_module="vmp.configs", version_base=None):
        return compose("deploy", [*policy, "robot=toy", "metrics.port=0", f"record.path={tmp_path / 'rec.zarr'}",
                                  f"summary_path={tmp_path / 'summary.json'}", *overrides])


def test_runs_episodes_with_seeds_and_writes_summary(tmp_path):
    cfg = _cfg(tmp_path, "n_episodes=3", "seed=7", "robot.env.kwargs.tol=0.05",
               f"results_json={tmp_path / 'results.json'}")
    summary = daemon.run(cfg, tmp_path)
    assert summary["n_episodes"] == 3 and [e["seed"] for e in summary["episodes"]] == [7, 8, 9]
    assert summary["successes"] == 3 and summary["error"] is None
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert on_disk["success_rate"] == 1.0 and on_disk["loop_period_p99_ms"] > 0
    rec = json.loads((tmp_path / "results.json").read_text())
    assert rec["kind"] == "success" and rec["metrics"]["n_episodes"] == 3
    with EpisodeStore.open(tmp_path / "rec.zarr") as store:
        assert store.n_episodes == 3 and store.episode_text(2)["seed"] == 9
        assert store.attrs["control_hz"] == 50


def test_mismatched_observation_keys_refused_naming_them(tmp_path):
    cfg = _cfg(tmp_path, "policy={_target_:vmp.real.testing.ReachPolicy,obs_shapes:{pos:[2],gripper_qpos:[2]}}")
    with pytest.raises(KeyError, match="gripper_qpos"):
        daemon.run(cfg, tmp_path)
    cfg = _cfg(tmp_path, "policy={_target_:vmp.real.testing.ReachPolicy,obs_shapes:{pos:[3],target:[2]}}")
    with pytest.raises(KeyError, match=r"pos: checkpoint \(3,\) vs robot \(2,\)"):
        daemon.run(cfg, tmp_path)


def test_reconnects_after_robot_crash_when_configured(tmp_path):
    cfg = _cfg(tmp_path, "n_episodes=2", "robot.faults.exit_after_steps=20", "reconnect.enabled=true",
               "reconnect.backoff_s=0.1", "robot.env.kwargs.tol=0.0", "max_ticks=40")
    summary = daemon.run(cfg, tmp_path)
    assert [e["reason"] for e in summary["episodes"]] == ["robot_disconnected", "robot_disconnected"]
    assert summary["counters"]["reconnects"] >= 1 and summary["error"] is None
    cfg = _cfg(tmp_path, "n_episodes=2", "robot.faults.exit_after_steps=20", "robot.env.kwargs.tol=0.0", "max_ticks=40",
               f"record.path={tmp_path / 'rec2.zarr'}")
    summary = daemon.run(cfg, tmp_path)
    assert len(summary["episodes"]) == 1 and "robot connection lost" in summary["error"]


def test_sigterm_mid_episode_stops_robot_and_keeps_episode(tmp_path):
    status = tmp_path / "status.json"
    cmd = [sys.executable, "-m", "vmp.real.daemon", POLICY, "robot=toy", "metrics.port=0", "n_episodes=3",
           "robot.env.kwargs.tol=0.0", "max_ticks=100000", f"robot.status_file={status}",
           f"record.path={tmp_path / 'rec.zarr'}", f"summary_path={tmp_path / 'summary.json'}",
           f"hydra.run.dir={tmp_path / 'out'}"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if status.exists() and json.loads(status.read_text()).get("state") == "running":
                break
            assert proc.poll() is None, proc.stdout.read()
            time.sleep(0.1)
        time.sleep(0.5)  # mid-episode
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out
    assert json.loads(status.read_text())["state"] == "stopped", out
    with EpisodeStore.open(tmp_path / "rec.zarr") as store:
        assert store.n_episodes == 1 and store.episode_text(0)["outcome"] == "signal", (store.episode_text(0), out)
        assert len(store.episode(0)["action"]) > 5, out
    assert json.loads((tmp_path / "summary.json").read_text())["stopped_by_signal"] == "SIGTERM", out


def test_cli_refuses_mismatched_keys_with_exit_code(tmp_path):
    cmd = [sys.executable, "-m", "vmp.real.daemon", "policy={_target_:vmp.real.testing.ReachPolicy,obs_shapes:{pos:[2],eef_pos:[3]}}", "robot=toy",
           "metrics.enabled=false", "record.enabled=false", f"hydra.run.dir={tmp_path / 'out'}"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 2 and "eef_pos" in out.stdout + out.stderr


def test_busy_metrics_port_refused_by_name_and_no_results_written(tmp_path):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        cfg = _cfg(tmp_path, "metrics.enabled=true", f"metrics.port={port}", f"results_json={tmp_path / 'r.json'}")
        with pytest.raises(KeyError, match=rf"metrics.port={port} .* another vmp-deploy"):
            daemon.run(cfg, tmp_path)
    assert not (tmp_path / "r.json").exists()  # nothing was measured, so no results record


FAULT_STEP = 24  # the chunk requested at control step 24 (chunks every 8 steps)


def _fault_policy(fault):
    return f"policy={{_target_:vmp.real.testing.ReachPolicy,seed:0,fault:'{fault}',fault_at_step:{FAULT_STEP}}}"


def test_killed_inference_process_stops_robot_next_tick_and_exits_nonzero(tmp_path):
    """The inference process is SIGKILLed mid-episode: the control process (which runs no model code) stops the
    robot at its next tick, records the episode up to there, and vmp-deploy exits 1 naming the fault."""
    status = tmp_path / "status.json"
    cmd = [sys.executable, "-m", "vmp.real.daemon", _fault_policy("die"), "robot=toy", "metrics.port=0",
           "robot.env.kwargs.tol=0.0", "max_ticks=400", f"robot.status_file={status}",
           f"record.path={tmp_path / 'rec.zarr'}", f"summary_path={tmp_path / 'summary.json'}",
           f"hydra.run.dir={tmp_path / 'out'}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "the inference process died (killed by signal 9)" in proc.stdout + proc.stderr
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert "the inference process died (killed by signal 9)" in summary["error"]
    episode = summary["episodes"][0]
    assert episode["reason"] == "inference_error"
    # The kill comes with the first request for a tick >= FAULT_STEP (later under load). The loop stops the robot at
    # its first tick after the pipe reads EOF, which the kernel gives once it has torn the process down: 16-19 ms for
    # a process holding torch on a quiet machine, longer on a busy one, so no upper tick bound is asserted here. The
    # reason says the death was seen before the watchdog's 0.5 s would have stopped the robot as a stall.
    found = re.search(r"killing the inference process at control step (\d+)", proc.stderr)
    assert found, proc.stderr
    killed_at = int(found.group(1))
    assert killed_at >= FAULT_STEP
    assert episode["ticks"] >= killed_at + 1
    assert json.loads(status.read_text())["state"] == "stopped"
    with EpisodeStore.open(tmp_path / "rec.zarr") as store:
        assert store.n_episodes == 1 and store.episode_text(0)["outcome"] == "inference_error"
        assert len(store.episode(0)["action"]) == episode["ticks"]


@pytest.mark.parametrize("fault, message", [("nan", r"non-finite action chunk \(the chunk for tick (\d+)\)"),
                                            ("stall", r"inference stalled: no action chunk within the watchdog's 0.5 s")])
def test_inference_process_nan_or_stall_stops_robot_and_names_the_fault(tmp_path, fault, message):
    status = tmp_path / "status.json"
    cfg = _cfg(tmp_path, _fault_policy(fault), "robot.env.kwargs.tol=0.0", "max_ticks=400", f"robot.status_file={status}")
    summary = daemon.run(cfg, tmp_path)
    found = re.search(message, summary["error"])
    assert found, summary["error"]
    episode = summary["episodes"][0]
    assert episode["reason"] == ("inference_error" if fault == "nan" else "inference_stalled")
    # What the loop guarantees under any load (how many ticks a report takes to arrive is the machine's, not the
    # loop's): the stop comes after the faulty chunk's tick, and a stall is stopped by the watchdog only after the
    # plan's rest ran out and 0.5 s (25 ticks at 50 Hz) passed without a chunk.
    if fault == "nan":  # the first chunk requested for a tick >= FAULT_STEP
        nan_tick = int(found.group(1))
        assert nan_tick >= FAULT_STEP and episode["ticks"] >= nan_tick + 1
    else:
        assert episode["ticks"] >= FAULT_STEP + 20
    assert json.loads(status.read_text())["state"] == "stopped"
    with EpisodeStore.open(tmp_path / "rec.zarr") as store:
        assert store.n_episodes == 1 and len(store.episode(0)["action"]) == episode["ticks"]


def test_a_session_closes_every_part_when_one_raises_and_raises_the_first_error():
    """A teleoperator that fails to close must not leave the robot connected or the recorder's store open."""
    import logging

    closed = []

    class Robot:
        def disconnect(self):
            closed.append("robot")

    def failing_teleop():
        closed.append("teleop")
        raise RuntimeError("teleop stuck")

    def failing_metrics():
        closed.append("metrics")
        raise ValueError("port in use")

    session = daemon.RobotSession(Robot(), logging.getLogger("test"))
    session.close_first(failing_teleop)
    session.close_last(lambda: closed.append("store"))
    session.close_last(failing_metrics)
    with pytest.raises(RuntimeError, match="teleop stuck"):
        session.close()
    assert closed == ["teleop", "robot", "store", "metrics"]  # in the safe order, none skipped
