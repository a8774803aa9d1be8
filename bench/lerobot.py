"""vmp-bench lerobot: our heads against LeRobot's Diffusion Policy and ACT on the same data, seeds and machine.

Every contender trains for the same wall-clock budget from the same store (LeRobot's through ``vmp-data export
--format lerobot`` and its own ``lerobot-train``), keeping checkpoints as it goes; each checkpoint is evaluated by
``vmp-eval`` on the same seeds (LeRobot's through the adapter, vmp.policies.lerobot_policy). Recorded per contender:
success at the end of the budget, the training minutes at which a checkpoint first reached the success bar (time to
95%), the success-against-minutes timeline, chunk latency at batch 1 (all contenders measured in one process, one
after another) and training throughput. Contenders ``*_default`` run LeRobot's default sizes: on a CPU they are
measured for latency and throughput only (a few steps), since they do not train within such budgets.

    vmp-bench lerobot --task lift --minutes 12               # needs the LeRobot environment (make test-lerobot)
    vmp-bench lerobot --task lift --contenders beso lerobot_diffusion --minutes 5 --out runs/sbs-try

Writes results/lerobot_<task>_<contender>.json; `vmp-bench report` tabulates and plots them.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# Low-dim keys LeRobot's policies read as the environment's state (object poses); the rest is the robot's state.
ENV_STATE_KEYS = ("object",)
LATENCY_REPEATS = 30
PYTHON_ENV = "VMP_BENCH_PYTHON"  # our python, for a run re-executed in the LeRobot environment

# name -> how it trains. vmp: vmp-train overrides (CARP: its tokenizer first, inside the same budget); lerobot:
# lerobot-train arguments. steps: the LR schedule's length, about what fits the budget on 2 CPU cores (12 min low-dim,
# 20 min image; a run is stopped at the budget whichever comes first); ckpt_every: steps between kept checkpoints
# (about 1/6 of the budget; LeRobot's image DP, at 3 s a step, keeps one every 25 so that the stop loses little).
# Our image heads' schedules fill the 20 minutes at about 200 samples/s (CARP's after its tokenizer stage).
# "image": what changes on an image task (our README's image settings; LeRobot's vision backbone is its ResNet-18,
# never pretrained here: nothing is downloaded; DP's LR warm-up shortened to fit its 400 steps).
CONTENDERS: dict[str, dict[str, Any]] = {
    "beso": {"kind": "vmp", "args": ["policy=beso", "training.batch_size=128"], "steps": 4000, "ckpt_every": 500,
             "size": "d_model 128, 4 layers",
             "image": {"args": ["policy=beso", "encoder=compact_cnn", "training.batch_size=64"], "steps": 3500,
                       "ckpt_every": 300, "size": "d_model 128, 4 layers, compact CNN"}},
    "carp": {"kind": "vmp", "args": ["policy=carp", "training.batch_size=128"], "steps": 4000, "ckpt_every": 500,
             "tokenizer": ["policy=carp_tokenizer", "training.steps=3000", "training.lr=1e-3",
                           "training.warmup_steps=200"], "size": "d_model 128, 4 layers",
             "image": {"args": ["policy=carp", "encoder=compact_cnn", "policy.d_model=128", "policy.width=128",
                                "policy.depth=4", "training.batch_size=64"], "steps": 2800, "ckpt_every": 300,
                       "tokenizer": ["policy=carp_tokenizer", "encoder=compact_cnn", "training.batch_size=128",
                                     "training.steps=2000", "training.lr=1e-3", "training.warmup_steps=200"],
                       "size": "d_model 128, 4 layers, compact CNN"}},
    "lerobot_diffusion": {"kind": "lerobot", "args": ["--policy.type=diffusion", "--policy.down_dims=[64,128,256]",
                                                      "--batch_size=64"], "steps": 2400, "ckpt_every": 300,
                          "size": "U-Net down_dims [64,128,256] (close to ours)",
                          "image": {"args": ["--policy.type=diffusion", "--policy.down_dims=[64,128,256]",
                                             "--policy.crop_shape=[76,76]", "--policy.scheduler_warmup_steps=50",
                                             "--batch_size=64"], "steps": 400, "ckpt_every": 25,
                                    "size": "U-Net down_dims [64,128,256], ResNet-18, 76 px crops"}},
    "lerobot_act": {"kind": "lerobot", "args": ["--policy.type=act", "--policy.dim_model=256",
                                                "--policy.dim_feedforward=1024", "--policy.n_heads=4",
                                                "--policy.chunk_size=16", "--policy.n_action_steps=8",
                                                "--batch_size=64"], "steps": 2000, "ckpt_every": 300,
                    "size": "dim_model 256, dim_feedforward 1024, chunk 16 / 8 executed (close to ours)",
                    "image": {"extra": ["--policy.pretrained_backbone_weights=null"], "ckpt_every": 50,
                              "size": "dim_model 256, dim_feedforward 1024, chunk 16 / 8 executed, ResNet-18"}},
    "lerobot_diffusion_default": {"kind": "lerobot", "args": ["--policy.type=diffusion", "--batch_size=64"],
                                  "steps": 4, "ckpt_every": 4, "size": "LeRobot defaults (U-Net [512,1024,2048])",
                                  "latency_only": True},
    "lerobot_act_default": {"kind": "lerobot", "args": ["--policy.type=act", "--batch_size=64"], "steps": 4,
                            "ckpt_every": 4, "size": "LeRobot defaults (dim_model 512)", "latency_only": True,
                            "image": {"extra": ["--policy.pretrained_backbone_weights=null"]}},
}


def contender(name: str, obs_type: str) -> dict[str, Any]:
    """A contender's training spec for a task of ``obs_type`` (lowdim or image)."""
    spec = {k: v for k, v in CONTENDERS[name].items() if k != "image"}
    if obs_type == "image":
        image = CONTENDERS[name].get("image", {})
        spec.update({k: v for k, v in image.items() if k != "extra"})
        spec["args"] = [*spec["args"], *image.get("extra", [])]
    return spec


