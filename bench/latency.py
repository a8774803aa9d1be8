"""Action-chunk latency at batch 1 for every head and sampler setting, on CPU and (when present) GPU.

All heads use the same encoder and comparable network sizes (the configs in configs/policy/), with freshly initialised
weights: latency depends on the compute graph, not on the weights. Each setting: burn-in, then timed calls between
device synchronisations. Writes results/latency_<obs>_<head>_<variant>.json (RESULTS.md format).

    vmp-bench latency [--device cuda] [--obs lowdim image] [--repeats 50]
"""

from __future__ import annotations

import argparse
import os
import logging
import time

from vmp.bench.common import device_name, percentiles_ms, write_result

log = logging.getLogger(__name__)

# (head, variant name, inference overrides)
SETTINGS = [
    ("beso", "3-step euler", {"sampler": "euler", "n_steps": 3}),
    ("beso", "3-step dpmpp_2m", {"sampler": "dpmpp_2m", "n_steps": 3}),
    ("beso", "3-step euler_ancestral", {"sampler": "euler_ancestral", "n_steps": 3}),
    ("beso", "10-step euler", {"sampler": "euler", "n_steps": 10}),
    ("ddpm", "100-step ddpm", {"sampler": "ddpm", "n_steps": 100}),
    ("ddpm", "10-step ddim", {"sampler": "ddim", "n_steps": 10}),
    ("carp", "greedy kv-cache", {"tokenizer_checkpoint": None}),
]
TASKS = {"lowdim": ("lift", "lowdim"), "image": ("lift_image", "compact_cnn")}


def build(task: str, encoder: str, head: str, overrides: dict, carp_tokenizer: str | None):
    from hydra import compose, initialize_config_module

    from vmp.policies.build import build_policy

    extra = [f"policy.{k}={'null' if v is None else v}" for k, v in overrides.items()]
    with initialize_config_module(config_module="vmp.configs", version_base=None):
        cfg = compose("train", overrides=[f"task={task}", f"policy={head}", f"encoder={encoder}", *extra])
    return build_policy(cfg), cfg


def measure(policy, cfg, device: str, repeats: int, burn_in: int = 5) -> list[float]:
    import torch

    policy = policy.to(device).eval()
    obs = {}
    for key, meta in cfg.task.shape_meta.obs.items():
        shape = (1, policy.n_obs_steps, *meta.shape)
        if meta.get("type") == "rgb":
            obs[key] = torch.randint(0, 255, shape, dtype=torch.uint8, device=device).permute(0, 1, 4, 2, 3).contiguous()
        else:
            obs[key] = torch.randn(shape, device=device)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    times = []
    with torch.inference_mode():
        for i in range(burn_in + repeats):
            sync()
            start = time.perf_counter()
            policy.predict_action_chunk(obs)
            sync()
            if i >= burn_in:
                times.append(time.perf_counter() - start)
    return times


def main(argv: list[str] | None = None) -> None:
    from vmp.policies.heads import HEADS

    parser = argparse.ArgumentParser(prog="vmp-bench latency", description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--obs", nargs="+", default=["lowdim", "image"], choices=sorted(TASKS))
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args(argv)
    rows = []
    for obs in args.obs:
        task, encoder = TASKS[obs]
        for head, variant, overrides in SETTINGS:
            if head not in HEADS:
                log.warning("head %s is not registered: skipped", head)
                continue
            policy, cfg = build(task, encoder, head, overrides, None)
            stats = percentiles_ms(measure(policy, cfg, args.device, args.repeats))
            stats.update(batch=1, horizon=policy.horizon, n_params=sum(p.numel() for p in policy.parameters()),
                         host_load_1m=round(os.getloadavg()[0], 2))
            rows.append((obs, head, variant, stats))
            write_result(f"latency_{obs}_{head}_{variant.replace(' ', '-')}_{args.device.split(':')[0]}", "latency", "-",
                         obs, head, variant, stats, device_name(args.device),
                         f"vmp-bench latency --device {args.device} --obs {obs} --repeats {args.repeats}")
    print(f"{'obs':7} {'head':6} {'variant':24} {'p50 ms':>8} {'p99 ms':>8}")
    for obs, head, variant, stats in rows:
        print(f"{obs:7} {head:6} {variant:24} {stats['p50_ms']:8.2f} {stats['p99_ms']:8.2f}")


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    main()
