"""`vmp-data info` / `validate`: what they report, and validate's exit code 1 on each kind of corruption."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import zarr

from vmp.data import EpisodeStore
from vmp.data.cli import main
from vmp.data.testing import demo_schema, make_store


def _store(tmp_path):
    make_store(tmp_path / "s.zarr", [4, 6], schema=demo_schema(image_size=16, state_dim=3, action_dim=2), text=True)
    return tmp_path / "s.zarr"


def test_info_text_and_json(tmp_path, capsys):
    path = _store(tmp_path)
    assert main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    for needle in ("episodes: 2", "steps: 10", "agentview_image", "(16, 16, 3)", "uint8", "action stats",
                   "compression ratio", "size on disk", "task: synthetic", "control_hz: 20.0"):
        assert needle in out, needle
    assert main(["info", "--json", str(path)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["n_episodes"] == 2 and info["keys"]["state"] == {"shape": [3], "dtype": "float32", "kind": "low_dim",
                                                                 "meaning": "proprioceptive state"}
    assert info["action_stats"]["max"] == pytest.approx([1005.0, 1005.01]) and info["episodes_with_text"] == 2
    assert info["compression_ratio"] > 1
    assert "inferred" not in info


def test_validate_ok_and_console_script(tmp_path):
    path = _store(tmp_path)
    proc = subprocess.run([sys.executable, "-m", "vmp.data.cli", "validate", str(path)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0 and "OK" in proc.stdout


def test_validate_nan_action(tmp_path, capsys):
    path = _store(tmp_path)
    zarr.open_array(str(path / "data" / "action"), mode="r+")[7, 1] = np.nan
    assert main(["validate", str(path)]) == 1
    out = capsys.readouterr().out
    assert "INVALID" in out and "data/action holds 1 NaN/inf value(s) (first at step 7)" in out


def test_validate_short_array_and_bad_dtype(tmp_path, capsys):
    path = _store(tmp_path)
    zarr.open_array(str(path / "data" / "state"), mode="r+").resize((8, 3))
    assert main(["validate", str(path)]) == 1
    assert "data/state has 8 rows, fewer than episode_ends[-1] = 10" in capsys.readouterr().out
    path2 = tmp_path / "b"
    path2.mkdir()
    path2 = _store(path2)
    root = zarr.open_group(str(path2), mode="r+")
    schema = dict(root.attrs["schema"])
    schema["state"] = {**schema["state"], "dtype": "float64"}
    root.attrs["schema"] = schema
    assert main(["validate", str(path2)]) == 1
    assert "data/state has dtype float32, schema says float64" in capsys.readouterr().out


def test_validate_missing_attrs_and_not_a_store(tmp_path, capsys):
    path = _store(tmp_path)
    root = zarr.open_group(str(path), mode="r+")
    del root.attrs["control_hz"]
    assert main(["validate", str(path)]) == 1
    assert "root attrs lack 'control_hz'" in capsys.readouterr().out
    (tmp_path / "empty").mkdir()
    assert main(["validate", str(tmp_path / "empty")]) == 1
    assert "cannot open" in capsys.readouterr().out
    assert main(["info", str(tmp_path / "nothing")]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_validate_reports_torn_commit(tmp_path, capsys):
    path = _store(tmp_path)
    ends = zarr.open_array(str(path / "meta" / "episode_ends"), mode="r+")
    ends.resize((3,))  # a writer killed between resizing episode_ends and writing its value
    assert main(["validate", str(path)]) == 1
    assert "trailing entr(ies) that are not increasing" in capsys.readouterr().out


def test_info_counts_action_free_episodes(tmp_path, capsys):
    from vmp.data import EpisodeStore
    from vmp.data.testing import synthetic_episode

    path = _store(tmp_path)
    schema = demo_schema(image_size=16, state_dim=3, action_dim=2)
    ep = synthetic_episode(schema, 7, 5)
    del ep["action"]
    with EpisodeStore.open(path, mode="a") as w:
        w.append_episode(ep, action_free=True)
    assert main(["info", str(path)]) == 0
    assert "action-free episodes: 1" in capsys.readouterr().out
    assert main(["info", "--json", str(path)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["n_episodes"] == 3 and info["action_free_episodes"] == 1
    # Action statistics cover the 10 steps with actions, not the action-free episode's zero rows.
    steps = np.concatenate([np.arange(4), 1000 + np.arange(6)])
    assert info["action_stats"]["mean"][0] == pytest.approx(steps.mean()) and info["action_stats"]["min"][0] == 0.0
    assert main(["validate", str(path)]) == 0
    assert "OK" in capsys.readouterr().out
    (tmp_path / "b").mkdir()
    _store(tmp_path / "b")
    assert main(["info", "--json", str(tmp_path / "b" / "s.zarr")]) == 0
    assert json.loads(capsys.readouterr().out)["action_free_episodes"] == 0


def test_store_without_action_is_reported_not_crashed(tmp_path):
    from vmp.data.cli import store_info, validate_store

    path = tmp_path / "s.zarr"
    make_store(path, [5, 6], demo_schema(image_size=8)).close()
    root = zarr.open_group(str(path), mode="a")
    schema = dict(root.attrs["schema"])
    del schema["action"]
    root.attrs["schema"] = schema
    del root["data"]["action"]
    problems = validate_store(path)
    assert any("'action'" in p for p in problems), problems
    if not any(p.startswith("cannot open") for p in problems):
        with EpisodeStore.open(path) as store:
            info = store_info(store)
        assert info["n_episodes"] == 2 and "action_stats" not in info
