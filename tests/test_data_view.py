"""`vmp-data view`: a store's episode (and a vmp-eval folder's rollout) written to an .rrd and read back; the refusals."""

from __future__ import annotations

import json
import sys
import warnings

import numpy as np
import pytest

from vmp.data import EpisodeStore, KeySpec
from vmp.data.cli import main
from vmp.data.testing import synthetic_episode

rr = pytest.importorskip("rerun", reason="rerun-sdk (pip install vmp[viewer]) is not installed")

HZ = 20.0
LENGTHS = (4, 6, 5)
SCHEMA = {
    "agentview_image": KeySpec((16, 16, 3), "uint8", "agentview camera, RGB HWC"),
    "state": KeySpec((3,), "float32", "proprioceptive state"),
    "action": KeySpec((2,), "float32", "pusher velocity"),
    "phase": KeySpec((), "int16", "expert phase"),
}
PHASES = [0, 0, 1, 1, 1, 2]  # episode 1's
TEXT = {"language": "push the block", "reasoning": [{"tick": 0, "text": "reach"}, {"tick": 3, "text": "push"}],
        "outcome": "success", "seed": 7}  # what vmp-deploy records: per-tick reasoning, the outcome


@pytest.fixture()
def store_path(tmp_path):
    path = tmp_path / "push.zarr"
    data_schema = {k: v for k, v in SCHEMA.items() if k != "phase"}
    with EpisodeStore.create(path, SCHEMA, {"task": "push", "control_hz": HZ, "phase_names": ["reach", "push", "done"]}) as s:
        for e, n in enumerate(LENGTHS):
            ep = synthetic_episode(data_schema, e, n, random_images=True)
            ep["phase"] = np.asarray(PHASES if e == 1 else [0] * n, np.int16)
            s.append_episode(ep, text=TEXT if e == 1 else {"language": f"episode {e}"})
    return path


def _read_rrd(path) -> dict[str, list]:
    """{entity path: [record batch, ...]} of an .rrd file, through the installed rerun-sdk's reader."""
    try:
        from rerun.chunk import RrdReader  # rerun-sdk >= 0.3x
    except ImportError:
        RrdReader = None
    out: dict[str, list] = {}
    if RrdReader is not None:
        for chunk in RrdReader(path).stream().to_chunks():
            out.setdefault(chunk.entity_path, []).append(chunk.to_record_batch())
        return out
    recording = rr.dataframe.load_recording(path)  # rerun-sdk 0.23 ... 0.2x: the dataframe API
    for entity in {c.entity_path for c in recording.schema().component_columns()}:

        def read(index, static=False):
            view = recording.view(index=index, contents=entity)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # an entity without static data, or without data on this timeline
                table = (view.select_static() if static else view.select()).read_all()
            return table.rename_columns([c.removeprefix(f"{entity}:") for c in table.column_names])

        # A dataframe keeps one row per index value: rows logged one by one (several texts share a step) are read
        # by their log_time, rows sent as columns (which have none) by step.
        by_log_time = read("log_time")
        out[entity] = [read("step", static=True), by_log_time if by_log_time.num_rows else read("step")]
    return out


def _rows(batches: list, component: str) -> list[tuple]:
    """(step, time in s, value) of every row holding ``component``, by step; step/time None for static rows.
    A row's value is its batch of instances: [text] for one text, [x, y, z] for three scalars."""
    rows = []
    for b in batches:
        names = b.schema.names
        if component not in names:
            continue
        steps = b.column("step").to_pylist() if "step" in names else [None] * b.num_rows
        times = b.column("time").to_pylist() if "time" in names else [None] * b.num_rows
        for s, t, v in zip(steps, times, b.column(component).to_pylist()):
            if v is not None:
                rows.append((s, t.total_seconds() if t is not None else None, v))
    return sorted(rows, key=lambda r: (-1 if r[0] is None else r[0]))


