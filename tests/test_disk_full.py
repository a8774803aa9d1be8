"""A full disk (ENOSPC) while collecting, recording, deploying with recording, training and writing results: every
finished episode and checkpoint survives, the error names the path and says "No space left on device", and
vmp-collect append=true / vmp-train resume=true continue correctly once space is freed.

Most cases fill a simulated disk (`FullDisk`: writes under one folder fail from a chosen write on, after part of
its data, as write(2) does on a full disk); vmp-collect also runs on a real 512 KiB tmpfs in a private mount
namespace (`unshare`), skipped where this machine allows none.
"""

from __future__ import annotations

import builtins
import contextlib
import csv
import errno
import io
import json
import logging
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_module

from vmp.data import EpisodeStore

NO_SPACE = os.strerror(errno.ENOSPC)  # "No space left on device"


# --------------------------------------------------------------------------------------------- the simulated disk
class FullDisk:
    """Files under ``root`` live on a disk that fills up: the ``n``-th write (``unit="write"``) or the first write
    into the ``n``-th file opened (``unit="file"``) whose path contains ``pattern`` (counted once ``after()`` holds,
    when given) writes half its data and fails with ENOSPC; from then on every write under ``root`` fails, until
    `free_space`. Catches what Python writes
    through ``open`` / ``io.open`` / ``Path.open`` (zarr's LocalStore, torch.save into a file, csv, TensorBoard's
    event files, json records), in any thread. ``events`` records ("full", path) in order with what tests add."""

    def __init__(self, root: Path, pattern: str, n: int = 1, unit: str = "write", events: list | None = None,
                 after=None):
        self.root = os.path.abspath(root) + os.sep
        self.pattern, self.n, self.unit, self.after = pattern, n, unit, after
        self.count, self.full, self.failed = 0, False, []
        self.events = events if events is not None else []
        self.lock = threading.Lock()

    def install(self, monkeypatch) -> FullDisk:
        real_open = io.open

        def open_(file, mode="r", *args, **kwargs):
            f = real_open(file, mode, *args, **kwargs)
            if isinstance(file, int) or not set(mode) & set("wax+"):
                return f
            path = os.path.abspath(os.fsdecode(file))
            if not path.startswith(self.root):
                return f
            doomed = False
            with self.lock:
                if self.unit == "file" and self._matches(path):
                    self.count += 1
                    doomed = self.count == self.n
            return _FileOnDisk(f, path, self, doomed)

        monkeypatch.setattr(builtins, "open", open_)
        monkeypatch.setattr(io, "open", open_)
        return self

    def _matches(self, path: str) -> bool:
        return self.pattern is not None and self.pattern in path and (self.after is None or self.after())

    def free_space(self) -> None:
        with self.lock:
            self.full, self.pattern = False, None

    def write(self, file: _FileOnDisk, data):
        with self.lock:
            fail = self.full
            if not fail and (file.doomed or (self.unit == "write" and self._matches(file.path))):
                if not file.doomed:
                    self.count += 1
                fail = file.doomed or self.count == self.n
                file.doomed = False
                if fail:
                    self.full = True
                    self.events.append(("full", file.path))
                    part = data if isinstance(data, str) else memoryview(data).cast("B")
                    file.f.write(part[: len(part) // 2])  # what fitted
            if fail:
                self.failed.append(file.path)
                raise OSError(errno.ENOSPC, NO_SPACE)
        return file.f.write(data)


class _FileOnDisk:
    def __init__(self, f, path: str, disk: FullDisk, doomed: bool):
        self.f, self.path, self.disk, self.doomed = f, path, disk, doomed

    def write(self, data):
        return self.disk.write(self, data)

    def writelines(self, lines):
        for line in lines:
            self.write(line)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()

    def __iter__(self):
        return iter(self.f)

    def __getattr__(self, name):
        return getattr(self.f, name)


@contextlib.contextmanager
def _hydra_app():
    """Around a hydra app's main() called in this process: afterwards the root logger has its handlers back (hydra's
    would write to pytest's closed capture streams in later tests)."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        yield
    finally:
        for handler in root.handlers:
            if handler not in handlers:
                handler.close()
        root.handlers[:] = handlers
        root.setLevel(level)


def _no_space(err: BaseException, *paths) -> str:
    """The error is ENOSPC, says so and names every one of ``paths``; -> its text."""
    text = str(err)
    assert isinstance(err, OSError) and err.errno == errno.ENOSPC, repr(err)
    assert NO_SPACE in text, text
    for path in paths:
        assert str(path) in text, f"{path} not named in: {text}"
    return text


def _assert_same_store(a: Path, b: Path, n: int | None = None) -> None:
    """b holds the same episodes as a (its first n when given), bit for bit, text included."""
    with EpisodeStore.open(a) as x, EpisodeStore.open(b) as y:
        n = x.n_episodes if n is None else n
        assert y.n_episodes == n
        np.testing.assert_array_equal(x.episode_ends[:n], y.episode_ends)
        for key in x.keys:
            np.testing.assert_array_equal(x.array(key)[: y.n_steps], y.array(key)[: y.n_steps])
        assert [x.episode_text(i) for i in range(n)] == [y.episode_text(i) for i in range(n)]


def _partials(path: Path) -> list[str]:
    return [str(p) for p in path.rglob("*") if ".partial" in p.name or ".tmp" in p.name]


# -------------------------------------------------------------------------------------------------- vmp-collect
N_COLLECT = 8
COLLECT_ARGS = ["task=blockpush", f"n_episodes={N_COLLECT}", "n_workers=1"]


def _task(name: str):
    with initialize_config_module(config_module="vmp.configs", version_base=None):
        return compose("collect", [f"task={name}"]).task


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    """The store an uninterrupted `vmp-collect task=blockpush n_episodes=8 n_workers=1` writes."""
    from vmp.sim.collect import collect

    out = tmp_path_factory.mktemp("collect") / "full.zarr"
    collect(_task("blockpush"), N_COLLECT, out, n_workers=1, progress=False)
    return out


def test_collect_on_a_full_disk_keeps_its_episodes_and_append_finishes_it(tmp_path, monkeypatch, uninterrupted):
    from vmp.sim.collect import collect

    out = tmp_path / "bp.zarr"
    disk = FullDisk(out, "/data/action/c", n=4).install(monkeypatch)  # the 4th episode's actions: mid-append
    with pytest.raises(OSError) as info:
        collect(_task("blockpush"), N_COLLECT, out, n_workers=1, progress=False)
    text = _no_space(info.value, out / "data" / "action")
    assert "append=true" in text and "episode 3" in text and "3 episode(s) before it are intact" in text
    assert disk.failed and not _partials(out)  # zarr removed its temporary file
    _assert_same_store(uninterrupted, out, n=3)  # the three finished episodes, readable and whole

    with pytest.raises(OSError) as info:  # still full: refused again, nothing lost
        collect(_task("blockpush"), N_COLLECT, out, n_workers=1, progress=False, append=True)
    _no_space(info.value, out)
    _assert_same_store(uninterrupted, out, n=3)

    disk.free_space()
    summary = collect(_task("blockpush"), N_COLLECT, out, n_workers=1, progress=False, append=True)
    assert summary["episodes"] == N_COLLECT - 3
    _assert_same_store(uninterrupted, out)  # as if never interrupted


def _private_tmpfs() -> list[str] | None:
    """The command prefix that runs a shell in a private mount namespace where it may mount a tmpfs (unshare -rm as
    any user where user namespaces are allowed, unshare -m as root); None where neither works."""
    unshare = shutil.which("unshare")
    if sys.platform != "linux" or unshare is None:
        return None
    for prefix in ([unshare, "-rm"], [unshare, "-m"]):
        try:
            probe = subprocess.run([*prefix, "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt 2>/dev/null || "
                                    "mount -t tmpfs -o size=64k tmpfs /tmp"], capture_output=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if probe.returncode == 0:
            return prefix
    return None


def test_collect_cli_on_a_real_full_tmpfs_then_append(tmp_path, uninterrupted):
    """`vmp-collect` on a 512 KiB tmpfs nearly filled by a ballast file: it stops with one line naming the store and
    "No space left on device"; the store holds whole episodes; with the ballast gone, append=true completes it to
    the store an uninterrupted run writes."""
    prefix = _private_tmpfs()
    if prefix is None:
        pytest.skip("no private mount namespace here (unshare -rm / -m): the simulated-disk test covers vmp-collect")
    if os.sysconf("SC_PAGE_SIZE") != 4096:
        pytest.skip("the tmpfs sizes below are for 4 KiB pages")
    disk, out = tmp_path / "disk", tmp_path / "out"
    disk.mkdir(), out.mkdir()
    store = disk / "bp.zarr"
    collect = f"{sys.executable} -m vmp.sim.collect {' '.join(COLLECT_ARGS)} out={store}"
    script = f"""
set -u
mount -t tmpfs -o size=512k tmpfs {disk} || exit 90
head -c $((512 * 1024 - 80 * 1024)) /dev/zero > {disk}/ballast   # 80 KiB left: about 5 of 8 episodes fit
{collect} hydra.run.dir={out}/h1 > {out}/fail.log 2>&1; echo $? > {out}/fail.rc
cp -a {store} {out}/failed.zarr
rm {disk}/ballast                                                # space freed
{collect} append=true hydra.run.dir={out}/h2 > {out}/append.log 2>&1; echo $? > {out}/append.rc
cp -a {store} {out}/appended.zarr
"""
    proc = subprocess.run([*prefix, "bash", "-c", script], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    log = (out / "fail.log").read_text()
    assert (out / "fail.rc").read_text().strip() == "1", log[-3000:]
    assert f"store {store}: could not append episode" in log and NO_SPACE in log and "append=true" in log, log[-3000:]
    assert "Traceback" not in log, log[-3000:]
    with EpisodeStore.open(out / "failed.zarr") as failed:
        n = failed.n_episodes
        assert 1 <= n < N_COLLECT, n
        for i in range(n):
            failed.episode(i)  # readable (crc32c checked)
    assert not _partials(out / "failed.zarr")
    _assert_same_store(uninterrupted, out / "failed.zarr", n=n)
    assert (out / "append.rc").read_text().strip() == "0", (out / "append.log").read_text()[-3000:]
    _assert_same_store(uninterrupted, out / "appended.zarr")


# --------------------------------------------------------------------------------------------------- vmp-record
def _record_cfg(tmp_path: Path, *overrides: str):
    with initialize_config_module(config_module="vmp.configs", version_base=None):
        return compose("record", ["robot=toy", "teleop=toy_scripted", f"out={tmp_path / 'demos.zarr'}",
                                  "operator.kind=none", "max_ticks=8", "stop_on_success=false", *overrides])


def _instrument_robot(monkeypatch, events: list) -> None:
    """vmp-record's robot, its reset/stop/disconnect noted in ``events``."""
    import vmp.real.daemon as daemon

    build = daemon.build_robot

    def build_robot(rcfg, task_cfg):
        robot = build(rcfg, task_cfg)
        for name in ("reset", "stop", "disconnect"):
            method = getattr(robot, name)
            setattr(robot, name, lambda *a, _m=method, _n=name, **k: (events.append((_n,)), _m(*a, **k))[1])
        return robot

    monkeypatch.setattr(daemon, "build_robot", build_robot)


def test_record_on_a_full_disk_stops_after_the_robot_with_the_store_intact(tmp_path, monkeypatch, capsys):
    from vmp.real import teleop_record as record

    out = tmp_path / "demos.zarr"
    events: list = []
    _instrument_robot(monkeypatch, events)
    disk = FullDisk(out, "/data/action/c", n=3, events=events).install(monkeypatch)  # the 3rd episode's save
    with pytest.raises(OSError) as info:
        record.run(_record_cfg(tmp_path, "n_episodes=5"))
    text = _no_space(info.value, out / "data" / "action")
    assert "episode 3/5 (seed 2) was not saved" in text and "2 episode(s) before it are intact" in text
    assert "Recording stopped" in text and "run vmp-record again" in text
    # the robot was stopped before the save failed; no episode was started after it; then it was disconnected
    full = events.index(("full", disk.failed[0]))
    assert events[full - 1] == ("stop",) and ("reset",) not in events[full:] and events[-1] == ("disconnect",)
    assert [e for e in events if e[0] == "reset"] == [("reset",)] * 3
    with EpisodeStore.open(out) as store:  # the two saved episodes, whole
        assert store.n_episodes == 2 and [store.episode_text(i)["seed"] for i in range(2)] == [0, 1]
        assert all(len(store.episode(i)["action"]) == 8 for i in range(2))
    assert not _partials(out)

    # the command: exit status 1 and one line naming the store and the reason (not zarr's traceback)
    disk = FullDisk(out, "/data/action/c", n=1).install(monkeypatch)
    monkeypatch.setattr(sys, "argv", ["vmp-record", "robot=toy", "teleop=toy_scripted", f"out={out}", "n_episodes=2",
                                      "operator.kind=none", "max_ticks=8", f"hydra.run.dir={tmp_path / 'hydra'}"])
    with _hydra_app(), pytest.raises(SystemExit) as exit_info:
        record.main()
    assert exit_info.value.code == 1
    printed = capsys.readouterr()
    line = [x for x in (printed.out + printed.err).splitlines() if "vmp-record:" in x]
    assert line and str(out) in line[-1] and NO_SPACE in line[-1], printed
    assert "Traceback" not in printed.out + printed.err
    disk.free_space()
    with EpisodeStore.open(out) as store:
        assert store.n_episodes == 2


# ------------------------------------------------------------------------------------------ the deploy recorder
def test_deploy_recorder_on_a_full_disk_stops_the_run_with_earlier_episodes_intact(tmp_path, monkeypatch, caplog):
    from vmp.real.engine import InferenceEngine
    from vmp.real.loop import ControlLoop, LoopConfig
    from vmp.real.recorder import EpisodeBuffer, EpisodeRecorder
    from vmp.real.safety import SafetyLayer
    from vmp.real.sim_robot import SimRobot
    from vmp.real.testing import ReachPolicy

    out, status = tmp_path / "rec.zarr", tmp_path / "status.json"
    events: list = []
    disk = FullDisk(out, "/data/action/c", n=2, events=events).install(monkeypatch)  # the 2nd episode
    policy = ReachPolicy(n_obs_steps=1, horizon=6, n_action_steps=3, seed=0)
    env = {"target": "vmp.real.toy:ToyReachEnv", "kwargs": {"image_size": 0, "tol": 0.0, "max_episode_steps": 1000},
           "control_hz": 50}
    with SimRobot(env, status_file=str(status)) as robot:
        stop = robot.stop
        robot.stop = lambda: (events.append(("stop",)), stop())[1]
        recorder = EpisodeRecorder(out, robot.spec, {"task": "toy", "control_hz": 50})
        loop = ControlLoop(robot, InferenceEngine(policy),
                           SafetyLayer([-0.5] * 2, [0.5] * 2, max_delta=0.2, watchdog_s=1.0, hold="zero"),
                           LoopConfig(control_hz=50, exec_horizon=3, blend="none", max_ticks=10), recorder=recorder)
        try:
            assert loop.run_episode(seed=0).episode_index == 0
            with pytest.raises(OSError) as info:
                loop.run_episode(seed=1)
        finally:
            loop.close()
            recorder.close()
        assert json.loads(status.read_text())["state"] == "stopped"
    text = _no_space(info.value, out / "data" / "action", out)
    assert "deployed episode (seed 1) was not recorded" in text and "1 episode(s) before it are intact" in text
    full = [i for i, e in enumerate(events) if e[0] == "full"]
    assert len(full) == 1 and events[full[0] - 1] == ("stop",)  # the robot was stopped before the append
    assert any("was not recorded" in r.getMessage() and NO_SPACE in r.getMessage() for r in caplog.records)
    assert not _partials(out)
    # the store is not corrupted: the first episode reads back whole, and a later session appends once there is room
    disk.free_space()
    recorder = EpisodeRecorder(out, robot.spec, {"task": "toy", "control_hz": 50})
    try:
        assert recorder.store.n_episodes == 1 and recorder.store.episode_text(0)["seed"] == 0
        first = recorder.store.episode(0)
        buf = EpisodeBuffer(recorder.obs_keys)
        for t in range(3):
            buf.add({k: v[t] for k, v in first.items() if k in recorder.obs_keys}, first["action"][t],
                    first["policy_action"][t], 0.02 * t, "ok")
        assert recorder.append(buf, {"seed": 2}) == 1
    finally:
        recorder.close()
    with EpisodeStore.open(out) as store:
        assert store.n_episodes == 2 and len(store.episode(0)["action"]) == len(first["action"])


# ---------------------------------------------------------------------------------------------------- vmp-train
@pytest.fixture(scope="module")
def lift_store(tmp_path_factory) -> Path:
    from vmp.data.testing import make_learnable_lift_store

    return make_learnable_lift_store(tmp_path_factory.mktemp("train") / "s.zarr")


def _train_cfg(store: Path, run_dir: Path, *overrides: str):
    with initialize_config_module(config_module="vmp.configs", version_base=None):
        return compose("train", overrides=[
            "task=lift", f"store={store}", f"run_dir={run_dir}", "policy.d_model=32", "policy.n_layers=1",
            "policy.n_heads=2", "training.batch_size=16", "training.warmup_steps=2", "training.val_ratio=0.2",
            "training.val_every=1000", "training.log_every=5", "training.steps=30", "training.ckpt_every=10",
            "training.tensorboard=true", *overrides])


@pytest.fixture(scope="module")
def trained(lift_store, tmp_path_factory) -> dict:
    """An uninterrupted 30-step run: its final checkpoint."""
    from vmp.policies.checkpoint import read_checkpoint
    from vmp.policies.train import train

    return read_checkpoint(train(_train_cfg(lift_store, tmp_path_factory.mktemp("train") / "full")))


def _metrics_steps(run_dir: Path) -> list[int]:
    with open(run_dir / "metrics.csv", newline="") as f:
        return [int(r["step"]) for r in csv.DictReader(f)]


def _tensorboard_steps(run_dir: Path) -> list[int]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tensorboard"))
    acc.Reload()
    return [e.step for e in acc.Scalars("loss")]


def _resume_matches(run_dir: Path, lift_store: Path, trained: dict, from_step: int, caplog) -> None:
    """resume=true continues from ``from_step`` to the uninterrupted run's checkpoint; logs without duplicates."""
    from vmp.policies.checkpoint import read_checkpoint
    from vmp.policies.train import train

    caplog.clear()
    with caplog.at_level("INFO", logger="vmp.train"):
        resumed = read_checkpoint(train(_train_cfg(lift_store, run_dir, "resume=true")))
    assert any(f"at step {from_step}" in r.getMessage() and "resumed from" in r.getMessage() for r in caplog.records)
    assert resumed["step"] == 30
    for key, value in trained["policy"].items():
        if isinstance(value, torch.Tensor):
            torch.testing.assert_close(resumed["policy"][key], value, rtol=1e-5, atol=1e-6, msg=f"{key} differs")
    assert _metrics_steps(run_dir) == [5, 10, 15, 20, 25, 30]
    assert _tensorboard_steps(run_dir) == [5, 10, 15, 20, 25, 30]
    assert not _partials(run_dir)


def test_train_checkpoint_on_a_full_disk_keeps_the_last_one_and_resumes(tmp_path, monkeypatch, lift_store, trained,
                                                                       caplog):
    from vmp.policies.checkpoint import load_policy, read_checkpoint
    from vmp.policies.train import train

    run = tmp_path / "run"
    latest = run / "checkpoints" / "latest.pt"
    disk = FullDisk(run, ".latest.pt.tmp", n=2, unit="file").install(monkeypatch)  # the step-20 checkpoint
    with pytest.raises(OSError) as info:
        train(_train_cfg(lift_store, run))
    text = _no_space(info.value, latest)
    assert f"{latest} holds step 10" in text and "resume=true" in text and "stopped at step 20" in text
    assert read_checkpoint(latest)["step"] == 10  # the previous checkpoint, whole
    load_policy(latest)
    assert sorted(p.name for p in latest.parent.iterdir()) == ["latest.pt"]  # the partial one removed
    disk.free_space()
    _resume_matches(run, lift_store, trained, 10, caplog)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # TensorBoard's writer thread
@pytest.mark.parametrize("target,named", [
    ("metrics.csv", "metrics.csv"),  # step 15's row is cut short
    ("events.out.tfevents", "tensorboard"),  # TensorBoard's writer thread fails at step 15; surfaced at its flush
])
def test_train_logs_on_a_full_disk_stop_training_and_resume(tmp_path, monkeypatch, lift_store, trained, caplog,
                                                            target, named):
    from vmp.policies.checkpoint import read_checkpoint
    from vmp.policies.train import train

    run = tmp_path / "run"
    metrics = run / "metrics.csv"
    if target == "metrics.csv":  # the header, the rows of steps 5 and 10, then step 15's
        disk = FullDisk(run, target, n=4).install(monkeypatch)
    else:  # the first event written once step 15's metrics.csv row is in (the checkpoint holds step 10)
        disk = FullDisk(run, target, after=lambda: "\n15," in metrics.read_text()).install(monkeypatch)
    with pytest.raises(OSError) as info:
        train(_train_cfg(lift_store, run))
    latest = run / "checkpoints" / "latest.pt"
    text = _no_space(info.value, run / named, latest)
    assert f"{latest} holds step 10" in text and "resume=true" in text and "stopped at step 15" in text
    assert read_checkpoint(latest)["step"] == 10
    if target == "metrics.csv":
        assert metrics.read_text().splitlines()[-1].startswith("15,") and not metrics.read_text().endswith("\n")
    disk.free_space()
    _resume_matches(run, lift_store, trained, 10, caplog)


def test_train_cli_on_a_full_disk_exits_1_with_one_line(tmp_path, monkeypatch, lift_store, capsys):
    from vmp.policies import train as train_module

    run = tmp_path / "run"
    FullDisk(run, ".latest.pt.tmp", n=1, unit="file").install(monkeypatch)
    monkeypatch.setattr(sys, "argv", [
        "vmp-train", "task=lift", f"store={lift_store}", f"run_dir={run}", "policy.d_model=32", "policy.n_layers=1",
        "policy.n_heads=2", "training.batch_size=16", "training.warmup_steps=2", "training.val_ratio=0.2",
        "training.steps=10", "training.ckpt_every=10", f"hydra.run.dir={tmp_path / 'hydra'}"])
    with _hydra_app(), pytest.raises(SystemExit) as exit_info:
        train_module.main()
    assert exit_info.value.code == 1
    printed = capsys.readouterr()
    line = [x for x in (printed.out + printed.err).splitlines() if "vmp-train:" in x]
    assert line and str(run / "checkpoints" / "latest.pt") in line[-1] and NO_SPACE in line[-1], printed
    assert "no checkpoint was saved yet" in line[-1]
    assert "Traceback" not in printed.out + printed.err


# ------------------------------------------------------------------------------------------------- results writers
def test_results_writers_on_a_full_disk_keep_the_previous_record(tmp_path, monkeypatch):
    from vmp.bench.common import write_result
    from vmp.results import make_record, write_record

    path = tmp_path / "results" / "success_toy.json"
    record = make_record("success", "toy", "lowdim", "beso", "v", {"success_rate": 0.5}, command="vmp-eval x")
    write_record(path, record)
    disk = FullDisk(tmp_path / "results", ".tmp", n=1).install(monkeypatch)
    with pytest.raises(OSError) as info:
        write_record(path, {**record, "metrics": {"success_rate": 0.9}})
    text = _no_space(info.value, path)
    assert "unchanged" in text
    assert json.loads(path.read_text()) == record  # the previous record, whole
    assert sorted(p.name for p in path.parent.iterdir()) == ["success_toy.json"]  # no temporary left behind
    with pytest.raises(OSError) as info:  # bench/common.write_result (every vmp-bench writer) goes through it
        write_result("bench_x", "throughput", "-", "-", "-", "v", {"x": 1.0}, "cpu", "vmp-bench x",
                     out_dir=tmp_path / "results")
    _no_space(info.value, tmp_path / "results" / "bench_x.json")
    disk.free_space()
    assert not (tmp_path / "results" / "bench_x.json").exists()
    write_record(path, {**record, "metrics": {"success_rate": 0.9}})
    assert json.loads(path.read_text())["metrics"] == {"success_rate": 0.9}


# ------------------------------------------------------------------------------------------ vmp-eval, vmp-deploy
def _one_line(capsys, program: str, *paths) -> str:
    """The command printed one line naming ``paths`` and the reason, and no traceback; -> that line."""
    printed = capsys.readouterr()
    lines = [x for x in (printed.out + printed.err).splitlines() if f"{program}:" in x and NO_SPACE in x]
    assert lines and all(str(p) in lines[-1] for p in paths), printed
    assert "Traceback" not in printed.out + printed.err
    return lines[-1]


def test_eval_cli_on_a_full_disk_exits_1_with_one_line_and_keeps_the_previous_metrics(tmp_path, monkeypatch, capsys):
    from vmp.sim import evaluate

    out = tmp_path / "eval"
    argv = ["vmp-eval", "policy=expert", "task=blockpush", "n_episodes=1", "n_workers=1", "n_videos=0",
            f"out_dir={out}", f"hydra.run.dir={tmp_path / 'hydra'}"]
    monkeypatch.setattr(sys, "argv", argv)
    with _hydra_app():
        evaluate.main()
    before = (out / "metrics.json").read_text()
    disk = FullDisk(out, "metrics.json", n=1).install(monkeypatch)
    with _hydra_app(), pytest.raises(SystemExit) as exit_info:
        evaluate.main()
    assert exit_info.value.code == 1
    assert "unchanged" in _one_line(capsys, "vmp-eval", out / "metrics.json")
    disk.free_space()
    assert (out / "metrics.json").read_text() == before and sorted(p.name for p in out.iterdir()) == ["metrics.json"]


def test_deploy_cli_on_a_full_disk_exits_1_with_one_line_naming_the_summary(tmp_path, monkeypatch, capsys):
    from vmp.real import daemon

    summary = tmp_path / "out" / "summary.json"
    FullDisk(summary.parent, "summary.json", n=1).install(monkeypatch)
    monkeypatch.setattr(sys, "argv", ["vmp-deploy", "policy={_target_:vmp.real.testing.ReachPolicy,seed:0}",
                                      "robot=toy", "n_episodes=1", "max_ticks=5", "metrics.port=0",
                                      "record.enabled=false", "operator.kind=none", f"summary_path={summary}",
                                      f"hydra.run.dir={tmp_path / 'hydra'}"])
    with _hydra_app(), pytest.raises(SystemExit) as exit_info:
        daemon.main()
    assert exit_info.value.code == 1
    _one_line(capsys, "vmp-deploy", summary)
    assert not summary.exists() and not list(summary.parent.iterdir())  # no half summary, no temporary
