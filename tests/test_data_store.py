"""EpisodeStore: round trips, crash safety (a real SIGKILL), the append lock, and clear errors on bad input."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import zarr

from vmp.data import EpisodeStore, KeySpec, SchemaVersionError, StoreLockedError
from vmp.data.cli import validate_store
from vmp.data.testing import demo_schema, make_store, synthetic_episode

ATTRS = {"task": "lift", "control_hz": 20}


def _all_dtypes_schema() -> dict[str, KeySpec]:
    return {
        "agentview_image": KeySpec((16, 20, 3), "uint8", "rgb HWC"),
        "wrist_image": KeySpec((8, 8, 1), "uint8", "grey HWC"),
        "agentview_depth": KeySpec((16, 20), "float32", "depth, metres"),
        "wrist_depth": KeySpec((8, 8), "uint16", "depth, millimetres"),
        "eef_pos": KeySpec((3,), "float32", "eef position"),
        "keypoint": KeySpec((9, 2), "float32", "keypoints"),
        "object_id": KeySpec((), "int64", "object index"),
        "contact": KeySpec((2,), "bool", "finger contacts"),
        "phase": KeySpec((), "int16", "phases: reach, grasp, lift"),
        "action": KeySpec((7,), "float32", "eef delta + gripper"),
    }


def _all_dtypes_episode(rng: np.random.Generator, length: int) -> dict[str, np.ndarray]:
    return {
        "agentview_image": rng.integers(0, 256, (length, 16, 20, 3), dtype=np.uint8),
        "wrist_image": rng.integers(0, 256, (length, 8, 8, 1), dtype=np.uint8),
        "agentview_depth": rng.uniform(0, 3, (length, 16, 20)).astype(np.float32),
        "wrist_depth": rng.integers(0, 5000, (length, 8, 8), dtype=np.uint16),
        "eef_pos": rng.normal(size=(length, 3)),  # float64: cast to the schema's float32
        "keypoint": rng.normal(size=(length, 9, 2)).astype(np.float32),
        "object_id": rng.integers(0, 5, (length,), dtype=np.int64),
        "contact": rng.integers(0, 2, (length, 2)).astype(bool),
        "phase": rng.integers(0, 3, (length,), dtype=np.int16),
        "action": rng.normal(size=(length, 7)).astype(np.float32),
    }


def test_round_trip_every_dtype(tmp_path):
    rng = np.random.default_rng(0)
    schema = _all_dtypes_schema()
    attrs = {**ATTRS, "phase_names": ["reach", "grasp", "lift"], "robot": "panda"}
    episodes = [_all_dtypes_episode(rng, n) for n in (5, 1, 12)]
    with EpisodeStore.create(tmp_path / "s.zarr", schema, attrs) as store:
        for i, ep in enumerate(episodes):
            assert store.append_episode(ep, text={"language": "lift the cube", "reasoning": [f"step {i}"]} if i != 1 else None) == i
    store = EpisodeStore.open(tmp_path / "s.zarr")
    assert store.n_episodes == 3 and store.n_steps == 18
    np.testing.assert_array_equal(store.episode_ends, [5, 6, 18])
    assert store.keys == list(schema)
    assert store.schema == schema
    assert store.attrs["task"] == "lift" and store.attrs["control_hz"] == 20 and store.attrs["robot"] == "panda"
    assert store.attrs["vmp_schema_version"] == 1 and store.phase_names == ["reach", "grasp", "lift"]
    assert store.kind("agentview_image") == "rgb" and store.kind("wrist_depth") == "depth" and store.kind("eef_pos") == "low_dim"
    for i, ep in enumerate(episodes):
        got = store.episode(i)
        for k, v in ep.items():
            assert got[k].dtype == np.dtype(schema[k].dtype), k
            np.testing.assert_array_equal(got[k], v.astype(schema[k].dtype), err_msg=k)
    assert store.episode_text(0) == {"language": "lift the cube", "reasoning": ["step 0"]}
    assert store.episode_text(1) == {}
    assert store.episode_text(-1)["reasoning"] == ["step 2"]
    assert validate_store(tmp_path / "s.zarr") == []


def test_chunking_images_per_frame_lowdim_long(tmp_path):
    store = make_store(tmp_path / "s.zarr", [3, 4])
    assert store.array("agentview_image").chunks == (1, 84, 84, 3)
    assert store.array("state").chunks[0] >= 1000
    # The images compress: synthetic frames are mostly constant.
    assert store.array("agentview_image").nbytes_stored() < store.array("agentview_image").nbytes / 10


def test_reopen_append_and_read_only(tmp_path):
    schema = demo_schema(image_size=8)
    make_store(tmp_path / "s.zarr", [3, 4], schema=schema)
    ro = EpisodeStore.open(tmp_path / "s.zarr")
    with pytest.raises(PermissionError, match="read-only"):
        ro.append_episode(synthetic_episode(schema, 2, 5))
    with EpisodeStore.open(tmp_path / "s.zarr", mode="a") as store:
        assert store.append_episode(synthetic_episode(schema, 2, 5)) == 2
    store = EpisodeStore.open(tmp_path / "s.zarr")
    assert store.n_episodes == 3 and store.n_steps == 12
    np.testing.assert_array_equal(store.episode(2)["state"], synthetic_episode(schema, 2, 5)["state"])


def test_second_writer_is_refused(tmp_path):
    schema = demo_schema(image_size=8)
    make_store(tmp_path / "s.zarr", [3], schema=schema)
    with EpisodeStore.open(tmp_path / "s.zarr", mode="a"):
        with pytest.raises(StoreLockedError, match=f"pid {os.getpid()}"):
            EpisodeStore.open(tmp_path / "s.zarr", mode="a")
        # A writer in another process is refused as well.
        code = f"from vmp.data import EpisodeStore; EpisodeStore.open({str(tmp_path / 's.zarr')!r}, mode='a')"
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
        assert proc.returncode != 0 and "StoreLockedError" in proc.stderr and "already open for appending" in proc.stderr
        EpisodeStore.open(tmp_path / "s.zarr")  # readers are never blocked
        with pytest.raises(StoreLockedError):  # nor can the store be overwritten under the writer
            EpisodeStore.create(tmp_path / "s.zarr", schema, ATTRS, overwrite=True)
    with EpisodeStore.open(tmp_path / "s.zarr", mode="a") as store:  # released on close
        store.append_episode(synthetic_episode(schema, 1, 2))


_CHILD = textwrap.dedent("""
    import os, sys, time
    import numpy as np
    from vmp.data import EpisodeStore
    from vmp.data.testing import demo_schema, synthetic_episode

    path, mode, ready = sys.argv[1], sys.argv[2], sys.argv[3]
    schema = demo_schema(image_size=32)
    store = EpisodeStore.create(path, schema, {"task": "t", "control_hz": 10})

    def append(e, length, text, action_free):  # episodes e % 3 == 1 are action-free (video only)
        ep = synthetic_episode(schema, e, length)
        if action_free:
            del ep["action"]
        store.append_episode(ep, text=text, action_free=action_free)

    for e in range(3):
        append(e, 20 + e, {"language": f"ep {e}"}, e % 3 == 1)

    class Stall:
        # Stands in for meta/episode_ends: signals the parent, then waits to be killed.
        def __init__(self, arr, on):
            self.arr, self.on = arr, on
        def resize(self, shape):
            if self.on == "resize":
                self.stall()
            self.arr.resize(shape)
        def __setitem__(self, key, value):
            if self.on == "setitem":
                self.stall()
            self.arr[key] = value
        def stall(self):
            open(ready, "w").close()
            time.sleep(600)

    if mode == "random":
        open(ready, "w").close()
        e = 3
        while True:
            append(e, 20 + e % 7, {"language": f"ep {e}"}, e % 3 == 1)
            e += 1
    store._ends_array = Stall(store._ends_array, mode)
    append(3, 40, {"language": "never committed"}, True)  # its flag is written before the stalled commit
