"""`vmp-bench suite=quick` (or `vmp-bench suite quick`): every CPU benchmark in one command, then the results page's
tables and plots (docs/results.md) regenerated from results/. `suite=full` adds the slower rows: deployment under
load, scale-out, chunk latency on Can's and Square's observations, chunk seams of the image-Lift and Diffusion-VLA
checkpoints of record (where they and their store are on disk), the side-by-side comparisons with LeRobot on
low-dim and image Lift and low-dim Can (when the LeRobot environment, .venv-lerobot, exists), the GPU rows
(latency, the deployment engine) when a GPU is present, and then the results table itself: every recipe in
`vmp.bench.recipes` (collect where the store is missing, train, evaluate), hours on 2 CPU cores; then the comparisons
whose store a recipe had to collect. A training that fails skips the evaluations of its run folder. Naming groups
(`--recipes GROUP ...`) remakes only those rows, without the benchmarks.

Each benchmark runs in a process of its own (they set process-wide state: thread counts, the GIL switch interval)
and writes its own results JSON; the suite records what ran and how long in results/bench_suite_<name>.json.

    vmp-bench suite=quick       # about 10 minutes on 2 CPU cores
    vmp-bench suite=full        # many hours: every results-table training
    vmp-bench suite full --recipes lift_lowdim     # one group of the results table, nothing else
    vmp-bench suite full --recipes                 # the benchmarks only, no training
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
         ["deploy", "--seams", "--out", "results/bench_deploy_seams.json"], ["train-rate"]]
FULL = QUICK + [["deploy", "--seconds", "20", "--load", "--out", "results/bench_deploy_cpu_load.json"],
                ["deploy", "--seconds", "20", "--load", "--servo-hz", "200", "--out",
                 "results/bench_deploy_cpu_load_servo200.json"],
                ["scaleout"],
                # chunk latency on the robomimic tasks' own observations (Can's and Square's state and two cameras)
                *(["latency", "--task", task, "--obs", "lowdim", "image", "--heads", "beso", "carp", "ddpm", "--variants",
                   "3-step euler", "greedy kv-cache", "100-step ddpm", "10-step ddim"] for task in ("can", "square"))]
# the side-by-side comparisons of record: (store it needs, command)
LEROBOT = [("stores/lift_dart.zarr", ["lerobot", "--store", "stores/lift_dart.zarr", "--task", "lift", "--minutes", "12"]),
           # time to 95% at equal batch, the figure the comparison's goal is read from
           ("stores/lift_dart.zarr", ["lerobot", "--store", "stores/lift_dart.zarr", "--task", "lift", "--contenders",
                                      "beso", "carp", "lerobot_diffusion", "--minutes", "20", "--steps", "4000",
                                      "--ckpt-every", "200", "carp=100", "lerobot_diffusion=400", "--batch-size", "64",
                                      "--tokenizer-steps", "600", "--tag", "b64", "--out", "runs/lerobot-lift-b64"]),
           ("stores/lift_image_dart.zarr", ["lerobot", "--store", "stores/lift_image_dart.zarr", "--task", "lift_image",
                                            "--minutes", "20", "--timeline-episodes", "0"]),
           # Can from the state at our Can heads' budget (17 min: BESO's 5000 steps of record); one schedule that
           # fills it for Diffusion Policy (ACT, at a constant learning rate, is stopped by the budget)
           ("stores/can_dart_after10_obs.zarr", ["lerobot", "--task", "can", "--store", "stores/can_dart_after10_obs.zarr",
                                                 "--minutes", "17", "--contenders", "lerobot_diffusion", "lerobot_act",
                                                 "--steps", "3300", "--ckpt-every", "1100", "--timeline-episodes",
                                                 "20", "--out", "runs/lerobot-can"]),
           # Can from the two cameras at 27.4 minutes, where our BESO's image row of record kept its step-4000
           # checkpoint (its whole 68-minute schedule would take both contenders and their evaluations 3 hours):
           # ACT stopped by the budget; Diffusion Policy on one schedule that fills it (3.2 s a step)
           *(("stores/can_image_dart.zarr", ["lerobot", "--task", "can_image", "--store", "stores/can_image_dart.zarr",
                                             "--minutes", "27.4", "--contenders", *contender_args, "--timeline-episodes", "0",
                                             "--out", "runs/lerobot-can_image"])
             for contender_args in (["lerobot_act"], ["lerobot_diffusion", "--steps", "480"]))]
# seams of the checkpoints of record (image Lift, Diffusion-VLA on MT10) on their store, where both are on disk:
# (checkpoint, store, command)
SEAMS = [(run, store, ["deploy", "--seams", "--checkpoint", run, "--store", store, "--out",
                       f"results/bench_deploy_seams_{name}.json"])
         for run, store, name in (("runs/lift_image-beso-dart", "stores/lift_image_dart.zarr", "lift_image_beso"),
                                  ("runs/lift_image-carp-sc50", "stores/lift_image_dart.zarr", "lift_image_carp"),
                                  ("runs/mt-divla", "stores/metaworld_mt_lowdim.zarr", "metaworld_mt_lowdim_divla"))]
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


Step = tuple[str, list[str] | None, str]  # (command as the results page shows it, argv or None, why skipped)


def recipe_steps(names: list[str], gpu: bool) -> list[Step]:
    """The results table's recipes as suite steps: (command as the results page shows it, argv or None, why skipped).
    A store on disk is kept; a training pinned to `device=cuda` without a GPU is skipped, and so are the
    evaluations of its run folder; trainings rerun into their run folders (`overwrite=true`)."""
    from vmp.bench import recipes

    unknown = sorted(set(names) - set(recipes.BY_NAME))
    if unknown:
        raise SystemExit(f"--recipes: no recipe {unknown}; the recipes are {[r.name for r in recipes.RECIPES]}")
    out: list[Step] = []
    for name in names:
        recipe, skipped_runs = recipes.BY_NAME[name], set()
        for store, command in recipe.stores.items():
            out.append((command, None, f"{store} exists") if Path(store).exists() else (command, recipes.argv(command), ""))
        for command in recipe.steps:
            run = recipes.run_of(command)
            if command.startswith("vmp-train") and recipes.option(command, "device") == "cuda" and not gpu:
                skipped_runs.add(run)
                out.append((command, None, "trained on a GPU; none here"))
            elif run in skipped_runs:
                out.append((command, None, f"{run} was not trained in this run"))
            else:
                extra = ["overwrite=true"] if command.startswith("vmp-train") else []
                out.append((command, recipes.argv(command) + extra, ""))
    return out


def _bench_step(step: list[str]) -> Step:
    """A `vmp-bench` benchmark as a suite step, run in a process of its own."""
    return "vmp-bench " + " ".join(step), [sys.executable, "-m", "vmp.bench.cli", *step], ""


def lerobot_steps(collected: set[str]) -> tuple[list[Step], list[Step]]:
    """The LeRobot comparisons as suite steps, (before the recipes, after them): a comparison whose store is missing
    runs after the recipes when one of this run's recipes (`collected`: their stores) collects it. Without the LeRobot
    environment, or with no recipe here to collect its store, a comparison is skipped and the suite says why."""
    before: list[Step] = []
    after: list[Step] = []
    for store, step in LEROBOT:
        bench = _bench_step(step)
        if not Path(".venv-lerobot/bin/python").is_file():
            before.append((bench[0], None, "no LeRobot environment (.venv-lerobot; make test-lerobot builds it)"))
        elif Path(store).is_dir():
            before.append(bench)
        elif store in collected:
            after.append(bench)
        else:
            before.append((bench[0], None, f"{store} is missing and no recipe of this run collects it"))
    return before, after


def main(argv: list[str]) -> None:
    from vmp.bench.recipes import BY_NAME, RECIPES, run_of

    parser = argparse.ArgumentParser(prog="vmp-bench suite", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", choices=["quick", "full"])
    parser.add_argument("--recipes", nargs="*", default=None, metavar="GROUP",
                        help="suite=full: retrain and evaluate only these results-table groups, without the "
                             f"benchmarks (of {', '.join(r.name for r in RECIPES)}); with no name: the benchmarks "
                             "only (default: the benchmarks, then every group)")
    args = parser.parse_args(argv)
    if args.name == "quick" and args.recipes:
        parser.error("--recipes belongs to suite=full (suite=quick trains nothing of record)")
    import torch

    gpu = torch.cuda.is_available()
    bench = [("vmp-bench train-rate", None, "") if step == ["train-rate"] else _bench_step(step)
             for step in (QUICK if args.name == "quick" else FULL)]
    if args.recipes:  # named groups: remake those rows and nothing else
        steps = recipe_steps(args.recipes, gpu)  # refuses an unknown name
    elif args.name == "quick":
        steps = bench
    else:  # the benchmarks, then every group (none with `--recipes` alone)
        names = [r.name for r in RECIPES] if args.recipes is None else []
        seams = [_bench_step(command) for checkpoint, store, command in SEAMS
                 if Path(checkpoint).is_dir() and Path(store).is_dir()]
        before, after = lerobot_steps({store for name in names for store in BY_NAME[name].stores})
        steps = (bench + seams + before + [_bench_step(step) for step in (GPU if gpu else [])]
                 + recipe_steps(names, gpu) + after)
    ran: list[dict[str, Any]] = []
    failed_runs: set[str] = set()
    start = time.perf_counter()
    for command, step_argv, skip in steps:
        t = time.perf_counter()
        run = run_of(command)
        if not skip and command.startswith("vmp-eval") and run in failed_runs:
            skip = f"the training of {run} failed"
        if skip:
            ran.append({"command": command, "seconds": 0.0, "exit": 0, "skipped": skip})
            log.info("%s: skipped (%s)", command, skip)
            continue
        if step_argv is None:  # the training rates run in this process
            train_rates()
            code = 0
        else:
            code = subprocess.run(step_argv).returncode
        if code and command.startswith("vmp-train"):
            failed_runs.add(run)
        ran.append({"command": command, "seconds": round(time.perf_counter() - t, 1), "exit": code})
        log.info("%s: %.0f s%s", command, ran[-1]["seconds"], f" (exit {code})" if code else "")
    subprocess.run([sys.executable, "-m", "vmp.bench.cli", "report"], check=True)
    total = round(time.perf_counter() - start, 1)
    write_result(f"bench_suite_{args.name}", "suite", "-", "-", "-", f"vmp-bench suite={args.name}",
                 {"seconds": total, "steps": ran, "failed": sum(r["exit"] != 0 for r in ran)},
                 f"cpu ({os.cpu_count()} cores)" + (", GPU" if gpu else ""),
                 "vmp-bench " + " ".join([f"suite={args.name}", *([] if args.recipes is None else ["--recipes", *args.recipes])]))
    print(f"suite={args.name}: {len(ran)} steps in {total / 60:.1f} min"
          + "".join(f"\n  {r['command']}: " + (f"skipped ({r['skipped']})" if r.get("skipped") else f"{r['seconds']} s")
                    + (f" FAILED (exit {r['exit']})" if r["exit"] else "") for r in ran))
    if any(r["exit"] for r in ran):
        sys.exit(1)
