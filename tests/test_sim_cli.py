"""The hydra CLIs end to end on the fast BlockPush task: vmp-collect -> a valid store, vmp-eval policy=expert."""

from __future__ import annotations

import json
import os
import subprocess
import sys


def _run(module: str, *overrides: str, cwd) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", module, *overrides], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def test_collect_and_eval_cli(tmp_path):
    out = tmp_path / "bp.zarr"
    proc = _run("vmp.sim.collect", "task=blockpush", "n_episodes=3", "n_workers=2", f"out={out}", cwd=tmp_path)
    assert "3 episodes" in proc.stdout and "expert success" in proc.stdout
    assert "Traceback" not in proc.stderr  # no EGL/GL teardown noise at exit
    from vmp.data import EpisodeStore

    with EpisodeStore.open(out) as store:
        assert store.n_episodes == 3 and store.attrs["task"] == "blockpush"
        assert store.episode_text(0)["goal"]["block_pos"]
    _run("vmp.data.cli", "validate", str(out), cwd=tmp_path)

    res = tmp_path / "expert.json"
    proc = _run("vmp.sim.evaluate", "policy=expert", "task=blockpush", "n_episodes=2", "n_workers=1", "n_videos=1",
                f"out_dir={tmp_path / 'eval'}", f"results_json={res}", cwd=tmp_path)
    record = json.loads(res.read_text())
    assert record["kind"] == "expert" and record["task"] == "blockpush" and record["metrics"]["n_episodes"] == 2
    assert (tmp_path / "eval" / "metrics.json").is_file()
    assert len(list((tmp_path / "eval" / "videos").glob("*.mp4"))) == 1


def test_eval_without_checkpoint_fails_clearly(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "vmp.sim.evaluate", "n_episodes=1"], capture_output=True, text=True,
                          cwd=tmp_path, timeout=120)
    assert proc.returncode != 0 and "checkpoint" in proc.stderr


def test_collect_killed_then_appended_equals_an_uninterrupted_run(tmp_path):
    """kill -9 in the middle of a collection, then append=true: the store ends up bit-identical to one collected
    without interruption (the seeds continue where the finished episodes stop); other settings are refused."""
    import signal
    import time

    import numpy as np

    from vmp.data import EpisodeStore

    args = ["task=blockpush", "n_episodes=60", "n_workers=1", "action_noise=0.3"]
    full, killed = tmp_path / "full.zarr", tmp_path / "killed.zarr"
    _run("vmp.sim.collect", *args, f"out={full}", cwd=tmp_path)
    proc = subprocess.Popen([sys.executable, "-m", "vmp.sim.collect", *args, f"out={killed}"], cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # kill once some, not all, episodes are in
        time.sleep(0.2)
        if (killed / "meta" / "episode_ends").exists():
            with EpisodeStore.open(killed) as store:
                if 5 <= store.n_episodes:
                    break
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with EpisodeStore.open(killed) as store:
        assert 5 <= store.n_episodes < 60
    _run("vmp.sim.collect", *args, f"out={killed}", "append=true", cwd=tmp_path)
    with EpisodeStore.open(full) as a, EpisodeStore.open(killed) as b:
        assert a.n_episodes == b.n_episodes == 60
        np.testing.assert_array_equal(a.episode_ends, b.episode_ends)
        for key in a.keys:
            np.testing.assert_array_equal(a.array(key)[: a.n_steps], b.array(key)[: b.n_steps])
        assert [a.episode_text(i) for i in range(60)] == [b.episode_text(i) for i in range(60)]
    refused = subprocess.run([sys.executable, "-m", "vmp.sim.collect", "task=blockpush", "n_episodes=70",
                              "action_noise=0.1", f"out={killed}", "append=true"], capture_output=True, text=True,
                             cwd=tmp_path, timeout=300)
    assert refused.returncode != 0 and "attribute 'action_noise': the store has 0.3, this run 0.1" in refused.stderr
