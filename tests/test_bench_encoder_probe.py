"""vmp-bench encoder-probe: its read-out finds a target that is in the features and not one that is not, its yaw error
is the angle between two poses, and on a robosuite image checkpoint it reads each start state's object pose from the
simulator and writes one score per camera."""

import json

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from vmp.bench import encoder_probe
from vmp.bench.report import tables
from vmp.data import Normalizer
from vmp.policies.build import build_policy
from vmp.policies.checkpoint import save_checkpoint


def test_readout_scores_a_linear_target_high_and_an_unrelated_one_low():
    rng = np.random.default_rng(0)
    features = rng.normal(size=(400, 16))
    in_features = features @ rng.normal(size=16) + 0.05 * rng.normal(size=400)
    unrelated = rng.normal(size=400)
    r2, pred = encoder_probe.ridge_readout(features, np.stack([in_features, unrelated], 1), n_fit=200)
    assert pred.shape == (200, 2)
    assert r2[0] > 0.95 and r2[1] < 0.1


def test_yaw_error_is_the_angle_between_predicted_and_true_yaw():
    yaw = np.linspace(-np.pi, np.pi, 9)
    true = np.stack([np.cos(yaw), np.sin(yaw)], 1)
    turned = np.stack([np.cos(yaw + np.radians(30)), np.sin(yaw + np.radians(30))], 1)
    assert encoder_probe.yaw_error_deg(true * 2.0, true) == pytest.approx(0.0, abs=1e-6)  # the length is not read
    assert encoder_probe.yaw_error_deg(turned, true) == pytest.approx(30.0)


def test_camera_features_hold_the_keypoints_beside_the_grid_when_the_encoder_makes_both():
    from vmp.policies.encoders import ImageEncoder

    images = np.random.default_rng(0).integers(0, 256, size=(3, 16, 16, 3), dtype=np.uint8)
    sizes = {}
    for output in ("spatial_softmax", "tokens", "tokens_and_keypoints"):
        net = ImageEncoder((16, 16, 3), "rgb", 8, "compact_cnn", {"channels": 6}, n_keypoints=5, crop_ratio=1.0,
                           output=output, token_grid=2).eval()
        sizes[output] = encoder_probe.camera_features(net, images).shape
    assert sizes == {"spatial_softmax": (3, 10), "tokens": (3, 24), "tokens_and_keypoints": (3, 34)}


def _random_checkpoint(path, task: str):
    """A BESO checkpoint of `task` with random weights and unit statistics (what the probe reads is its encoders)."""
    with initialize_config_module(config_module="vmp.configs", version_base=None):
        cfg = compose("train", [f"task={task}", "policy=beso", "encoder=compact_cnn", "policy.d_model=32",
                                "policy.n_layers=1", "policy.n_heads=2", "encoder.backbone_kwargs.channels=8",
                                "encoder.n_keypoints=4"])
    lowdim = {k: tuple(v.shape) for k, v in cfg.task.shape_meta.obs.items() if v.get("type", "low_dim") == "low_dim"}
    action_dim = cfg.task.shape_meta.action.shape[0]
    norm = Normalizer.empty({"action": (action_dim,), **lowdim}, {"action": "minmax", **{k: "meanstd" for k in lowdim}})
    for key in norm.keys:
        d = norm.shapes[key][0]
        norm.set_stats(key, min=-np.ones(d), max=np.ones(d), mean=np.zeros(d), std=np.ones(d))
    torch.manual_seed(0)
    policy = build_policy(cfg, norm)
    save_checkpoint(path, {"cfg": OmegaConf.to_yaml(cfg), "policy": policy.state_dict(), "ema": None, "step": 7})
    return path


def test_cli_probes_each_camera_of_a_robosuite_image_checkpoint_and_refuses_a_state_one(tmp_path):
    ckpt = _random_checkpoint(tmp_path / "lift_image.pt", "lift_image")
    encoder_probe.main(["--checkpoint", str(ckpt), "--episodes", "24", "--out-dir", str(tmp_path)])
    (path,) = tmp_path.glob("encoder_probe_*_step7.json")
    record = json.loads(path.read_text())
    m = record["metrics"]
    assert record["kind"] == "encoder_probe" and record["task"] == "lift_image" and m["fit_episodes"] == 12
    assert m["target_std"]["x"] > 0.005 and m["target_std"]["y"] > 0.005  # each seed places the cube elsewhere
    for name in ("trained", "random_weights"):
        assert set(m[name]) == {"agentview_image", "eye_in_hand_image", "all_cameras"}
        assert all(set(score) == {*encoder_probe.TARGETS, "yaw_error_deg"} for score in m[name].values())
    page = tables([record])  # the results page's row: both cameras, trained and random weights
    both = m["trained"]["all_cameras"]
    assert f"| lift_image | {record['variant']} | 24 | trained | {both['x']:.2f} | {both['y']:.2f} |" in page
    assert "| random weights |" in page
    with pytest.raises(ValueError, match="trained without cameras"):
        encoder_probe.probe(_random_checkpoint(tmp_path / "lift.pt", "lift"), 20, 300000)


def test_object_pose_is_the_simulators_cube_pose():
    from vmp.sim import load_task_cfg, make

    env = make(load_task_cfg("lift"))
    try:
        poses = []
        for seed in (0, 1):
            _, info = env.reset(seed=seed)
            pose = encoder_probe.object_pose(info["start"])
            cube = env.unwrapped.privileged()["cube_pos"]
            assert pose[:2] == pytest.approx(cube[:2], abs=1e-6)
            assert np.hypot(pose[2], pose[3]) == pytest.approx(1.0)
            poses.append(pose)
        assert not np.allclose(poses[0], poses[1])
    finally:
        env.close()
