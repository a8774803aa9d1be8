"""LeRobot policies behind our Policy interface (vmp.policies.lerobot_policy), and the export that feeds them.

The lerobot-marked tests run in the `make test-lerobot` environment; the refusals run everywhere."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest


def _export(tmp_path: Path, image: bool) -> Path:
    """A small store with Lift's low-dim keys (plus a 32 px camera when ``image``), exported with the robot's keys in
    observation.state and the object in observation.environment_state."""
    from vmp.data import EpisodeStore
    from vmp.data.convert.lerobot import export_lerobot
    from vmp.data.schema import KeySpec
    from vmp.data.testing import make_learnable_lift_store

    store = make_learnable_lift_store(tmp_path / "lift.zarr", n_episodes=4, length=20)
    if image:  # the same episodes with a camera added
        src = EpisodeStore.open(store)
        schema = {**src.schema, "agentview_image": KeySpec((32, 32, 3), "uint8", "camera")}
        rng = np.random.default_rng(1)
        with EpisodeStore.create(tmp_path / "lift_image.zarr", schema, {"task": "lift", "control_hz": 20}) as dst:
            for e in range(src.n_episodes):
                ep = src.episode(e)
                ep["agentview_image"] = rng.integers(0, 256, (len(ep["action"]), 32, 32, 3), dtype=np.uint8)
                dst.append_episode(ep)
        store = tmp_path / "lift_image.zarr"
    return export_lerobot(store, tmp_path / "data", repo_id="local/data", video=False,
                          state_keys=["eef_pos", "eef_quat", "gripper_qpos"], env_state_keys=["object"])


def _save_untrained(tmp_path: Path, dataset: Path, kind: str) -> Path:
    """A LeRobot policy of ``kind`` built for the data set and saved as lerobot-train saves one (model, processors
    with the data set's statistics, train_config.json naming the data set)."""
    from lerobot.configs.types import FeatureType
    from lerobot.datasets.lerobot_dataset import LeRobotDataset
    from lerobot.datasets.utils import dataset_to_policy_features
    from lerobot.policies.factory import get_policy_class, make_policy_config, make_pre_post_processors

    ds = LeRobotDataset("local/data", root=dataset)
    features = dataset_to_policy_features(ds.meta.features)
    outputs = {k: f for k, f in features.items() if f.type is FeatureType.ACTION}
    inputs = {k: f for k, f in features.items() if k not in outputs}
    extra = {"down_dims": (16, 32), "crop_shape": None, "num_inference_steps": 4} if kind == "diffusion" else \
        {"dim_model": 32, "dim_feedforward": 64, "n_heads": 2, "chunk_size": 6, "n_action_steps": 4, "latent_dim": 8,
         "n_vae_encoder_layers": 1, "pretrained_backbone_weights": None}
    config = make_policy_config(kind, device="cpu", input_features=inputs, output_features=outputs, **extra)
    policy = get_policy_class(kind)(config)
    pre, post = make_pre_post_processors(config, dataset_stats=ds.meta.stats)
    out = tmp_path / kind / "pretrained_model"
    policy.save_pretrained(out)
    pre.save_pretrained(out)
    post.save_pretrained(out)
    (out / "train_config.json").write_text(json.dumps({"dataset": {"root": str(dataset)}, "steps": 0,
                                                       "batch_size": 8}))
    return out


@pytest.mark.lerobot
@pytest.mark.parametrize("kind,image", [("diffusion", True), ("act", False)])
def test_adapter_acts_exactly_as_lerobot_runs_its_own_policy(tmp_path, kind, image):
    """Step by step, the adapter's actions equal those of LeRobot's own loop (preprocessor -> select_action ->
    postprocessor, as lerobot-eval runs it) on the same observations and seed: features built from our keys in the
    export's order, the observation history, chunking and normalization all match."""
    pytest.importorskip("lerobot")
    import torch

    from vmp.policies.lerobot_policy import LeRobotPolicy

    dataset = _export(tmp_path, image)
    path = _save_untrained(tmp_path, dataset, kind)
    ours = LeRobotPolicy(path.parent)  # a step folder holding pretrained_model/ is found too
    assert ours.task == "lift" and ours.action_dim == 7
    assert set(ours.obs_shapes) == {"eef_pos", "eef_quat", "gripper_qpos", "object", *(["agentview_image"] if image else [])}
    theirs = LeRobotPolicy(path)  # the same files, driven through LeRobot's own select_action below
    rng = np.random.default_rng(0)
    steps = [{k: (rng.integers(0, 256, s, dtype=np.uint8) if k.endswith("_image") else rng.normal(size=s).astype(np.float32))
              for k, s in ours.obs_shapes.items()} for _ in range(10)]
    torch.manual_seed(3)
    ours.reset()
    mine = [ours.select_action(o) for o in steps]
    torch.manual_seed(3)
    theirs.model.reset()
    reference = []
    for o in steps:
        frame = {"observation.state": torch.as_tensor(np.concatenate([o["eef_pos"], o["eef_quat"], o["gripper_qpos"]])),
                 "observation.environment_state": torch.as_tensor(o["object"])}
        if image:
            frame["observation.images.agentview"] = torch.as_tensor(o["agentview_image"]).permute(2, 0, 1).float() / 255
        with torch.no_grad():
            action = theirs.model.select_action(theirs.preprocessor(frame))
        reference.append(theirs.postprocessor(action)[0].numpy())
    np.testing.assert_allclose(np.stack(mine), np.stack(reference), rtol=1e-5, atol=1e-5)
    assert len(ours.inference_times_ms) == -(-10 // ours.n_action_steps)  # one chunk per n_action_steps steps


@pytest.mark.lerobot
def test_export_concatenates_state_and_the_importer_splits_it_back(tmp_path):
    pytest.importorskip("lerobot")
    from vmp.data import EpisodeStore
    from vmp.data.convert.lerobot import import_lerobot

    dataset = _export(tmp_path, image=False)
    info = json.loads((dataset / "meta" / "info.json").read_text())["features"]
    assert info["observation.state"]["shape"] == [9] and info["observation.environment_state"]["shape"] == [10]
    import_lerobot(dataset, tmp_path / "back.zarr").close()
    a, b = EpisodeStore.open(tmp_path / "lift.zarr"), EpisodeStore.open(tmp_path / "back.zarr")
    assert set(b.keys) == set(a.keys)
    for e in range(a.n_episodes):
        for key in a.keys:
            np.testing.assert_array_equal(b.episode(e)[key], a.episode(e)[key])


@pytest.mark.lerobot
def test_lerobot_train_checkpoint_evaluates_through_vmp_eval(tmp_path):
    """lerobot-train's own output (2 steps of a tiny ACT) loads by its output folder; vmp-eval runs it on the task the
    data set came from, and a task whose observations differ is refused naming the keys."""
    pytest.importorskip("lerobot")
    from hydra import compose, initialize_config_module

    from vmp.sim.evaluate import load_checkpoint_cell

    dataset = _export(tmp_path, image=False)
    out = tmp_path / "act_run"
    train = Path(sys.executable).parent / "lerobot-train"
    subprocess.run([str(train), "--dataset.repo_id=local/data", f"--dataset.root={dataset}", "--policy.type=act",
                    "--policy.device=cpu", "--policy.push_to_hub=false", "--policy.dim_model=32",
                    "--policy.dim_feedforward=64", "--policy.n_heads=2", "--policy.chunk_size=6",
                    "--policy.n_action_steps=4", "--policy.pretrained_backbone_weights=null", "--steps=2",
                    "--save_freq=2", "--batch_size=4", "--num_workers=0", "--eval_freq=0", "--wandb.enable=false",
                    f"--output_dir={out}"], check=True, capture_output=True)
    with initialize_config_module(config_module="vmp.configs", version_base=None):
        task, make_policy, head, budget = load_checkpoint_cell(str(out), None, "cpu", None)
        assert task.name == "lift" and head == "lerobot-act" and budget["train_steps"] == 2
        policy = make_policy()
        chunk = policy.predict_window({k: np.zeros((1, *s), np.float32) for k, s in policy.obs_shapes.items()})
        assert chunk.actions.shape == (6, 7) and np.isfinite(chunk.actions).all()
        other = compose(config_name="eval", overrides=["task=lift_image"]).task
        with pytest.raises(ValueError, match=r"reads \{'object': \(10,\)\}, which task=lift_image does not give"):
            load_checkpoint_cell(str(out), other, "cpu", None)


def test_a_lerobot_folder_without_its_data_set_map_is_refused_by_name(tmp_path):
    """A folder that holds a LeRobot policy is recognised, and one whose data set was not exported by vmp-data (no
    meta/vmp.json) is refused naming what to do, before any model is built."""
    from vmp.policies.lerobot_policy import feature_map, pretrained_dir

    folder = tmp_path / "run" / "checkpoints" / "last" / "pretrained_model"
    folder.mkdir(parents=True)
    assert pretrained_dir(tmp_path / "run") is None
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"")
    assert pretrained_dir(tmp_path / "run") == folder and pretrained_dir(folder.parent) == folder
    with pytest.raises(FileNotFoundError, match="no train_config.json"):
        feature_map(folder)
    (folder / "train_config.json").write_text(json.dumps({"dataset": {"root": str(tmp_path / "elsewhere")}}))
    with pytest.raises(FileNotFoundError, match=r"no meta/vmp.json: train LeRobot policies on a data set written by "
                                                r"`vmp-data export --format lerobot`"):
        feature_map(folder)
