"""MixedSequenceDataset: weighted, seeded mixing of several stores; layout checks; the batched path."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from vmp.data import MixedSequenceDataset, SequenceDataset, SequenceSampler
from vmp.data.testing import demo_schema, make_store

KW = dict(keys=["agentview_image", "state"], n_obs_steps=2, horizon=4, n_action_steps=2)


def _dataset(path, lengths, image_size=8, **kw):
    store = make_store(path, lengths, schema=demo_schema(image_size=image_size, state_dim=2, action_dim=2))
    return SequenceDataset(SequenceSampler(store, **{**KW, **kw}))


@pytest.fixture
def members(tmp_path):
    # 4 episodes of 6 steps -> 4 x 5 = 20 windows; 2 episodes of 9 steps -> 2 x 8 = 16 windows.
    return [_dataset(tmp_path / "a.zarr", [6] * 4), _dataset(tmp_path / "b.zarr", [9] * 2)]


def test_items_follow_the_weights_and_the_table_is_seeded(members):
    a, b = members
    mixed = MixedSequenceDataset(members, weights=[2.0, 3.0], seed=5)
    assert len(mixed) == len(a) + len(b) == 36
    slots = [mixed.slot(i) for i in range(len(mixed))]
    source = np.array([m for m, _ in slots])
    assert (source == 0).sum() == 14 and (source == 1).sum() == 22  # shares 14.4 / 21.6: the spare slot to 0.6
    # 22 slots for 16 windows: every window of member 1 appears once or twice; member 0 shows 14 distinct windows.
    counts = np.bincount([j for m, j in slots if m == 1], minlength=len(b))
    assert counts.min() == 1 and counts.max() == 2
    assert len({j for m, j in slots if m == 0}) == 14
    for i in (0, 7, 35):
        m, j = mixed.slot(i)
        item, ref = mixed[i], members[m][j]
        assert int(item["source"]) == m and item["source"].dtype == torch.int64
        torch.testing.assert_close(item["obs"]["agentview_image"], ref["obs"]["agentview_image"])
        torch.testing.assert_close(item["action"], ref["action"])
    assert [MixedSequenceDataset(members, [2.0, 3.0], seed=5).slot(i) for i in range(36)] == slots
    assert [MixedSequenceDataset(members, [2.0, 3.0], seed=6).slot(i) for i in range(36)] != slots
    longer = MixedSequenceDataset(members, [1.0, 1.0], length=100)
    assert len(longer) == 100 and sum(longer.slot(i)[0] == 1 for i in range(100)) == 50
    with pytest.raises(IndexError, match="out of range"):
        mixed.slot(36)


def test_batched_path_groups_by_member_and_keeps_order(members, monkeypatch):
    mixed = MixedSequenceDataset(members, weights=[2.0, 1.0])
    calls = []
    for m, ds in enumerate(members):
        orig = ds.__getitems__
        monkeypatch.setattr(ds, "__getitems__", lambda idx, m=m, orig=orig: calls.append(m) or orig(idx))
    indices = list(range(12))
    items = mixed.__getitems__(indices)
    assert sorted(calls) == sorted(set(calls)) == [0, 1]  # one batched read per member present
    for i, item in zip(indices, items):
        ref = mixed[i]
        assert int(item["source"]) == int(ref["source"]) and int(item["episode"]) == int(ref["episode"])
        torch.testing.assert_close(item["obs"]["agentview_image"], ref["obs"]["agentview_image"])
        torch.testing.assert_close(item["action"], ref["action"])
    batch = next(iter(DataLoader(mixed, batch_size=12, shuffle=False)))
    assert batch["obs"]["agentview_image"].shape == (12, 2, 3, 8, 8)
    assert batch["source"].tolist() == [mixed.slot(i)[0] for i in indices]
    assert batch["has_action"].dtype == torch.bool and batch["has_action"].all()


def test_refuses_members_that_disagree_and_bad_weights(tmp_path, members):
    with pytest.raises(ValueError, match=r"datasets\[1\].*disagrees with datasets\[0\].*on horizon: 6 vs 4"):
        MixedSequenceDataset([members[0], _dataset(tmp_path / "h.zarr", [9], horizon=6)], [1, 1])
    with pytest.raises(ValueError, match="on n_obs_steps: 1 vs 2"):
        MixedSequenceDataset([members[0], _dataset(tmp_path / "o.zarr", [9], n_obs_steps=1)], [1, 1])
    with pytest.raises(ValueError, match=r"on observation keys: \['state'\] vs \['agentview_image', 'state'\]"):
        MixedSequenceDataset([members[0], _dataset(tmp_path / "k.zarr", [9], keys=["state"])], [1, 1])
    with pytest.raises(ValueError, match=r"on observation \(kind, shape\).*\(16, 16, 3\).*\(8, 8, 3\)"):
        MixedSequenceDataset([members[0], _dataset(tmp_path / "s.zarr", [9], image_size=16)], [1, 1])
    for bad in ([1.0, 0.0], [1.0, -2.0], [1.0, float("nan")]):
        with pytest.raises(ValueError, match="weights must be positive"):
            MixedSequenceDataset(members, bad)
    with pytest.raises(ValueError, match="2 datasets; give one weight per dataset"):
        MixedSequenceDataset(members, [1.0])
    with pytest.raises(TypeError, match=r"datasets\[1\] must be a SequenceDataset"):
        MixedSequenceDataset([members[0], members[1].sampler], [1, 1])
