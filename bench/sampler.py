"""Training-sampler throughput: windows per second through a DataLoader (results/bench_sampler.json).

Default workload: a 200-episode store (50 steps each) with two 84x84 RGB cameras plus low-dim
state, windows of n_obs_steps=2 / horizon=16, batch 256, DataLoader with 2 workers, shuffled. The store is
generated into a temporary directory (rendered-looking synthetic frames: flat colours, moving objects).

    python -m vmp.bench.sampler [--batches 30] [--out results/bench_sampler.json]
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


def _scene_frames(rng: np.random.Generator, length: int, size: int) -> np.ndarray:
    """[length, size, size, 3] uint8: a rendered-looking scene (flat wall, textured table, moving objects)."""
    import cv2

    background = rng.integers(0, 256, 3).tolist()
    table = rng.integers(0, 256, 3).tolist()
    objects = [(rng.uniform(0, size, 2), rng.uniform(-1, 1, 2), int(rng.integers(3, size // 6)),
                rng.integers(0, 256, 3).tolist()) for _ in range(3)]
    # A textured table (as in robosuite renders) keeps the frames from compressing unrealistically well.
    texture = np.clip(np.asarray(table) + rng.normal(0, 6, (size - size // 2, size, 3)), 0, 255).astype(np.uint8)
    frames = np.empty((length, size, size, 3), dtype=np.uint8)
    for t in range(length):
        img = np.full((size, size, 3), background, dtype=np.uint8)
        img[size // 2:] = texture
        for pos, vel, radius, color in objects:
            x, y = (pos + vel * t) % size
            cv2.circle(img, (int(x), int(y)), radius, color, thickness=-1, lineType=cv2.LINE_AA)
        frames[t] = img
    return frames


def build_bench_store(path: str | os.PathLike, n_episodes: int = 200, episode_len: int = 50, image_size: int = 84,
                      cameras: tuple[str, ...] = ("agentview", "wrist"), state_dim: int = 9, action_dim: int = 7,
                      seed: int = 0) -> Path:
    """Write the benchmark store (a few seconds per 100 episodes on one core)."""
    from vmp.data import EpisodeStore
    from vmp.data.testing import demo_schema

    schema = demo_schema(image_size=image_size, cameras=cameras, state_dim=state_dim, action_dim=action_dim)
    rng = np.random.default_rng(seed)
    with EpisodeStore.create(path, schema, {"task": "bench", "control_hz": 20}, overwrite=True) as store:
        for _ in range(n_episodes):
            ep = {f"{cam}_image": _scene_frames(rng, episode_len, image_size) for cam in cameras}
            ep["state"] = rng.normal(size=(episode_len, state_dim)).astype(np.float32)
            ep["action"] = rng.normal(size=(episode_len, action_dim)).astype(np.float32)
            store.append_episode(ep)
    return Path(path)


def measure_sampler(store_path: str | os.PathLike | None = None, batch_size: int = 256, num_workers: int = 2,
                    n_batches: int = 30, warmup_batches: int = 3, n_obs_steps: int = 2, horizon: int = 16,
                    n_action_steps: int = 8, n_episodes: int = 200, episode_len: int = 50, image_size: int = 84,
                    seed: int = 0, fast_reads: bool = True, storage_options: dict | None = None) -> dict[str, Any]:
    """Windows/s of ``SequenceDataset`` through ``DataLoader(batch_size, num_workers, shuffle=True)``.

    Builds the default store in a temporary directory when ``store_path`` is None. Returns the metrics
    (``windows_per_s``, ``batches_per_s``, ``batch``, ``num_workers``, ...) and a description of the workload.
    """
    import torch
    from torch.utils.data import DataLoader

    from vmp.data import EpisodeStore, SequenceDataset, SequenceSampler

    with tempfile.TemporaryDirectory(prefix="vmp_bench_sampler_") as tmp:
        built_s = None
        if store_path is None:
            t = time.perf_counter()
            store_path = build_bench_store(Path(tmp) / "bench.zarr", n_episodes, episode_len, image_size, seed=seed)
            built_s = time.perf_counter() - t
        store = EpisodeStore.open(store_path, storage_options=storage_options)
        image_keys = [k for k in store.keys if store.kind(k) != "low_dim"]
        obs_keys = [k for k in store.keys if k != "action"]
        sampler = SequenceSampler(store, keys=obs_keys, n_obs_steps=n_obs_steps, horizon=horizon,
                                  n_action_steps=n_action_steps, seed=seed, fast_reads=fast_reads)
        loader = DataLoader(SequenceDataset(sampler), batch_size=batch_size, shuffle=True, num_workers=num_workers,
                            drop_last=True, persistent_workers=num_workers > 0,
                            generator=torch.Generator().manual_seed(seed))
        needed = warmup_batches + n_batches
        if len(loader) < needed:
            raise ValueError(f"store yields {len(loader)} batches of {batch_size}, fewer than the {needed} requested")
        it = iter(loader)
        for _ in range(warmup_batches):  # worker start-up and first reads
            next(it)
        t = time.perf_counter()
        windows = 0
        for _ in range(n_batches):
            batch = next(it)
            windows += batch["action"].shape[0]
        elapsed = time.perf_counter() - t
        del it, loader
    return {
        "windows_per_s": round(windows / elapsed, 1),
        "batches_per_s": round(n_batches / elapsed, 3),
        "batch": batch_size,
        "num_workers": num_workers,
        "n_batches": n_batches,
        "n_windows_in_store": len(sampler),
        "n_episodes": store.n_episodes,
        "image_keys": image_keys,
        "image_shape": list(store.schema[image_keys[0]].shape) if image_keys else None,
        "n_obs_steps": n_obs_steps,
        "horizon": horizon,
        "store_build_s": round(built_s, 2) if built_s is not None else None,
        "fast_reads": fast_reads,
    }


def measure_training_rate(batch_size: int = 256, n_steps: int = 5, encoder: str = "compact_cnn", head: str = "beso",
                          task: str = "lift_image") -> dict[str, Any]:
    """Training windows/s of a head (default: the BESO image policy, lift_image: two 84 px cameras + state) on this
    machine's CPU: forward, backward and AdamW step on in-memory batches, so it is the rate the model could consume
    data."""
    import torch
    from hydra import compose, initialize_config_module

    from vmp.policies.build import build_policy

    with initialize_config_module(config_module="vmp.configs", version_base=None):
        cfg = compose("train", overrides=[f"task={task}", f"policy={head}", f"encoder={encoder}"])
    policy = build_policy(cfg).train()
    optimizer = torch.optim.AdamW(policy.parameters(), lr=1e-4)
    t_obs, horizon = cfg.policy.n_obs_steps, cfg.policy.horizon
    adim = int(cfg.task.shape_meta.action.shape[0])
    batch = {"obs": {}, "action": torch.rand(batch_size, horizon, adim) * 2 - 1,
             "action_is_pad": torch.zeros(batch_size, horizon, dtype=torch.bool)}
    for key, meta in cfg.task.shape_meta.obs.items():
        if meta.type == "rgb":
            h, w, c = meta.shape
            batch["obs"][key] = torch.randint(0, 256, (batch_size, t_obs, c, h, w), dtype=torch.uint8)
        else:
            batch["obs"][key] = torch.randn(batch_size, t_obs, *meta.shape)
    times = []
    for i in range(n_steps + 1):  # the first step is burn-in
        start = time.perf_counter()
        loss = policy.compute_loss(batch)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if i > 0:
            times.append(time.perf_counter() - start)
    step_s = float(np.median(times))
    return {"train_step_s": round(step_s, 3), "train_windows_per_s": round(batch_size / step_s, 1), "train_encoder": encoder,
            "n_params": sum(p.numel() for p in policy.parameters())}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Measure with the default workload and write results/bench_sampler.json (results-record format)."""
    parser = argparse.ArgumentParser(prog="python -m vmp.bench.sampler", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, default=30)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--out", default="results/bench_sampler.json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    import torch

    load_before = os.getloadavg()[0]
    metrics = measure_sampler(batch_size=args.batch_size, num_workers=args.workers, n_batches=args.batches)
    # The CPU machine is shared: record how busy it was, since throughput scales with free cores.
    metrics["host_load_1m_before"] = round(load_before, 2)
    metrics.update(measure_training_rate(batch_size=args.batch_size))
    metrics["data_bound"] = metrics["windows_per_s"] < metrics["train_windows_per_s"]
    from vmp.bench.common import given_args
    from vmp.results import make_record, write_record

    variant = (f"SequenceDataset, {metrics['n_episodes']} episodes x 50 steps, 2 x 84x84 RGB + state, "
               f"n_obs_steps={metrics['n_obs_steps']} horizon={metrics['horizon']}, "
               f"batch {metrics['batch']}, {metrics['num_workers']} DataLoader workers")
    command = " ".join(["python -m vmp.bench.sampler", *given_args(argv)])
    record = make_record("throughput", "-", "image", "-", variant, metrics, command=command,
                         device=f"cpu ({os.cpu_count()} cores, torch {torch.get_num_threads()} threads)")
    out = write_record(args.out, record)
    print(f"sampler: {metrics['windows_per_s']} windows/s (batch {metrics['batch']}, {metrics['num_workers']} workers); "
          f"BESO image training consumes {metrics['train_windows_per_s']} windows/s "
          f"({'data-bound' if metrics['data_bound'] else 'not data-bound'}) -> {out}")
    return record


if __name__ == "__main__":
    main()