def run_spec(name: str, obs_type: str, steps: int | None = None, ckpt_every: dict[str | None, int] | None = None,
             batch_size: int | None = None, tokenizer_steps: int | None = None) -> dict[str, Any]:
    """A contender's spec with the command line's overrides: the schedule's steps, the checkpoint interval (``{None:
    N}`` for every contender, ``{name: N}`` for one; neither for the latency-only ones), the batch size (every
    contender the same) and the length of CARP's tokenizer stage."""
    spec = contender(name, obs_type)
    ckpt_every = ckpt_every or {}
    if spec.get("latency_only"):  # a few steps, whatever the others' schedule: it is measured, not trained
        steps, ckpt_every = None, {}
    if name in ckpt_every or None in ckpt_every:
        spec["ckpt_every"] = ckpt_every.get(name, ckpt_every.get(None))
    if steps:
        spec["steps"] = steps
    if batch_size:
        key = "--batch_size=" if spec["kind"] == "lerobot" else "training.batch_size="
        spec["args"] = [a for a in spec["args"] if not a.startswith(key)] + [f"{key}{batch_size}"]
    if tokenizer_steps and "tokenizer" in spec:
        key = "training.steps="
        spec["tokenizer"] = [a for a in spec["tokenizer"] if not a.startswith(key)] + [f"{key}{tokenizer_steps}"]
    return spec


def batch_of(spec: dict[str, Any]) -> int:
    """The batch size a spec trains with (every contender's args name it; the last one counts)."""
    return int(next(a.split("=")[1] for a in reversed(spec["args"]) if "batch_size=" in a))


DEFAULT_CONTENDERS = ["beso", "carp", "lerobot_diffusion", "lerobot_act", "lerobot_diffusion_default",
                      "lerobot_act_default"]


def task_config(task: str):
    from hydra import compose, initialize_config_module

    with initialize_config_module(config_module="vmp.configs", version_base=None):
        return compose(config_name="train", overrides=[f"task={task}"]).task


def export(store: str, task_cfg, out: Path, python: str) -> Path:
    """The store as a LeRobot data set (once): low-dim keys into observation.state / .environment_state, cameras as
    lossless PNG frames."""
    if (out / "meta" / "vmp.json").is_file():
        return out
    lowdim = [k for k, v in task_cfg.shape_meta.obs.items() if v.get("type", "low_dim") == "low_dim"]
    state = [k for k in lowdim if k not in ENV_STATE_KEYS]
    env_state = [k for k in lowdim if k in ENV_STATE_KEYS]
    cmd = [str(Path(python).parent / "vmp-data"), "export", store, str(out), "--format", "lerobot", "--no-video",
           "--obs-keys", *task_cfg.shape_meta.obs.keys(), "--overwrite", "--repo-id", f"local/{out.name}"]
    cmd += (["--state-keys", *state] if state else []) + (["--env-state-keys", *env_state] if env_state else [])
    subprocess.run(cmd, check=True)
    return out


