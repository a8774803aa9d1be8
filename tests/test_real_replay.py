"""Replay harness on a simulated clock (seam, invariant and latency-sweep tests): seams, invariants, latency sweep.

Recorded observations come from a store written here (expert episodes of the toy reaching task); every mode
replays the same observations with the same policy seed and the same injected delays.
"""

import numpy as np
import pytest

from vmp.data import EpisodeStore, KeySpec
from vmp.real.engine import InferenceEngine
from vmp.real.replay import replay, seam_metrics
from vmp.real.testing import ReachPolicy
from vmp.real.toy import ToyReachEnv

HZ = 50.0
DT = 1.0 / HZ


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """Five expert episodes recorded to a store, read back as lists of per-tick observation dicts."""
    path = tmp_path_factory.mktemp("rec") / "toy.zarr"
    schema = {"pos": KeySpec((2,), "float32"), "target": KeySpec((2,), "float32"), "action": KeySpec((2,), "float32")}
    env = ToyReachEnv(gain=0.01, tol=0.0, max_episode_steps=120)
    with EpisodeStore.create(path, schema, {"task": "toy", "control_hz": HZ}) as store:
        for seed in range(5):
            obs, _ = env.reset(seed=seed)
            ep = {"pos": [], "target": [], "action": []}
            for _ in range(120):
                a = np.clip(4 * (obs["target"] - obs["pos"]), -1, 1).astype(np.float32)
                ep["pos"].append(obs["pos"]), ep["target"].append(obs["target"]), ep["action"].append(a)
                obs, *_ = env.step(a)
            store.append_episode({k: np.stack(v) for k, v in ep.items()})
    with EpisodeStore.open(path) as store:
        episodes = []
        for i in range(store.n_episodes):
            e = store.episode(i)
            episodes.append([{"pos": e["pos"][t], "target": e["target"][t]} for t in range(len(e["pos"]))])
        scale = store.episode(0)["action"].std(axis=0) + 1e-3
    return episodes, scale


def _engine(seed=0, n_obs_steps=2, horizon=16):
    return InferenceEngine(ReachPolicy(n_obs_steps=n_obs_steps, horizon=horizon, seed=seed))


def _median_jump(episodes, scale, blend, s, delay):
    jumps = []
    for i, obs in enumerate(episodes):
        r = replay(_engine(seed=i), obs, HZ, blend, s, delay_s=delay)
        jumps.append(seam_metrics(r.commands, r.sources, scale, DT)["seam_jump"])
    return float(np.median(jumps))


@pytest.mark.parametrize("delay_ticks", [0.3, 2.5])
def test_blending_reduces_seam_jump(recorded, delay_ticks):
    episodes, scale = recorded
    delay = delay_ticks * DT
    none8 = _median_jump(episodes, scale, "none", 8, delay)
    prefix8 = _median_jump(episodes, scale, "prefix", 8, delay)
    none1 = _median_jump(episodes, scale, "none", 1, delay)
    ens1 = _median_jump(episodes, scale, "ensemble", 1, delay)
    assert prefix8 < none8, (prefix8, none8)
    assert ens1 < none1, (ens1, none1)
    assert none8 > 0


def test_frozen_prefix_is_bitwise_and_weights_follow_formula(recorded):
    episodes, _ = recorded
    r = replay(_engine(), episodes[0], HZ, "prefix", 8, delay_s=2.5 * DT)
    checked = 0
    for req, chunk in zip(r.requests, r.chunks):
        if req.prefix is None:
            continue
        past = 1  # n_obs_steps - 1
        full = np.concatenate([np.zeros((past, 2), np.float32), chunk.actions])  # chunk coordinates
        frozen = req.prefix_weights == 1.0
        assert np.array_equal(full[past:len(req.prefix)][frozen[past:]], req.prefix[past:][frozen[past:]])
        checked += 1
    assert checked >= 5


def test_never_sends_a_past_ticks_action(recorded):
    episodes, _ = recorded
    r = replay(_engine(), episodes[1], HZ, "none", 8, delay_s=3.2 * DT)
    by_id = {c.chunk_id: c for c in r.chunks}
    for k, (cmd, src) in enumerate(zip(r.commands, r.sources)):
        if src < 0:
            continue
        c = by_id[src]
        j = k - c.start_tick
        assert 0 <= j < len(c.actions)
        assert np.array_equal(cmd, c.actions[j])  # the action stamped for tick k, nothing older
        assert c.start_tick == 0 or c.ready_time < k * DT  # it had arrived before its tick


@pytest.mark.parametrize("delay_ticks", [0, 1, 2, 4, 6])
def test_latency_sweep_no_underruns_within_exec_horizon(recorded, delay_ticks):
    episodes, _ = recorded
    rng = np.random.default_rng(delay_ticks)
    for blend in ("none", "prefix"):
        # lognormal jitter, capped by the RTC bound d <= min(s, n_exec - s) = 7 ticks (minus epsilon)
        delays = lambda i: min(delay_ticks * DT * rng.lognormal(0, 0.1), 7 * DT - 0.015)
        r = replay(_engine(), episodes[2], HZ, blend, 8, delay_s=delays)
        assert r.holds == 0 and r.counters.get("underrun", 0) == 0, (blend, delay_ticks, r.counters)


def test_delay_beyond_chunk_underruns_and_is_flagged(recorded):
    episodes, _ = recorded
    r = replay(_engine(), episodes[3], HZ, "prefix", 8, delay_s=20 * DT)
    assert r.holds > 0 and r.counters["underrun"] == r.holds
    assert r.counters.get("infeasible_delay", 0) > 0


def test_synthetic_seam_sweep_writes_a_full_results_record(tmp_path):
    """`vmp-bench deploy --seams` without a checkpoint writes a record like every other bench: machine and package
    versions with it (they were missing), the same rows on a rerun."""
    import json

    from vmp.bench.deploy import main

    records = []
    for i in range(2):
        main(["--seams", "--out", str(tmp_path / f"seams{i}.json")])
        records.append(json.loads((tmp_path / f"seams{i}.json").read_text()))
    assert records[0]["metrics"]["rows"] == records[1]["metrics"]["rows"]
    assert {"machine", "versions", "git_rev", "command"} <= set(records[0])
    assert records[0]["versions"]["torch"] and records[0]["kind"] == "seams"
