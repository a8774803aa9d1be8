"""Your own robot, end to end on `SimRobot` (the toy reach task): record by (scripted) teleoperation with an operator
who discards and re-records, write the task config from the store, train a tiny policy with `vmp-train`, deploy it
with the operator's pause and success marks; and the pieces: keyboard teleop, LeRobot teleop mapping, the
key convention shared with the LeRobot importer, frame resizing at training and deployment."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from hydra import compose, initialize_config_module

from vmp.data import EpisodeStore, KeySpec
from vmp.data.cli import task_config, write_task_config
from vmp.real.operator import ScriptedOperator


def _record_cfg(tmp_path, *overrides):
    with initialize_config_module(config_module="vmp.configs", version_base=None):
        return compose("record", ["robot=toy", "teleop=toy_scripted", f"out={tmp_path / 'demos.zarr'}", *overrides])


def test_record_train_deploy_with_operator(tmp_path, monkeypatch):
    from vmp.real import record

    # save (success), discard, re-record, save the re-recorded one (success), save (marked failure)
    operator = ScriptedOperator(["s", "y", "d", "r", "s", "y", "s", "n"])
    monkeypatch.setattr("vmp.real.operator.build_operator", lambda ocfg, kind: operator)
    cfg = _record_cfg(tmp_path, "n_episodes=3", "instruction=reach the target", "seed=10")
    summary = record.run(cfg)
    assert summary["saved"] == 3 and summary["attempts"] == 5
    assert [e["seed"] for e in summary["episodes"]] == [10, 12, 13]  # 11 discarded; 12 re-recorded, same seed
    assert sum("reset the scene" in p for p in operator.asked) == 5 and not operator.answers
    store = EpisodeStore.open(tmp_path / "demos.zarr")
    assert store.n_episodes == 3 and set(store.keys) == {"pos", "target", "action", "tick_time"}
    texts = [store.episode_text(i) for i in range(3)]
    assert [t["success"] for t in texts] == [True, True, False]
    assert {t["success_marked_by"] for t in texts} == {"operator"} and {t["language"] for t in texts} == {"reach the target"}
    ep = store.episode(0)  # the scripted person drove the point towards the target: the distance shrank
    dist = np.linalg.norm(ep["target"] - ep["pos"], axis=1)
    assert dist[-1] < 0.5 * dist[0]
    assert store.attrs["control_hz"] == 50.0 and store.attrs["recorded_by"] == "vmp-record"

    # a second session appends to the same store
    monkeypatch.setattr("vmp.real.operator.build_operator", lambda ocfg, kind: None)
    record.run(_record_cfg(tmp_path, "n_episodes=5", "instruction=reach the target", "seed=20"))
    monkeypatch.undo()
    assert EpisodeStore.open(tmp_path / "demos.zarr").n_episodes == 8

    # the task config comes from the store
    config = task_config(EpisodeStore.open(tmp_path / "demos.zarr"), "toy_reach")
    assert config["shape_meta"] == {"obs": {"pos": {"shape": [2], "type": "low_dim"},
                                            "target": {"shape": [2], "type": "low_dim"}}, "action": {"shape": [2]}}
    assert config["control_hz"] == 50.0 and config["language"] == "reach the target"
    config["store"] = str(tmp_path / "demos.zarr")
    configs = tmp_path / "vmp_configs"
    write_task_config(config, configs, "demos.zarr")
    with pytest.raises(FileExistsError, match="--overwrite"):
        write_task_config(config, configs, "demos.zarr")

    # train through the real command, the task found by --config-dir
    run_dir = tmp_path / "run"
    train = [sys.executable, "-m", "vmp.policies.train", "--config-dir", str(configs), "task=toy_reach", "policy=beso",
             "encoder=lowdim", "policy.d_model=32", "policy.n_layers=1", "training.steps=40", "training.batch_size=16",
             "training.val_every=20", "training.val_ratio=0.2", f"run_dir={run_dir}"]
    done = subprocess.run(train, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (run_dir / "checkpoints" / "latest.pt").is_file() and (run_dir / "checkpoints" / "best.pt").is_file()
    assert any((run_dir / "tensorboard").iterdir())
    again = subprocess.run(train, capture_output=True, text=True, timeout=600)  # never overwrites silently
    assert again.returncode != 0 and "resume=true" in again.stderr

    # deploy: the operator resets the scene before each episode and marks success after it
    from vmp.real.daemon import run

    with initialize_config_module(config_module="vmp.configs", version_base=None):
        dcfg = compose("deploy", ["robot=toy", f"checkpoint={run_dir}", "n_episodes=2", "metrics.enabled=false",
                                  "operator.kind=scripted", "operator.answers=[n,y]",
                                  f"record.path={tmp_path / 'deployed.zarr'}", "max_ticks=30"])
    summary = run(dcfg, tmp_path)
    assert summary["n_episodes"] == 2 and summary["successes"] == 1 and summary["success_marked_by"] == "operator"
    assert [e["success"] for e in summary["episodes"]] == [False, True]
    deployed = EpisodeStore.open(tmp_path / "deployed.zarr")
    assert [deployed.episode_text(i)["success"] for i in range(2)] == [False, True]


def test_scripted_operator_refuses_unknown_and_missing_answers():
    op = ScriptedOperator(["x"])
    with pytest.raises(ValueError, match="'x' is not one of"):
        op.choose("keep it?", {"s": "save", "d": "discard"})
    with pytest.raises(ValueError, match="ran out"):
        op.choose("keep it?", {"s": "save"})


def test_record_refuses_a_store_of_other_keys(tmp_path):
    from vmp.real import record

    EpisodeStore.create(tmp_path / "demos.zarr", {"action": KeySpec((3,), "float32"), "state": KeySpec((4,), "float32")},
                        {"task": "x", "control_hz": 10})
    with pytest.raises(ValueError, match="choose another out path"):
        record.run(_record_cfg(tmp_path, "operator.kind=none"))


class _Robot:
    class spec:
        action_dim = 3


def test_keyboard_teleop_maps_keys_to_dims_and_releases():
    from vmp.real.teleop import KeyboardTeleop

    now = [0.0]
    teleop = KeyboardTeleop({"d": [0, 1], "a": [0, -1], "w": [2, 1]}, scale=0.5, hold_s=0.1, stream=None,
                            clock=lambda: now[0])
    teleop.stream = object()  # no terminal: keys come through feed()
    teleop.connect(_Robot())
    teleop.feed("dw")
    np.testing.assert_allclose(teleop.action(None), [0.5, 0.0, 0.5])
    teleop.feed("a")
    np.testing.assert_allclose(teleop.action(None), [-0.5, 0.0, 0.5])
    now[0] = 0.2  # released
    np.testing.assert_allclose(teleop.action(None), [0.0, 0.0, 0.0])
    assert not teleop.end_requested()
    teleop.feed("\n")
    assert teleop.end_requested() and not teleop.end_requested()
    with pytest.raises(ValueError, match="action dims"):
        KeyboardTeleop({"x": [5, 1]}).connect(_Robot())


def test_lerobot_teleop_matches_the_robot_by_feature_name():
    from vmp.real.teleop import LeRobotTeleop

    class Leader:
        is_connected = True
        action_features = {"b.pos": float, "a.pos": float, "c.pos": float}

        def get_action(self):
            return {"a.pos": 1.0, "b.pos": 2.0, "c.pos": 3.0}

    class Follower(_Robot):
        action_names = ["a.pos", "b.pos", "c.pos"]

    teleop = LeRobotTeleop(Leader())
    teleop.connect(Follower())
    np.testing.assert_allclose(teleop.action(None), [1.0, 2.0, 3.0])

    class Other(_Robot):
        action_names = ["a.pos", "b.pos", "wrist.pos"]

    with pytest.raises(KeyError, match="wrist.pos"):
        LeRobotTeleop(Leader()).connect(Other())


def test_imported_lerobot_keys_deploy_on_the_lerobot_adapter_without_overrides():
    """The importer's key for observation.state and the adapter's default group are one convention."""
    from vmp.data.convert.lerobot import store_key
    from vmp.real.lerobot_robot import LeRobotRobot

    from test_real_lerobot import FakeArm

    robot = LeRobotRobot(FakeArm(), 30, -2, 2)
    spec = robot.connect()
    imported = {store_key("observation.state"): (3,), store_key("observation.images.wrist"): (4, 6, 3)}
    assert {k: s for k, (s, _) in spec.obs.items()} == imported


def test_frames_resized_at_training_and_deployment(tmp_path):
    from vmp.data import SequenceSampler
    from vmp.real.camera import ResizingRobot, camera_resizes
    from vmp.real.robot import Observation, RobotSpec

    store = EpisodeStore.create(tmp_path / "s.zarr", {"action": KeySpec((2,), "float32"),
                                                      "top_image": KeySpec((48, 64, 3), "uint8")},
                                {"task": "t", "control_hz": 10})
    frames = np.zeros((5, 48, 64, 3), np.uint8)
    frames[:, :24] = 200  # top half bright
    store.append_episode({"action": np.zeros((5, 2), np.float32), "top_image": frames})
    sampler = SequenceSampler(store, keys=["top_image"], image_sizes={"top_image": (12, 16)})
    img = sampler[0]["obs"]["top_image"]
    assert img.shape == (1, 12, 16, 3) and img[0, :6].min() == 200 and img[0, 6:].max() == 0
    with pytest.raises(KeyError, match="not a sampled camera key"):
        SequenceSampler(store, keys=["top_image"], image_sizes={"action": (2, 2)})

    class Cam:
        spec = RobotSpec({"top_image": ((48, 64, 3), "uint8"), "state": ((2,), "float32")}, 2, 10.0,
                         np.zeros(2), np.ones(2))

        def observe(self):
            return Observation({"top_image": frames[0], "state": np.zeros(2, np.float32)}, 0.0)

    sizes = camera_resizes({"top_image": (12, 16, 3), "state": (2,)}, Cam.spec.obs)
    assert sizes == {"top_image": (12, 16)}
    assert camera_resizes({"top_image": (12, 16, 1)}, Cam.spec.obs) == {}  # other channels: refused elsewhere
    robot = ResizingRobot(Cam(), sizes)
    assert robot.spec.obs["top_image"] == ((12, 16, 3), "uint8")
    np.testing.assert_array_equal(robot.observe().data["top_image"], img[0])  # the same pixels as training saw
