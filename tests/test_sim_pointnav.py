"""PointNav: scenes and splits, frames, env contract, planner expert, critic targets, collection of training keys."""

from __future__ import annotations

import numpy as np
import pytest

import vmp  # noqa: F401
from vmp.sim import load_task_cfg, make
from vmp.sim.collect import collect, rollout_expert
from vmp.sim.experts import make_expert
from vmp.sim.experts.pointnav import N_CANDIDATES, critic_scores
from vmp.sim.pointnav import (ROBOT_RADIUS, make_scene, rasterize, rect_distance, robot_to_world, scene_seed,
                              world_to_robot)


@pytest.fixture(scope="module")
def env():
    e = make(load_task_cfg("pointnav"), render_mode="rgb_array")
    yield e
    e.close()


def test_frames_round_trip():
    rng = np.random.default_rng(0)
    pts = rng.normal(size=(5, 7, 2))
    for pose in rng.uniform([-4, -4, -np.pi], [4, 4, np.pi], size=(4, 3)):
        np.testing.assert_allclose(world_to_robot(robot_to_world(pts, pose), pose), pts, atol=1e-12)
        np.testing.assert_allclose(robot_to_world(world_to_robot(pts, pose), pose), pts, atol=1e-12)
    # 1 m ahead of a robot at (1, 2) facing +y is (1, 3); (1, 3) lies 1 m ahead of it
    np.testing.assert_allclose(robot_to_world(np.array([1.0, 0.0]), (1, 2, np.pi / 2)), [1, 3], atol=1e-12)
    np.testing.assert_allclose(world_to_robot(np.array([0.0, 2.0]), (1, 2, np.pi / 2)), [0, 1], atol=1e-12)


def test_train_and_heldout_scenes_are_disjoint(env):
    train = {scene_seed(s, "train") for s in range(2000)}
    heldout = {scene_seed(s, "heldout") for s in range(2000)}
    assert len(train) == len(heldout) == 2000 and not train & heldout
    with pytest.raises(ValueError, match="scene_split"):
        scene_seed(0, "test")
    u = env.unwrapped
    env.reset(seed=3)
    rects_train = u.scene.rects.copy()
    env.reset(seed=3)
    np.testing.assert_array_equal(u.scene.rects, rects_train)  # same seed and split: same scene
    u.scene_split = "heldout"
    try:
        env.reset(seed=3)
        assert u.scene.seed != scene_seed(3, "train")
        assert u.scene.rects.shape != rects_train.shape or not np.allclose(u.scene.rects, rects_train)
    finally:
        u.scene_split = "train"
    assert len(make_scene(5, "cluttered").rects) > len(make_scene(5, "sparse").rects) + 8


def test_observations_match_shape_meta(env):
    obs, info = env.reset(seed=1)
    assert env.observation_space.contains(obs), {k: (v.shape, v.dtype) for k, v in obs.items()}
    assert obs["front_image"].shape == (64, 64, 3) and obs["front_image"].dtype == np.uint8
    assert obs["front_depth"].shape == (64, 64) and obs["front_depth"].dtype == np.float32
    assert 0.0 < obs["front_depth"].min() and obs["front_depth"].max() <= 5.0
    u = env.unwrapped
    np.testing.assert_allclose(obs["goal"], world_to_robot(u.goal_xy, u.pose), atol=1e-5)
    assert info["distance_to_goal"] >= 2.5 and info["shortest_path_length"] > 0 and not info["success"]
    obs, reward, terminated, truncated, info = env.step(np.array([0.0, 1.0], np.float32))
    assert env.observation_space.contains(obs) and info["path_length"] == 0.0
    frame = env.render()
    assert frame.shape == (256, 512, 3) and frame.dtype == np.uint8
    trajs = np.stack([np.linspace([0, 0], [1, s], 24) for s in (-1, 0, 1)])
    top = u.render_topdown(128, trajs, scores=np.array([0.0, 1.0, 0.5]))
    assert top.shape == (128, 128, 3)


def test_bad_action_shape_is_named(env):
    env.reset(seed=0)
    with pytest.raises(ValueError, match=r"action must have shape \(2,\)"):
        env.step(np.zeros(3, np.float32))
    cfg = load_task_cfg("pointnav")
    cfg.shape_meta.obs["lidar"] = {"shape": [8], "type": "low_dim"}
    with pytest.raises(KeyError, match="lidar"):
        make(cfg)


