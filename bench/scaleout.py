"""Scale-out throughput (results/bench_scaleout_*.json): what launcher=ray and stores at URLs cost and give here.

- eval: `run_evaluation` episodes per minute of the Lift expert with launcher=local and launcher=ray at 1, 2 and 4
  workers (a local Ray, started once before the measurements; actor start-up is inside the timing, as a user sees it);
- collect: `collect` episodes per minute of the Lift expert, the same way (one writer appending to a fresh store);
- store: training-data windows/s from a store served by an S3-compatible server (moto's, on this machine): read
  chunk by chunk through the local cache (first pass, cache empty; second pass, cached), and after `prefetch` (what
  vmp-train does first), against the same store on local disk; with the rate the BESO image model consumes windows,
  to tell whether training would be data-bound.

    vmp-bench scaleout [--what eval collect store] [--workers 1 2 4] [--episodes 24]
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from vmp.bench.common import given_args, write_result

log = logging.getLogger(__name__)
RAY = {"name": "ray", "address": None, "cpus_per_worker": 1, "max_retries": 2}


def _rates(run, workers: list[int], n_episodes: int) -> dict[str, Any]:
    """run(launcher, n_workers) once per launcher and worker count -> {"<launcher>_<n>w_episodes_per_min": ...,
    "rows": [...]}."""
    rows = []
    for name, launcher in (("local", {"name": "local"}), ("ray", RAY)):
        for n in workers:
            start = time.perf_counter()
            run(launcher, n)
            seconds = time.perf_counter() - start
            rows.append({"launcher": name, "workers": n, "episodes": n_episodes, "seconds": round(seconds, 2),
                         "episodes_per_min": round(60 * n_episodes / seconds, 1)})
            log.info("%s x %d: %.1f episodes/min", name, n, rows[-1]["episodes_per_min"])
    return {**{f"{r['launcher']}_{r['workers']}w_episodes_per_min": r["episodes_per_min"] for r in rows}, "rows": rows}


def bench_eval(workers: list[int], n_episodes: int) -> dict[str, Any]:
    import functools

    from vmp.sim import load_task_cfg
    from vmp.sim.evaluate import expert_policy, run_evaluation

    task = load_task_cfg("lift")
    make_policy = functools.partial(expert_policy, task)
    return _rates(lambda launcher, n: run_evaluation(task, make_policy, n_episodes=n_episodes, n_workers=n,
                                                      n_videos=0, progress=False, launcher=launcher),
                  workers, n_episodes)


def bench_collect(workers: list[int], n_episodes: int) -> dict[str, Any]:
    from vmp.sim import load_task_cfg
    from vmp.sim.collect import collect

    task = load_task_cfg("lift")
    with tempfile.TemporaryDirectory(prefix="vmp_bench_collect_") as tmp:
        def run(launcher, n):
            collect(task, n_episodes=n_episodes, out=Path(tmp) / f"{launcher['name']}{n}.zarr", n_workers=n,
                    progress=False, launcher=launcher, max_attempts=3 * n_episodes)
        return _rates(run, workers, n_episodes)


def bench_store(n_batches: int = 10) -> dict[str, Any]:
    """Windows/s of the sampler benchmark's image store (100 episodes, 2 x 84 px cameras) read from disk, from S3
    through an empty cache, and again with the cache full."""
    import s3fs
    from moto.server import ThreadedMotoServer

    from vmp.bench.sampler import build_bench_store, measure_sampler, measure_training_rate
    from vmp.data import EpisodeStore

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto's server logs every request
    with tempfile.TemporaryDirectory(prefix="vmp_bench_store_") as tmp:
        os.environ["VMP_CACHE"] = str(Path(tmp) / "cache")
        local = build_bench_store(Path(tmp) / "bench.zarr", n_episodes=100)
        server = ThreadedMotoServer(port=0, verbose=False)
        server.start()
        try:
            host, port = server.get_host_and_port()
            for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
                os.environ.setdefault(key, "bench")
            os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
            options = {"client_kwargs": {"endpoint_url": f"http://{host}:{port}"}}
            fs = s3fs.S3FileSystem(**options)
            fs.mkdir("bench")
            start = time.perf_counter()
            fs.put(str(local), "bench/bench.zarr", recursive=True)
            upload_s = time.perf_counter() - start
            common = dict(n_batches=n_batches, n_episodes=100, num_workers=2)
            url = "s3://bench/bench.zarr"
            rows = {"local_disk": measure_sampler(local, **common),
                    "s3_first_pass": measure_sampler(url, storage_options=options, **common),
                    "s3_cached": measure_sampler(url, storage_options=options, **common)}
            start = time.perf_counter()
            EpisodeStore.open(url, storage_options=options).prefetch()  # what vmp-train does before its first step
            prefetch_s = time.perf_counter() - start
            rows["s3_prefetched"] = measure_sampler(url, storage_options=options, **common)
        finally:
            server.stop()
    train = measure_training_rate(batch_size=256)
    out: dict[str, Any] = {f"{name}_windows_per_s": m["windows_per_s"] for name, m in rows.items()}
    out.update(train_windows_per_s=train["train_windows_per_s"], upload_s=round(upload_s, 2),
               prefetch_s=round(prefetch_s, 2), batch=256, num_workers=2,
               n_batches=n_batches, train_encoder=train["train_encoder"],
               data_bound={name: m["windows_per_s"] < train["train_windows_per_s"] for name, m in rows.items()})
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="vmp-bench scaleout", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--what", nargs="+", default=["eval", "collect", "store"], choices=["eval", "collect", "store"])
    parser.add_argument("--workers", nargs="+", type=int, default=[1, 2, 4])
    parser.add_argument("--episodes", type=int, default=24)
    args = parser.parse_args(argv)
    command = " ".join(["vmp-bench scaleout", *given_args(argv)])
    device = f"cpu ({os.cpu_count()} cores)"
    if {"eval", "collect"} & set(args.what):
        import ray

        start = time.perf_counter()
        ray.init(num_cpus=max(os.cpu_count() or 1, max(args.workers)), include_dashboard=False, log_to_driver=False)
        ray_start_s = round(time.perf_counter() - start, 2)
    try:
        for what in args.what:
            if what == "store":
                metrics = bench_store()
                variant = ("sampler windows/s, 100 episodes x 50 steps, 2 x 84 px cameras, batch 256, 2 DataLoader "
                           "workers: local disk vs moto S3 on this machine, chunk by chunk through the cache and "
                           "after prefetch")
                write_result("bench_scaleout_store", "throughput", "-", "image", "-", variant, metrics, device, command)
                continue
            metrics = (bench_eval if what == "eval" else bench_collect)(args.workers, args.episodes)
            metrics.update(ray_start_s=ray_start_s, cores=os.cpu_count())
            variant = (f"Lift expert, {args.episodes} episodes per row, launcher local vs ray at "
                       f"{'/'.join(map(str, args.workers))} workers ({os.cpu_count()} cores cap the speed-up)")
            write_result(f"bench_scaleout_{what}", "throughput", "lift", "lowdim", "expert", variant, metrics, device,
                         command)
    finally:
        if {"eval", "collect"} & set(args.what):
            ray.shutdown()
