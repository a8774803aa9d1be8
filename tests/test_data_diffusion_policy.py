"""diffusion_policy replay buffers (zarr v2, Push-T layout) open as they are: read-only, inferred schema, sampled."""

from __future__ import annotations

import zipfile

import numpy as np
import pytest
import torch

from vmp.data import EpisodeStore, Normalizer, SequenceDataset, SequenceSampler
from vmp.data.cli import main, store_info, validate_store
from vmp.data.testing import write_diffusion_policy_store

LENGTHS = [9, 12, 6]


@pytest.fixture
def pusht(tmp_path):
    path = tmp_path / "pusht_cchi_v7_replay.zarr"
    arrays = write_diffusion_policy_store(path, LENGTHS, image_size=32)
    assert (path / ".zgroup").exists() and (path / "data" / "img" / ".zarray").exists()  # really zarr v2
    return path, arrays


def test_opens_with_inferred_schema(pusht):
    path, arrays = pusht
    store = EpisodeStore.open(path)
    assert store.legacy and store.n_episodes == 3 and store.n_steps == sum(LENGTHS)
    np.testing.assert_array_equal(store.episode_ends, np.cumsum(LENGTHS))
    assert sorted(store.keys) == ["action", "img", "keypoint", "n_contacts", "state"]
    assert store.kind("img") == "rgb" and store.kind("keypoint") == "low_dim"
    assert store.schema["img"].shape == (32, 32, 3) and store.schema["img"].dtype == "float32"
    assert store.schema["keypoint"].shape == (9, 2) and store.schema["action"].shape == (2,)
    assert all(s.meaning.startswith("inferred") for s in store.schema.values())
    ep = store.episode(1)
    np.testing.assert_array_equal(ep["keypoint"], arrays["keypoint"][9:21])
    np.testing.assert_array_equal(ep["img"], arrays["img"][9:21])
    assert store.episode_text(0) == {}
    with pytest.raises(ValueError, match="diffusion_policy replay buffer.*read-only"):
        EpisodeStore.open(path, mode="a")
    assert not (path / ".append.lock").exists()  # a refused append leaves the foreign store untouched
    assert EpisodeStore.open(path).n_episodes == 3


def test_info_reports_inference_and_validates(pusht, capsys):
    path, _ = pusht
    info = store_info(EpisodeStore.open(path))
    assert info["n_episodes"] == 3 and info["keys"]["img"]["kind"] == "rgb"
    assert any("control_hz unknown" in n for n in info["inferred"])
    assert any("task inferred" in n for n in info["inferred"])
    assert len(info["action_stats"]["min"]) == 2 and info["compression_ratio"] > 0
    assert validate_store(path) == []
    assert main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    assert "diffusion_policy" in out and "inferred: schema['img']" in out and "episodes: 3" in out
    assert main(["validate", str(path)]) == 0


def test_samples_and_trains_without_conversion(pusht):
    path, arrays = pusht
    sampler = SequenceSampler(path, keys=["img", "state"], n_obs_steps=2, horizon=8,
                              n_action_steps=4)
    # Windows per episode: t0 in [-1, L - 8 + 3] -> L - 3 windows.
    assert len(sampler) == sum(length - 3 for length in LENGTHS)
    ep, t0 = sampler.window(0)
    assert (ep, t0) == (0, -1)
    item = sampler[0]
    np.testing.assert_array_equal(item["obs"]["img"], arrays["img"][[0, 0]])
    np.testing.assert_array_equal(item["action"], arrays["action"][[0, 0, 1, 2, 3, 4, 5, 6]])
    cached = SequenceSampler(path, keys=["img", "state"], n_obs_steps=2, horizon=8, n_action_steps=4, cache_keys=["img"])
    np.testing.assert_array_equal(cached.sample_batch(np.arange(len(cached)))["obs"]["img"],
                                  sampler.sample_batch(np.arange(len(sampler)))["obs"]["img"])
    ds = SequenceDataset(sampler)
    t = ds[0]
    assert t["obs"]["img"].dtype == torch.uint8 and t["obs"]["img"].shape == (2, 3, 32, 32)
    np.testing.assert_array_equal(t["obs"]["img"][1].numpy(), np.moveaxis(arrays["img"][0], -1, 0).astype(np.uint8))
    norm = Normalizer.from_store(EpisodeStore.open(path), {"action": "minmax", "state": "minmax"})
    a = norm.normalize("action", t["action"])
    assert a.min() >= -1 - 1e-5 and a.max() <= 1 + 1e-5


def test_zip_store_opens(pusht, tmp_path):
    path, arrays = pusht
    zpath = tmp_path / "pusht.zarr.zip"
    with zipfile.ZipFile(zpath, "w", compression=zipfile.ZIP_STORED) as zf:
        for f in sorted(path.rglob("*")):
            if f.is_file():
                zf.write(f, f.relative_to(path).as_posix())
    store = EpisodeStore.open(zpath)
    assert store.legacy and store.n_episodes == 3
    np.testing.assert_array_equal(store.episode(2)["state"], arrays["state"][21:])
