"""Scheduler: staleness, the three blend modes and the RTC prefix, on tick indices (no clock)."""

import math

import numpy as np
import pytest

from vmp.real.scheduler import ActionScheduler, Chunk, DelayTracker, prefix_weights


def test_prefix_weights_match_formula():
    L, d = 7, 2
    w = prefix_weights(L, d, "exp", length=10)
    for i in range(10):
        if i < d:
            expect = 1.0
        elif i < L:
            c = (L - i) / (L - d + 1)
            expect = c * (math.exp(c) - 1) / (math.e - 1)
        else:
            expect = 0.0
        assert w[i] == pytest.approx(expect, rel=1e-6)
    lin = prefix_weights(L, d, "linear")
    assert lin[3] == pytest.approx((L - 3) / (L - d + 1))
    assert (np.diff(w[d:L]) < 0).all()  # decays over the overlap
    hard = prefix_weights(L, d, "hard", length=10)
    assert hard.tolist() == [1.0] * d + [0.0] * (10 - d)  # frozen while the chunk is on its way, free after
    with pytest.raises(ValueError, match="schedule"):
        prefix_weights(3, 1, "cosine")


def test_delay_tracker_plans_with_window_max():
    t = DelayTracker(dt=0.02, window=3, initial_ticks=1)
    assert t.d_hat == 1
    for d in [0.001, 0.05, 0.01]:
        t.add(d)
    assert t.d_hat == 3  # ceil(0.05 / 0.02)
    for d in [0.01, 0.01, 0.01]:
        t.add(d)
    assert t.d_hat == 1  # the spike left the window


def _sched(blend="none", **kw):
    s = ActionScheduler(dt=0.1, horizon=6, n_obs_steps=1, exec_horizon=3, blend=blend, epsilon_s=0.01, **kw)
    s.reset(0.0)
    return s


def test_stale_entries_dropped_and_past_ticks_never_sent():
    s = _sched()
    s.add_chunk(Chunk(np.zeros((6, 1)), 0, 0.0, -0.1, 1), now=-0.1)
    for k in range(3):
        a, src = s.pop(k)
        assert src == 1
    # a chunk from tick 1 arriving at t=0.295: ticks 1, 2 were sent, tick 3 (t=0.3) is due within epsilon
    stale = s.add_chunk(Chunk(np.ones((6, 1)), 1, 0.1, 0.295, 2), now=0.295)
    assert stale == 3
    a, src = s.pop(3)
    assert src == 1 and a[0] == 0.0
    a, src = s.pop(4)
    assert src == 2 and a[0] == 1.0
    with pytest.raises(ValueError, match="already sent"):
        s.pop(4)


def test_ensemble_running_average_matches_definition():
    m = 0.5
    s = _sched("ensemble", ensemble_m=m)
    chunks = [np.full((6, 1), v, np.float32) for v in (1.0, 2.0, 4.0)]
    for i, c in enumerate(chunks):  # all arrive before tick 0 is due
        s.add_chunk(Chunk(c, 0, 0.0, -0.1, i + 1), now=-0.1)
    w = np.exp(-m * np.arange(3))
    expect = (w * np.array([1.0, 2.0, 4.0])).sum() / w.sum()
    a, src = s.pop(0)
    assert a[0] == pytest.approx(expect) and src == 3


def test_underrun_counted():
    s = _sched()
    assert s.pop(0) == (None, None)
    assert s.counters["underrun"] == 1


def test_prefix_request_carries_plan_in_chunk_coordinates():
    s = ActionScheduler(dt=0.1, horizon=8, n_obs_steps=2, exec_horizon=3, blend="prefix", epsilon_s=0.0)
    s.reset(0.0)
    plan = np.arange(7, dtype=np.float32).reshape(7, 1)
    s.add_chunk(Chunk(plan, 0, 0.0, -0.1, 1), now=-0.1)
    for k in range(3):
        a, _ = s.pop(k)
        s.mark_sent(k, a)
    assert s.should_request(3) or s.last_request_tick is None
    req = s.make_request(3)
    assert req.prefix.shape == (8, 1) and req.prefix_weights.shape == (8,)  # padded to the horizon
    # one past step (tick 2, what was sent) + 4 planned (ticks 3..6), then zero-weight padding
    assert req.prefix[0, 0] == 2.0 and np.array_equal(req.prefix[1:5, 0], [3, 4, 5, 6])
    assert req.prefix_weights[0] == 1.0
    assert np.allclose(req.prefix_weights[1:], prefix_weights(4, req.d_hat, length=7))
    assert (req.prefix_weights[5:] == 0).all()


def test_bad_config():
    with pytest.raises(ValueError, match="blend"):
        ActionScheduler(0.1, 8, 2, 3, blend="average")
    with pytest.raises(ValueError, match="exec_horizon"):
        ActionScheduler(0.1, 8, 2, 8)
