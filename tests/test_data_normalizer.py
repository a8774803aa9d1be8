"""Normalizer: statistics from a store, [-1, 1] min-max with constant-dim guard, exact inverse, state_dict round trip."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vmp.data import EpisodeStore, KeySpec, Normalizer


@pytest.fixture
def store(tmp_path):
    rng = np.random.default_rng(0)
    schema = {"state": KeySpec((4,), "float32"), "keypoint": KeySpec((3, 2), "float32"),
              "agentview_image": KeySpec((4, 4, 3), "uint8"), "action": KeySpec((3,), "float32")}
    with EpisodeStore.create(tmp_path / "s.zarr", schema, {"task": "t", "control_hz": 10}) as w:
        for length in (20, 30):
            action = rng.uniform(-5, 7, (length, 3)).astype(np.float32)
            action[:, 2] = 0.25  # a constant dim
            w.append_episode({"state": rng.normal(3.0, 2.0, (length, 4)), "keypoint": rng.uniform(0, 512, (length, 3, 2)),
                              "agentview_image": rng.integers(0, 256, (length, 4, 4, 3), dtype=np.uint8), "action": action})
    return EpisodeStore.open(tmp_path / "s.zarr")


MODES = {"action": "minmax", "state": "meanstd", "keypoint": "minmax", "agentview_image": "identity"}


def test_minmax_meanstd_identity(store):
    norm = Normalizer.from_store(store, MODES)
    act = torch.from_numpy(store.array("action")[:])
    y = norm.normalize("action", act)
    assert torch.allclose(y[:, :2].min(0).values, torch.tensor(-1.0)) and torch.allclose(y[:, :2].max(0).values, torch.tensor(1.0))
    assert torch.equal(y[:, 2], torch.zeros(50))  # constant dim maps to 0, not to inf
    state = torch.from_numpy(store.array("state")[:])
    z = norm.normalize("state", state)
    assert torch.allclose(z.mean(0), torch.zeros(4), atol=1e-5) and torch.allclose(z.std(0, unbiased=False), torch.ones(4), atol=1e-4)
    kp = norm.normalize("keypoint", torch.from_numpy(store.array("keypoint")[:]))
    assert kp.shape == (50, 3, 2) and kp.min() >= -1 - 1e-6 and kp.max() <= 1 + 1e-6
    img = torch.from_numpy(store.array("agentview_image")[:])
    assert norm.normalize("agentview_image", img) is img  # uint8 images pass through untouched


def test_exact_inverse_any_leading_shape(store):
    norm = Normalizer.from_store(store, MODES)
    for key, shape in (("action", (3,)), ("state", (4,)), ("keypoint", (3, 2))):
        x = torch.randn(2, 5, 7, *shape) * 10
        torch.testing.assert_close(norm.unnormalize(key, norm.normalize(key, x)), x, rtol=1e-6, atol=1e-4)
        x64 = x.double()
        torch.testing.assert_close(norm.unnormalize(key, norm.normalize(key, x64)), x64, rtol=1e-12, atol=1e-9)
    d = {"action": torch.randn(4, 3), "state": torch.randn(4, 4)}
    back = norm.unnormalize_dict(norm.normalize_dict(d))
    for k in d:
        torch.testing.assert_close(back[k], d[k], rtol=1e-6, atol=1e-5)


def test_state_dict_round_trip_through_empty(store, tmp_path):
    norm = Normalizer.from_store(store, MODES)
    torch.save(norm.state_dict(), tmp_path / "norm.pt")
    shapes = {"action": (3,), "state": (4,), "keypoint": (3, 2), "agentview_image": (4, 4, 3)}
    fresh = Normalizer.empty(shapes, MODES)
    x = torch.randn(6, 3)
    assert not torch.allclose(fresh.normalize("action", x), norm.normalize("action", x))
    fresh.load_state_dict(torch.load(tmp_path / "norm.pt", weights_only=False))
    torch.testing.assert_close(fresh.normalize("action", x), norm.normalize("action", x))
    torch.testing.assert_close(fresh.stats("state")["mean"], norm.stats("state")["mean"])
    wrong = Normalizer.empty(shapes, {**MODES, "state": "minmax"})
    with pytest.raises(ValueError, match="modes"):
        wrong.load_state_dict(norm.state_dict())


def test_train_split_statistics(store):
    norm = Normalizer.from_store(store, {"action": "minmax"}, episodes=np.array([0]))
    first = store.episode(0)["action"]
    np.testing.assert_allclose(norm.stats("action")["min"].numpy(), first.min(0), rtol=1e-6)


def test_clear_errors(store):
    norm = Normalizer.from_store(store, {"action": "minmax"})
    with pytest.raises(KeyError, match="Normalizer has no key 'state'"):
        norm.normalize("state", torch.zeros(2, 4))
    with pytest.raises(ValueError, match=r"Normalizer\['action'\] expects \[..., 3\]"):
        norm.normalize("action", torch.zeros(2, 4))
    with pytest.raises(KeyError, match="'velocity' is not in store"):
        Normalizer.from_store(store, {"velocity": "minmax"})
    with pytest.raises(ValueError, match="must be one of"):
        Normalizer.empty({"action": (3,)}, {"action": "zscore"})
    with pytest.raises(KeyError, match="mismatch"):
        Normalizer.empty({"action": (3,)}, {"state": "minmax"})


def test_dotted_keys(tmp_path):
    norm = Normalizer.empty({"observation.state": (2,)}, {"observation.state": "meanstd"})
    norm.set_stats("observation.state", min=[0, 0], max=[1, 1], mean=[1.0, 2.0], std=[2.0, 4.0])
    torch.testing.assert_close(norm.normalize("observation.state", torch.tensor([3.0, 6.0])), torch.tensor([1.0, 1.0]))
    assert any("observation" in k for k in norm.state_dict())


def test_action_statistics_skip_validation_and_action_free_episodes(tmp_path):
    """stats_episodes + a per-key episodes mapping: action stats from training episodes with actions only, state
    stats from every training episode; validation and action-free episodes never shape the action statistics."""
    from vmp.data import SequenceSampler
    from vmp.data.sampler import val_episode_mask

    n, kw = 8, dict(val_ratio=0.25, seed=0)
    val = val_episode_mask(n, **kw)
    free = int(np.flatnonzero(~val)[0])  # an action-free episode inside the training split
    schema = {"state": KeySpec((2,), "float32"), "action": KeySpec((2,), "float32")}
    with EpisodeStore.create(tmp_path / "s.zarr", schema, {"task": "t", "control_hz": 10}) as w:
        for e in range(n):
            # episode e's values lie in [100 e + 100, 100 e + 110): each episode moves min/max/mean distinguishably
            ep = {"state": np.full((5, 2), 100.0 * e + 100) + np.arange(5)[:, None],
                  "action": np.full((5, 2), 100.0 * e + 105, np.float32) + np.arange(5)[:, None]}
            if e == free:
                del ep["action"]
            w.append_episode(ep, action_free=e == free)
    store = EpisodeStore.open(tmp_path / "s.zarr")
    sampler = SequenceSampler(store, keys=["state"], horizon=2, split="val", **kw)  # any split: stats use train
    act_eps, state_eps = sampler.stats_episodes("action"), sampler.stats_episodes("state")
    np.testing.assert_array_equal(state_eps, np.flatnonzero(~val))
    np.testing.assert_array_equal(act_eps, np.flatnonzero(~val & (np.arange(n) != free)))
    norm = Normalizer.from_store(store, {"action": "meanstd", "state": "minmax"},
                                 episodes={"action": act_eps, "state": state_eps})
    acts = np.concatenate([store.episode(int(e))["action"] for e in act_eps]).astype(np.float64)
    states = np.concatenate([store.episode(int(e))["state"] for e in state_eps]).astype(np.float64)
    stats = {k: {s: v.numpy() for s, v in norm.stats(k).items()} for k in ("action", "state")}
    np.testing.assert_allclose(stats["action"]["mean"], acts.mean(0), rtol=1e-6)
    np.testing.assert_allclose(stats["action"]["min"], acts.min(0))
    np.testing.assert_allclose(stats["action"]["max"], acts.max(0))
    np.testing.assert_allclose(stats["state"]["min"], states.min(0))  # the action-free episode's state counts
    assert stats["state"]["min"][0] == 100.0 * min(state_eps) + 100
    # Handing the action every episode still skips the action-free one's zero rows.
    everything = Normalizer.from_store(store, {"action": "minmax"})
    assert everything.stats("action")["min"][0] >= 105
    with pytest.raises(KeyError, match=r"no episodes for normalised key\(s\) \['state'\]"):
        Normalizer.from_store(store, {"action": "minmax", "state": "minmax"}, episodes={"action": act_eps})
    with pytest.raises(KeyError, match=r"episodes for key\(s\) \['velocity'\] that have no mode"):
        Normalizer.from_store(store, {"action": "minmax"}, episodes={"action": act_eps, "velocity": act_eps})
    with pytest.raises(ValueError, match="statistics for 'action' from zero steps"):
        Normalizer.from_store(store, {"action": "minmax"}, episodes=np.array([free]))
    with pytest.raises(IndexError, match="episodes must lie in"):
        Normalizer.from_store(store, {"action": "minmax"}, episodes=np.array([n]))
    with pytest.raises(KeyError, match="not sampled by this sampler"):
        sampler.stats_episodes("agentview_image")


def test_stats_episodes_refuses_a_split_without_actions(tmp_path):
    from vmp.data import SequenceSampler

    schema = {"state": KeySpec((2,), "float32"), "action": KeySpec((2,), "float32")}
    with EpisodeStore.create(tmp_path / "s.zarr", schema, {"task": "t", "control_hz": 10}) as w:
        w.append_episode({"state": np.zeros((4, 2), np.float32)}, action_free=True)
    sampler = SequenceSampler(tmp_path / "s.zarr", keys=["state"], horizon=2)
    np.testing.assert_array_equal(sampler.stats_episodes("state"), [0])
    with pytest.raises(ValueError, match="no training episode of store .* has actions"):
        sampler.stats_episodes("action")
