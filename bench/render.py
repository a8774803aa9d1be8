"""Simulation frames per second per task, default render settings against fast ones (results/bench_render_<task>.json).

"Fast" = the model's offscreen anti-aliasing samples, shadows and reflections off (sim/render.py); every
env keeps one renderer for its life. Each measurement steps one env with random actions in this process
(one thread) after a warm-up, rendering its camera observation every step; the low-dim rate (no camera) is
the ceiling rendering eats into.

    vmp-bench render [--tasks lift blockpush metaworld] [--steps 150]
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import time
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

# benchmark name -> (task config, obs key overrides for a single camera, camera list, low-dim twin or None)
WORKLOADS: dict[str, dict[str, Any]] = {
    "lift": {"task": "lift_image", "cameras": ["agentview"], "lowdim": "lift"},
    "blockpush": {"task": "blockpush_image", "cameras": None, "lowdim": "blockpush"},
    "metaworld": {"task": "metaworld_image", "cameras": None, "lowdim": "metaworld"},
    "pointnav": {"task": "pointnav", "cameras": None, "lowdim": None},  # a step renders RGB and depth
}


def _single_camera(cfg, cameras: list[str] | None):
    """Keep only the listed cameras' image keys (e.g. robosuite Lift with one 84 px agentview camera)."""
    if cameras is None:
        return cfg
    cfg.env_kwargs.cameras = list(cameras)
    keep = {f"{c}_image" for c in cameras}
    for key in [k for k in cfg.shape_meta.obs if k.endswith("_image") and k not in keep]:
        del cfg.shape_meta.obs[key]
    return cfg


def steps_per_second(cfg, n_steps: int, warmup: int = 10, **env_overrides: Any) -> float:
    """Env steps per second (one step renders each camera once), random actions, resets excluded."""
    from vmp.sim import make

    env = make(cfg, max_episode_steps=10**6, **env_overrides)
    try:
        rng = np.random.default_rng(0)
        env.reset(seed=0)
        low, high = env.action_space.low, env.action_space.high
        for _ in range(warmup):
            env.step(rng.uniform(low, high) * 0.3)
        start = time.perf_counter()
        for _ in range(n_steps):
            env.step(rng.uniform(low, high) * 0.3)
        return n_steps / (time.perf_counter() - start)
    finally:
        env.close()


def measure(name: str, n_steps: int) -> dict[str, Any]:
    from vmp.sim import load_task_cfg

    w = WORKLOADS[name]
    cfg = _single_camera(load_task_cfg(w["task"]), w["cameras"])
    default = steps_per_second(cfg, n_steps, fast_render=False)
    fast = steps_per_second(cfg, n_steps, fast_render=True)
    lowdim = steps_per_second(load_task_cfg(w["lowdim"]), n_steps) if w["lowdim"] else None
    images = [k for k, v in cfg.shape_meta.obs.items() if v.get("type") == "rgb"]
    size = cfg.shape_meta.obs[images[0]].shape[0]
    return {
        "frames_per_s_default": round(default, 1),
        "frames_per_s_fast": round(fast, 1),
        "speedup": round(fast / default, 2),
        "steps_per_s_lowdim": round(lowdim, 1) if lowdim is not None else None,
        "n_steps": n_steps,
        "cameras": len(images),
        "image_size": int(size),
        "task_config": w["task"],
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="vmp-bench render", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=list(WORKLOADS), choices=list(WORKLOADS))
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--out-dir", default="results")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from pathlib import Path

    import vmp  # noqa: F401  (MUJOCO_GL)
    from vmp.bench.common import given_args, write_result

    out: dict[str, Any] = {}
    for name in args.tasks:
        metrics = measure(name, args.steps)
        metrics["host_load_1m_before"] = round(os.getloadavg()[0], 2)
        out[name] = metrics
        write_result(
            f"bench_render_{name}", "throughput", name, "image", "-",
            f"{metrics['cameras']} camera(s) {metrics['image_size']} px, default vs fast render settings",
            metrics, device=f"cpu ({os.environ.get('OMP_NUM_THREADS', '?')} OMP threads, {platform.machine()}, "
                            f"MUJOCO_GL={os.environ.get('MUJOCO_GL')})",
            command=" ".join(["vmp-bench render", *given_args(argv)]),
            out_dir=Path(args.out_dir),
        )
        print(f"{name}: {metrics['frames_per_s_default']} -> {metrics['frames_per_s_fast']} frames/s "
              f"(x{metrics['speedup']}); low-dim {metrics['steps_per_s_lowdim']} steps/s")
    return out


if __name__ == "__main__":
    main()