def test_view_saves_one_episode_and_reads_back(store_path, tmp_path, capsys):
    out = tmp_path / "view" / "out.rrd"
    assert main(["view", str(store_path), "--episode", "1", "--save", str(out)]) == 0
    assert "episode 1" in capsys.readouterr().out
    entities = _read_rrd(out)
    ep = EpisodeStore.open(store_path).episode(1)
    assert not any(e.startswith(("/episode_0", "/episode_2")) for e in entities)  # only the chosen episode

    images = _rows(entities["/episode_1/agentview_image"], "Image:buffer")
    assert [r[0] for r in images] == list(range(6))
    (buffer,) = images[2][2]
    np.testing.assert_array_equal(np.asarray(buffer, np.uint8).reshape(16, 16, 3), ep["agentview_image"][2])

    state = _rows(entities["/episode_1/state"], "Scalars:scalars")
    assert [r[0] for r in state] == list(range(6))
    assert [r[1] for r in state] == pytest.approx([t / HZ for t in range(6)])  # the "time" timeline, seconds
    np.testing.assert_allclose(np.array([r[2] for r in state]), ep["state"], rtol=1e-6)
    names = _rows(entities["/episode_1/state"], "SeriesLines:names")
    assert names[0][2] == ["state[0]", "state[1]", "state[2]"]
    action = _rows(entities["/episode_1/action"], "Scalars:scalars")
    np.testing.assert_allclose(np.array([r[2] for r in action]), ep["action"], rtol=1e-6)

    text = [(s, line) for s, _, (line,) in _rows(entities["/episode_1/text"], "TextLog:text")]
    assert (0, "language: push the block") in text and (0, "seed: 7") in text
    assert (0, "reasoning: reach") in text and (3, "reasoning: push") in text  # per-tick text at its tick
    assert (0, "phase: reach") in text and (2, "phase: push") in text and (5, "phase: done") in text
    assert (5, "outcome: success") in text  # known at the episode's end
    assert "| state | [3] | float32 | proprioceptive state |" in _rows(entities["/store"], "TextDocument:text")[0][2][0]


def test_view_refuses_a_bad_episode_index(store_path, tmp_path, capsys):
    out = tmp_path / "out.rrd"
    assert main(["view", str(store_path), "--episode", "3", "--save", str(out)]) == 1
    err = capsys.readouterr().err
    assert str(store_path) in err and "3 episodes" in err and "valid: 0..2" in err
    assert not out.exists()


def test_view_refuses_a_path_that_is_not_a_store(tmp_path, capsys):
    for path in (tmp_path / "missing.zarr", tmp_path):  # nothing there; a folder that is no store
        assert main(["view", str(path), "--save", str(tmp_path / "out.rrd")]) == 1
        err = capsys.readouterr().err
        assert f"{path} is not an episode store" in err
    assert not (tmp_path / "out.rrd").exists()


def test_view_without_display_or_rerun_says_what_to_do(store_path, monkeypatch, capsys):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    monkeypatch.setattr(sys, "platform", "linux")
    assert main(["view", str(store_path)]) == 1
    err = capsys.readouterr().err
    assert "no display" in err and "--save out.rrd" in err
    monkeypatch.setitem(sys.modules, "rerun", None)  # rerun-sdk not installed
    assert main(["view", str(store_path), "--save", "x.rrd"]) == 1
    assert "pip install vmp[viewer]" in capsys.readouterr().err


def test_view_eval_rollouts(tmp_path):
    """A vmp-eval folder: the rollout's mp4 (frame k = step k) and its head's text at their steps."""
    from vmp.sim.render import write_video

    root = tmp_path / "eval"
    frames = [np.full((32, 32, 3), 40 * k, np.uint8) for k in range(5)]
    write_video(root / "videos" / "episode000_seed0.mp4", frames, fps=10)
    import imageio.v2 as imageio

    (root / "videos" / "episode000_future_frames").mkdir()
    imageio.imwrite(root / "videos" / "episode000_future_frames" / "step0002.png", np.full((8, 16, 3), 9, np.uint8))
    per_episode = [
        {"seed": 0, "success": True, "length": 4, "return": 1.0, "video": "elsewhere/videos/episode000_seed0.mp4",
         "future_frames_dir": "elsewhere/videos/episode000_future_frames",
         "text": [{"step": 0, "name": "reasoning", "text": "reach"}, {"step": 2, "name": "reasoning", "text": "grasp"}]},
        {"seed": 1, "success": False, "length": 4, "return": 0.0},
    ]
    (root / "metrics.json").write_text(json.dumps({"task": "lift", "n_episodes": 2, "success_rate": 0.5,
                                                   "per_episode": per_episode}))
    out = tmp_path / "eval.rrd"
    assert main(["view", str(root), "--save", str(out)]) == 0
    entities = _read_rrd(out)
    video = entities["/rollout_0/video"]
    assert [r[0] for r in _rows(video, "AssetVideo:blob")][0] is None  # the mp4, logged once (static)
    assert [r[0] for r in _rows(video, "VideoFrameReference:timestamp")] == list(range(5))
    text = [(s, line) for s, _, (line,) in _rows(entities["/rollout_0/text"], "TextLog:text")]
    assert (0, "reasoning: reach") in text and (2, "reasoning: grasp") in text and (3, "success: True  return: 1.0") in text
    assert [r[0] for r in _rows(entities["/rollout_0/future_frames"], "Image:buffer")] == [2]  # predicted at step 2
    assert "/rollout_1/text" in entities and "/rollout_1/video" not in entities
    assert main(["view", str(root), "--episode", "2", "--save", str(out)]) == 1