def test_collision_ends_the_episode(env):
    env.reset(seed=2)
    u = env.unwrapped
    reach = np.linspace(0.3, 8.0, 80)

    def first_hit(yaw: float) -> float:
        ray = u.pose[:2] + reach[:, None] * [np.cos(yaw), np.sin(yaw)]
        return float(reach[np.argmax(u.clearance(ray) < ROBOT_RADIUS)])

    u.pose[2] = min(np.linspace(-np.pi, np.pi, 36, endpoint=False), key=first_hit)  # face the nearest obstacle
    for _ in range(100):
        _, reward, terminated, _, info = env.step(np.array([0.6, 0.0], np.float32))
        if terminated:
            break
    assert terminated and info["collision"] and info["collisions"] == 1 and not info["success"] and reward == -1.0
    assert u.clearance(u.pose[:2]) >= ROBOT_RADIUS  # the base stopped short of the obstacle


def test_expert_reaches_goal(env):
    expert = make_expert("pointnav", env, horizon=24, spacing=0.1)
    for seed in (0, 7):
        res = rollout_expert(env, expert, seed)
        info = env.unwrapped._info()
        assert res["success"] and info["collisions"] == 0, (seed, info)
        assert 0.6 < info["spl"] <= 1.0
        assert "drive" in res["text"]["reasoning"]
        ep = res["episode"]
        assert ep["nav_path"].shape == (res["length"], 24, 2)
        assert ep["critic_paths"].shape == (res["length"], N_CANDIDATES, 24, 2)
        np.testing.assert_array_equal(ep["critic_paths"][:, 0], ep["nav_path"])
        # waypoints 0.1 m apart along the path (the first 0.1 m from the robot), the goal repeated at the end
        steps = np.linalg.norm(np.diff(ep["nav_path"][0], axis=0, prepend=0), axis=-1)
        assert np.all(steps < 0.1 + 1e-4) and steps[0] > 0.09
        u = env.unwrapped
        np.testing.assert_allclose(ep["nav_path"][-1, -1], world_to_robot(u.goal_xy, u.pose), atol=0.5)


# start pose (x, y, yaw) and goal (x, y) of the first three seeds, as recorded when the training stores and NavDP's
# results were made: a change to scene or start/goal sampling (a new task's option leaking into the defaults) moves
# them, and with them every stored episode and the critic's fixed example.
GOLDEN_STARTS = {
    "pointnav": [[-3.375, 3.125, 0.359, -2.825, 0.675], [-3.275, 3.075, 2.23, -2.475, -1.975],
                 [2.725, 3.525, -0.415, 0.125, 0.025]],
    "pointnav_cluttered": [[-0.275, 3.225, 0.359, -0.275, -0.275], [0.075, 3.025, 2.23, 2.325, -2.025],
                           [-0.825, 3.425, -0.415, -2.325, -0.175]],
}


@pytest.mark.parametrize("task", sorted(GOLDEN_STARTS))
def test_starts_and_goals_stay_as_recorded(task):
    e = make(load_task_cfg(task))
    try:
        got = []
        for seed in range(3):
            e.reset(seed=seed)
            got.append([*e.unwrapped.pose, *e.unwrapped.goal_xy])
    finally:
        e.close()
    np.testing.assert_allclose(got, GOLDEN_STARTS[task], atol=1e-3)


def test_maze_scenes_have_dead_ends_narrow_doors_and_goals_behind_obstacles():
    """difficulty=maze: 2-5 three-sided alcoves, doors 0.8-0.95 m (the base is 0.4 m wide), and with min_detour the
    goal is never in a straight line: the geodesic path is >= 1.3 x the straight one, which the expert still drives."""
    from vmp.sim.pointnav import ALCOVE_HEIGHT

    for seed in range(5):
        scene = make_scene(seed, "maze")
        assert 2 * 3 <= int((scene.heights == ALCOVE_HEIGHT).sum()) <= 5 * 3
        assert make_scene(seed, "maze").rects.tobytes() == scene.rects.tobytes()  # a seed makes one scene
    cfg = load_task_cfg("pointnav_maze")
    env = make(cfg, render_mode=None)
    try:
        expert = make_expert("pointnav", env, horizon=24, spacing=0.1)
        for seed in (0, 1):
            res = rollout_expert(env, expert, seed)
            u = env.unwrapped
            start = u.shortest_path[0]
            geodesic = float(u.grid.lookup(u.goal_distance, start[None])[0])  # the planner's, with its margin
            assert geodesic >= 1.3 * np.linalg.norm(start - u.goal_xy) - 1e-6
            assert res["success"], (seed, u._info())
        with pytest.raises(ValueError, match="min_detour must be in"):
            make(cfg, min_detour=0.5)
    finally:
        env.close()


