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
