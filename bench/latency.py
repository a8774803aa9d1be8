"""Action-chunk latency at batch 1 for every head and sampler setting, on CPU and (when present) GPU.

All heads use the same encoder and comparable network sizes (the configs in configs/policy/), with freshly initialised
weights: latency depends on the compute graph, not on the weights. Each setting: burn-in, then timed calls of the
observation-window-to-chunk path every caller shares (`Policy.predict_window`; its host copy synchronises).
Writes results/latency_<obs>_<head>_<variant>_<device>.json (results-record format).

`--task can` (or square, stack) times the heads that run on a robosuite task on that task's observations instead of
Lift's, from state and from its two cameras (`<task>_image`), and writes latency_<task>_<obs>_...json; the heads
that read an instruction or RGB-D keep their own tasks and are skipped there.

`--engine` times what `vmp-deploy` runs instead: `real.engine.InferenceEngine` (host arrays in and out; on CUDA bf16
autocast and each head's chunk replayed from a CUDA graph), after its warm-up has captured the graphs; `--compile`
adds torch.compile (`engine.compile=true`), recorded apart (`..._engine_compiled_<device>.json`).

    vmp-bench latency [--device cuda] [--obs lowdim image] [--repeats 50] [--heads carp beso] [--variants ...] [--engine]
                      [--compile] [--task can]
"""

from __future__ import annotations

import argparse
import os
import logging
import time
from pathlib import Path

from vmp.bench.common import RESULTS_DIR, device_name, write_result
from vmp.results import latency_summary
from vmp.sim import robosuite_task_names

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
    ("pad", "10-step ddim", {"sampler": "ddim", "n_steps": 10}),
    ("navdp", "16 samples, 10-step ddpm, critic", {"n_samples": 16, "n_steps": 10, "selection": "critic"}),
    # Diffusion-VLA's control step with its reasoning cached, and with a reasoning step (greedy, KV cache) every call
    ("divla", "10-step ddim, reasoning cached", {"sampler": "ddim", "n_steps": 10, "reasoning_every": 1000000}),
    ("divla", "10-step ddim with a reasoning step", {"sampler": "ddim", "n_steps": 10, "reasoning_every": 0}),
]


def robosuite_tasks(task: str) -> dict[str, tuple[str, str, tuple[str, ...]]]:
    """obs type -> (task config, encoder, extra overrides) of a robosuite task, from state and from its cameras."""
    return {"lowdim": (task, "lowdim", ()), "image": (f"{task}_image", "compact_cnn", ())}


# Heads that run on other tasks than the robosuite ones (and only on these observation types): PAD reads one camera
# and an instruction, so it is timed on language-conditioned multi-task Meta-World (64 px, one camera); NavDP on pointnav's
# 64 px RGB-D + goal, one full planning step (N paths in one batch, the critic, the pick).
# Diffusion-VLA reads the instruction too: multi-task Meta-World, from its 39-d state or its 64 px camera.
HEAD_TASKS = {"pad": {"image": ("metaworld_mt", "compact_cnn", ())},
              "navdp": {"rgbd": ("pointnav", "compact_cnn", ("encoder.image_output=tokens",))},
              "divla": {"lowdim": ("metaworld_mt_lowdim", "lowdim", ()),
                        "image": ("metaworld_mt", "compact_cnn", ("encoder.image_output=tokens",))}}
OBS_TYPES = sorted({*robosuite_tasks("lift"), *(obs for tasks in HEAD_TASKS.values() for obs in tasks)})


def build(task: str, encoder: str, head: str, overrides: dict, extra_overrides=()):
    from hydra import compose, initialize_config_module

    from vmp.policies.build import build_policy

    extra = [f"policy.{k}={'null' if v is None else v}" for k, v in overrides.items()]
    with initialize_config_module(config_module="vmp.configs", version_base=None):
        cfg = compose("train", overrides=[f"task={task}", f"policy={head}", f"encoder={encoder}", *extra,
                                          *extra_overrides])
    if head == "pad":  # an untrained autoencoder of the stage-one architecture: latency does not depend on weights
        from vmp.policies.heads.pad import PADVAEConfig

        cfg.policy.vae_arch = PADVAEConfig().architecture()
    if head == "divla":  # a tokenizer on the expert's phase names; an untrained model writes its longest reasoning
        from vmp.policies.nn.reasoning import train_tokenizer

        cfg.policy.tokenizer = train_tokenizer(["reach the object", "grasp the object", "move toward the goal"],
                                               int(cfg.policy.vocab_size))
    return build_policy(cfg), cfg


def instruction_for(policy) -> str | None:
    """The text a language-conditioned head is timed with (None for the others)."""
    return "push the puck to the goal" if policy.needs_instruction else None