def test_expert_path_outscores_colliding_candidates(env):
    expert = make_expert("pointnav", env)
    obs, _ = env.reset(seed=4)
    expert.reset(seed=4)
    u, n_colliding = env.unwrapped, 0
    for _ in range(40):
        action = expert.act(obs)
        extras = expert.extras()
        world = robot_to_world(extras["critic_paths"], u.pose)
        colliding = u.clearance(world).min(axis=-1) < ROBOT_RADIUS
        assert not colliding[0]
        scores = extras["critic_scores"]
        if colliding.any():
            n_colliding += 1
            assert scores[0] > scores[colliding].max()
        obs, _, terminated, truncated, _ = env.step(action)
        if terminated or truncated:
            break
    assert n_colliding > 10


def test_critic_scores_fixed_example():
    """A wall 1 m ahead of a robot at the origin, the goal 3 m to its left: turning left beats driving into the wall."""
    wall = np.array([[1.05, 0.0, 0.05, 2.0, 0.0]])
    grid = rasterize(wall)
    goal = np.array([0.0, 3.0])
    goal_distance = np.linalg.norm(grid.centre(np.indices(grid.occupancy.shape).transpose(1, 2, 0)) - goal, axis=-1)
    s = {"grid": grid, "robot_radius": ROBOT_RADIUS, "goal_distance": goal_distance}
    pose = np.array([0.0, 0.0, 0.0])
    k = np.arange(1, 25)[:, None] * 0.1
    left, ahead, back = k * [0.0, 1.0], k * [1.0, 0.0], k * [-1.0, 0.0]
    scores = critic_scores(np.stack([left, ahead, back]), pose, s, horizon=2.4)
    assert rect_distance(ahead, wall).min() < ROBOT_RADIUS  # it collides
    assert scores[0] > scores[2] > scores[1]
    assert scores[0] == pytest.approx(2.4 / 2.4, abs=0.15)  # clear, full progress, clearance unchanged (capped)
    assert scores[1] < -2.0


def test_collect_writes_training_keys(tmp_path):
    from vmp.data import EpisodeStore

    out = tmp_path / "pn.zarr"
    cfg = load_task_cfg("pointnav", **{"env_kwargs.min_goal_distance": 2.5, "env_kwargs.max_goal_distance": 3.5})
    summary = collect(cfg, n_episodes=2, out=out, n_workers=0, seed=11, progress=False)
    assert summary["episodes"] == 2
    with EpisodeStore.open(out) as store:
        assert store.schema["critic_paths"].shape == (N_CANDIDATES, 24, 2)
        ep = store.episode(1)
        t = len(ep["action"])
        assert ep["front_image"].shape == (t, 64, 64, 3) and ep["front_depth"].shape == (t, 64, 64)
        assert ep["front_depth"].dtype == np.float32 and ep["goal"].shape == (t, 2)
        assert ep["nav_path"].shape == (t, 24, 2) and ep["nav_path"].dtype == np.float32
        assert ep["critic_paths"].shape == (t, N_CANDIDATES, 24, 2) and ep["critic_scores"].shape == (t, N_CANDIDATES)
        assert store.attrs["phase_names"] == ["turn", "drive", "arrive"]


def test_evaluation_runs_on_held_out_scenes():
    """vmp-eval builds the env with the task's eval_env_kwargs: pointnav policies are judged on unseen scenes."""
    import functools

    from vmp.sim import _plain, load_task_cfg
    from vmp.sim.evaluate import _init_eval, expert_policy

    task = _plain(load_task_cfg("pointnav"))
    assert task["env_kwargs"]["scene_split"] == "train"
    state = _init_eval(task, functools.partial(expert_policy, task), False, None, None)
    try:
        assert state.env.unwrapped.scene_split == "heldout"
    finally:
        state.env.close()
