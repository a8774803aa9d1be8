"""Importers: robomimic HDF5 (written here in robomimic's layout) to an ordinary store; LeRobot's missing-extra error."""

from __future__ import annotations

import importlib.util
import json

import h5py
import numpy as np
import pytest

from vmp.data import EpisodeStore, SequenceSampler
from vmp.data.cli import main, validate_store
from vmp.data.convert.robomimic import import_robomimic

DEMOS = {"demo_0": 5, "demo_1": 7, "demo_10": 4, "demo_2": 6}  # numeric order: 0, 1, 2, 10


def _write_robomimic(path, with_depth=True):
    rng = np.random.default_rng(0)
    env_args = {"env_name": "Lift", "type": 1, "env_kwargs": {"control_freq": 20, "robots": ["Panda"]}}
    written = {}
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        data.attrs["env_args"] = json.dumps(env_args)
        data.attrs["total"] = sum(DEMOS.values())
        for name, n in DEMOS.items():
            g = data.create_group(name)
            g.attrs["num_samples"] = n
            obs = {"agentview_image": rng.integers(0, 256, (n, 12, 12, 3), dtype=np.uint8),
                   "robot0_eef_pos": rng.normal(size=(n, 3)),
                   "object": rng.normal(size=(n, 10))}
            if with_depth:
                obs["agentview_depth"] = rng.uniform(0, 2, (n, 12, 12, 1)).astype(np.float32)
            for k, v in obs.items():
                g.create_dataset(f"obs/{k}", data=v)
                g.create_dataset(f"next_obs/{k}", data=v)
            g.create_dataset("actions", data=rng.uniform(-1, 1, (n, 7)))
            g.create_dataset("rewards", data=np.zeros(n))
            g.create_dataset("dones", data=np.zeros(n, dtype=np.int64))
            g.create_dataset("states", data=rng.normal(size=(n, 32)))
            written[name] = {**obs, "actions": g["actions"][:]}
        f.create_dataset("mask/train", data=np.array([b"demo_0", b"demo_1", b"demo_10"]))
        f.create_dataset("mask/valid", data=np.array([b"demo_2"]))
    return written


def test_import_robomimic(tmp_path):
    written = _write_robomimic(tmp_path / "low_dim.hdf5")
    with import_robomimic(tmp_path / "low_dim.hdf5", tmp_path / "lift.zarr") as store:
        assert store.n_episodes == 4
    store = EpisodeStore.open(tmp_path / "lift.zarr")
    order = ["demo_0", "demo_1", "demo_2", "demo_10"]
    np.testing.assert_array_equal(store.episode_lengths, [DEMOS[n] for n in order])
    assert store.attrs["task"] == "Lift" and store.attrs["control_hz"] == 20.0
    assert store.attrs["source"]["env_args"]["env_kwargs"]["robots"] == ["Panda"]
    assert store.attrs["splits"] == {"train": [0, 1, 3], "valid": [2]}
    assert store.schema["robot0_eef_pos"].dtype == "float32" and store.schema["action"].shape == (7,)
    assert store.kind("agentview_image") == "rgb" and store.schema["agentview_depth"].shape == (12, 12)
    for i, name in enumerate(order):
        ep = store.episode(i)
        src = written[name]
        np.testing.assert_array_equal(ep["agentview_image"], src["agentview_image"])
        np.testing.assert_allclose(ep["robot0_eef_pos"], src["robot0_eef_pos"].astype(np.float32))
        np.testing.assert_array_equal(ep["agentview_depth"], src["agentview_depth"][..., 0])
        np.testing.assert_allclose(ep["action"], src["actions"].astype(np.float32))
        assert store.episode_text(i) == {"source_demo": name}
    assert validate_store(tmp_path / "lift.zarr") == []
    sampler = SequenceSampler(store, keys=["agentview_image", "robot0_eef_pos"], n_obs_steps=2, horizon=4, n_action_steps=2)
    assert len(sampler) == sum(n - 1 for n in DEMOS.values())


