"""The evaluation runner: metrics, videos, crashed/stuck workers, non-finite actions, Wilson interval."""

from __future__ import annotations

import json
import os
import time

import numpy as np
import pytest

import vmp  # noqa: F401
from vmp.sim import load_task_cfg
from vmp.sim.evaluate import expert_policy, run_evaluation, wilson_interval
from vmp.sim.experts.base import ActorDefaults


class CrashOnSecondEpisode(ActorDefaults):
    """An actor whose worker process dies (no Python exception) in every second episode it runs."""

    def __init__(self):
        self.episodes = 0
        self.inference_times_ms: list[float] = []

    def reset(self):
        self.episodes += 1

    def set_goal(self, goal):
        pass

    def set_language(self, instruction):
        pass

    def select_action(self, obs):
        if self.episodes == 2:
            os._exit(3)
        self.inference_times_ms.append(1.0)
        return np.zeros(7, dtype=np.float32)


class Hang(CrashOnSecondEpisode):
    def select_action(self, obs):
        if self.episodes == 2:
            time.sleep(3600)
        return np.zeros(7, dtype=np.float32)


class NaNPolicy(CrashOnSecondEpisode):
    def select_action(self, obs):
        return np.full(7, np.nan, dtype=np.float32)


def _task(steps=5):
    return load_task_cfg("lift", max_episode_steps=steps)


def test_wilson_interval():
    low, high = wilson_interval(50, 50)
    assert high == 1.0 and 0.92 < low < 0.93
    low, high = wilson_interval(0, 10)
    assert low == 0.0 and 0.27 < high < 0.29
    low, high = wilson_interval(25, 50)
    assert low < 0.5 < high and abs((0.5 - low) - (high - 0.5)) < 1e-9


def test_expert_eval_writes_metrics_and_videos(tmp_path):
    metrics = run_evaluation(load_task_cfg("lift"), lambda: expert_policy(dict(load_task_cfg("lift"))), n_episodes=2,
                             seed=100, n_workers=0, out_dir=tmp_path, n_videos=1, progress=False)
    assert metrics["success_rate"] == 1.0 and metrics["n_episodes"] == 2
    assert [e["seed"] for e in metrics["per_episode"]] == [100, 101]
    from vmp.sim import make

    env = make(load_task_cfg("lift"))  # each episode's start is its seed's reset's
    try:
        assert [e["start"] for e in metrics["per_episode"]] == [env.reset(seed=s)[1]["start"] for s in (100, 101)]
    finally:
        env.close()
    on_disk = json.loads((tmp_path / "metrics.json").read_text())
    assert on_disk["ci95_low"] == pytest.approx(metrics["ci95_low"])
    video = tmp_path / "videos" / "episode000_seed100.mp4"
    assert video.is_file() and video.stat().st_size > 1000
    assert metrics["videos"] == [str(video)]
    import imageio.v3 as iio

    frames = iio.imread(video)
    assert frames.shape[0] == metrics["per_episode"][0]["length"] + 1 and frames.shape[1:] == (256, 256, 3)  # VIDEO_SIZE


def test_crashed_worker_is_reported_not_hung(tmp_path):
    metrics = run_evaluation(_task(), CrashOnSecondEpisode, n_episodes=4, seed=0, n_workers=1, out_dir=tmp_path,
                             n_videos=0, episode_timeout_s=120, progress=False)
    errors = [e.get("error") for e in metrics["per_episode"]]
    # each fresh worker dies in its second episode: episodes 1 and 3
    assert [e is not None for e in errors] == [False, True, False, True]
    assert "crashed" in errors[1]
    assert metrics["n_errors"] == 2 and metrics["success_rate"] == 0.0
    assert metrics["per_episode"][0]["length"] == 5
    assert metrics["n_chunks"] == 10 and metrics["p50_ms"] == 1.0  # 2 good episodes x 5 steps


def test_stuck_episode_times_out(tmp_path):
    metrics = run_evaluation(_task(), Hang, n_episodes=2, seed=0, n_workers=1, out_dir=None, n_videos=0,
                             episode_timeout_s=5, progress=False)
    assert "timed out" in metrics["per_episode"][1]["error"]
    assert metrics["per_episode"][0].get("error") is None


def test_non_finite_action_raises():
    with pytest.raises(FloatingPointError, match="non-finite"):
        run_evaluation(_task(), NaNPolicy, n_episodes=1, n_workers=0, n_videos=0, progress=False)


def _broken_policy():
    raise RuntimeError("cannot build this policy")


def test_worker_init_failure_is_raised_with_cause():
    with pytest.raises(RuntimeError, match="cannot build this policy"):
        run_evaluation(_task(), _broken_policy, n_episodes=1, n_workers=1, n_videos=0, progress=False)


def test_videos_are_256_px_and_policy_images_unchanged():
    """Episodes with a video render 256 px frames; the policy's camera observations keep the task's size and pixels."""
    from vmp.sim import make
    from vmp.sim.evaluate import VIDEO_SIZE, _init_eval

    task = load_task_cfg("blockpush_image", max_episode_steps=3)
    assert task.env_kwargs.render_size < VIDEO_SIZE == 256
    state = _init_eval(task, CrashOnSecondEpisode, render=True, video_dir=None, max_episode_steps=3)  # steps env itself
    plain = make(task)
    try:
        obs, _ = state.env.reset(seed=0)
        ref, _ = plain.reset(seed=0)
        assert state.env.render().shape == (256, 256, 3)
        for _ in range(2):
            action = np.array([0.5, -0.5], np.float32)
            (obs, *_), (ref, *_) = state.env.step(action), plain.step(action)
            state.env.render()
        assert obs["overhead_image"].shape == (96, 96, 3)
        np.testing.assert_array_equal(obs["overhead_image"], ref["overhead_image"])
    finally:
        state.close()
        plain.close()
