"""vmp-bench encoder-probe: whether an image policy's camera features say where the object it must grasp lies and
how it is turned, measured in simulation on start states it was not tuned on.

Each episode seed's first observation (the object untouched, as the policy sees it before its grasp) goes through
the checkpoint's image encoders in eval mode (centre crop); the features are each camera's spatial-softmax keypoints
and/or pooled grid features (as its `image_output` makes them), before the projection into the head. A ridge
regression fitted on half of the seeds predicts the moved object's pose from them on the other half; R² per target:
- x, y: the object's position on the table (metres, world frame);
- cos yaw, sin yaw: its rotation about the vertical (what a square nut's grasp needs beyond its position), and the
  median angle between the yaw the two read-outs give and the true one (degrees; 90 is what guessing gives).
Beside the trained encoder, the same architecture with random weights (what the features give before training),
per camera and both cameras together. R² near 1: a linear read-out of the features carries the target; near 0 or
below: it does not.

    vmp-bench encoder-probe --checkpoint runs/square_image-beso-cpu-seed0 [--episodes 400] [--first-seed 300000]
"""

from __future__ import annotations

import argparse
import copy
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vmp.bench.common import RESULTS_DIR, device_name, given_args, write_result

log = logging.getLogger(__name__)

TARGETS = ("x", "y", "cos_yaw", "sin_yaw")
RIDGE_ALPHAS = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)


def object_pose(start: dict[str, Any]) -> np.ndarray:
    """The moved object's (x, y, cos yaw, sin yaw) in the world frame where an episode starts, from a robosuite
    reset's ``info["start"]`` (the simulator's, privileged)."""
    (x, y), yaw = start["object_xy"], np.radians(start["object_yaw_deg"])
    return np.array([x, y, np.cos(yaw), np.sin(yaw)], dtype=np.float64)


