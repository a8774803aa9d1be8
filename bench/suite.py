"""`vmp-bench suite=quick` (or `vmp-bench suite quick`): every CPU benchmark in one command, then the README's tables
and plots regenerated from results/. `suite=full` adds the slower rows: deployment under load, scale-out, the
side-by-side comparisons with LeRobot on low-dim and image Lift (when the LeRobot environment, .venv-lerobot, exists
and the Lift stores of record do), and the GPU rows (latency, the deployment engine) when a GPU is present.

Each benchmark runs in a process of its own (they set process-wide state: thread counts, the GIL switch interval)
and writes its own results JSON; the suite records what ran and how long in results/bench_suite_<name>.json.

    vmp-bench suite=quick       # about 10 minutes on 2 CPU cores
    vmp-bench suite=full        # an hour or more
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from vmp.bench.common import write_result

log = logging.getLogger(__name__)

TRAIN_RATES = [("lift", "lowdim", "beso"), ("lift", "lowdim", "ddpm"), ("lift_image", "compact_cnn", "beso"),
               ("lift_image", "compact_cnn", "ddpm")]
QUICK = [["latency"], ["latency", "--batch", "32", "--repeats", "10"], ["sampler", "--batches", "20"], ["render", "--steps", "100"], ["deploy", "--seconds", "10"],
         ["train-rate"]]
FULL = QUICK + [["deploy", "--seconds", "20", "--load", "--out", "results/bench_deploy_cpu_load.json"],
                ["deploy", "--seconds", "20", "--load", "--servo-hz", "200", "--out",
                 "results/bench_deploy_cpu_load_servo200.json"],
                ["scaleout"]]
# the side-by-side comparisons of record: (store it needs, command)
LEROBOT = [("stores/lift_dart.zarr", ["lerobot", "--store", "stores/lift_dart.zarr", "--task", "lift", "--minutes", "12"]),
           ("stores/lift_image_dart.zarr", ["lerobot", "--store", "stores/lift_image_dart.zarr", "--task", "lift_image",
                                            "--minutes", "20", "--timeline-episodes", "0"])]
GPU = [["latency", "--device", "cuda"], ["latency", "--device", "cuda", "--obs", "image", "--heads", "beso", "carp",
                                         "--variants", "3-step euler", "greedy kv-cache", "--engine"]]


def train_rates(argv: list[str] | None = None) -> None:
    """Training samples/s per head and encoder (forward, backward, AdamW on in-memory batches of 256), one results
    record each: the rate a head consumes data on this machine."""
    import torch

    from vmp.bench.sampler import measure_training_rate

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads())))
    for task, encoder, head in TRAIN_RATES:
        metrics = measure_training_rate(batch_size=256, n_steps=5, encoder=encoder, head=head, task=task)
        write_result(f"bench_train_{task}_{head}", "throughput", task, "image" if encoder != "lowdim" else "lowdim",
                     head, f"training step, batch 256, {encoder} encoder", metrics,
                     f"cpu ({torch.get_num_threads()} threads)", "vmp-bench suite=quick (train-rate)")


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="vmp-bench suite", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", choices=["quick", "full"])
    args = parser.parse_args(argv)
    import torch

    steps = list(QUICK if args.name == "quick" else FULL)
    if args.name == "full" and Path(".venv-lerobot/bin/python").is_file():
        steps += [command for store, command in LEROBOT if Path(store).is_dir()]
    if args.name == "full" and torch.cuda.is_available():
        steps += GPU
    ran: list[dict[str, Any]] = []
    start = time.perf_counter()
    for step in steps:
        t = time.perf_counter()
        if step == ["train-rate"]:
            train_rates()
            code = 0
        else:
            code = subprocess.run([sys.executable, "-m", "vmp.bench.cli", *step]).returncode
        ran.append({"command": "vmp-bench " + " ".join(step), "seconds": round(time.perf_counter() - t, 1), "exit": code})
        log.info("%s: %.0f s%s", ran[-1]["command"], ran[-1]["seconds"], f" (exit {code})" if code else "")
    subprocess.run([sys.executable, "-m", "vmp.bench.cli", "report"], check=True)
    total = round(time.perf_counter() - start, 1)
    write_result(f"bench_suite_{args.name}", "suite", "-", "-", "-", f"vmp-bench suite={args.name}",
                 {"seconds": total, "steps": ran, "failed": sum(r["exit"] != 0 for r in ran)},
                 f"cpu ({os.cpu_count()} cores)" + (", GPU" if torch.cuda.is_available() else ""),
                 f"vmp-bench suite={args.name}")
    print(f"suite={args.name}: {len(ran)} benchmarks in {total / 60:.1f} min"
          + "".join(f"\n  {r['command']}: {r['seconds']} s" + (f" FAILED (exit {r['exit']})" if r["exit"] else "")
                    for r in ran))
    if any(r["exit"] for r in ran):
        sys.exit(1)
