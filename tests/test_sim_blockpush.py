"""BlockPush: env contract, goal mode, multimodal expert, collection."""

from __future__ import annotations

import numpy as np
import pytest

import vmp  # noqa: F401
from vmp.sim import load_task_cfg, make
from vmp.sim.blockpush import TARGETS
from vmp.sim.collect import collect, rollout_expert
from vmp.sim.experts import make_expert


@pytest.fixture()
def env():
    e = make(load_task_cfg("blockpush"), render_mode="rgb_array")
    yield e
    e.close()


def test_reset_step_render(env):
    obs, info = env.reset(seed=0)
    assert obs["pusher_pos"].shape == (2,) and obs["block_pos"].shape == (4,) and obs["block_yaw"].shape == (2,)
    assert obs["block_pos"].dtype == np.float32
    assert np.all(np.abs(obs["block_yaw"]) <= np.pi / 4 + 1e-6)
    assert set(info["goal"]) == {"block_pos"} and info["goal"]["block_pos"].shape == (4,)
    assert info["success"] is False and "target" in info["language"]
    obs2, _ = env.reset(seed=0)
    np.testing.assert_array_equal(obs["block_pos"], obs2["block_pos"])
    p0 = obs2["pusher_pos"].copy()
    for _ in range(3):
        obs2, *_ = env.step(np.array([1.0, 0.0]))
    assert obs2["pusher_pos"][0] > p0[0] + 0.02  # it moves right
    frame = env.render()
    assert frame.shape == (128, 128, 3) and frame.std() > 5


def test_goal_mode_requires_assignment(env):
    _, info = env.reset(seed=1)
    u = env.unwrapped
    goal = info["goal"]["block_pos"].reshape(2, 2)
    np.testing.assert_allclose(goal, TARGETS[u.assignment])
    # put the blocks into the swapped targets: both inside targets, but not the assigned ones
    u.data.qpos[u._block_adr[:, :2]] = TARGETS[u.assignment[::-1]]
    assert not u.is_success()
    u.goal_conditioned = False
    assert u.is_success()


def test_expert_succeeds_and_is_multimodal(env):
    expert = make_expert("blockpush", env)
    firsts, assignments, lengths = set(), set(), []
    for seed in range(8):
        res = rollout_expert(env, expert, seed)
        assert res["success"], f"seed {seed}: {res['text']['reasoning']}"
        lengths.append(res["length"])
        firsts.add(int(expert.order[0]))
        assignments.add(tuple(int(a) for a in expert.assignment))
        # each block was pushed into the target its goal names
        assert res["text"]["goal"]["block_pos"] == pytest.approx(TARGETS[expert.assignment].reshape(4).tolist())
    assert firsts == {0, 1} and assignments == {(0, 1), (1, 0)}
    assert 40 < np.mean(lengths) < 250


def test_unknown_obs_key_named():
    cfg = load_task_cfg("blockpush")
    cfg.shape_meta.obs["cube"] = {"shape": [3], "type": "low_dim"}
    with pytest.raises(KeyError, match="cube"):
        make(cfg)


def test_collect_blockpush_image(tmp_path):
    from vmp.data import EpisodeStore

    out = tmp_path / "bp.zarr"
    summary = collect(load_task_cfg("blockpush_image"), n_episodes=2, out=out, n_workers=0, seed=5, progress=False)
    assert summary["episodes"] == 2
    with EpisodeStore.open(out) as store:
        ep = store.episode(0)
        assert ep["overhead_image"].shape[1:] == (96, 96, 3) and ep["overhead_image"].dtype == np.uint8
        assert ep["action"].shape[1:] == (2,)
        assert "push" in " ".join(store.attrs["phase_names"])
        assert store.episode_text(1)["reasoning"]
