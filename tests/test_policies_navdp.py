"""NavDP head: the path follower, config checks, learning (diffusion loss, critic ranking on the pointnav expert's
critic targets), the goal-blind critic, N-sample selection and the stop turn, and vmp-train -> load -> act on PointNav
with the candidates drawn into the evaluation video."""

from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from vmp.data import EpisodeStore, Normalizer, SequenceDataset, SequenceSampler
from vmp.policies.build import build_policy, head_config, normalizer_modes
from vmp.policies.heads.navdp import NavDPConfig, NavDPPolicy, follow_path

K = 24
TINY = ["policy.d_model=32", "policy.n_layers=1", "policy.trunk_layers=1", "policy.n_heads=2", "policy.dropout=0.0",
        "encoder.backbone_kwargs.channels=8", "encoder.backbone_kwargs.n_layers=2", "encoder.crop_ratio=1.0"]
COLLIDING = -2.0  # a critic target below this is dominated by its collision term (-5 x the unsafe fraction)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models on a shared 2-core machine: one intra-op thread is many times faster than two contending ones."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def compose_cfg(*overrides: str):
    with initialize_config_module(config_module="vmp.configs", version_base=None):
        return compose("train", overrides=["task=pointnav", "policy=navdp", "encoder=compact_cnn",
                                           "encoder.image_output=tokens", *TINY, *overrides])


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    """4 expert episodes with short goals (~230 steps, a few seconds): images, nav_path and the critic targets."""
    from vmp.sim import load_task_cfg
    from vmp.sim.collect import collect

    out = tmp_path_factory.mktemp("navdp") / "pointnav.zarr"
    cfg = load_task_cfg("pointnav", **{"env_kwargs.min_goal_distance": 2.5, "env_kwargs.max_goal_distance": 3.5})
    collect(cfg, n_episodes=4, out=out, n_workers=0, seed=11, progress=False)
    return out


@pytest.fixture(scope="module")
def data(store):
    """(dataset over every window of the store, the composed config)."""
    cfg = compose_cfg()
    settings = head_config(cfg)
    sampler = SequenceSampler(EpisodeStore.open(store), split="all",
                              n_obs_steps=settings.n_obs_steps, horizon=settings.horizon,
                              n_action_steps=settings.n_action_steps,
                              **NavDPPolicy.batch_spec(settings, cfg.task).sampler_settings(list(cfg.task.shape_meta.obs)))
    return SequenceDataset(sampler), cfg


def batch_of(dataset: SequenceDataset, indices) -> dict:
    return dataset._convert(dataset.sampler.sample_batch(np.asarray(indices)))


@pytest.fixture(scope="module")
def trained(store, data):
    """A tiny NavDP trained 300 steps (batch 32) on the store: (policy in eval mode, per-step loss dicts)."""
    dataset, cfg = data
    torch.manual_seed(0)
    policy = build_policy(cfg, Normalizer.from_store(EpisodeStore.open(store), normalizer_modes(cfg)))
    opt = torch.optim.AdamW(policy.parameters(), lr=3e-3)
    rng, history = np.random.default_rng(0), []
    for _ in range(300):
        losses = policy.compute_loss(batch_of(dataset, rng.integers(len(dataset), size=32)))
        opt.zero_grad()
        losses["loss"].backward()
        opt.step()
        history.append({k: v.item() for k, v in losses.items()})
    return policy.eval(), history


# ---------------------------------------------------------------- the follower
def test_follow_path_drives_a_straight_path_forward_to_its_end():
    straight = torch.stack([0.1 * torch.arange(1, K + 1), torch.zeros(K)], dim=-1)
    actions = follow_path(straight, 50, 0.1, v_max=0.6, omega_max=1.5, lookahead=0.45)
    assert actions.shape == (50, 2)
    assert torch.allclose(actions[:5, 0], torch.full((5,), 0.6)) and actions[:, 1].abs().max() < 1e-5
    assert 2.3 < float(actions[:, 0].sum() * 0.1) <= 2.4 + 1e-5  # drives the path's 2.4 m, not past its end
    assert torch.equal(actions[-5:], torch.zeros(5, 2))  # then stops