def _interruptible() -> None:
    """In the child before exec: SIGINT back to its default. A command started in the background (`nohup ... &`)
    inherits SIGINT ignored, and a trainer would then go on past its budget until the SIGKILL."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def run_for(cmd: list[str], minutes: float, log_path: Path) -> None:
    """Run ``cmd`` until it exits or ``minutes`` pass (then SIGINT, which both trainers end on with what they saved;
    SIGKILL 30 s later), its output appended to ``log_path``."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                preexec_fn=_interruptible)
        try:
            proc.wait(timeout=max(minutes * 60, 1))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGINT)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def train(spec: dict, task: str, store: str, dataset: Path, run_dir: Path, minutes: float,
          python: str, lerobot_python: str) -> dict[str, Any]:
    """Train one contender for ``minutes`` -> {checkpoints: [{path, step, minutes}], train_minutes, command}."""
    run_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    commands = []
    if spec["kind"] == "vmp":
        base = [python, "-m", "vmp.policies.train", f"task={task}", f"store={store}", "overwrite=true",
                "training.val_every=100000"]
        policy_args = list(spec["args"])
        if "tokenizer" in spec:
            tok = [*base, *spec["tokenizer"], f"run_dir={run_dir / 'tokenizer'}"]
            commands.append(tok)
            run_for(tok, minutes, run_dir / "train.log")
            policy_args.append(f"policy.tokenizer_checkpoint={run_dir / 'tokenizer' / 'checkpoints' / 'latest.pt'}")
        cmd = [*base, *policy_args, f"training.steps={spec['steps']}", f"training.keep_every={spec['ckpt_every']}",
               f"training.ckpt_every={spec['ckpt_every']}", f"run_dir={run_dir / 'policy'}"]
    else:
        cmd = [str(Path(lerobot_python).parent / "lerobot-train"), f"--dataset.repo_id=local/{dataset.name}",
               f"--dataset.root={dataset}", "--policy.device=cpu", "--policy.push_to_hub=false", "--eval_freq=0",
               "--wandb.enable=false", "--num_workers=2", f"--log_freq={min(50, max(1, spec['steps'] // 4))}",
               f"--output_dir={run_dir / 'policy'}", f"--steps={spec['steps']}", f"--save_freq={spec['ckpt_every']}",
               *spec["args"]]
        if (run_dir / "policy").exists():
            shutil.rmtree(run_dir / "policy")  # lerobot-train refuses an existing output_dir without resume
    commands.append(cmd)
    remaining = minutes - (time.time() - t0) / 60
    if remaining > 0.1:
        run_for(cmd, remaining, run_dir / "train.log")
    checkpoints = []
    if spec["kind"] == "vmp":
        for path in (run_dir / "policy" / "checkpoints").glob("step_*.pt"):
            checkpoints.append({"path": str(path), "step": int(path.stem.split("_")[1]),
                                "minutes": (path.stat().st_mtime - t0) / 60})
        latest = run_dir / "policy" / "checkpoints" / "latest.pt"
        if latest.is_file():  # what the end or the stop saved, past the last kept step
            from vmp.policies.checkpoint import read_checkpoint

            step = int(read_checkpoint(latest)["step"])
            if step > max((c["step"] for c in checkpoints), default=0):
                checkpoints.append({"path": str(latest), "step": step, "minutes": (latest.stat().st_mtime - t0) / 60})
    else:
        for path in (run_dir / "policy" / "checkpoints").glob("[0-9]*"):
            done = path / "pretrained_model" / "model.safetensors"
            if done.is_file() and (path / "training_state").is_dir():  # a save the stop did not cut short
                checkpoints.append({"path": str(path / "pretrained_model"), "step": int(path.name),
                                    "minutes": (done.stat().st_mtime - t0) / 60})
    checkpoints.sort(key=lambda c: c["step"])
    return {"checkpoints": checkpoints, "train_minutes": (time.time() - t0) / 60,
            "command": " && ".join(shlex.join(c) for c in commands)}


