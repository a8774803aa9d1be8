"""robosuite Stack, PickPlaceCan, NutAssemblySquare: env contract and privileged experts on fixed seeds."""

from __future__ import annotations

import numpy as np
import pytest

import vmp  # noqa: F401
from vmp.sim import load_task_cfg, make
from vmp.sim.collect import rollout_expert
from vmp.sim.experts import make_expert

# (task config, a seed the expert solves, object-state size)
CASES = [("stack", 0, 23), ("can", 0, 14), ("square", 2, 14)]


@pytest.mark.parametrize("name,seed,obj_dim", CASES)
def test_expert_solves_fixed_seed(name, seed, obj_dim):
    cfg = load_task_cfg(name)
    env = make(cfg, render_mode="rgb_array")
    try:
        obs, info = env.reset(seed=seed)
        assert obs["object"].shape == (obj_dim,) and obs["eef_pos"].shape == (3,)
        assert info["language"] == cfg.language
        assert env.render().shape == (128, 128, 3)
        expert = make_expert(cfg.expert, env)
        res = rollout_expert(env, expert, seed)
        assert res["success"], f"{name} seed {seed}: {res['text']['reasoning']}"
        phases = res["episode"]["phase"]
        assert phases[0] == 0 and phases.max() >= 5  # got at least to lowering / releasing
    finally:
        env.close()


def test_reset_reports_where_the_episode_starts():
    """reset's info["start"]: the moved object's xy and yaw from the simulator and its horizontal distance from the
    hand, different per seed (vmp-eval keeps it per episode)."""
    env = make(load_task_cfg("can"))
    try:
        starts = []
        for seed in (2, 3):
            obs, info = env.reset(seed=seed)
            start = info["start"]
            pos, _ = env.unwrapped.moved_object_pose()
            np.testing.assert_allclose(start["object_xy"], pos[:2], atol=1e-4)
            assert start["hand_to_object_m"] == pytest.approx(np.linalg.norm(pos[:2] - obs["eef_pos"][:2]), abs=1e-4)
            assert -180.0 <= start["object_yaw_deg"] <= 180.0
            starts.append(start)
        assert starts[0]["object_xy"] != starts[1]["object_xy"]
        assert "start" not in env.step(np.zeros(7))[4]  # reset's alone
    finally:
        env.close()


@pytest.mark.parametrize("name", ["can", "square"])
def test_first_observation_has_the_object_relative_to_the_hand(name):
    """The object-to-gripper part of `object` (position in the gripper's frame, then a unit quaternion) is filled from
    the reset on: robosuite leaves it zero in the first observation, a state that reads as the hand at the object."""
    env = make(load_task_cfg(name))
    try:
        for seed in (0, 48):
            obs, _ = env.reset(seed=seed)
            rel_pos, rel_quat, obj_pos = obs["object"][:3], obs["object"][3:7], obs["object"][7:10]
            np.testing.assert_allclose(np.linalg.norm(rel_pos), np.linalg.norm(obj_pos - obs["eef_pos"]), atol=1e-4)
            assert np.linalg.norm(rel_pos) > 0.05
            np.testing.assert_allclose(np.linalg.norm(rel_quat), 1.0, atol=1e-4)
    finally:
        env.close()


def test_stack_image_variant():
    env = make(load_task_cfg("stack_image"))
    try:
        obs, _ = env.reset(seed=0)
        assert obs["agentview_image"].shape == (84, 84, 3) and obs["eye_in_hand_image"].dtype == np.uint8
        obs, *_ = env.step(np.zeros(7))
        assert set(obs) == {"agentview_image", "eye_in_hand_image", "eef_pos", "eef_quat", "gripper_qpos"}
    finally:
        env.close()


def test_square_expert_under_action_noise():
    """DART collection (vmp-collect action_noise=0.1: noisy execution, clean labels): the square expert still fits
    the nut, its closed-loop servo and retries absorbing the noise; phases stay within its vocabulary."""
    cfg = load_task_cfg("square")
    env = make(cfg)
    try:
        expert = make_expert(cfg.expert, env)
        res = rollout_expert(env, expert, 3, action_noise=0.1)
        assert res["success"], f"square seed 3 with action noise: {res['text']['reasoning']}"
        assert res["episode"]["phase"].max() < len(expert.phase_names)
    finally:
        env.close()


@pytest.mark.parametrize("name,seed", [("can", 0), ("square", 2)])
def test_episode_stages_say_where_an_episode_got_to(name, seed):
    """vmp-eval's failure breakdown: the expert's episode ends with the object lifted and at its goal; a hand that
    does not move leaves it neither, and the flags start afresh at every reset."""
    cfg = load_task_cfg(name)
    env = make(cfg)
    try:
        expert = make_expert(cfg.expert, env)
        obs, info = env.reset(seed=seed)
        assert info["metrics"] == {"lifted": 0.0, "at_goal": 0.0, "over_goal": 0.0}
        expert.reset(seed=seed)
        lifted_before_goal = over_before_goal = False
        for _ in range(400):
            obs, _, terminated, _, info = env.step(expert.act(obs))
            lifted_before_goal = lifted_before_goal or (info["metrics"]["lifted"] == 1.0 and not info["success"])
            # carried over the bin or the peg before it is down: over_goal without at_goal
            over_before_goal = over_before_goal or info["metrics"]["over_goal"] > info["metrics"]["at_goal"]
            if terminated:
                break
        assert info["success"] and info["metrics"] == {"lifted": 1.0, "at_goal": 1.0, "over_goal": 1.0}
        assert lifted_before_goal and over_before_goal
        obs, info = env.reset(seed=seed)
        for _ in range(20):
            obs, _, _, _, info = env.step(np.zeros(7, dtype=np.float32))
        assert info["metrics"] == {"lifted": 0.0, "at_goal": 0.0, "over_goal": 0.0}
    finally:
        env.close()


def test_steps_after_success_record_what_follows_success(tmp_path):
    """vmp-collect steps_after_success=N: the expert's episode goes on N recorded steps past success (its retreat),
    the rest of the episode unchanged; a negative count is refused by name."""
    from vmp.sim.collect import collect

    cfg = load_task_cfg("can")
    env = make(cfg)
    try:
        expert = make_expert(cfg.expert, env)
        plain = rollout_expert(env, expert, 0)
        longer = rollout_expert(env, expert, 0, steps_after_success=5)
    finally:
        env.close()
    assert plain["success"] and longer["success"]
    assert longer["length"] == plain["length"] + 5
    np.testing.assert_array_equal(longer["episode"]["action"][: plain["length"]], plain["episode"]["action"])
    retreat = len(expert.phase_names) - 1
    assert (longer["episode"]["phase"][-5:] == retreat).all()
    out = tmp_path / "refused.zarr"
    with pytest.raises(ValueError, match="steps_after_success"):
        collect(cfg, n_episodes=1, out=str(out), steps_after_success=-1, progress=False)
    assert not out.exists()