def test_follow_path_turns_toward_the_path():
    theta = torch.linspace(0.05, 1.6, K)
    left = torch.stack([torch.sin(theta), 1 - torch.cos(theta)], dim=-1)  # an arc of radius 1 m to the left
    actions = follow_path(left, 20, 0.1, v_max=0.6, omega_max=1.5, lookahead=0.45)
    assert (actions[:, 0] > 0).all() and (actions[:, 1] > 0).all()
    mirrored = follow_path(left * torch.tensor([1.0, -1.0]), 20, 0.1, v_max=0.6, omega_max=1.5, lookahead=0.45)
    torch.testing.assert_close(mirrored, actions * torch.tensor([1.0, -1.0]))
    behind_right = torch.linspace(0.1, 1.5, K)[:, None] * torch.tensor([-1.0, -1.0])
    first = follow_path(behind_right, 3, 0.1, v_max=0.6, omega_max=1.5, lookahead=0.45)[0]
    assert first[0] == 0 and first[1] == -1.5  # far off the heading: turn in place, clockwise, at the limit


def test_follow_path_respects_limits_and_batches():
    g = torch.Generator().manual_seed(0)
    paths = torch.cumsum(0.1 * torch.randn(64, K, 2, generator=g) + torch.tensor([0.05, 0.0]), dim=1)
    actions = follow_path(paths, 12, 0.1, v_max=0.6, omega_max=1.5, lookahead=0.45)
    assert actions.shape == (64, 12, 2)
    assert (actions[..., 0] >= 0).all() and (actions[..., 0] <= 0.6 + 1e-6).all()
    assert (actions[..., 1].abs() <= 1.5 + 1e-6).all()
    torch.testing.assert_close(follow_path(paths[5], 12, 0.1, 0.6, 1.5, 0.45), actions[5])
    assert torch.equal(follow_path(torch.zeros(K, 2), 4, 0.1, 0.6, 1.5, 0.45), torch.zeros(4, 2))  # nowhere to go


# ---------------------------------------------------------------- settings
def test_settings_are_checked_by_name():
    for bad, match in (({"selection": "best"}, "policy.selection"), ({"n_steps": 20}, "policy.n_steps"),
                       ({"turn_rate": 2.0}, "policy.turn_rate"), ({"waypoint_scale": 0.0}, "policy.waypoint_scale"),
                       ({"critic_weight": -1.0}, "policy.critic_weight"), ({"n_waypoints": 1}, "policy.n_waypoints")):
        with pytest.raises(ValueError, match=match):
            NavDPConfig(**bad)
    task = OmegaConf.create({"name": "lift", "train_keys": []})
    with pytest.raises(ValueError, match="train_keys"):
        NavDPPolicy.batch_spec(NavDPConfig(), task)
    cfg = compose_cfg("policy.n_waypoints=12")
    with pytest.raises(ValueError, match="n_waypoints"):
        NavDPPolicy.batch_spec(head_config(cfg), cfg.task)
    lowdim = compose_cfg()
    lowdim.task.shape_meta.obs = {"goal": {"shape": [2], "type": "low_dim"}}
    with pytest.raises(ValueError, match="camera"):
        build_policy(lowdim)


# ---------------------------------------------------------------- learning
def test_diffusion_loss_falls(trained):
    _, history = trained
    losses = [h["diffusion_loss"] for h in history]
    first, last = np.mean(losses[:20]), np.mean(losses[-20:])
    assert last < 0.25 * first and last < 0.15, (first, last)
    assert {"loss", "diffusion_loss", "critic_loss"} <= set(history[0])


