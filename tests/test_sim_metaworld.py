"""Meta-World: single-task and MT50 envs, scripted experts through our wrapper."""

from __future__ import annotations

import numpy as np
import pytest

import vmp  # noqa: F401
from vmp.sim import load_task_cfg, make
from vmp.sim.collect import rollout_expert
from vmp.sim.experts import make_expert
from vmp.sim.metaworld_env import INSTRUCTIONS, MT50_TASKS


def test_fifty_tasks_with_instructions():
    from metaworld.env_dict import ALL_V3_ENVIRONMENTS

    assert len(MT50_TASKS) == 50 and set(MT50_TASKS) == set(ALL_V3_ENVIRONMENTS)
    assert len(set(INSTRUCTIONS.values())) == 50


@pytest.mark.parametrize("task", ["push-v3", "button-press-v3", "pick-place-v3"])
def test_single_task_expert_succeeds(task):
    cfg = load_task_cfg("metaworld", **{"env_kwargs.task_name": task})
    assert cfg.store == f"stores/metaworld_{task}.zarr"
    env = make(cfg, render_mode="rgb_array")
    try:
        obs, info = env.reset(seed=1)
        assert obs["state"].shape == (39,) and obs["state"].dtype == np.float32
        assert info["language"] == INSTRUCTIONS[task]
        assert np.abs(obs["state"][-3:]).sum() > 0  # goal is observable
        again, _ = env.reset(seed=1)
        np.testing.assert_array_equal(obs["state"], again["state"])
        other, _ = env.reset(seed=2)
        assert not np.array_equal(obs["state"], other["state"])  # placements vary with the seed
        assert env.render().shape == (128, 128, 3)
        res = rollout_expert(env, make_expert("metaworld", env), seed=1)
        assert res["success"], task
        assert res["episode"]["phase"][0] == 0 and res["episode"]["phase"][-1] > 0
    finally:
        env.close()


def test_mt50_switches_tasks_by_seed():
    onehot = {"shape_meta.obs.task_onehot": {"shape": [50], "type": "low_dim"}}  # a task index instead of language
    env = make(load_task_cfg("metaworld_mt50", **onehot))
    try:
        obs, info = env.reset(seed=30)
        assert info["task_name"] == MT50_TASKS[30] and obs["task_onehot"].argmax() == 30
        img = obs["corner2_image"]
        assert img.shape == (64, 64, 3) and img.dtype == np.uint8 and img.std() > 5
        obs, info = env.reset(seed=7)
        assert info["task_name"] == MT50_TASKS[7] and info["language"] == INSTRUCTIONS[MT50_TASKS[7]]
        obs, info = env.reset(seed=0, options={"task_name": "reach-v3"})
        res = rollout_expert(env, make_expert("metaworld", env), seed=50 + MT50_TASKS.index("reach-v3"))
        assert res["success"] and res["text"]["language"] == INSTRUCTIONS["reach-v3"]
    finally:
        env.close()


def test_unknown_task_named():
    with pytest.raises(ValueError, match="no-such-task"):
        make(load_task_cfg("metaworld", **{"env_kwargs.task_name": "no-such-task-v3"}))