def sliding_windows(policy, seed: int = 0):
    """Observation windows as a control loop sees them: each one new random step, the older ones shared with the
    window before (so run-time caches of frame features do what they do on a robot, no more)."""
    import numpy as np

    rng = np.random.default_rng(seed)

    def step() -> dict:
        return {key: (rng.integers(0, 256, shape, dtype=np.uint8) if policy.obs_kinds[key] == "rgb"
                      else rng.standard_normal(shape).astype(np.float32)) for key, shape in policy.obs_shapes.items()}

    steps = [step() for _ in range(policy.n_obs_steps)]
    while True:
        yield {key: np.stack([s[key] for s in steps]) for key in policy.obs_shapes}
        steps = [*steps[1:], step()]


def measure_engine(policy, device: str, repeats: int, compile: bool = False) -> tuple[list[float], str, dict]:
    """Latency of `InferenceEngine.infer` (numpy window in, numpy chunk out) -> (seconds per call, variant suffix,
    extra metrics: how many input signatures replay from CUDA graphs, and on bf16 the largest deviation of a chunk
    from float32 on the same observation and noise)."""
    from vmp.real.engine import InferenceEngine

    engine = InferenceEngine(policy, device=device, compile=compile)
    engine.instruction = instruction_for(policy)
    windows = sliding_windows(policy)
    window = next(windows)
    engine.warmup(window, n=3)
    for _ in range(repeats):
        engine.infer(next(windows))
    extra = {"graphs_captured": engine.captured}
    if engine.bf16:
        extra["bf16_max_abs_diff"] = bf16_deviation(policy, window)
    features = [name for name, on in (("bf16", engine.bf16), ("compiled", engine.compiled),
                                      ("CUDA graphs", engine.captured > 0)) if on]
    return [t / 1e3 for t in engine.latencies_ms], "engine" + (f" ({', '.join(features)})" if features else ""), extra


def bf16_deviation(policy, window) -> float:
    """Max |chunk_bf16 - chunk_fp32| (action units) for one observation and the same sampling noise."""
    import torch

    obs, _ = policy.window_to_batch(window, instruction=instruction_for(policy))
    kwargs = {}
    shape = policy.sampling_noise_shape(1)
    if shape is not None:
        kwargs["noise"] = torch.randn(shape, device=policy.device, generator=torch.Generator(policy.device).manual_seed(0))
    with torch.inference_mode():
        fp32 = policy.predict_action_chunk(obs, **kwargs)
        with torch.autocast(policy.device.type, dtype=torch.bfloat16):
            bf16 = policy.predict_action_chunk(obs, **kwargs)
    return float((bf16.float() - fp32.float()).abs().max())


def measure_batch(policy, device: str, repeats: int, batch: int, burn_in: int = 2) -> list[float]:
    """Seconds per chunk batch: ``batch`` observation windows (stacked) in one `Policy.predict` call, the chunks
    copied to the host (what a batched evaluator or an offline labeller runs)."""
    import torch

    policy = policy.to(device).eval()
    policy.decode_frames = False
    windows = sliding_windows(policy)
    instruction = instruction_for(policy)
    times = []
    for i in range(burn_in + repeats):
        obs, goal = policy.window_to_batch(next(windows), None, instruction)
        obs = {k: ([v[0]] * batch if isinstance(v, list) else v.expand(batch, *v.shape[1:]).contiguous())
               for k, v in obs.items()}
        start = time.perf_counter()
        with torch.inference_mode():
            policy.predict(obs, goal).actions.cpu()
        if i >= burn_in:
            times.append(time.perf_counter() - start)
    return times


def measure(policy, device: str, repeats: int, burn_in: int = 5, max_seconds: float | None = None) -> list[float]:
    """Seconds per `Policy.predict_window` call (observation window in, chunk out: what `vmp-eval` runs). Its host
    copy of the chunk synchronises the device. ``max_seconds``: stop early (after 5 measured calls at least) once
    this much time has passed, for heads that take seconds per chunk."""
    policy = policy.to(device).eval()
    policy.decode_frames = False  # the chunk, not the decoding of predicted frames for display
    windows = sliding_windows(policy)
    instruction = instruction_for(policy)
    times, begin = [], time.perf_counter()
    for i in range(burn_in + repeats):
        window = next(windows)
        start = time.perf_counter()
        policy.predict_window(window, instruction=instruction)
        if i >= burn_in:
            times.append(time.perf_counter() - start)
        if max_seconds is not None and len(times) >= 5 and time.perf_counter() - begin > max_seconds:
            break
    return times


