"""robosuite Lift: env contract (low-dim and image), the privileged expert, collection into a store."""

from __future__ import annotations

import numpy as np
import pytest

import vmp  # noqa: F401  (MUJOCO_GL)
from vmp.sim import load_task_cfg, make
from vmp.sim.collect import collect, rollout_expert
from vmp.sim.experts import make_expert


def _check_obs(env, obs):
    assert set(obs) == set(env.observation_space.spaces)
    for key, space in env.observation_space.spaces.items():
        assert obs[key].shape == space.shape, key
        assert obs[key].dtype == space.dtype, key


def test_lift_lowdim_contract_and_expert():
    cfg = load_task_cfg("lift")
    env = make(cfg)
    try:
        assert env.action_space.shape == (7,)
        obs, info = env.reset(seed=3)
        _check_obs(env, obs)
        assert info["language"] == "lift the red cube" and info["success"] is False
        obs2, _ = env.reset(seed=3)
        np.testing.assert_allclose(obs["object"], obs2["object"])  # seeded placement
        obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
        _check_obs(env, obs)
        with pytest.raises(ValueError, match="shape"):
            env.step(np.zeros(3))
        expert = make_expert("lift", env)
        res = rollout_expert(env, expert, seed=7)
        assert res["success"]
        ep = res["episode"]
        assert ep["action"].shape == (res["length"], 7) and ep["phase"].dtype == np.int16
        assert list(np.unique(ep["phase"])) == [0, 1, 2, 3]  # approach, descend, grasp, lift
        assert np.all(np.diff(ep["phase"]) >= 0)
        assert res["text"]["reasoning"].startswith("approach cube")
    finally:
        env.close()


def test_lift_image_renders():
    env = make(load_task_cfg("lift_image"), render_mode="rgb_array")
    try:
        obs, _ = env.reset(seed=0)
        _check_obs(env, obs)
        img = obs["agentview_image"]
        assert img.shape == (84, 84, 3) and img.dtype == np.uint8 and img.std() > 5  # not blank
        assert env.render().shape == (128, 128, 3)
        res = rollout_expert(env, make_expert("lift", env), seed=1)
        assert res["success"]
        assert res["episode"]["eye_in_hand_image"].shape == (res["length"], 84, 84, 3)
    finally:
        env.close()


def test_unknown_obs_key_is_named():
    cfg = load_task_cfg("lift")
    cfg.shape_meta.obs["nonexistent"] = {"shape": [3], "type": "low_dim"}
    with pytest.raises(KeyError, match="nonexistent"):
        make(cfg)


def test_collect_lift_store(tmp_path):
    from vmp.data import EpisodeStore

    out = tmp_path / "lift.zarr"
    summary = collect(load_task_cfg("lift"), n_episodes=3, out=out, n_workers=0, seed=0, progress=False)
    assert summary["episodes"] == 3 and summary["expert_success_rate"] > 0.5
    with EpisodeStore.open(out) as store:
        assert store.n_episodes == 3
        assert store.attrs["phase_names"][0] == "approach cube"
        assert set(store.keys) >= {"eef_pos", "object", "action", "phase"}
        assert store.episode_text(0)["language"] == "lift the red cube"
        assert store.n_steps == summary["steps"]
    # same seeds, parallel workers -> the same first episode (appended in seed order)
    out2 = tmp_path / "lift2.zarr"
    collect(load_task_cfg("lift"), n_episodes=3, out=out2, n_workers=2, seed=0, progress=False)
    with EpisodeStore.open(out) as a, EpisodeStore.open(out2) as b:
        np.testing.assert_allclose(a.episode(2)["action"], b.episode(2)["action"], atol=1e-6)
    _validate(out2)


def _validate(path):
    """The store passes `vmp-data validate`."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "vmp.data.cli", "validate", str(path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_dart_noise_executes_noisy_actions_but_records_clean_ones():
    env = make(load_task_cfg("lift"))
    try:
        expert = make_expert("lift", env)
        clean = rollout_expert(env, expert, seed=11)
        noisy = rollout_expert(env, expert, seed=11, action_noise=0.2)
        assert noisy["success"]
        a, b = clean["episode"], noisy["episode"]
        # same start state -> the first recorded action is the expert's own, not the noised one
        np.testing.assert_allclose(b["action"][0], a["action"][0])
        # the executed noise moved the arm off the expert's path
        assert not np.allclose(b["eef_pos"][5], a["eef_pos"][5], atol=1e-4)
        assert np.abs(b["action"]).max() <= 1.0
    finally:
        env.close()