""")


@pytest.mark.parametrize("mode", ["resize", "setitem", "random"])
def test_sigkill_mid_append_keeps_committed_episodes(tmp_path, mode):
    """A writer killed mid-append (before commit, during a torn commit, at a random moment) loses nothing committed."""
    path, ready = tmp_path / "s.zarr", tmp_path / "ready"
    proc = subprocess.Popen([sys.executable, "-c", _CHILD, str(path), mode, str(ready)])
    try:
        deadline = time.monotonic() + 120
        while not ready.exists():
            assert proc.poll() is None, "child exited early"
            assert time.monotonic() < deadline, "child never reached the kill point"
            time.sleep(0.02)
        time.sleep(0.3 if mode == "random" else 0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL

    schema = demo_schema(image_size=32)
    store = EpisodeStore.open(path)
    n = store.n_episodes
    assert n >= 3 if mode == "random" else n == 3
    np.testing.assert_array_equal(store.has_action, [e % 3 != 1 for e in range(n)])
    for e in range(n):
        expected = synthetic_episode(schema, e, 20 + (e if e < 3 else e % 7))
        if e % 3 == 1:
            expected["action"] = np.zeros_like(expected["action"])
        got = store.episode(e)
        for k in schema:
            np.testing.assert_array_equal(got[k], expected[k], err_msg=f"episode {e} key {k}")
        assert store.episode_text(e) == {"language": f"ep {e}"}
    if mode != "random":
        assert store.array("action").shape[0] > store.n_steps  # the partial episode's rows exist but are invisible
        assert not zarr.open_array(str(path / "meta" / "has_action"), mode="r")[3]  # so does its (stale) flag
    # The next writer takes over: the dead writer's lock is gone, the tail is overwritten.
    with EpisodeStore.open(path, mode="a") as w:
        assert w.append_episode(synthetic_episode(schema, 100, 4)) == n
    store = EpisodeStore.open(path)
    assert store.n_episodes == n + 1
    assert store.has_action[n]  # the stale flag of the uncommitted action-free episode was overwritten
    np.testing.assert_array_equal(store.episode(n)["state"], synthetic_episode(schema, 100, 4)["state"])
    assert store.episode_text(n) == {}
    assert validate_store(path) == []
    assert not list(path.rglob("*.partial"))


# ---------------------------------------------------------------------- bad input


@pytest.fixture
def store8(tmp_path):
    schema = demo_schema(image_size=8)
    store = EpisodeStore.create(tmp_path / "s.zarr", schema, ATTRS)
    yield store, schema
    store.close()


def _ep(schema, length=4):
    return synthetic_episode(schema, 0, length)


def test_missing_key(store8):
    store, schema = store8
    ep = _ep(schema)
    del ep["state"]
    with pytest.raises(KeyError, match="lacks key.*'state'"):
        store.append_episode(ep)


def test_unknown_key(store8):
    store, schema = store8
    with pytest.raises(KeyError, match=r"\['extra'\] not in the store's schema"):
        store.append_episode({**_ep(schema), "extra": np.zeros((4, 2))})


def test_wrong_shape(store8):
    store, schema = store8
    ep = _ep(schema)
    ep["action"] = np.zeros((4, 6), np.float32)
    with pytest.raises(ValueError, match=r"episode\['action'\] has shape \(4, 6\), expected \(T, 7\)"):
        store.append_episode(ep)


def test_wrong_dtype(store8):
    store, schema = store8
    ep = _ep(schema)
    ep["agentview_image"] = ep["agentview_image"].astype(np.float32)
    with pytest.raises(ValueError, match=r"episode\['agentview_image'\] has dtype float32, expected uint8"):
        store.append_episode(ep)


def test_mismatched_lengths(store8):
    store, schema = store8
    ep = _ep(schema)
    ep["state"] = ep["state"][:3]
    with pytest.raises(ValueError, match="'state'.*3 steps but other keys have 4"):
        store.append_episode(ep)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_action(store8, bad):
    store, schema = store8
    ep = _ep(schema)
    ep["action"][2, 5] = bad
    with pytest.raises(ValueError, match=r"episode\['action'\] holds NaN or inf \(first at step 2\)"):
        store.append_episode(ep)
    assert store.n_episodes == 0  # nothing was written


def test_empty_episode(store8):
    store, schema = store8
    with pytest.raises(ValueError, match="length 0"):
        store.append_episode(_ep(schema, length=0))


def test_phase_out_of_range(tmp_path):
    schema = {"phase": KeySpec((), "int16", "reach, grasp"), "action": KeySpec((2,), "float32")}
    with EpisodeStore.create(tmp_path / "s.zarr", schema, {**ATTRS, "phase_names": ["reach", "grasp"]}) as store:
        with pytest.raises(ValueError, match=r"phase.*\[0, 2\)"):
            store.append_episode({"phase": np.array([0, 1, 2], np.int16), "action": np.zeros((3, 2), np.float32)})


def test_bad_schema_and_attrs(tmp_path):
    with pytest.raises(KeyError, match="control_hz"):
        EpisodeStore.create(tmp_path / "a.zarr", demo_schema(), {"task": "x"})
    with pytest.raises(ValueError, match="lacks the 'action' key"):
        EpisodeStore.create(tmp_path / "b.zarr", {"state": KeySpec((3,), "float32")}, ATTRS)
    with pytest.raises(ValueError, match=r"schema\['cam_image'\]: image keys are uint8 HWC"):
        EpisodeStore.create(tmp_path / "c.zarr", {"cam_image": KeySpec((8, 8, 3), "float32"),
                                                  "action": KeySpec((2,), "float32")}, ATTRS)
    with pytest.raises(ValueError, match="phase_names"):
        EpisodeStore.create(tmp_path / "d.zarr", {"phase": KeySpec((), "int16"), "action": KeySpec((2,), "float32")}, ATTRS)
    make_store(tmp_path / "e.zarr", [2], schema=demo_schema(image_size=8))
    with pytest.raises(FileExistsError, match="overwrite=True"):
        EpisodeStore.create(tmp_path / "e.zarr", demo_schema(), ATTRS)


def test_path_that_is_not_a_store(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        EpisodeStore.open(tmp_path / "missing.zarr")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="is not a zarr store"):
        EpisodeStore.open(tmp_path / "empty")
    (tmp_path / "file.txt").write_text("hello")
    with pytest.raises(ValueError, match="is a file, not a zarr store"):
        EpisodeStore.open(tmp_path / "file.txt")
    zarr.open_group(str(tmp_path / "other.zarr"), mode="w").create_group("data")
    with pytest.raises(ValueError, match="not an episode store.*'meta'"):
        EpisodeStore.open(tmp_path / "other.zarr")


def test_newer_schema_version_is_refused(tmp_path):
    make_store(tmp_path / "s.zarr", [2], schema=demo_schema(image_size=8))
    zarr.open_group(str(tmp_path / "s.zarr"), mode="r+").attrs["vmp_schema_version"] = 99
    with pytest.raises(SchemaVersionError, match="vmp_schema_version 99, newer than this vmp supports"):
        EpisodeStore.open(tmp_path / "s.zarr")


def test_episode_index_out_of_range(tmp_path):
    store = make_store(tmp_path / "s.zarr", [2, 3], schema=demo_schema(image_size=8))
    with pytest.raises(IndexError, match="episode index 2 out of range.*2 episodes"):
        store.episode(2)
    with pytest.raises(KeyError, match="key 'nope' is not in store"):
        store.episode(0, keys=["nope"])


# ---------------------------------------------------------------------- action-free episodes


def test_action_free_episodes_round_trip(tmp_path):
    schema = demo_schema(image_size=8)
    with EpisodeStore.create(tmp_path / "s.zarr", schema, ATTRS) as store:
        for e, free in enumerate([False, True, True, False]):
            ep = synthetic_episode(schema, e, 3 + e)
            if free:
                del ep["action"]
            assert store.append_episode(ep, action_free=free) == e
        np.testing.assert_array_equal(store.has_action, [True, False, False, True])
    store = EpisodeStore.open(tmp_path / "s.zarr")
    np.testing.assert_array_equal(store.has_action, [True, False, False, True])
    got = store.episode(1)
    assert (got["action"] == 0).all() and got["action"].shape == (4, 7)  # finite zeros, never NaN
    np.testing.assert_array_equal(got["state"], synthetic_episode(schema, 1, 4)["state"])
    np.testing.assert_array_equal(store.episode(3)["action"], synthetic_episode(schema, 3, 6)["action"])
    assert validate_store(tmp_path / "s.zarr") == []


def test_action_free_bad_input(store8):
    store, schema = store8
    with pytest.raises(ValueError, match="an action-free episode must not hold 'action'"):
        store.append_episode(_ep(schema), action_free=True)
    ep = _ep(schema)
    del ep["action"]
    with pytest.raises(KeyError, match="lacks key.*'action'"):
        store.append_episode(ep)
    with EpisodeStore.create(store.path.parent / "a.zarr", {"action": KeySpec((2,), "float32")}, ATTRS) as only_action:
        with pytest.raises(ValueError, match="holds only 'action'"):
            only_action.append_episode({}, action_free=True)
    assert store.n_episodes == 0 and len(store.has_action) == 0


def test_store_without_action_flags_reads_all_actions_and_gains_flags_on_append(tmp_path):
    """Stores written before action flags existed have no meta/has_action: every episode has actions; the first
    append creates the flags, keeping the old episodes' True."""
    import shutil

    schema = demo_schema(image_size=8)
    make_store(tmp_path / "s.zarr", [3, 4], schema=schema)
    shutil.rmtree(tmp_path / "s.zarr" / "meta" / "has_action")
    np.testing.assert_array_equal(EpisodeStore.open(tmp_path / "s.zarr").has_action, [True, True])
    ep = synthetic_episode(schema, 2, 5)
    del ep["action"]
    with EpisodeStore.open(tmp_path / "s.zarr", mode="a") as w:
        w.append_episode(ep, action_free=True)
    np.testing.assert_array_equal(EpisodeStore.open(tmp_path / "s.zarr").has_action, [True, True, False])


