"""SequenceSampler / SequenceDataset: hand-computed windows with padding at both ends, splits, goals, DataLoader."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from vmp.data import EpisodeStore, KeySpec, SequenceDataset, SequenceSampler
from vmp.data.testing import demo_schema, make_store, synthetic_episode


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


# ---------------------------------------------------------------------- future frames, action-free episodes, train keys, text

PHASES = ["reach", "grasp", "lift"]


def _rich_store(path, lengths, action_free=(), extra_schema=None, text=True):
    """demo schema + int16 ``phase`` (step * 3 // L) and per-episode language/reasoning; ``action_free`` episodes lack actions."""
    schema = {**demo_schema(image_size=8, state_dim=2, action_dim=2), "phase": KeySpec((), "int16", ", ".join(PHASES)),
              **(extra_schema or {})}
    with EpisodeStore.create(path, schema, {"task": "t", "control_hz": 10, "phase_names": PHASES}) as w:
        for e, n in enumerate(lengths):
            ep = synthetic_episode(schema, e, n)
            ep["phase"] = (np.arange(n) * 3 // n).astype(np.int16)
            if e in action_free:
                del ep["action"]
            w.append_episode(ep, text={"language": f"task {e}", "reasoning": f"reach; grasp; lift ({e})"} if text else None,
                             action_free=e in action_free)
    return EpisodeStore.open(path)


def test_future_frames_hand_computed(store):
    sampler = SequenceSampler(store, keys=["state"], n_obs_steps=2, horizon=4, n_action_steps=2,
                              future_keys=["agentview_image", "state"], future_offsets=[1, 3])
    # newest obs step = t0 + 1; future steps newest + [1, 3], clipped to the episode's last step and flagged past it.
    expected = [(0, [1, 2], [0, 1]), (0, [2, 2], [0, 1]), (1, [1, 3], [0, 0]), (1, [2, 4], [0, 0]),
                (1, [3, 4], [0, 1]), (1, [4, 4], [0, 1]), (2, [1, 1], [0, 1])]
    assert len(sampler) == len(expected)
    for i, (ep, steps, pad) in enumerate(expected):
        item = sampler[i]
        assert item["episode"] == ep
        np.testing.assert_array_equal(item["future"]["state"][:, 0], ep * 1000 + np.array(steps))
        img = item["future"]["agentview_image"]
        assert img.shape == (2, 8, 8, 3) and img.dtype == np.uint8
        np.testing.assert_array_equal(img[:, 0, 0, 0], steps)
        assert (img[..., 1] == ep).all()
        np.testing.assert_array_equal(item["future_is_pad"], np.array(pad, dtype=bool))
        assert "agentview_image" not in item["obs"]
    batch = sampler.sample_batch([6, 0, 4, 4])
    assert batch["future"]["agentview_image"].shape == (4, 2, 8, 8, 3) and batch["future_is_pad"].shape == (4, 2)
    for j, i in enumerate([6, 0, 4, 4]):
        for k in ("agentview_image", "state"):
            np.testing.assert_array_equal(batch["future"][k][j], sampler[i]["future"][k])
        np.testing.assert_array_equal(batch["future_is_pad"][j], sampler[i]["future_is_pad"])


def test_future_frames_batch_reads_each_frame_once(tmp_path):
    from vmp.data.sampler import FrameReader

    store = make_store(tmp_path / "s.zarr", [3, 5, 2], schema=demo_schema(image_size=8, state_dim=2, action_dim=2),
                       random_images=True)
    sampler = SequenceSampler(store, keys=["state"], n_obs_steps=2, horizon=4, n_action_steps=2,
                              future_keys=["agentview_image"], future_offsets=np.array([1, 2]))
    reader = sampler._arrays()["agentview_image"]
    assert isinstance(reader, FrameReader)
    calls = []
    read = reader.read
    reader.read = lambda rows: calls.append(rows.tolist()) or read(rows)
    batch = sampler.sample_batch(np.arange(len(sampler)))
    assert len(calls) == 1 and len(calls[0]) == len(set(calls[0]))  # one read, no frame twice
    np.testing.assert_array_equal(batch["future"]["agentview_image"][:, :, 0, 0, 0],
                                  np.stack([sampler[i]["future"]["agentview_image"][:, 0, 0, 0] for i in range(len(sampler))]))


def test_future_frames_in_dataset_and_dataloader(store):
    sampler = SequenceSampler(store, keys=["agentview_image"], n_obs_steps=2, horizon=4, n_action_steps=2,
                              future_keys=["agentview_image"], future_offsets=[2])
    ds = SequenceDataset(sampler)
    item = ds[3]
    fut = item["future"]["agentview_image"]
    assert fut.shape == (1, 3, 8, 8) and fut.dtype == torch.uint8 and item["future_is_pad"].dtype == torch.bool
    np.testing.assert_array_equal(fut.numpy(), np.moveaxis(sampler[3]["future"]["agentview_image"], -1, 1))
    b = next(iter(DataLoader(ds, batch_size=4, shuffle=False)))
    assert b["future"]["agentview_image"].shape == (4, 1, 3, 8, 8) and b["future_is_pad"].shape == (4, 1)
    torch.testing.assert_close(b["future"]["agentview_image"][3], fut)


@pytest.mark.parametrize("offsets, match", [([0], "positive ints"), ([-2], "positive ints"), ([1.5], "positive ints"),
                                            ([True], "positive ints"), ([2, 2], "strictly increasing"),
                                            ([3, 1], "strictly increasing")])
def test_bad_future_offsets(store, offsets, match):
    with pytest.raises(ValueError, match=match):
        SequenceSampler(store, keys=["state"], future_keys=["state"], future_offsets=offsets)


def test_bad_future_keys(store):
    with pytest.raises(KeyError, match="key 'wrist_image' is not in store"):
        SequenceSampler(store, keys=["state"], future_keys=["wrist_image"], future_offsets=[1])
    with pytest.raises(ValueError, match="future_keys and future_offsets go together"):
        SequenceSampler(store, keys=["state"], future_keys=["state"])
    with pytest.raises(ValueError, match="future_keys and future_offsets go together"):
        SequenceSampler(store, keys=["state"], future_offsets=[1])


def test_action_free_windows_are_fully_padded(tmp_path):
    store = _rich_store(tmp_path / "s.zarr", [5, 6, 5], action_free=(1,))
    np.testing.assert_array_equal(store.has_action, [True, False, True])
    sampler = SequenceSampler(store, keys=["state", "agentview_image"], n_obs_steps=2, horizon=4, n_action_steps=2,
                              split="all", future_keys=["state"], future_offsets=[1])
    for i in range(len(sampler)):
        item = sampler[i]
        ep, t0 = sampler.window(i)
        assert item["has_action"] is (ep != 1)
        if ep == 1:
            assert item["action_is_pad"].all()
            np.testing.assert_array_equal(item["obs"]["state"][:, 0], 1000 + np.clip(t0 + np.arange(2), 0, 5))  # obs still real
            assert not item["future_is_pad"].all()  # future frames of video are real targets
        else:
            assert not item["action_is_pad"].all()
    batch = sampler.sample_batch(np.arange(len(sampler)))
    np.testing.assert_array_equal(batch["has_action"], batch["episode"] != 1)
    # The padding-masked action loss that the heads use is exactly zero on action-free windows.
    free = batch["episode"] == 1
    is_pad = torch.from_numpy(batch["action_is_pad"][free])
    err = (torch.randn(int(free.sum()), 4, 2) - torch.from_numpy(batch["action"][free])).pow(2).mean(-1)
    keep = (~is_pad).float()
    assert (err * keep).sum() / keep.sum().clamp(min=1.0) == 0.0
    b = next(iter(DataLoader(SequenceDataset(sampler), batch_size=len(sampler), shuffle=False)))
    assert b["has_action"].dtype == torch.bool and b["has_action"].tolist() == (b["episode"] != 1).tolist()
    assert b["action_is_pad"][b["episode"] == 1].all()


def test_store_without_action_flags_samples_as_before(tmp_path):
    """A store written before action flags existed (no meta/has_action) has actions everywhere and samples the same."""
    import shutil

    make_store(tmp_path / "s.zarr", [3, 5, 2], schema=demo_schema(image_size=8, state_dim=2, action_dim=2))
    kw = dict(keys=["agentview_image", "state"], n_obs_steps=2, horizon=4, n_action_steps=2)
    before = SequenceSampler(EpisodeStore.open(tmp_path / "s.zarr"), **kw).sample_batch(np.arange(7))
    shutil.rmtree(tmp_path / "s.zarr" / "meta" / "has_action")
    store = EpisodeStore.open(tmp_path / "s.zarr")
    np.testing.assert_array_equal(store.has_action, [True, True, True])
    after = SequenceSampler(store, **kw).sample_batch(np.arange(7))
    for k in ("action", "action_is_pad", "episode", "has_action"):
        np.testing.assert_array_equal(after[k], before[k], err_msg=k)
    np.testing.assert_array_equal(after["action_is_pad"], [p for _, _, p in _expected_windows()])
    for k in kw["keys"]:
        np.testing.assert_array_equal(after["obs"][k], before["obs"][k], err_msg=k)


def test_train_keys_windowed_like_the_action(tmp_path):
    extra = {"critic": KeySpec((2,), "float32", "privileged value labels"), "label": KeySpec((), "int64", "class")}
    store = _rich_store(tmp_path / "s.zarr", [3, 5], extra_schema=extra)
    sampler = SequenceSampler(store, n_obs_steps=2, horizon=4, n_action_steps=2, split="all", train_keys=["critic", "label"])
    assert "critic" not in sampler.keys and "label" not in sampler.keys  # default obs keys leave them out
    for i in range(len(sampler)):
        item = sampler[i]
        assert set(item["train"]) == {"critic", "label"} and not {"critic", "label"} & set(item["obs"])
        assert item["train"]["critic"].shape == (4, 2) and item["train"]["label"].shape == (4,)
        # synthetic values encode (episode, step) identically for every low-dim key: same rows as the action
        np.testing.assert_array_equal(item["train"]["critic"], item["action"])
        np.testing.assert_array_equal(item["train"]["label"], item["action"][:, 0].astype(np.int64))
    batch = sampler.sample_batch([0, 4])
    np.testing.assert_array_equal(batch["train"]["critic"], batch["action"])
    item = SequenceDataset(sampler)[0]
    assert item["train"]["critic"].dtype == torch.float32 and item["train"]["label"].dtype == torch.int64
    with pytest.raises(ValueError, match=r"train_keys \['state'\] are also observation"):
        SequenceSampler(store, keys=["state"], train_keys=["state"])
    with pytest.raises(ValueError, match=r"train_keys \['critic'\] are also observation/goal"):
        SequenceSampler(store, keys=["state"], goal_keys=["critic"], train_keys=["critic"])
    with pytest.raises(KeyError, match="key 'nope' is not in store"):
        SequenceSampler(store, keys=["state"], train_keys=["nope"])


def test_text_keys_phase_reasoning_language(tmp_path):
    store = _rich_store(tmp_path / "s.zarr", [6, 9])
    sampler = SequenceSampler(store, keys=["state"], n_obs_steps=2, horizon=4, n_action_steps=2, split="all",
                              text_keys=["phase", "reasoning", "language"])
    phases = store.array("phase")[: store.n_steps]
    seen = set()
    for i in range(len(sampler)):
        ep, t0 = sampler.window(i)
        item = sampler[i]
        newest = sampler.episode_starts[ep] + t0 + 1
        assert item["text"] == {"phase": PHASES[phases[newest]], "reasoning": f"reach; grasp; lift ({ep})",
                                "language": f"task {ep}"}
        assert "language" not in item["obs"]
        seen.add(item["text"]["phase"])
    assert seen == set(PHASES)
    idx = np.arange(len(sampler))
    batch = sampler.sample_batch(idx)
    assert batch["text"]["phase"] == [sampler[i]["text"]["phase"] for i in idx]
    assert batch["text"]["language"] == [f"task {e}" for e in batch["episode"]]
    b = next(iter(DataLoader(SequenceDataset(sampler), batch_size=5, shuffle=False)))
    assert b["text"]["phase"] == batch["text"]["phase"][:5] and b["text"]["reasoning"] == batch["text"]["reasoning"][:5]


def test_text_keys_clear_errors(tmp_path, store):
    import zarr

    with pytest.raises(ValueError, match=r"text_keys \['goal'\] are not supported"):
        SequenceSampler(store, keys=["state"], text_keys=["goal"])
    with pytest.raises(KeyError, match="needs the store's int16 'phase' array"):
        SequenceSampler(store, keys=["state"], text_keys=["phase"])
    with pytest.raises(ValueError, match="have no 'reasoning' text"):
        SequenceSampler(store, keys=["state"], text_keys=["reasoning"])
    _rich_store(tmp_path / "r.zarr", [4, 4])
    del zarr.open_group(str(tmp_path / "r.zarr"), mode="r+").attrs["phase_names"]
    with pytest.raises(KeyError, match="needs the store attr 'phase_names'"):
        SequenceSampler(EpisodeStore.open(tmp_path / "r.zarr"), keys=["state"], text_keys=["phase"])
    schema = demo_schema(image_size=8, state_dim=2, action_dim=2)
    with EpisodeStore.create(tmp_path / "l.zarr", schema, {"task": "t", "control_hz": 10}) as w:
        w.append_episode(synthetic_episode(schema, 0, 4), text={"reasoning": ["reach", "grasp"]})
    with pytest.raises(ValueError, match="episode 0's 'reasoning' text is a list, expected a string"):
        SequenceSampler(tmp_path / "l.zarr", keys=["state"], text_keys=["reasoning"])


def test_frame_reader_reads_both_chunk_key_layouts(tmp_path):
    """New stores name frame chunks c.<t>.0.0.0 in one folder; stores written before, c/<t>/0/0/0: both read fast."""
    import zarr

    from vmp.data.sampler import FrameReader

    frames = np.random.default_rng(0).integers(0, 256, (5, 8, 8, 3), dtype=np.uint8)
    for separator in (".", "/"):
        root = zarr.open_group(tmp_path / separator.replace(".", "dot").replace("/", "slash"), mode="w")
        arr = root.create_group("data").create_array(
            "cam_image", shape=frames.shape, dtype="uint8", chunks=(1, 8, 8, 3), fill_value=0,
            compressors=zarr.codecs.BloscCodec(cname="zstd", clevel=3), chunk_key_encoding={"name": "default", "separator": separator})
        arr[:] = frames
        reader = FrameReader.for_array(root.store.root, "cam_image", arr)
        assert reader is not None and reader.separator == separator
        assert np.array_equal(reader.read(np.array([4, 0, 2])), frames[[4, 0, 2]])
