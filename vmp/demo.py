"""`make demo`: the main job end to end on the embedded default (low-dim Lift, BESO).

collect expert demonstrations in simulation -> train BESO -> evaluate 50 episodes -> print the success rate and where
the rollout videos are. Every stage is the console script a user would run, printed before it runs; stages whose output
already exists are skipped so that a second `make demo` only re-evaluates.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

TASK = "lift"
STORE = Path("stores/lift_dart.zarr")
RUN_DIR = Path("runs/demo-lift-beso")
EVAL_DIR = RUN_DIR / "eval"
N_DEMOS = 200
ACTION_NOISE = 0.1  # DART: noisy execution, clean labels (100 noise-free demos gave 56%)
TRAIN_STEPS = 4000
BATCH_SIZE = 128


def run(args: list[str]) -> None:
    exe = Path(sys.executable).parent / args[0]
    print(f"\n$ {shlex.join(args)}", flush=True)
    subprocess.run([str(exe), *args[1:]], check=True)


def main() -> None:
    start = time.time()
    if not (STORE / "meta").exists():
        run(["vmp-collect", f"task={TASK}", f"n_episodes={N_DEMOS}", f"out={STORE}", f"action_noise={ACTION_NOISE}"])
    else:
        print(f"[demo] using the existing store {STORE} (delete it to collect again)")
    ckpt = RUN_DIR / "checkpoints" / "latest.pt"
    run(["vmp-train", f"task={TASK}", "policy=beso", "encoder=lowdim", f"store={STORE}", f"run_dir={RUN_DIR}",
         f"training.steps={TRAIN_STEPS}", f"training.batch_size={BATCH_SIZE}", "resume=true"])
    run(["vmp-eval", f"checkpoint={ckpt}", "n_episodes=50", f"out_dir={EVAL_DIR}", "n_videos=3"])
    metrics = json.loads((EVAL_DIR / "metrics.json").read_text())
    videos = sorted(str(p) for p in EVAL_DIR.rglob("*.mp4"))
    print("\n" + "=" * 72)
    print(f"demo: BESO (3-step sampler) on low-dim Lift, {N_DEMOS} expert demos (DART noise {ACTION_NOISE}), "
          f"{TRAIN_STEPS} training steps of batch {BATCH_SIZE}")
    print(f"success rate: {metrics['success_rate']:.2f}  (95% CI {metrics['ci95_low']:.2f}-{metrics['ci95_high']:.2f}, "
          f"{metrics['n_episodes']} episodes)")
    print(f"videos: {', '.join(videos) if videos else 'none'}")
    print(f"metrics: {EVAL_DIR / 'metrics.json'}    total time {(time.time() - start) / 60:.1f} min")


if __name__ == "__main__":
    main()
