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
    assert eng.latency_percentiles()["n"] == 1
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
