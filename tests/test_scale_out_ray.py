"""launcher=ray: evaluation sweeps and collection on a local Ray give what launcher=local gives, seed for seed, and an
episode lost with a killed Ray worker is re-run elsewhere, every episode coming back exactly once."""

from __future__ import annotations

import functools
import os
import signal
import sys
import time

import numpy as np
import pytest

ray = pytest.importorskip("ray")

from hydra import compose, initialize_config_module  # noqa: E402

from vmp.data import EpisodeStore  # noqa: E402
from vmp.data.testing import make_learnable_lift_store  # noqa: E402
from vmp.policies.train import train  # noqa: E402
from vmp.sim import load_task_cfg  # noqa: E402
from vmp.sim.collect import collect  # noqa: E402
from vmp.sim.evaluate import run_sweep  # noqa: E402
from vmp.sim.ray_pool import RayEpisodePool  # noqa: E402
from vmp.sim.workers import Job  # noqa: E402

from test_policies_train import compose_cfg  # noqa: E402

RAY = {"name": "ray", "address": None, "cpus_per_worker": 1, "max_retries": 2}


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray for the module (pools join it instead of starting their own); functions of this module pickle by
    value, since Ray's workers cannot import a test module."""
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield
    ray.shutdown()


def _slow_job(state, job: Job) -> tuple[int, int]:
    time.sleep(0.8)  # long enough to be killed mid-episode
    return job.seed, os.getpid()


def test_killed_ray_worker_loses_no_episode(local_ray):
    """SIGKILL one of two actors while both run an episode: its episode runs again on a fresh actor; each of the 6
    jobs yields exactly one result, none an error."""
    jobs = [Job(i, 100 + i) for i in range(6)]
    with RayEpisodePool(dict, _slow_job, n_workers=2, episode_timeout_s=60) as pool:
        first_pids = pool.worker_pids()
        results, killed = [], None
        for res in pool.run(jobs):
            results.append(res)
            if killed is None:  # both actors are busy with their next episode now
                time.sleep(0.3)
                killed = first_pids[0]
                os.kill(killed, signal.SIGKILL)
    assert sorted(r.job.index for r in results) == list(range(6))
    assert all(r.error is None for r in results), [r.error for r in results if r.error]
    assert [r.value[0] for r in sorted(results, key=lambda r: r.job.index)] == [100 + i for i in range(6)]
    # the killed actor's episode in flight ran again on the actor that replaced it (results it had already sent count)
    assert {r.value[1] for r in results} - set(first_pids), "no episode ran on a new actor"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ckpt")
    store = make_learnable_lift_store(tmp / "s.zarr")
    return str(train(compose_cfg(store, tmp / "run", "training.steps=20", "training.val_ratio=0")))


@pytest.mark.slow
def test_ray_sweep_matches_local_seed_for_seed(local_ray, checkpoint, tmp_path):
    """A sweep of one checkpoint x 2 seeds x 3 episodes (6 episodes) on 2 Ray workers: the same per-seed outcomes
    (success, length, return) as launcher=local with 2 processes, and one table of both cells."""
    outcomes = {}
    for name in ("local", "ray"):
        with initialize_config_module(config_module="vmp.configs", version_base=None):
            cfg = compose("eval", overrides=[f"sweep={{checkpoints: [{checkpoint}], seeds: [100, 200]}}", "n_episodes=3",
                                             "n_workers=2", "n_videos=0", "max_episode_steps=25", "device=cpu",
                                             f"out_dir={tmp_path / name}", f"launcher={name}"])
        rows = run_sweep(cfg, RAY if name == "ray" else {"name": "local"}, None)
        assert [(r["seed"], r["n_episodes"], r["n_errors"]) for r in rows] == [(100, 3, 0), (200, 3, 0)]
        assert (tmp_path / name / "sweep.json").exists() and (tmp_path / name / "sweep.md").exists()
        episodes = []
        for row in rows:
            import json

            episodes += json.loads(open(row["metrics"]).read())["per_episode"]
        outcomes[name] = sorted((e["seed"], e["success"], e["length"], round(e["return"], 9)) for e in episodes)
    assert [o[0] for o in outcomes["ray"]] == [100, 101, 102, 200, 201, 202]
    assert outcomes["ray"] == outcomes["local"]


@pytest.mark.slow
def test_ray_collection_writes_the_store_local_collection_writes(local_ray, tmp_path):
    """Experts on 2 Ray actors, episodes back in any order, one writer appending in seed order: the same store."""
    cfg = load_task_cfg("lift")
    collect(cfg, n_episodes=3, out=tmp_path / "local.zarr", n_workers=2, seed=0, progress=False)
    summary = collect(cfg, n_episodes=3, out=tmp_path / "ray.zarr", n_workers=2, seed=0, progress=False, launcher=RAY)
    assert summary["episodes"] == 3
    with EpisodeStore.open(tmp_path / "local.zarr") as a, EpisodeStore.open(tmp_path / "ray.zarr") as b:
        np.testing.assert_array_equal(a.episode_ends, b.episode_ends)
        for i in range(3):
            np.testing.assert_array_equal(a.episode(i)["action"], b.episode(i)["action"])
            assert a.episode_text(i)["seed"] == b.episode_text(i)["seed"]


def test_launcher_options_are_checked():
    from vmp.sim.workers import make_pool

    with pytest.raises(ValueError, match=r"launcher.name='slurm' is not a launcher; choose from \['local', 'ray'\]"):
        make_pool({"name": "slurm"}, dict, _slow_job, 1)
    with pytest.raises(ValueError, match=r"launcher=ray: unknown option\(s\) \['adress'\]"):
        make_pool({"name": "ray", "adress": "auto"}, dict, _slow_job, 1)
    with pytest.raises(ValueError, match="launcher=ray needs n_workers >= 1"):
        make_pool(RAY, dict, _slow_job, 0)


def _broken_init():
    raise OSError("no display for the renderer")


def test_ray_worker_that_cannot_start_is_reported_with_its_error(local_ray):
    with pytest.raises(RuntimeError, match="Ray episode workers failed to start: OSError: no display for the renderer"):
        with RayEpisodePool(_broken_init, _slow_job, n_workers=1) as pool:
            list(pool.run([Job(0, 0)]))


def test_sweep_and_launcher_configs_are_checked_by_name(tmp_path):
    for app in ("eval", "collect"):
        with initialize_config_module(config_module="vmp.configs", version_base=None):
            cfg = compose(app, overrides=["launcher=ray", "launcher.address=auto"])
        assert dict(cfg.launcher) == {"name": "ray", "address": "auto", "cpus_per_worker": 1, "max_retries": 2}

    def sweep(value, *more):
        with initialize_config_module(config_module="vmp.configs", version_base=None):
            return compose("eval", overrides=[f"sweep={value}", *more])

    with pytest.raises(FileNotFoundError, match="sweep=nope.yaml: no such file"):
        run_sweep(sweep("nope.yaml"), None, None)
    with pytest.raises(ValueError, match=r"sweep must give `checkpoints` .* \(\['checkpoint'\] unknown\)"):
        run_sweep(sweep("{checkpoint: [a]}"), None, None)
    with pytest.raises(ValueError, match="results_json records one evaluation; a sweep writes out_dir/sweep.json"):
        run_sweep(sweep("{checkpoints: [a]}", f"results_json={tmp_path / 'r.json'}"), None, None)
