"""LeRobot v3 import (runs only in the `make test-lerobot` environment, where lerobot is importable)."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.lerobot


def test_import_lerobot_v3_dataset(tmp_path):
    pytest.importorskip("lerobot")
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    from vmp.data import EpisodeStore
    from vmp.data.convert.lerobot import import_lerobot

    features = {
        "observation.state": {"dtype": "float32", "shape": (2,), "names": None},
        "observation.images.top": {"dtype": "video", "shape": (32, 32, 3), "names": ["height", "width", "channels"]},
        "action": {"dtype": "float32", "shape": (2,), "names": None},
    }
    root = tmp_path / "tiny"
    ds = LeRobotDataset.create("local/tiny", fps=10, features=features, root=root, use_videos=True)
    rng = np.random.default_rng(0)
    lengths = [6, 4]
    states = []
    for e, n in enumerate(lengths):
        s = rng.normal(size=(n, 2)).astype(np.float32)
        states.append(s)
        for t in range(n):
            ds.add_frame({"observation.state": s[t], "action": s[t] * 2,
                          "observation.images.top": np.full((32, 32, 3), 40 * e + t, dtype=np.uint8),
                          "task": f"task {e}"})
        ds.save_episode()
    ds.finalize()

    with import_lerobot(root, tmp_path / "out.zarr", repo_id="local/tiny") as store:
        pass
    store = EpisodeStore.open(tmp_path / "out.zarr")
    assert store.n_episodes == 2 and list(store.episode_lengths) == lengths
    assert store.attrs["control_hz"] == 10.0
    assert set(store.keys) == {"state", "top_image", "action"}
    assert store.schema["top_image"].shape == (32, 32, 3) and store.schema["top_image"].dtype == "uint8"
    for e in range(2):
        ep = store.episode(e)
        np.testing.assert_allclose(ep["state"], states[e], rtol=1e-6)
        np.testing.assert_allclose(ep["action"], states[e] * 2, rtol=1e-6)
        assert abs(float(ep["top_image"][0].mean()) - 40 * e) < 6  # lossy video
        assert store.episode_text(e) == {"language": f"task {e}"}