def ridge_readout(features: np.ndarray, targets: np.ndarray, n_fit: int) -> tuple[np.ndarray, np.ndarray]:
    """Ridge regression from features [N, F] to targets [N, K], fitted on the first `n_fit` rows (its strength chosen
    on the last fifth of them) -> (R² per target, predictions) on the rest."""
    mean, std = features[:n_fit].mean(0), features[:n_fit].std(0) + 1e-8
    z = (features - mean) / std
    fit, test = slice(0, n_fit), slice(n_fit, None)
    n_inner = int(n_fit * 0.8)

    def solve(rows: slice, alpha: float) -> np.ndarray:
        x = np.hstack([z[rows], np.ones((z[rows].shape[0], 1))])
        reg = alpha * np.eye(x.shape[1])
        reg[-1, -1] = 0.0  # no penalty on the intercept
        return np.linalg.solve(x.T @ x + reg, x.T @ targets[rows])

    def predict(weights: np.ndarray, rows: slice) -> np.ndarray:
        return np.hstack([z[rows], np.ones((z[rows].shape[0], 1))]) @ weights

    def r2(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
        return 1.0 - ((pred - true) ** 2).sum(0) / (((true - true.mean(0)) ** 2).sum(0) + 1e-12)

    inner_fit, inner_val = slice(0, n_inner), slice(n_inner, n_fit)
    alpha = max(RIDGE_ALPHAS, key=lambda a: r2(predict(solve(inner_fit, a), inner_val), targets[inner_val]).mean())
    pred = predict(solve(fit, alpha), test)
    return r2(pred, targets[test]), pred


def yaw_error_deg(pred: np.ndarray, true: np.ndarray) -> float:
    """Median absolute angle between predicted and true yaw (columns cos, sin), in degrees."""
    diff = np.arctan2(pred[:, 1], pred[:, 0]) - np.arctan2(true[:, 1], true[:, 0])
    return float(np.degrees(np.median(np.abs(np.arctan2(np.sin(diff), np.cos(diff))))))


def camera_features(net: torch.nn.Module, images: np.ndarray) -> np.ndarray:
    """One camera's frames [N, H, W, C] uint8 -> its encoder's pooled features [N, F], before the projection (with
    `tokens_and_keypoints`, the keypoints beside the grid)."""
    with torch.no_grad():
        feat = net.backbone_features(torch.from_numpy(images).permute(0, 3, 1, 2))
        pools = [net.pool, *([net.keypoint_pool] if hasattr(net, "keypoint_pool") else [])]
        return np.hstack([pool(feat).reshape(len(images), -1).numpy() for pool in pools])


def probe(checkpoint: Path, episodes: int, first_seed: int) -> dict[str, Any]:
    """The R² table above for one image checkpoint -> metrics."""
    from vmp.policies.checkpoint import load_policy, read_checkpoint
    from vmp.sim import make

    policy, cfg = load_policy(checkpoint, "cpu")
    encoder = getattr(policy, "encoder", None)
    if encoder is None or not encoder.images:
        keys = getattr(encoder, "obs_keys", None)
        raise ValueError(f"{checkpoint} was trained without cameras (obs keys {keys}): nothing to probe")
    env = make(cfg.task)
    if not hasattr(env.unwrapped, "moved_object_pose"):
        raise ValueError(f"task {cfg.task.name!r} is not a robosuite task: vmp-bench encoder-probe reads robosuite "
                         "object poses")
    frames: dict[str, list[np.ndarray]] = {key: [] for key in encoder.images}
    poses = []
    try:
        for seed in range(first_seed, first_seed + episodes):
            obs, info = env.reset(seed=seed)
            for key in frames:
                frames[key].append(obs[key])
            poses.append(object_pose(info["start"]))
    finally:
        env.close()
    targets = np.stack(poses)
    torch.manual_seed(0)
    untrained = {key: copy.deepcopy(net) for key, net in encoder.images.items()}
    for net in untrained.values():
        for module in net.modules():
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()
    n_fit = episodes // 2
    result: dict[str, Any] = {"targets": list(TARGETS), "episodes": episodes, "first_seed": first_seed,
                              "fit_episodes": n_fit, "target_std": dict(zip(TARGETS, targets.std(0).round(4).tolist()))}
    for name, nets in (("trained", dict(encoder.images)), ("random_weights", untrained)):
        feats = {key: camera_features(net.eval(), np.stack(frames[key])) for key, net in nets.items()}
        if len(feats) > 1:
            feats["all_cameras"] = np.hstack(list(feats.values()))
        result[name] = {}
        for key, f in feats.items():
            r2, pred = ridge_readout(f, targets, n_fit)
            result[name][key] = {**dict(zip(TARGETS, np.round(r2, 3).tolist())),
                                 "yaw_error_deg": round(yaw_error_deg(pred[:, 2:], targets[n_fit:, 2:]), 1)}
    result["task"], result["head"] = str(cfg.task.name), str(cfg.policy.name)
    result["train_steps"] = int(read_checkpoint(checkpoint).get("step") or 0)
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="vmp-bench encoder-probe", description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", required=True, help="an image policy's checkpoint or run folder")
    parser.add_argument("--episodes", type=int, default=400, help="start states probed, half to fit (default 400)")
    parser.add_argument("--first-seed", type=int, default=300000,
                        help="the first episode seed (default 300000: apart from collection's and vmp-eval's)")
    parser.add_argument("--out-dir", type=Path, default=RESULTS_DIR, help="where the record goes (default: results/)")
    args = parser.parse_args(given_args(argv))
    if args.episodes < 20:
        parser.error("--episodes must be at least 20 (half fit the read-out, half score it)")
    from vmp.policies.checkpoint import resolve_checkpoint

    path = resolve_checkpoint(args.checkpoint)
    metrics = probe(path, args.episodes, args.first_seed)
    task, head, step = metrics.pop("task"), metrics.pop("head"), metrics.pop("train_steps")
    run = Path(args.checkpoint).name if Path(args.checkpoint).is_dir() else path.parent.parent.name
    out = write_result(f"encoder_probe_{run}_step{step}", "encoder_probe", task, "image", head, f"{run}, step {step}",
                       metrics, device_name("cpu"), " ".join(["vmp-bench encoder-probe", *given_args(argv)]),
                       budget={"train_steps": step}, out_dir=args.out_dir)
    for name in ("trained", "random_weights"):
        log.info("%s: %s", name, metrics[name])
    log.info("-> %s", out)
