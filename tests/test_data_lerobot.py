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


@pytest.mark.parametrize("video", [False, True])
def test_export_to_lerobot_and_import_back_gives_the_same_episodes(tmp_path, video):
    """vmp-data export --format lerobot, then the importer: the same episodes, keys, rate and instructions (camera
    frames exact as PNG, within video compression as mp4); an action-free episode is left out by name."""
    pytest.importorskip("lerobot")
    from vmp.data import EpisodeStore
    from vmp.data.cli import main
    from vmp.data.convert.lerobot import import_lerobot
    from vmp.data.testing import demo_schema, synthetic_episode

    schema = demo_schema(image_size=32, state_dim=3, action_dim=2)  # 16 px crashes the AV1 encoder (SIGFPE)
    with EpisodeStore.create(tmp_path / "s.zarr", schema, {"task": "toy", "control_hz": 20}) as store:
        for e, n in enumerate([5, 3]):
            store.append_episode(synthetic_episode(schema, e, n, random_images=not video), text={"language": f"do {e}"})
        video_only = {k: v for k, v in synthetic_episode(schema, 2, 4).items() if k != "action"}
        store.append_episode(video_only, text={"language": "watch"}, action_free=True)
    out = tmp_path / "lerobot"
    argv = ["export", str(tmp_path / "s.zarr"), str(out), "--format", "lerobot", "--repo-id", "local/toy"]
    assert main(argv + ([] if video else ["--no-video"])) == 0
    with pytest.raises(FileExistsError, match="exists: pass overwrite"):
        main(argv)
    if video:
        tiny = demo_schema(image_size=16, state_dim=3, action_dim=2)
        with EpisodeStore.create(tmp_path / "tiny.zarr", tiny, {"task": "toy", "control_hz": 20}) as store:
            store.append_episode(synthetic_episode(tiny, 0, 3))
        with pytest.raises(ValueError, match=r"'agentview_image' frames are 16x16 px, too small .* \(--no-video\)"):
            main(["export", str(tmp_path / "tiny.zarr"), str(tmp_path / "t"), "--format", "lerobot"])
    back = import_lerobot(out, tmp_path / "back.zarr", repo_id="local/toy")
    back.close()
    a, b = EpisodeStore.open(tmp_path / "s.zarr"), EpisodeStore.open(tmp_path / "back.zarr")
    assert b.n_episodes == 2 and list(b.episode_lengths) == [5, 3] and b.attrs["control_hz"] == 20.0
    assert set(b.keys) == {"agentview_image", "state", "action"}
    for e in range(2):
        x, y = a.episode(e), b.episode(e)
        np.testing.assert_array_equal(y["state"], x["state"])
        np.testing.assert_array_equal(y["action"], x["action"])
        if video:
            assert np.abs(y["agentview_image"].astype(int) - x["agentview_image"]).mean() < 8
        else:
            np.testing.assert_array_equal(y["agentview_image"], x["agentview_image"])
        assert b.episode_text(e) == {"language": f"do {e}"}