def test_import_robomimic_subset_and_errors(tmp_path):
    _write_robomimic(tmp_path / "d.hdf5", with_depth=False)
    with import_robomimic(tmp_path / "d.hdf5", tmp_path / "a.zarr", obs_keys=["object"]) as store:
        assert store.keys == ["object", "action"]
    with pytest.raises(KeyError, match="obs key 'robot0_joint_pos' not in data/demo_0/obs"):
        import_robomimic(tmp_path / "d.hdf5", tmp_path / "b.zarr", obs_keys=["robot0_joint_pos"])
    with pytest.raises(FileExistsError):
        import_robomimic(tmp_path / "d.hdf5", tmp_path / "a.zarr")
    with h5py.File(tmp_path / "bad.hdf5", "w") as f:
        f.create_group("data")
    with pytest.raises(ValueError, match="no 'demo_<i>' groups"):
        import_robomimic(tmp_path / "bad.hdf5", tmp_path / "c.zarr")
    with pytest.raises(FileNotFoundError):
        import_robomimic(tmp_path / "missing.hdf5", tmp_path / "c.zarr")


def test_import_robomimic_cli(tmp_path, capsys):
    _write_robomimic(tmp_path / "d.hdf5", with_depth=False)
    assert main(["import-robomimic", str(tmp_path / "d.hdf5"), str(tmp_path / "out.zarr"), "--obs-keys", "object"]) == 0
    assert "imported 4 episodes" in capsys.readouterr().out
    assert EpisodeStore.open(tmp_path / "out.zarr").keys == ["object", "action"]


@pytest.mark.skipif(importlib.util.find_spec("lerobot") is not None, reason="lerobot is installed")
def test_lerobot_import_without_extra_names_the_fix(tmp_path):
    from vmp.data.convert.lerobot import import_lerobot

    with pytest.raises(ImportError, match=r"pip install 'vmp\[lerobot\]'"):
        import_lerobot(tmp_path / "ds", tmp_path / "out.zarr")


def test_a_failed_or_refused_lerobot_export_leaves_the_dataset_already_there(tmp_path, monkeypatch):
    """--overwrite replaces the old export only once the new one is written: a bad key or a crash part-way (here a
    dataset writer that fails on the second episode) keeps the old dataset as it was, and nothing half-written."""
    from vmp.data.convert import lerobot
    from vmp.data.testing import demo_schema, synthetic_episode

    class FakeDataset:  # the part of LeRobotDataset the exporter drives, writing one file per episode
        fail_at: int | None = None

        @classmethod
        def create(cls, repo_id, fps, features, root, use_videos):
            ds = cls()
            ds.root, ds.n = root, 0
            (root / "meta").mkdir(parents=True)
            return ds

        def add_frame(self, frame):
            pass

        def save_episode(self):
            if self.n == FakeDataset.fail_at:
                raise OSError("no space left on device")
            (self.root / f"episode_{self.n}").write_text("x")
            self.n += 1

        def finalize(self):
            (self.root / "info.json").write_text("{}")

    monkeypatch.setattr(lerobot, "_require_lerobot", lambda: FakeDataset)
    schema = demo_schema(image_size=32, state_dim=3, action_dim=2)
    with EpisodeStore.create(tmp_path / "s.zarr", schema, {"task": "toy", "control_hz": 20}) as store:
        for e in range(3):
            store.append_episode(synthetic_episode(schema, e, 4))
    out = tmp_path / "export"
    lerobot.export_lerobot(tmp_path / "s.zarr", out)
    first = sorted(p.name for p in out.iterdir())
    assert first == ["episode_0", "episode_1", "episode_2", "info.json", "meta"]
    with pytest.raises(KeyError, match="not observation keys"):
        lerobot.export_lerobot(tmp_path / "s.zarr", out, keys=["nope"], overwrite=True)
    FakeDataset.fail_at = 1
    with pytest.raises(OSError, match="no space left"):
        lerobot.export_lerobot(tmp_path / "s.zarr", out, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == first  # the old export, untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export", "s.zarr"]  # no partial export left behind
    FakeDataset.fail_at = None
    (out / "stale").write_text("from the old export")
    lerobot.export_lerobot(tmp_path / "s.zarr", out, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == first  # replaced whole: the old export's files are gone
