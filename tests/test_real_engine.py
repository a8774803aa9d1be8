"""InferenceEngine: shapes checked at the boundary, prefix support detected, robot keys refused by name."""

import numpy as np
import pytest

from vmp.real.engine import InferenceEngine
from vmp.real.testing import NoPrefixReachPolicy, ReachPolicy


def test_infer_shapes_and_latency():
    eng = InferenceEngine(ReachPolicy(n_obs_steps=2, horizon=16))
    assert eng.supports_prefix and not eng.bf16 and not eng.compiled  # CPU: eager float32
    window = eng.example_window()
    eng.warmup(window, n=2)
    out = eng.infer(window).actions
    assert out.shape == (16, 2) and out.dtype == np.float32
    assert eng.latency_summary()["n"] == 1
    with pytest.raises(ValueError, match=r"'pos': expected shape \(2, 2\)"):
        eng.infer({"pos": np.zeros((1, 2), np.float32), "target": np.zeros((2, 2), np.float32)})
    with pytest.raises(KeyError, match="target"):
        eng.infer({"pos": np.zeros((2, 2), np.float32)})


def test_prefix_passed_only_to_heads_that_accept_it():
    eng = InferenceEngine(ReachPolicy(n_obs_steps=1, horizon=4, offset_scale=0.0))
    y = np.full((2, 2), 0.25, np.float32)
    out = eng.infer(eng.example_window(), prefix=y, prefix_weights=np.array([1.0, 1.0], np.float32)).actions
    assert np.array_equal(out[:2], y)
    plain = InferenceEngine(NoPrefixReachPolicy(n_obs_steps=1, horizon=4))
    assert not plain.supports_prefix
    assert plain.infer(plain.example_window(), prefix=y, prefix_weights=np.ones(2, np.float32)).actions.shape == (4, 2)


def test_nonfinite_chunk_raises():
    eng = InferenceEngine(ReachPolicy(n_obs_steps=1, horizon=4, nan_at=0))
    with pytest.raises(FloatingPointError, match="non-finite"):
        eng.infer(eng.example_window())


def test_robot_key_check_names_keys():
    eng = InferenceEngine(ReachPolicy(obs_shapes={"pos": (2,), "object": (10,)}))
    eng.check_robot_keys({"pos": ((2,), "float32"), "object": ((10,), "float32"), "extra": ((1,), "float32")})
    with pytest.raises(KeyError, match=r"missing keys \['object'\]"):
        eng.check_robot_keys({"pos": ((2,), "float32")})


def test_each_camera_frame_is_encoded_once_and_cached_chunks_match_uncached():
    """n_obs_steps=2: each frame is in two consecutive windows. The engine's encoder keeps per-frame features, so a
    window with one new frame runs the image backbone on that frame alone, and the chunks equal those computed with
    every frame encoded afresh (same noise)."""
    import torch
    from omegaconf import OmegaConf

    from vmp.data import Normalizer
    from vmp.policies.build import build_policy

    cfg = OmegaConf.create({
        "task": {"name": "toy", "goal_keys": [], "shape_meta": {"obs": {"cam_image": {"shape": [16, 16, 3], "type": "rgb"},
                                                                         "state": {"shape": [2], "type": "low_dim"}},
                                                                 "action": {"shape": [2]}}},
        "policy": {"name": "beso", "n_obs_steps": 2, "horizon": 8, "n_action_steps": 4, "d_model": 32, "n_layers": 1,
                   "n_heads": 2, "dropout": 0.0},
        "encoder": {"backbone": "compact_cnn", "backbone_kwargs": {}, "n_keypoints": 8, "crop_ratio": 0.9,
                    "lowdim_hidden": 32},
    })

    def policy():
        torch.manual_seed(0)
        normalizer = Normalizer.empty({"action": (2,), "state": (2,)}, {"action": "minmax", "state": "meanstd"})
        for key in normalizer.keys:
            normalizer.set_stats(key, min=[-1.0, -1.0], max=[1.0, 1.0], mean=[0.0, 0.0], std=[1.0, 1.0])
        return build_policy(cfg, normalizer)

    cached, plain = InferenceEngine(policy()), InferenceEngine(policy())
    plain.policy.encoder.cache_frames = False
    assert cached.policy.encoder.cache_frames
    frames = np.random.default_rng(0).integers(0, 256, (6, 16, 16, 3), dtype=np.uint8)
    encoded = []
    backbone = cached.policy.encoder.images["cam_image"]
    backbone.register_forward_hook(lambda module, inputs, output: encoded.append(inputs[0].shape[0]))
    for t in range(1, 6):
        window = {"cam_image": frames[t - 1:t + 1], "state": np.full((2, 2), 0.1 * t, np.float32)}
        a, b = cached.infer(window).actions, plain.infer(window).actions
        np.testing.assert_allclose(a, b, atol=1e-5)
    assert encoded == [2, 1, 1, 1, 1]  # the first window's two frames, then one new frame per window


def test_process_engine_matches_the_in_process_engine_and_checks_windows():
    """The engine in its own process (vmp-deploy's default) gives the chunks the in-process engine gives for the same
    windows, prefix included, and refuses a window of the wrong keys or shapes by name before it crosses."""
    import functools

    from vmp.real.inference_process import ProcessEngine

    build = functools.partial(InferenceEngine, ReachPolicy(n_obs_steps=2, horizon=8, seed=3))
    local, remote = build(), ProcessEngine(build)
    try:
        assert remote.obs_shapes == local.obs_shapes and remote.horizon == 8 and remote.supports_prefix
        rng = np.random.default_rng(0)
        for step in range(3):
            window = {k: rng.standard_normal((2, *s)).astype(np.float32) for k, s in local.obs_shapes.items()}
            prefix, weights = np.full((2, 2), 0.3, np.float32), np.ones(2, np.float32)
            np.testing.assert_allclose(remote.infer(window, prefix=prefix, prefix_weights=weights, step=step).actions,
                                       local.infer(window, prefix=prefix, prefix_weights=weights, step=step).actions)
        with pytest.raises(ValueError, match=r"observation 'pos': expected shape \(2, 2\)"):
            remote.infer({"pos": np.zeros((1, 2), np.float32), "target": np.zeros((2, 2), np.float32)})
        with pytest.raises(KeyError, match="lacks key 'target'"):
            remote.infer({"pos": np.zeros((2, 2), np.float32)})
        assert remote.latency_summary()["n"] == 3
    finally:
        remote.close()
    assert not remote.proc.is_alive()


def test_both_engines_are_what_the_control_loop_takes():
    """The loop is typed on the `Engine` protocol; the in-process and the process engine both provide it."""
    from vmp.real.engine import Engine, InferenceEngine
    from vmp.real.inference_process import ProcessEngine

    assert isinstance(InferenceEngine(ReachPolicy()), Engine)
    for member in ("reset", "infer", "start_worker"):
        assert callable(getattr(ProcessEngine, member)), member
