"""SequenceSampler / SequenceDataset: hand-computed windows with padding at both ends, splits, goals, DataLoader."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from vmp.data import EpisodeStore, KeySpec, SequenceDataset, SequenceSampler
from vmp.data.testing import demo_schema, make_store


@pytest.fixture
def store(tmp_path):
    """Episodes of 3, 5 and 2 steps (rows 0-2, 3-7, 8-9); action/state value = episode * 1000 + step."""
    return make_store(tmp_path / "s.zarr", [3, 5, 2], schema=demo_schema(image_size=8, state_dim=2, action_dim=2))


def _expected_windows():
    # n_obs_steps=2, horizon=4, n_action_steps=2 -> pad_before=1, pad_after=1; t0 in [-1, L - 4 + 1].
    # (episode, steps within the episode after edge clipping, padding mask)
    return [
        (0, [0, 0, 1, 2], [1, 0, 0, 0]),  # t0=-1
        (0, [0, 1, 2, 2], [0, 0, 0, 1]),  # t0=0
        (1, [0, 0, 1, 2], [1, 0, 0, 0]),  # t0=-1
        (1, [0, 1, 2, 3], [0, 0, 0, 0]),
        (1, [1, 2, 3, 4], [0, 0, 0, 0]),
        (1, [2, 3, 4, 4], [0, 0, 0, 1]),  # t0=2
        (2, [0, 0, 1, 1], [1, 0, 0, 1]),  # t0=-1: padded at both ends of the episode
    ]


def test_windows_match_hand_computed_example(store):
    sampler = SequenceSampler(store, keys=["agentview_image", "state"], n_obs_steps=2, horizon=4, n_action_steps=2)
    expected = _expected_windows()
    assert len(sampler) == len(expected)
    for i, (ep, steps, pad) in enumerate(expected):
        item = sampler[i]
        steps = np.array(steps)
        assert item["episode"] == ep
        np.testing.assert_array_equal(item["action"][:, 0], ep * 1000 + steps)
        np.testing.assert_array_equal(item["action"][:, 1], (ep * 1000 + steps + 0.01).astype(np.float32))
        np.testing.assert_array_equal(item["action_is_pad"], np.array(pad, dtype=bool))
        np.testing.assert_array_equal(item["obs"]["state"][:, 0], ep * 1000 + steps[:2])
        img = item["obs"]["agentview_image"]
        assert img.shape == (2, 8, 8, 3) and img.dtype == np.uint8
        np.testing.assert_array_equal(img[:, 0, 0, 0], steps[:2])  # channel 0 holds the step
        assert (img[..., 1] == ep).all()  # channel 1 holds the episode
    # Batched reads give the same windows.
    batch = sampler.sample_batch([6, 0, 3, 3])
    for j, i in enumerate([6, 0, 3, 3]):
        item = sampler[i]
        np.testing.assert_array_equal(batch["action"][j], item["action"])
        np.testing.assert_array_equal(batch["action_is_pad"][j], item["action_is_pad"])
        for k in item["obs"]:
            np.testing.assert_array_equal(batch["obs"][k][j], item["obs"][k])


def test_no_padding_and_short_episodes_skipped(store):
    sampler = SequenceSampler(store, keys=["state"], n_obs_steps=1, horizon=3, n_action_steps=1)
    # t0 in [0, L - 3]: 1 window in the 3-step episode, 3 in the 5-step one, none in the 2-step one.
    assert [sampler.window(i) for i in range(len(sampler))] == [(0, 0), (1, 0), (1, 1), (1, 2)]
    assert not any(sampler[i]["action_is_pad"].any() for i in range(len(sampler)))


def test_episode_split_is_seeded_and_disjoint(tmp_path):
    store = make_store(tmp_path / "s.zarr", [4] * 20, schema=demo_schema(image_size=8))
    kw = dict(keys=["state"], n_obs_steps=1, horizon=2, val_ratio=0.2, seed=3)
    train, val = SequenceSampler(store, split="train", **kw), SequenceSampler(store, split="val", **kw)
    assert len(val.episodes) == 4 and len(train.episodes) == 16
    assert set(train.episodes).isdisjoint(val.episodes)
    assert set(train.episodes) | set(val.episodes) == set(range(20))
    assert {train.window(i)[0] for i in range(len(train))} == set(train.episodes)
    assert {val.window(i)[0] for i in range(len(val))} == set(val.episodes)
    np.testing.assert_array_equal(SequenceSampler(store, split="val", **kw).episodes, val.episodes)
    other = SequenceSampler(store, split="val", **{**kw, "seed": 4})
    assert set(other.episodes) != set(val.episodes)


def test_goals_final_and_future(store):
    final = SequenceSampler(store, keys=["state"], n_obs_steps=2, horizon=4, n_action_steps=2,
                            goal_keys=["state", "agentview_image"])
    for i, (ep, _, _) in enumerate(_expected_windows()):
        last = [2, 4, 1][ep]
        item = final[i]
        assert item["goal"]["state"][0] == ep * 1000 + last
        assert item["goal"]["agentview_image"][0, 0, 0] == last
    future = SequenceSampler(store, keys=["state"], n_obs_steps=2, horizon=4, n_action_steps=2,
                             goal_keys=["state"], goal_mode="future", seed=1)
    for i in range(len(future)):
        ep, t0 = future.window(i)
        length = [3, 5, 2][ep]
        last_obs = max(t0 + 1, 0)
        step = future[i]["goal"]["state"][0] - ep * 1000
        assert (last_obs < step < length) or (step == length - 1 == last_obs)
        assert future[i]["goal"]["state"][0] == future[i]["goal"]["state"][0]  # seeded per item
        np.testing.assert_array_equal(future.sample_batch([i])["goal"]["state"][0], future[i]["goal"]["state"])


def test_bad_sampler_arguments(store):
    with pytest.raises(ValueError, match="n_action_steps must be in"):
        SequenceSampler(store, n_obs_steps=2, horizon=4, n_action_steps=4)
    with pytest.raises(ValueError, match="n_obs_steps <= horizon"):
        SequenceSampler(store, n_obs_steps=3, horizon=2)
    with pytest.raises(KeyError, match="key 'wrist_image' is not in store"):
        SequenceSampler(store, keys=["wrist_image"])
    with pytest.raises(ValueError, match="split must be one of"):
        SequenceSampler(store, split="test")
    with pytest.raises(ValueError, match="yields no windows"):
        SequenceSampler(store, horizon=50)
    with pytest.raises(IndexError, match="out of range"):
        SequenceSampler(store)[1000]


def test_dataset_layout_transform_and_dataloader_workers(tmp_path):
    schema = {"agentview_image": KeySpec((8, 10, 3), "uint8"), "agentview_depth": KeySpec((8, 10), "uint16"),
              "state": KeySpec((2,), "float32"), "action": KeySpec((3,), "float32")}
    store = make_store(tmp_path / "s.zarr", [6, 7, 8, 9], schema=schema)
    sampler = SequenceSampler(store, keys=["agentview_image", "agentview_depth", "state"], n_obs_steps=2, horizon=4,
                              n_action_steps=2, goal_keys=["agentview_image"])
    calls = []

    def flip(item):
        calls.append(1)
        item["obs"]["agentview_image"] = item["obs"]["agentview_image"].flip(-1)
        return item

    ds = SequenceDataset(sampler, transform=flip)
    item = ds[5]
    raw = sampler[5]
    assert item["obs"]["agentview_image"].shape == (2, 3, 8, 10) and item["obs"]["agentview_image"].dtype == torch.uint8
    np.testing.assert_array_equal(item["obs"]["agentview_image"].flip(-1).numpy(), np.moveaxis(raw["obs"]["agentview_image"], -1, 1))
    assert item["obs"]["agentview_depth"].shape == (2, 1, 8, 10) and item["obs"]["agentview_depth"].dtype == torch.float32
    assert item["obs"]["state"].dtype == torch.float32 and item["action"].shape == (4, 3)
    assert item["action_is_pad"].dtype == torch.bool and item["goal"]["agentview_image"].shape == (3, 8, 10)
    assert calls

    loader = DataLoader(SequenceDataset(sampler), batch_size=5, shuffle=False, num_workers=2)
    batches = list(loader)
    assert sum(b["action"].shape[0] for b in batches) == len(sampler)
    b = batches[1]
    assert b["obs"]["agentview_image"].shape == (5, 2, 3, 8, 10)
    for j in range(5):
        ref = SequenceDataset(sampler)[5 + j]
        torch.testing.assert_close(b["obs"]["agentview_image"][j], ref["obs"]["agentview_image"])
        torch.testing.assert_close(b["action"][j], ref["action"])
        torch.testing.assert_close(b["goal"]["agentview_image"][j], ref["goal"]["agentview_image"])
        assert b["episode"][j] == ref["episode"]


def test_sampler_ignores_uncommitted_rows(tmp_path):
    schema = demo_schema(image_size=8, state_dim=2, action_dim=2)
    make_store(tmp_path / "s.zarr", [3, 3], schema=schema)
    # Simulate a killed writer: rows beyond the committed end.
    with EpisodeStore.open(tmp_path / "s.zarr", mode="a") as w:
        w.array("action").resize((10, 2))
        w.array("action")[6:10] = 99.0
    sampler = SequenceSampler(EpisodeStore.open(tmp_path / "s.zarr"), keys=["state"], horizon=2)
    assert len(sampler) == 4
    assert all((sampler[i]["action"] != 99).all() for i in range(len(sampler)))


def test_fast_frame_reads_match_zarr(tmp_path):
    """The direct chunk-file reader returns exactly what zarr returns, for every image dtype in use."""
    from vmp.data.sampler import FrameReader

    rng = np.random.default_rng(0)
    schema = {"agentview_image": KeySpec((6, 5, 3), "uint8"), "a_depth": KeySpec((6, 5), "float32"),
              "b_depth": KeySpec((6, 5), "uint16"), "action": KeySpec((2,), "float32")}
    with EpisodeStore.create(tmp_path / "s.zarr", schema, {"task": "t", "control_hz": 10}) as w:
        for n in (5, 8, 3):
            w.append_episode({"agentview_image": rng.integers(0, 256, (n, 6, 5, 3), dtype=np.uint8),
                              "a_depth": rng.uniform(0, 5, (n, 6, 5)).astype(np.float32),
                              "b_depth": rng.integers(0, 60000, (n, 6, 5), dtype=np.uint16),
                              "action": rng.normal(size=(n, 2)).astype(np.float32)})
    store = EpisodeStore.open(tmp_path / "s.zarr")
    kw = dict(keys=["agentview_image", "a_depth", "b_depth"], n_obs_steps=3, horizon=4, n_action_steps=2)
    fast, slow = SequenceSampler(store, **kw), SequenceSampler(store, fast_reads=False, **kw)
    assert all(isinstance(fast._arrays()[k], FrameReader) for k in kw["keys"])
    assert not any(isinstance(slow._arrays()[k], FrameReader) for k in kw["keys"])
    idx = np.arange(len(fast))
    a, b = fast.sample_batch(idx), slow.sample_batch(idx)
    for k in kw["keys"]:
        np.testing.assert_array_equal(a["obs"][k], b["obs"][k], err_msg=k)
        for i in idx:
            np.testing.assert_array_equal(fast[int(i)]["obs"][k], a["obs"][k][i], err_msg=k)
    np.testing.assert_array_equal(a["obs"]["b_depth"][:, -1], store.array("b_depth")[:][
        [fast.episode_starts[e] + min(max(t + 2, 0), fast.episode_lengths[e] - 1) for e, t in map(fast.window, idx)]])
