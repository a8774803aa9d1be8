"""Safety layer: whatever comes in, commands stay within limits and rate; holds and the watchdog stop."""

import numpy as np
import pytest

from vmp.real.safety import SafetyLayer


def test_clamp_and_rate_limit_hold_for_any_input():
    rng = np.random.default_rng(0)
    s = SafetyLayer([-1, -2], [1, 2], max_delta=0.1, watchdog_s=10.0)
    s.reset(0.0)
    prev = s.last.copy()
    for i in range(500):
        a = rng.normal(0, 5, 2) if i % 7 else None
        if i % 13 == 0:
            a = np.array([np.nan, 1.0])
        cmd, status = s.filter(a, i * 0.01)
        assert status in ("ok", "clamped", "hold")
        assert (cmd >= [-1, -2]).all() and (cmd <= [1, 2]).all()
        assert np.abs(cmd - prev).max() <= 0.1 + 1e-6
        prev = cmd
    assert s.counters["nonfinite"] > 0 and s.counters["clamped"] > 0 and s.counters["hold"] > 0


def test_hold_modes():
    s = SafetyLayer([-1] * 3, [1] * 3, hold="zero", keep_dims=[2])
    s.reset(0.0)
    s.filter(np.array([0.5, 0.5, 0.9]), 0.0)
    cmd, status = s.filter(None, 0.01)
    assert status == "hold" and np.allclose(cmd, [0, 0, 0.9])
    s = SafetyLayer([-1] * 3, [1] * 3, hold="last")
    s.reset(0.0)
    s.filter(np.array([0.5, 0.5, 0.9]), 0.0)
    assert np.allclose(s.filter(None, 0.01)[0], [0.5, 0.5, 0.9])


def test_watchdog_latches_stop_and_reset_clears_it():
    s = SafetyLayer([-1], [1], watchdog_s=0.1)
    s.reset(0.0)
    assert s.filter(np.array([0.2]), 0.0)[1] == "ok"
    assert s.filter(None, 0.05)[1] == "hold"
    cmd, status = s.filter(None, 0.2)
    assert status == "stop" and cmd is None
    assert s.filter(np.array([0.2]), 0.21) == (None, "stop")  # latched for the episode
    s.reset(1.0)
    assert s.filter(np.array([0.2]), 1.0)[1] == "ok"


def test_bad_config_and_shapes():
    with pytest.raises(ValueError, match="low <= high"):
        SafetyLayer([1], [0])
    with pytest.raises(ValueError, match="hold"):
        SafetyLayer([0], [1], hold="drift")
    with pytest.raises(ValueError, match="keep_dims"):
        SafetyLayer([0], [1], keep_dims=[3])
    with pytest.raises(ValueError, match="dims"):
        SafetyLayer([0], [1]).filter(np.zeros(2), 0.0)