def test_critic_scores_a_colliding_trajectory_below_the_experts(trained, data):
    """The issue's acceptance test, on a fixed example: the first step of the store where a stored candidate collides
    (its critic target is dominated by the collision term); then the ranking over every such pair of the store."""
    policy, _ = trained
    dataset, _ = data
    batch = batch_of(dataset, np.arange(len(dataset)))
    paths, targets = batch["train"]["critic_paths"][:, 0], batch["train"]["critic_scores"][:, 0]  # [W, M, K, 2], [W, M]
    with torch.no_grad():
        scores = policy.score(policy.camera_tokens(policy.condition(batch["obs"])), paths / policy.config.waypoint_scale)
    colliding = targets < COLLIDING
    row = int(colliding.any(dim=1).float().argmax())
    worst = int(targets[row].argmin())
    assert targets[row, 0] > 0 > COLLIDING > targets[row, worst]  # the expert's path is safe, that one collides
    assert scores[row, 0] > scores[row, worst] + 0.5, (scores[row], targets[row])
    right = (scores[:, :1] > scores)[colliding].float().mean()
    assert right > 0.85, f"expert ranked above only {right:.0%} of {int(colliding.sum())} colliding candidates"


def test_critic_is_blind_to_the_goal(trained, data):
    """Only the goal changes: the generator's conditioning changes with it, the critic's scores do not (bit for bit)."""
    policy, _ = trained
    dataset, _ = data
    batch = batch_of(dataset, [3, 40, 90, 150])
    moved = {**batch["obs"], "goal": batch["obs"]["goal"].flip(-1) * -3.0 + 1.0}
    paths = batch["train"]["critic_paths"][:, 0] / policy.config.waypoint_scale
    with torch.no_grad():
        a, b = policy.condition(batch["obs"]), policy.condition(moved)
        assert not torch.allclose(policy.trunk(a), policy.trunk(b))
        assert torch.equal(policy.score(policy.camera_tokens(a), paths), policy.score(policy.camera_tokens(b), paths))


# ---------------------------------------------------------------- inference
def test_predict_selects_among_n_candidates(trained, data):
    policy, _ = trained
    dataset, _ = data
    obs = batch_of(dataset, [10, 120])["obs"]
    config = policy.config
    rows = torch.arange(2)
    try:
        config.stop_threshold = None
        pred = policy.predict(obs, generator=torch.Generator().manual_seed(0))
        cands, scores = pred.extras["candidates"], pred.extras["candidate_scores"]
        assert cands.shape == (2, 16, K, 2) and cands.dtype == torch.float32 and scores.shape == (2, 16)
        assert cands.abs().max() <= config.waypoint_scale and cands.std(dim=1).mean() > 0.01  # N different paths
        assert pred.actions.shape == (2, config.horizon, 2)
        torch.testing.assert_close(pred.actions, policy.follow(cands[rows, scores.argmax(dim=1)]))  # the best one
        fast = policy.predict_action_chunk(obs, generator=torch.Generator().manual_seed(0))
        assert torch.equal(fast, pred.actions)

        config.selection = "single"
        single = policy.predict(obs, generator=torch.Generator().manual_seed(0))
        assert single.extras["candidates"].shape == (2, 1, K, 2)
        torch.testing.assert_close(single.actions, policy.follow(single.extras["candidates"][:, 0]))

        config.selection = "random"
        picks = []
        for seed in range(4):
            rand = policy.predict(obs, generator=torch.Generator().manual_seed(seed))
            every = policy.follow(rand.extras["candidates"].flatten(0, 1)).unflatten(0, (2, 16))  # [2, N, H, 2]
            match = (every - rand.actions[:, None]).abs().amax(dim=(2, 3)) < 1e-6
            assert match.any(dim=1).all()
            picks.append(match.float().argmax(dim=1))
        assert len({tuple(p.tolist()) for p in picks}) > 1  # not always the same pick
        again = policy.predict(obs, generator=torch.Generator().manual_seed(3))
        assert torch.equal(again.actions, rand.actions)

        config.selection = "critic"
        config.stop_threshold = float(scores.max()) + 1.0  # every candidate below it: turn in place
        stuck = policy.predict(obs, generator=torch.Generator().manual_seed(0))
        assert torch.equal(stuck.actions, torch.tensor([0.0, config.turn_rate]).expand(2, config.horizon, 2))
    finally:
        config.selection, config.stop_threshold = "critic", -1.0


