"""vmp-deploy with a real (tiny, barely trained) BESO checkpoint: the Lift task over SimRobot, and key refusal."""

import numpy as np
import pytest
from hydra import compose, initialize_config_module

from vmp.data import EpisodeStore, KeySpec
from vmp.real import daemon

LIFT_KEYS = {"eef_pos": 3, "eef_quat": 4, "gripper_qpos": 2, "object": 10}


def _random_lift_store(path, n_episodes, length, seed, keys=LIFT_KEYS):
    """A store with Lift's low-dim keys (or some of them) and random episodes."""
    rng = np.random.default_rng(seed)
    schema = {k: KeySpec((d,), "float32", k) for k, d in keys.items()}
    schema["action"] = KeySpec((7,), "float32", "action")
    with EpisodeStore.create(path, schema, {"task": "lift", "control_hz": 20}) as store:
        for _ in range(n_episodes):
            ep = {k: rng.normal(size=(length, d)).astype(np.float32) for k, d in keys.items()}
            ep["action"] = np.tanh(rng.normal(size=(length, 7))).astype(np.float32)
            store.append_episode(ep)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from vmp.policies.train import train

    tmp = tmp_path_factory.mktemp("ckpt")
    _random_lift_store(tmp / "s.zarr", n_episodes=4, length=20, seed=0)
    with initialize_config_module(config_module="vmp.configs", version_base=None):
        cfg = compose("train", overrides=[
            "task=lift", f"store={tmp / 's.zarr'}", f"run_dir={tmp / 'run'}", "policy.d_model=16", "policy.n_layers=1",
            "policy.n_heads=2", "training.batch_size=8", "training.warmup_steps=1", "training.val_ratio=0.25",
            "training.steps=2", "training.val_every=1000", "training.ckpt_every=1000", "training.log_every=1"])
    return train(cfg)


def _cfg(tmp_path, *overrides):
    with initialize_config_module(config_module="vmp.configs", version_base=None):
        return compose("deploy", ["metrics.port=0", f"record.path={tmp_path / 'rec.zarr'}",
                                  f"summary_path={tmp_path / 'summary.json'}", *overrides])


def test_checkpoint_keys_refused_by_a_robot_without_them(tmp_path, checkpoint):
    with pytest.raises(KeyError, match="eef_pos"):
        daemon.run(_cfg(tmp_path, "robot=toy", f"checkpoint={checkpoint}"), tmp_path)


def test_lift_checkpoint_runs_on_sim_robot_with_eval_seeds(tmp_path, checkpoint):
    summary = daemon.run(_cfg(tmp_path, "robot=sim", f"checkpoint={checkpoint}", "n_episodes=2", "seed=100000",
                              "max_ticks=12", "engine.warmup=1",
                              # what is tested is the deployment path, not timing: a fresh-clone run beside two
                              # trainings once waited over 30 s for the sim server and 0.5 s for a chunk
                              "robot.timeout_s=300", "robot.safety.watchdog_s=60"), tmp_path)
    assert summary["error"] is None
    assert [e["seed"] for e in summary["episodes"]] == [100000, 100001]
    assert all(e["reason"] in ("max_ticks", "success", "done") for e in summary["episodes"])
    with EpisodeStore.open(tmp_path / "rec.zarr") as store:
        assert store.attrs["task"] == "lift" and store.attrs["blend"] == "prefix"  # BESO inpaints the prefix
        ep = store.episode(0)
        # at most max_ticks commands; fewer when a loaded machine made the loop skip late ticks (it never catches up
        # by sending stale ones)
        assert 1 <= ep["action"].shape[0] <= 12 and ep["action"].shape[1] == 7
        assert np.abs(ep["action"]).max() <= 1.0
        assert set(LIFT_KEYS) <= set(ep)


def test_seam_sweep_replays_a_real_checkpoint_on_recorded_episodes_reproducibly(tmp_path, checkpoint):
    """`vmp-bench deploy --seams --checkpoint --store`: every blend mode (both prefix schedules, since BESO takes a
    prefix) at delays of 0-2 ticks, the same rows on a second run (seeded noise, simulated clock), and a store without
    the policy's keys or a missing --store refused by name."""
    import json

    from vmp.bench.deploy import main

    _random_lift_store(tmp_path / "rec.zarr", n_episodes=2, length=30, seed=1)
    args = ["--seams", "--checkpoint", str(checkpoint), "--store", str(tmp_path / "rec.zarr"), "--episodes", "2"]
    rows = []
    for i in range(2):
        main([*args, "--out", str(tmp_path / f"seams{i}.json")])
        rows.append(json.loads((tmp_path / f"seams{i}.json").read_text())["metrics"]["rows"])
    assert rows[0] == rows[1]
    modes = {(r["blend"], r.get("prefix_schedule")) for r in rows[0]}
    assert modes == {("none", None), ("ensemble", None), ("prefix", "exp"), ("prefix", "hard")}
    assert len(rows[0]) == 15 and {r["delay_ticks"] for r in rows[0]} == {0, 1, 2}
    assert all(r["late_chunks"] == 0 for r in rows[0] if r["delay_ticks"] == 0)
    assert all(np.isfinite(r["seam_jump_median"]) and r["seam_jump_median"] > 0 for r in rows[0])
    with pytest.raises(SystemExit, match="needs --store"):
        main(["--seams", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "x.json")])
    _random_lift_store(tmp_path / "bad.zarr", n_episodes=1, length=5, seed=2,
                       keys={k: d for k, d in LIFT_KEYS.items() if k != "object"})
    with pytest.raises(KeyError, match=r"lacks the observation keys \['object'\]"):
        main(["--seams", "--checkpoint", str(checkpoint), "--store", str(tmp_path / "bad.zarr"), "--out", str(tmp_path / "x.json")])


def test_acting_checkpoint_acts_as_the_full_one_and_cannot_resume(tmp_path, checkpoint):
    """The copy a run is moved with (EMA folded in, no optimizer state) gives the same chunks as the checkpoint it
    was made from, is smaller, and holds nothing to resume from."""
    import torch

    from vmp.policies.checkpoint import load_policy, main, read_checkpoint

    main([str(checkpoint), str(tmp_path / "acting.pt")])
    full, _ = load_policy(checkpoint)
    acting, _ = load_policy(tmp_path / "acting.pt")
    window = {k: np.random.default_rng(0).normal(size=(2, d)).astype(np.float32) for k, d in LIFT_KEYS.items()}
    chunks = []
    for policy in (full, acting):
        torch.manual_seed(0)
        chunks.append(policy.predict_window(window).actions)
    np.testing.assert_array_equal(chunks[0], chunks[1])
    assert (tmp_path / "acting.pt").stat().st_size < 0.5 * checkpoint.stat().st_size
    assert not {"optimizer", "lr_schedule", "ema"} & set(read_checkpoint(tmp_path / "acting.pt"))