def kept_training(record: Path, minutes: float, spec: dict) -> dict[str, Any] | None:
    """A finished training's train.json, reused by a rerun only when its budget and its spec (arguments, steps,
    checkpoint interval) are this run's; otherwise None: train again."""
    if not record.is_file():
        return None
    kept = json.loads(record.read_text())
    if kept.get("minutes_budget") == minutes and kept.get("spec") == spec:
        return kept
    log.info("%s: kept training had another budget or spec; training again", record.parent.name)
    return None


def evaluate(checkpoint: str, kind: str, n_episodes: int, out_dir: Path, python: str, lerobot_python: str
             ) -> dict[str, Any]:
    """vmp-eval of one checkpoint on the task's fixed seeds (2 workers) -> its metrics.json."""
    metrics = out_dir / "metrics.json"
    if not metrics.is_file():
        exe = lerobot_python if kind == "lerobot" else python
        subprocess.run([exe, "-m", "vmp.sim.evaluate", f"checkpoint={checkpoint}", f"n_episodes={n_episodes}",
                        "n_workers=2", "n_videos=0", "device=cpu", f"out_dir={out_dir}"], check=True,
                       env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.DEVNULL)
    return json.loads(metrics.read_text())


def samples_per_s(run_dir: Path, kind: str, batch: int) -> float | None:
    """Training throughput from the trainer's own records: LeRobot's log (update seconds per step), our metrics.csv
    (samples_per_s); the median over the run."""
    import numpy as np

    if kind == "lerobot":
        log_path = run_dir / "train.log"
        text = log_path.read_text(errors="replace") if log_path.is_file() else ""
        rates = [batch / float(x) for x in re.findall(r"updt_s:([0-9.]+)", text) if float(x) > 0]
    else:
        import csv

        path = run_dir / "policy" / "metrics.csv"
        rows = list(csv.DictReader(path.open())) if path.is_file() else []
        rates = [float(r["samples_per_s"]) for r in rows if r.get("samples_per_s")]
    return float(np.median(rates)) if rates else None


def latency_rows(checkpoints: dict[str, str], repeats: int) -> dict[str, dict[str, float]]:
    """Chunk latency at batch 1 (`Policy.predict_window`, one thread), every contender's final checkpoint in this one
    process: ``repeats`` calls after 2 unmeasured ones, fewer (5 at least) for a head slower than a minute."""
    import torch

    from vmp.bench.latency import measure
    from vmp.policies.checkpoint import load_policy
    from vmp.policies.lerobot_policy import LeRobotPolicy, pretrained_dir
    from vmp.results import latency_summary

    torch.set_num_threads(1)
    rows = {}
    for name, path in checkpoints.items():
        policy = LeRobotPolicy(path) if pretrained_dir(path) else load_policy(path)[0]
        times = measure(policy, "cpu", repeats, burn_in=2, max_seconds=60.0)
        rows[name] = {**latency_summary(t * 1e3 for t in times), "latency_calls": len(times),
                      "n_params": int(sum(p.numel() for p in policy.parameters()))}
        log.info("%s: chunk latency p50 %.1f ms over %d calls", name, rows[name]["p50_ms"], len(times))
    return rows