def test_real_time_chunking_prefix_is_driven_and_starts_every_candidate(trained, data):
    """A prefix of 5 forward commands (0.5 m/s at 10 Hz: 0.25 m) is kept in the chunk, and every candidate path starts
    with the waypoints that stretch covers (0.1 m and 0.2 m ahead); without it the first waypoints vary."""
    policy, _ = trained
    dataset, _ = data
    obs = batch_of(dataset, [10])["obs"]
    length = policy.n_obs_steps - 1 + 5
    prefix = torch.tensor([0.5, 0.0]).expand(1, length, 2).clone()
    pred = policy.predict(obs, generator=torch.Generator().manual_seed(0), prefix=prefix,
                          prefix_weights=torch.ones(length))
    torch.testing.assert_close(pred.actions[:, :length], prefix)
    first = pred.extras["candidates"][0, :, :3]  # [N, 3, 2]: the first three waypoints of every candidate
    torch.testing.assert_close(first[:, :2], torch.tensor([[0.1, 0.0], [0.2, 0.0]]).expand(16, 2, 2), atol=1e-4, rtol=0)
    assert first[:, 2].std(dim=0).max() > 1e-3  # beyond the prefix's reach the samples are free
    free = policy.predict(obs, generator=torch.Generator().manual_seed(0))
    assert free.extras["candidates"][0, :, 0].std(dim=0).max() > 1e-3
    with pytest.raises(ValueError, match="prefix_weights must be given with prefix"):
        policy.predict(obs, prefix=prefix)


# ---------------------------------------------------------------- end to end
def test_vmp_train_load_and_act_on_pointnav(store, tmp_path, monkeypatch):
    """vmp-train for a few steps, then the checkpoint acts on a real PointNav observation, and a recorded episode
    hands each plan's candidates and scores to the env, which draws them on its top-down map."""
    from vmp.policies.checkpoint import load_policy
    from vmp.policies.train import train
    from vmp.sim import make
    from vmp.sim.evaluate import rollout_policy

    cfg = compose_cfg(f"store={store}", f"run_dir={tmp_path / 'run'}", "training.steps=10", "training.batch_size=16",
                      "training.warmup_steps=2", "training.val_ratio=0", "training.log_every=5")
    ckpt = train(cfg)
    header = (tmp_path / "run" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"diffusion_loss", "critic_loss"} <= set(header)
    policy, _ = load_policy(ckpt, overrides={"n_samples": 4})

    env = make(cfg.task, render_mode="rgb_array", max_episode_steps=6)
    obs, _ = env.reset(seed=5)
    pred = policy.predict_window({k: obs[k][None] for k in policy.obs_shapes})
    assert pred.actions.shape == (policy.horizon, 2) and np.isfinite(pred.actions).all()
    assert (pred.actions[:, 0] >= 0).all() and (pred.actions[:, 0] <= 0.6).all() and (np.abs(pred.actions[:, 1]) <= 1.5).all()
    assert pred.extras["candidates"].shape == (4, K, 2) and pred.extras["candidate_scores"].shape == (4,)

    u, shown = env.unwrapped, []
    show = u.show_candidates
    monkeypatch.setattr(u, "show_candidates", lambda c, s: (shown.append((c, s)), show(c, s)))
    res = rollout_policy(env, policy, seed=5, record_video=True)
    assert res["length"] == 6 and len(res["frames"]) == 7
    assert len(shown) == 2  # one plan per n_action_steps = 4 control steps
    for cands, scores in shown:
        assert cands.shape == (4, K, 2) and scores.shape == (4,)
    plain = u.render_topdown(u.render_size)
    drawn = env.render()[:, : u.render_size]
    assert (drawn != plain).any()  # the last plan's candidates are on the map
    env.close()
