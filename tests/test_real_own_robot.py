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
    from vmp.real import teleop_record as record

    # save (success), discard, re-record, save the re-recorded one (success), save (marked failure)
    operator = ScriptedOperator(["s", "y", "d", "r", "s", "y", "s", "n"])
    monkeypatch.setattr("vmp.real.operator.build_operator", lambda ocfg, kind: operator)
    cfg = _record_cfg(tmp_path, "n_episodes=3", "instruction=reach the target", "seed=10")
    summary = record.run(cfg)
    assert summary["saved"] == 3 and summary["attempts"] == 5
    assert [e["seed"] for e in summary["episodes"]] == [10, 12, 13]  # 11 discarded; 12 re-recorded, same seed
    assert sum("reset the scene" in p for p in operator.asked) == 5 and not operator.answers
    store = EpisodeStore.open(tmp_path / "demos.zarr")
    assert store.n_episodes == 3 and set(store.keys) == {"pos", "target", "action", "policy_action", "tick_time", "command_status"}
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
    from vmp.real import teleop_record as record

    EpisodeStore.create(tmp_path / "demos.zarr", {"action": KeySpec((3,), "float32"), "state": KeySpec((4,), "float32")},
                        {"task": "x", "control_hz": 10})
    with pytest.raises(ValueError, match=r"key 'state': the store has \(\(4,\), 'float32'\), this run writes none.*new store"):
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


def deploy_imported(store_path, tmp_path, joints, cameras):
    """Train a tiny policy on an imported store through the generated task, then deploy it on the LeRobot adapter
    (default settings: no obs_groups) -> the daemon's summary."""
    from vmp.policies.train import train
    from vmp.real.daemon import run

    config = task_config(EpisodeStore.open(store_path), "imported")
    write_task_config(config, tmp_path / "vmp_configs", str(store_path))
    run_dir = tmp_path / "run"
    with initialize_config_module(config_module="vmp.configs", version_base=None):
        cfg = compose("train", [f"hydra.searchpath=[file://{tmp_path / 'vmp_configs'}]", "task=imported", "policy=beso",
                                "encoder=compact_cnn", "policy.d_model=32", "policy.n_layers=1", "policy.horizon=4",
                                "policy.n_obs_steps=1", "policy.n_action_steps=2", "training.steps=2",
                                "training.batch_size=4", "training.val_ratio=0", f"run_dir={run_dir}"])
        train(cfg)
        dcfg = compose("deploy", ["robot=custom", "robot.target=vmp.real.testing:fake_lerobot_robot",
                                  f"+robot.kwargs.joints={joints}", f"+robot.kwargs.cameras={cameras}",
                                  f"checkpoint={run_dir}", "n_episodes=1", "max_ticks=5", "metrics.enabled=false",
                                  "operator.kind=scripted", "operator.answers=[y]", f"record.path={tmp_path / 'rec.zarr'}"])
    return run(dcfg, tmp_path)


def test_store_in_the_importers_keys_deploys_on_the_lerobot_adapter(tmp_path):
    """What `vmp-data import-lerobot` writes (observation.state -> state, observation.images.top -> top_image) trains
    and deploys on a LeRobot robot with the same features, no overrides (the LeRobot-environment test imports a real
    LeRobot data set instead)."""
    from vmp.data.convert.lerobot import store_key

    state, top = store_key("observation.state"), store_key("observation.images.top")
    store = EpisodeStore.create(tmp_path / "imported.zarr", {state: KeySpec((2,), "float32"),
                                                             top: KeySpec((32, 32, 3), "uint8"),
                                                             "action": KeySpec((2,), "float32")},
                                {"task": "tiny", "control_hz": 10.0})
    rng = np.random.default_rng(0)
    for n in (6, 4):
        store.append_episode({state: rng.normal(size=(n, 2)), top: np.full((n, 32, 32, 3), 40, np.uint8),
                              "action": rng.normal(size=(n, 2))}, text={"language": "tiny"})
    summary = deploy_imported(tmp_path / "imported.zarr", tmp_path, "[a,b]", "{top: [32,32,3]}")
    assert summary["error"] is None and summary["n_episodes"] == 1 and summary["successes"] == 1


@pytest.mark.lerobot
def test_imported_lerobot_dataset_deploys_on_the_matching_lerobot_robot(tmp_path):
    pytest.importorskip("lerobot")
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    from vmp.data.convert.lerobot import import_lerobot

    features = {
        "observation.state": {"dtype": "float32", "shape": (2,), "names": ["a.pos", "b.pos"]},
        "observation.images.top": {"dtype": "video", "shape": (32, 32, 3), "names": ["height", "width", "channels"]},
        "action": {"dtype": "float32", "shape": (2,), "names": ["a.pos", "b.pos"]},
    }
    ds = LeRobotDataset.create("local/tiny", fps=10, features=features, root=tmp_path / "tiny", use_videos=True)
    rng = np.random.default_rng(0)
    for n in (6, 4):
        for _ in range(n):
            s = rng.normal(size=2).astype(np.float32)
            ds.add_frame({"observation.state": s, "action": s, "task": "tiny",
                          "observation.images.top": np.full((32, 32, 3), 40, np.uint8)})
        ds.save_episode()
    ds.finalize()
    import_lerobot(tmp_path / "tiny", tmp_path / "imported.zarr", repo_id="local/tiny").close()
    summary = deploy_imported(tmp_path / "imported.zarr", tmp_path, "[a,b]", "{top: [32,32,3]}")
    assert summary["error"] is None and summary["n_episodes"] == 1 and summary["successes"] == 1