def build_parser() -> argparse.ArgumentParser:
    """The command line; every override defaults to None or empty so that each contender keeps its own schedule."""
    parser = argparse.ArgumentParser(prog="vmp-bench lerobot", description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", default="lift")
    parser.add_argument("--store", default=None, help="demonstrations (default: the task's store)")
    parser.add_argument("--contenders", nargs="+", default=DEFAULT_CONTENDERS, choices=sorted(CONTENDERS))
    parser.add_argument("--minutes", type=float, default=12.0, help="training wall-clock budget per contender")
    parser.add_argument("--episodes", type=int, default=50, help="episodes for the end-of-budget success")
    parser.add_argument("--timeline-episodes", type=int, default=20, help="episodes per intermediate checkpoint "
                        "(0: evaluate the end-of-budget checkpoint only, no time to bar)")
    parser.add_argument("--ckpt-every", nargs="+", default=[], metavar="[NAME=]N", help="steps between checkpoints: "
                        "N for every contender, NAME=N for one (default: each contender's, about 1/6 of a 12-minute "
                        "budget on 2 CPU cores)")
    parser.add_argument("--batch-size", type=int, default=None, help="every contender's batch size (default: each "
                        "contender's: 64 for LeRobot's, 128 for ours on low-dim, 64 on images; CARP's tokenizer "
                        "stage keeps its own)")
    parser.add_argument("--steps", type=int, default=None, help="every contender's schedule length in steps "
                        "(default: each contender's, sized to its default budget)")
    parser.add_argument("--tokenizer-steps", type=int, default=None, help="steps of CARP's tokenizer stage (default: "
                        "3000 on low-dim, 2000 on images; its reconstruction has converged long before on low-dim Lift)")
    parser.add_argument("--tag", default="", help="suffix of the records' names, for a second budget beside the first "
                      "(e.g. --minutes 24 --tag 24min)")
    parser.add_argument("--bar", type=float, default=0.95, help="the success rate 'time to' measures")
    parser.add_argument("--lerobot-python", default=".venv-lerobot/bin/python", help="the LeRobot environment's python")
    parser.add_argument("--python", default=os.environ.get(PYTHON_ENV, sys.executable),
                        help="the python our heads train and evaluate in (default: this one)")
    parser.add_argument("--out", default=None, help="runs folder (default runs/lerobot-<task>)")
    parser.add_argument("--results", default="results")
    return parser


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, dict[str | None, int]]:
    """The checked arguments and the --ckpt-every overrides (``{None: N}`` for every contender, ``{name: N}`` for
    one). A bad value exits 2 by name here, before anything is exported, trained or re-executed."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.tag and not re.fullmatch(r"[A-Za-z0-9_-]+", args.tag):
        parser.error(f"--tag {args.tag!r}: letters, digits, '_' and '-' only (it becomes part of file names)")
    ckpt_every: dict[str | None, int] = {}
    for item in args.ckpt_every:
        name, _, value = item.rpartition("=")
        if name and name not in CONTENDERS:
            parser.error(f"--ckpt-every {item}: no contender {name!r} (one of {', '.join(sorted(CONTENDERS))})")
        if not value.isdigit() or int(value) == 0:
            parser.error(f"--ckpt-every {item}: the steps must be a positive integer")
        ckpt_every[name or None] = int(value)
    for name in ("minutes", "episodes", "timeline_episodes", "steps", "batch_size", "tokenizer_steps"):
        value = getattr(args, name)
        if value is not None and (value < 0 or (value == 0 and name != "timeline_episodes")):
            parser.error(f"--{name.replace('_', '-')} {value}: must be positive"
                         + (" (or 0)" if name == "timeline_episodes" else ""))
    return args, ckpt_every


def lerobot_environment(args: argparse.Namespace, given: list[str]) -> str:
    """The LeRobot environment's python. The latency rows load LeRobot policies in this process, so when a LeRobot
    contender runs and lerobot is not importable here, the command is re-executed there (our python passed in the
    environment, so that the records' command stays the one typed); this call then does not return."""
    lerobot_python = str(Path(args.lerobot_python))
    if not Path(lerobot_python).is_file():
        raise SystemExit(f"vmp-bench lerobot: no LeRobot environment at {lerobot_python} (make test-lerobot builds it)")
    if any(CONTENDERS[c]["kind"] == "lerobot" for c in args.contenders):
        try:
            importlib.import_module("lerobot")
        except ImportError:
            os.execve(lerobot_python, [lerobot_python, "-m", "vmp.bench.cli", "lerobot", *given],
                      {**os.environ, PYTHON_ENV: args.python})
    return lerobot_python


def train_all(args: argparse.Namespace, ckpt_every: dict[str | None, int], obs_type: str, store: str,
              dataset: Path, out: Path, lerobot_python: str) -> dict[str, dict[str, Any]]:
    """Every contender's training, one at a time before any evaluation so that each wall-clock budget runs on a quiet
    machine; a finished training with this budget and spec is kept rather than repeated."""
    runs: dict[str, dict[str, Any]] = {}
    for name in args.contenders:
        record = out / name / "train.json"
        spec = run_spec(name, obs_type, args.steps, ckpt_every, args.batch_size, args.tokenizer_steps)
        kept = kept_training(record, args.minutes, spec)
        if kept is not None:
            runs[name] = kept
            continue
        log.info("training %s for %.1f min", name, args.minutes)
        runs[name] = train(spec, args.task, store, dataset, out / name, args.minutes, args.python, lerobot_python)
        if not runs[name]["checkpoints"]:
            raise RuntimeError(f"{name} kept no checkpoint in {args.minutes} min; see {out / name / 'train.log'}")
        runs[name].update(minutes_budget=args.minutes, spec=spec)
        record.write_text(json.dumps(runs[name], indent=2) + "\n")
    return runs


def evaluate_run(name: str, run: dict[str, Any], args: argparse.Namespace, out: Path, lerobot_python: str) -> None:
    """Adds ``final``, ``timeline`` and ``time_to_bar`` to ``run``. Checkpoints are evaluated in order only until one
    reaches the bar (or not at all with --timeline-episodes 0), since past it only the end of the budget matters."""
    spec = run["spec"]
    timeline, reached = [], None
    for ckpt in run["checkpoints"]:
        last = ckpt is run["checkpoints"][-1]
        if not last and (reached is not None or args.timeline_episodes == 0):
            continue
        n = args.episodes if last else args.timeline_episodes
        m = evaluate(ckpt["path"], spec["kind"], n, out / name / "eval" / f"step{ckpt['step']}_{n}", args.python,
                     lerobot_python)
        timeline.append({"step": ckpt["step"], "minutes": round(ckpt["minutes"], 2),
                         "success_rate": m["success_rate"], "n_episodes": m["n_episodes"]})
        if reached is None and args.timeline_episodes and m["success_rate"] >= args.bar:
            reached = ckpt["minutes"]
        run["final"] = m
    run.update(timeline=timeline, time_to_bar=reached)


def write_records(runs: dict[str, dict[str, Any]], latency: dict[str, dict[str, float]], args: argparse.Namespace,
                  obs_type: str, n_demos: int, command: str, out: Path, lerobot_python: str) -> None:
    """One results record per contender: its metrics beside the budget it trained under (trainer, torch version,
    command), so that `vmp-bench report` can set unlike trainers side by side."""
    from vmp.bench.common import device_name, write_result

    python = args.python
    torch_of = {exe: subprocess.run([exe, "-c", "import torch; print(torch.__version__)"], capture_output=True,
                                    text=True).stdout.strip() for exe in {python, lerobot_python}}
    for name, run in runs.items():
        spec = run["spec"]
        batch = batch_of(spec)
        metrics: dict[str, Any] = {**latency[name], "bar": args.bar,
                                   "samples_per_s": samples_per_s(out / name, spec["kind"], batch)}
        if "final" in run:
            final = run["final"]
            metrics.update({k: final[k] for k in ("success_rate", "ci95_low", "ci95_high", "n_episodes")},
                           time_to_bar_min=None if run["time_to_bar"] is None else round(run["time_to_bar"], 2),
                           timeline=run["timeline"])
        budget = {"train_minutes": round(run["train_minutes"], 2), "minutes_budget": args.minutes,
                  "train_steps": run["checkpoints"][-1]["step"], "batch_size": batch, "n_demos": n_demos,
                  "trainer": "lerobot-train" if spec["kind"] == "lerobot" else "vmp-train",
                  "trainer_torch": torch_of[lerobot_python if spec["kind"] == "lerobot" else python],
                  "train_command": run["command"]}
        write_result(f"lerobot_{args.task}_{name}" + (f"_{args.tag}" if args.tag else ""), "comparison", args.task,
                     obs_type, name, spec["size"], metrics, device_name("cpu"), command, budget=budget,
                     out_dir=Path(args.results))


def main(argv: list[str] | None = None) -> None:
    from vmp.bench.common import given_args

    args, ckpt_every = parse_args(argv)
    given = given_args(argv)
    lerobot_python = lerobot_environment(args, given)
    task_cfg = task_config(args.task)
    obs_type = "image" if any(v.get("type") == "rgb" for v in task_cfg.shape_meta.obs.values()) else "lowdim"
    store = args.store or str(task_cfg.store)
    out = Path(args.out or f"runs/lerobot-{args.task}")
    dataset = export(store, task_cfg, out / "data" / args.task, lerobot_python)
    n_demos = json.loads((dataset / "meta" / "info.json").read_text())["total_episodes"]
    command = "vmp-bench lerobot " + shlex.join(given)

    runs = train_all(args, ckpt_every, obs_type, store, dataset, out, lerobot_python)
    for name, run in runs.items():
        if not run["spec"].get("latency_only"):
            evaluate_run(name, run, args, out, lerobot_python)
    latency = latency_rows({n: r["checkpoints"][-1]["path"] for n, r in runs.items()}, LATENCY_REPEATS)
    write_records(runs, latency, args, obs_type, n_demos, command, out, lerobot_python)


if __name__ == "__main__":
    main()