def main(argv: list[str] | None = None) -> None:
    from vmp.policies.heads import HEADS

    parser = argparse.ArgumentParser(prog="vmp-bench latency", description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--obs", nargs="+", default=OBS_TYPES, choices=OBS_TYPES)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--heads", nargs="+", default=None, help="only these heads (default: every registered one)")
    parser.add_argument("--variants", nargs="+", default=None, help='only these variants, e.g. "3-step euler"')
    parser.add_argument("--engine", action="store_true", help="time the deployment engine's path (see above)")
    parser.add_argument("--compile", action="store_true",
                        help="with --engine: torch.compile the head too (fuses the small kernels a CUDA graph still "
                             "launches one by one; compiling takes minutes)")
    parser.add_argument("--batch", type=int, default=1, help="> 1: chunks for this many observations in one call")
    parser.add_argument("--out-dir", type=Path, default=RESULTS_DIR, help="where the records go (default: results/)")
    parser.add_argument("--task", default="lift", choices=robosuite_task_names(),
                        help="the robosuite task whose observations the robosuite heads are timed on (default: lift)")
    args = parser.parse_args(argv)
    if args.compile and not args.engine:
        parser.error("--compile times the deployment engine's compiled path: it needs --engine")
    for flag, chosen, known in (("--heads", args.heads, {h for h, _, _ in SETTINGS}),
                                ("--variants", args.variants, {v for _, v, _ in SETTINGS})):
        unknown = sorted(set(chosen or ()) - known)
        if unknown:
            parser.error(f"{flag}: unknown {unknown}; choose from {sorted(known)}")
    rows = []
    tasks, default_task = robosuite_tasks(args.task), args.task == "lift"
    for obs in args.obs:
        for head, variant, overrides in SETTINGS:
            if head in HEAD_TASKS:
                setting = HEAD_TASKS[head].get(obs) if default_task else None
            else:
                setting = tasks.get(obs)
            if setting is None:
                continue
            if head not in HEADS:
                log.warning("head %s is not registered: skipped", head)
                continue
            if (args.heads and head not in args.heads) or (args.variants and variant not in args.variants):
                continue
            if args.batch > 1 and overrides.get("reasoning_every", 0) > 1:
                continue  # a cached context belongs to one control loop: a batch of observations reasons afresh
            policy, cfg = build(*setting[:2], head, overrides, setting[2])
            command = f"vmp-bench latency --device {args.device} --obs {obs} --repeats {args.repeats}"
            if not default_task:
                command += f" --task {args.task}"
            if args.heads and not args.engine:
                command += f" --heads {head}"
            slug = variant.replace(",", "").replace(" ", "-")
            if args.engine:
                command += f" --heads {head} --variants '{variant}' --engine" + (" --compile" if args.compile else "")
                slug += "_engine" + ("_compiled" if args.compile else "")
                times, suffix, extra = measure_engine(policy, args.device, args.repeats, args.compile)
                variant = f"{variant}, {suffix}"
            elif args.batch > 1:
                command += f" --batch {args.batch}"
                slug += f"_b{args.batch}"
                times = measure_batch(policy, args.device, args.repeats, args.batch)
                variant = f"{variant}, batch {args.batch}"
            else:
                times = measure(policy, args.device, args.repeats)
            stats = latency_summary(t * 1e3 for t in times)
            if args.engine:
                stats.update(extra)
            batch = 1 if args.engine else args.batch
            # throughput as a chunked controller sees it: a chunk drives n_action_steps control steps, so actions per
            # second count those (the Diffusion-VLA paper's Hz), beside the forward passes (chunks) per second
            stats.update(batch=batch, horizon=policy.horizon, n_action_steps=policy.n_action_steps,
                         chunks_per_s=batch * 1e3 / stats["mean_ms"],
                         actions_per_s=batch * policy.n_action_steps * 1e3 / stats["mean_ms"],
                         n_params=sum(p.numel() for p in policy.parameters()),
                         host_load_1m=round(os.getloadavg()[0], 2))
            rows.append((obs, head, variant, stats))
            prefix = "latency" if default_task else f"latency_{args.task}"
            write_result(f"{prefix}_{obs}_{head}_{slug}_{args.device.split(':')[0]}", "latency",
                         "-" if default_task else setting[0], obs, head, variant, stats, device_name(args.device),
                         command, out_dir=args.out_dir)
    print(f"{'obs':7} {'head':6} {'variant':48} {'p50 ms':>8} {'p99 ms':>8}")
    for obs, head, variant, stats in rows:
        print(f"{obs:7} {head:6} {variant:48} {stats['p50_ms']:8.2f} {stats['p99_ms']:8.2f}")


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    main()