def test_open_or_create_creates_continues_and_refuses_other_data_by_name(tmp_path):
    schema = {"state": KeySpec((3,), "float32"), "action": KeySpec((2,), "float32")}
    path = tmp_path / "s.zarr"
    with EpisodeStore.open_or_create(path, schema, {"task": "t", "control_hz": 10, "seed": 0}) as store:
        store.append_episode({"state": np.zeros((4, 3), np.float32), "action": np.zeros((4, 2), np.float32)})
    with EpisodeStore.open_or_create(path, schema, {"task": "t", "control_hz": 10, "seed": 0}, ("seed",)) as store:
        store.append_episode({"state": np.ones((2, 3), np.float32), "action": np.ones((2, 2), np.float32)})
    other = {"state": KeySpec((4,), "float32"), "action": KeySpec((2,), "float64"), "extra": KeySpec((1,), "int8")}
    with pytest.raises(ValueError) as info:
        EpisodeStore.open_or_create(path, other, {"task": "t", "control_hz": 10, "seed": 0})
    message = str(info.value)
    assert str(path) in message and "key 'state': the store has ((3,), 'float32'), this run writes ((4,), 'float32')" in message
    assert "key 'action'" in message and "key 'extra': the store has none" in message
    with pytest.raises(ValueError, match="attribute 'seed': the store has 0, this run 1"):
        EpisodeStore.open_or_create(path, schema, {"task": "t", "control_hz": 10, "seed": 1}, ("seed",))
    with EpisodeStore.open(path) as store:  # refused runs left it as it was, and unlocked
        assert store.n_episodes == 2 and store.n_steps == 6
