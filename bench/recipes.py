"""The results table's rows, each as the commands that make it: collect the demonstrations, train, evaluate.

`vmp-bench suite=full` runs them (a store already on disk is kept; trainings rerun into their run folders; every
evaluation rewrites its results JSON), `vmp-bench report` writes them into docs/results.md between their markers,
and tests compose every command against the configs, so a renamed option fails a test rather than a rerun hours in.

    vmp-bench suite full --recipes lift_lowdim lift_image      # only these groups, without the benchmarks
"""

from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass, field

# the console scripts a recipe may call, and the module each one runs (the suite calls modules: no PATH needed)
MODULES = {"vmp-collect": "vmp.sim.collect", "vmp-train": "vmp.policies.train", "vmp-eval": "vmp.sim.evaluate"}


@dataclass(frozen=True)
class Recipe:
    """One group of rows that share demonstrations. `stores` maps each store to the command that collects it (skipped
    when the store exists); `steps` are the trainings and evaluations in order. A training that pins `device=cuda`
    was made on a lent GPU (two CPU cores would take days): without a GPU the suite skips it and the evaluations of
    its run folder, and says so. `notes`: records of the group that no recipe remakes, and why."""

    name: str
    stores: dict[str, str]
    steps: list[str]
    notes: list[str] = field(default_factory=list)

    def commands(self) -> list[str]:
        return list(self.stores.values()) + self.steps


def argv(command: str) -> list[str]:
    """A recipe line as the argv that runs it in this interpreter (a trailing `# comment` dropped)."""
    words = shlex.split(command, comments=True)
    if not words or words[0] not in MODULES:
        raise ValueError(f"recipe command {command!r}: expected one of {sorted(MODULES)} first")
    return [sys.executable, "-m", MODULES[words[0]], *words[1:]]


_LIFT = "task=lift store=stores/lift_dart.zarr training.batch_size=128 training.steps=4000"
_LIFT_TOK = "task=lift policy=carp_tokenizer store=stores/lift_dart.zarr training.steps=3000 training.lr=1e-3 training.warmup_steps=200"
_LIFT_IMG = "task=lift_image encoder=compact_cnn store=stores/lift_image_dart.zarr"
_BP = ("task=blockpush store=stores/blockpush_dart1k.zarr policy.horizon=8 policy.n_action_steps=2 "
       "encoder.lowdim_hidden=512 training.batch_size=256 training.steps=12000 training.lr=1e-3")
_BP_CARP = ("task=blockpush policy=carp store=stores/blockpush_dart1k.zarr policy.tokenizer.horizon=8 "
            "policy.tokenizer.n_action_steps=2 policy.n_action_steps=2 encoder.lowdim_hidden=512 "
            "policy.tokenizer_checkpoint=runs/bp1k-carp_tokenizer/checkpoints/latest.pt training.batch_size=256 "
            "training.steps=12000 training.lr=1e-3")
_BP_VARIANT = "goal-conditioned; horizon 8, 2 actions per chunk"
_CARP = "greedy, 4 scales, kv-cache"
_PAD = "task=metaworld_mt policy=pad device=cuda training.batch_size=128 training.steps=8000 training.num_workers=4"
_MT_DIVLA = ("task=metaworld_mt policy=divla encoder=compact_cnn encoder.image_output=tokens training.batch_size=64 "
             "training.steps=8000 training.num_workers=1")
_MT_DIVLA_VARIANT = "compact CNN tokens of the 64 px image, proprioception; 500 DART demos, 8000 x 64 steps (CPU)"
# the same, reading one spatial-softmax token per camera (as BESO and DDPM do) with the action head on the encoder
_MT_DIVLA_SOFTMAX = _MT_DIVLA.replace(" encoder.image_output=tokens", "") + " policy.action_context=encoder"
_MT_DIVLA_SOFTMAX_SETTING = ("action head attending to the encoder tokens; compact CNN spatial softmax on the 64 px "
                             "image (one token per camera), proprioception; 500 DART demos, batch 64 (CPU)")
_MT_LOWDIM = ("task=metaworld_mt_lowdim encoder=lowdim training.steps=2500 training.batch_size=64 "
              "training.warmup_steps=100 training.val_every=500")
_MT_LOWDIM_VARIANT = "500 DART demos, 2500 x 64 steps (CPU)"
_NAV = "1000 demos, 6000 x 64 steps (CPU)"


def _eval(run: str, result: str, variant: str, episodes: int = 50, extra: str = "", out: str = "eval",
          videos: int = 3) -> str:
    """A vmp-eval line; the variant is quoted for hydra too (its commas would otherwise read as a list or a sweep)."""
    extra = f" {extra}" if extra else ""
    return (f"vmp-eval checkpoint=runs/{run} n_episodes={episodes} n_workers=2 n_videos={videos}{extra} "
            f"out_dir=runs/{run}/{out} 'variant=\"{variant}\"' results_json=results/{result}.json")


_ROBOMIMIC_SCHEDULE = "training.batch_size=128 training.steps=8000 training.keep_every=1000"
_CAN_FULL = f"task=can store=stores/can_dart.zarr {_ROBOMIMIC_SCHEDULE}"
_CAN = f"{_CAN_FULL} training.stop_after=5000"  # an 8000-step cosine schedule stopped at 5000: an hour of one CPU thread
_FULL_SETTING = "3-step euler, 8000-step cosine run to its end"
_SQUARE = f"task=square store=stores/square_dart.zarr {_ROBOMIMIC_SCHEDULE}"
_CAN_AFTER10 = f"task=can store=stores/can_dart_after10_obs.zarr {_ROBOMIMIC_SCHEDULE} training.stop_after=5000"
_AFTER10_SETTING = "demos 10 steps past success, complete first observation"
_SQUARE_AFTER10_STORE = "stores/square_dart_after10_obs.zarr"
# the checkpoints each 16000-step Square training is evaluated at: the last three per seed, and seed 0's curve
_SQUARE_16K_CHECKPOINTS = [(seed, k) for seed in (0, 1, 2) for k in (12000, 14000, 16000)] + [(0, 10000), (0, 8000)]
_SQUARE_AFTER10_DATA = f"task=square store={_SQUARE_AFTER10_STORE}"
_SQUARE_AFTER10 = f"{_SQUARE_AFTER10_DATA} {_ROBOMIMIC_SCHEDULE}"
# twice the schedule (~56 epochs): the 8000-step run's validation loss was still falling at its end
_SQUARE_16K = f"{_SQUARE_AFTER10_DATA} training.batch_size=128 training.steps=16000 training.keep_every=2000"
_SQUARE_500_STORE = "stores/square_dart500_after10_obs.zarr"  # 500 demonstrations: the 200 and 300 more seeds
_SQUARE_500_16K = _SQUARE_16K.replace(_SQUARE_AFTER10_STORE, _SQUARE_500_STORE)


def _step_eval(run: str, result: str, setting: str, seed: int, step: int, schedule: str, episodes: int = 50,
               workers: int = 1, overrides: str = "", tag: str = "", first_episode_seed: int | None = None) -> str:
    """One kept checkpoint of a training seed on vmp-eval's seeds (one worker: a training may use the other core),
    its variant read by the curves over seeds ("<setting>; seed S, step N <schedule>"). `overrides`: inference-time
    policy settings ("n_steps=10"), `tag` names them in the out_dir and the record ("_euler10");
    `first_episode_seed`: other episode seeds than vmp-eval's (the setting and tag should say so)."""
    extra = "".join(f" +overrides.{item}" for item in overrides.split())
    if first_episode_seed is not None:
        extra += f" seed={first_episode_seed}"
    return (f"vmp-eval checkpoint=runs/{run}/checkpoints/step_{step:07d}.pt n_episodes={episodes} n_workers={workers} "
            f"n_videos={0 if episodes > 50 else 1}{extra} out_dir=runs/{run}/eval_step{step}{tag} "
            f"'variant=\"{setting}; seed {seed}, step {step} {schedule}\"' "
            f"results_json=results/{result}_step{step}{tag}.json")


def _full_eval(run: str, result: str, step: int) -> str:
    """A checkpoint of a run whose 8000-step schedule ran to its end (two workers: nothing trains beside it)."""
    return _step_eval(run, result, _FULL_SETTING, 0, step, "of 8000", workers=2)


# robomimic's two cameras (agent view, wrist) at 84 px, a compact CNN; on a GPU (2 CPU cores: ~0.6 s a step at batch
# 64, days for the state rows' number of samples at the image rows' cost)
_ROBOMIMIC_IMAGE_GPU = ("encoder=compact_cnn device=cuda training.batch_size=128 training.steps=10000 "
                        "training.keep_every=1000 training.num_workers=4")
_IMAGE_CPU_SETTING = "3-step euler; compact CNN, 2 x 84 px cameras, one observation step (CPU)"
_IMAGE_CPU_400_SETTING = _IMAGE_CPU_SETTING.replace(" (CPU)", ", 400 demos (CPU)")
# each head's inference setting as the image records name it (bench/gpu_session.sh reads it for its device evaluations)
IMAGE_SETTINGS = {"beso": "3-step euler", "carp": _CARP, "ddpm": "100-step ddpm"}
# The kept checkpoints evaluated (on the CPU, once back from the GPU) and how far each run got: a lent GPU session
# (bench/gpu_session.sh image) stops its trainings at its deadline
_IMAGE_EVALS = {"can": {"beso": ((3000, 4000, 5000), "of 10000 (the GPU session stopped at 5357)"),
                        "ddpm": ((2000, 3000, 4000), "of 10000 (the GPU session stopped at 4619)")},
                "square": {head: ((6000, 8000, 10000), "of 10000") for head in IMAGE_SETTINGS}}


def _robomimic_image_store_path(task: str, n_episodes: int = 200) -> str:
    """Where `_robomimic_image_store` collects (the 200-demonstration store keeps its first name)."""
    return f"stores/{task}_image_dart{'' if n_episodes == 200 else n_episodes}.zarr"


def _robomimic_image_store(task: str, n_episodes: int = 200) -> dict[str, str]:
    """`task`_image's DART store (`n_episodes` demonstrations going on past success; the first 200 are the default
    store's) and the command that collects it."""
    store = _robomimic_image_store_path(task, n_episodes)
    return {store: f"vmp-collect task={task}_image n_episodes={n_episodes} out={store} action_noise=0.1 "
                   "steps_after_success=10"}


def _robomimic_image_cpu(task: str, n_episodes: int = 200) -> str:
    """BESO on `task`_image from its DART store of `n_episodes` on two CPU cores: one observation step (half the images
    of two: 0.41 s a step at batch 128 against 0.77 s on Can), a checkpoint kept every 2000 steps."""
    return (f"task={task}_image store={_robomimic_image_store_path(task, n_episodes)} encoder=compact_cnn "
            "training.batch_size=128 training.keep_every=2000 policy=beso policy.n_obs_steps=1")


def _image_cpu_inference_evals(run: str, result: str) -> list[str]:
    """The last checkpoint of a 10000-step CPU image run at two other inference settings: re-planning twice as often
    (4 actions a chunk) and 10 denoising steps instead of 3."""
    return [_step_eval(run, result, _IMAGE_CPU_SETTING.replace("3-step euler", setting), 0, 10000, "of 10000",
                       workers=2, overrides=overrides, tag=tag)
            for setting, overrides, tag in (("3-step euler, 4 actions per chunk", "n_action_steps=4", "_act4"),
                                            ("10-step euler", "n_steps=10", "_euler10"))]


def _robomimic_image_gpu(task: str) -> list[str]:
    """BESO, CARP (tokenizer, then policy) and DDPM on `task`_image from its DART store, then the kept checkpoints
    that `_IMAGE_EVALS` names evaluated (on the CPU once the checkpoints are back)."""
    store = f"store=stores/{task}_image_dart.zarr"
    policies = {"beso": "policy=beso", "ddpm": "policy=ddpm",
                "carp": f"policy=carp policy.tokenizer_checkpoint=runs/{task}_image-carp_tokenizer-gpu/checkpoints/"
                        "latest.pt"}
    lines = [f"vmp-train task={task}_image policy=carp_tokenizer {store} device=cuda training.steps=3000 "
             f"training.lr=1e-3 training.warmup_steps=200 training.num_workers=4 "
             f"run_dir=runs/{task}_image-carp_tokenizer-gpu"]
    lines += [f"vmp-train task={task}_image {store} {_ROBOMIMIC_IMAGE_GPU} {policies[head]} "
              f"run_dir=runs/{task}_image-{head}-gpu" for head in ("beso", "carp", "ddpm")]
    lines += [_step_eval(f"{task}_image-{head}-gpu", f"success_{task}_image_{head}_gpu_seed0",
                         f"{IMAGE_SETTINGS[head]}; compact CNN, 2 x 84 px cameras (GPU)", 0, k, schedule, workers=2)
              for head, (steps, schedule) in _IMAGE_EVALS[task].items() for k in steps]
    return lines


def option(command: str, key: str) -> str | None:
    """The value of `key=` in a recipe command (None when absent)."""
    for word in shlex.split(command, comments=True):
        if word.startswith(f"{key}="):
            return word.split("=", 1)[1]
    return None


def _carp(train: str, name: str, seed: int) -> tuple[str, str]:
    """CARP on a robomimic task: its tokenizer on the store of `train` (the task, store and schedule), then the policy
    on that tokenizer; runs named <task>-carp_tokenizer`name`-seedS and <task>-carp`name`-seedS."""
    task, store = option(train, "task"), option(train, "store")
    tokenizer = f"runs/{task}-carp_tokenizer{name}-seed{seed}"
    return (f"vmp-train task={task} policy=carp_tokenizer store={store} training.steps=3000 training.lr=1e-3 "
            f"training.warmup_steps=200 run_dir={tokenizer} seed={seed}",
            f"vmp-train {train} policy=carp policy.tokenizer_checkpoint={tokenizer}/checkpoints/latest.pt "
            f"run_dir=runs/{task}-carp{name}-seed{seed} seed={seed}")


def _can_eval(head: str, seed: int, step: int, setting: str) -> str:
    """One kept checkpoint of a Can run, 50 episodes."""
    return _step_eval(f"can-{head}-seed{seed}", f"success_can_lowdim_{head}_seed{seed}", setting, seed, step,
                      "of 8000 (stopped at 5000)")


_MT_CURVE = ("task=metaworld_mt_lowdim encoder=lowdim training.steps=12000 training.batch_size=64 "
             "training.warmup_steps=100 training.val_every=1000 training.keep_every=2000")
# PAD on two CPU cores (the GPU recipe's autoencoder and DiT are ~3x slower per step each): a 0.24M-parameter
# autoencoder (channels 8-16-32-32, same 8x8x4 latents) and a DiT of width 128, depth 4 (1.9M parameters), batch 64
_PAD_VAE_CPU = ("task=metaworld_mt policy=pad_vae policy.block_out_channels=[8,16,32,32] training.batch_size=64 "
                "training.steps=2000 training.lr=5e-4 run_dir=runs/metaworld_mt-pad_vae_cpu")
_PAD_CPU = ("task=metaworld_mt policy=pad policy.vae=runs/metaworld_mt-pad_vae_cpu/checkpoints/latest.pt "
            "policy.width=128 policy.depth=4 training.batch_size=64 training.steps=8000 training.keep_every=2000 "
            "training.num_workers=1")
_PAD_CPU_SETTING = "10-step DDIM; VAE 8-16-32-32 (8x8x4 latents), DiT width 128 depth 4 (CPU)"
_PAD_VIDEO = "'mix=[{store: stores/metaworld_video.zarr, weight: 0.5}]'"
# (run suffix, overrides, setting): PAD and its two ablations
_PAD_CPU_ROWS = (("", _PAD_VIDEO, f"co-trained on action-free video (weight 0.5); {_PAD_CPU_SETTING}"),
                 ("-novideo", "", f"ablation: no action-free video; {_PAD_CPU_SETTING}"),
                 ("-nofuture", "policy.predict_future=false",
                  f"ablation: no future-image prediction (action loss only); {_PAD_CPU_SETTING}"))


RECIPES = [
    Recipe("lift_lowdim", {"stores/lift_dart.zarr": "vmp-collect task=lift n_episodes=200 out=stores/lift_dart.zarr "
                                                    "action_noise=0.1   # DART: noisy execution, clean labels"}, [
        f"vmp-train {_LIFT} policy=beso run_dir=runs/lift-beso-dart",
        f"vmp-train {_LIFT} policy=ddpm run_dir=runs/lift-ddpm-dart",
        f"vmp-train {_LIFT_TOK} run_dir=runs/lift-carp_tokenizer",
        f"vmp-train {_LIFT} policy=carp policy.tokenizer_checkpoint=runs/lift-carp_tokenizer/checkpoints/latest.pt "
        "run_dir=runs/lift-carp-sc50",
        f"vmp-train {_LIFT_TOK} seed=1 run_dir=runs/lift-carp_tokenizer-seed1",
        f"vmp-train {_LIFT} policy=carp seed=1 policy.tokenizer_checkpoint=runs/lift-carp_tokenizer-seed1/checkpoints/"
        "latest.pt run_dir=runs/lift-carp-sc50-seed1",
        _eval("lift-beso-dart", "success_lift_lowdim_beso", "3-step euler"),
        _eval("lift-ddpm-dart", "success_lift_lowdim_ddpm", "100-step ddpm"),
        _eval("lift-carp-sc50", "success_lift_lowdim_carp_sc50", f"{_CARP}, self-correction 0.5"),
        _eval("lift-carp-sc50-seed1", "success_lift_lowdim_carp_sc50_seed1", f"{_CARP}, self-correction 0.5; seed 1"),
    ], notes=["success_lift_lowdim_carp_sc50_cpu: the CARP recipe above with device=cpu (on a CPU-only machine the "
              "suite's own run is that row)",
              "success_lift_lowdim_carp_sc50_before_change: trained by the code before a change (854fa8a), kept for "
              "the comparison; this code cannot remake it"]),
    Recipe("lift_image", {"stores/lift_image_dart.zarr": "vmp-collect task=lift_image n_episodes=150 "
                                                         "out=stores/lift_image_dart.zarr action_noise=0.1"}, [
        f"vmp-train {_LIFT_IMG} policy=beso training.batch_size=64 training.steps=2500 training.num_workers=0 "
        "run_dir=runs/lift_image-beso-dart",
        f"vmp-train {_LIFT_IMG} policy=carp_tokenizer training.batch_size=128 training.steps=2000 training.lr=1e-3 "
        "training.warmup_steps=200 run_dir=runs/lift_image-carp_tokenizer",
        f"vmp-train {_LIFT_IMG} policy=carp policy.d_model=128 policy.width=128 policy.depth=4 "
        "training.batch_size=64 training.steps=2500 run_dir=runs/lift_image-carp-sc50",
        _eval("lift_image-beso-dart", "success_lift_image_beso", "3-step euler; compact CNN, 2 x 84 px cameras"),
        _eval("lift_image-carp-sc50", "success_lift_image_carp",
              f"{_CARP}, self-correction 0.5; compact CNN, 2 x 84 px cameras; width 128, depth 4"),
    ]),
    Recipe("blockpush", {"stores/blockpush_dart1k.zarr": "vmp-collect task=blockpush n_episodes=1000 "
                                                         "out=stores/blockpush_dart1k.zarr action_noise=0.3"}, [
        f"vmp-train {_BP} policy=beso run_dir=runs/bp1k-long-beso",
        f"vmp-train {_BP} policy=ddpm run_dir=runs/bp1k-long-ddpm",
        "vmp-train task=blockpush policy=carp_tokenizer store=stores/blockpush_dart1k.zarr policy.horizon=8 "
        "policy.n_action_steps=2 training.batch_size=256 training.steps=3000 training.lr=1e-3 training.warmup_steps=200 "
        "run_dir=runs/bp1k-carp_tokenizer",
        f"vmp-train {_BP_CARP} run_dir=runs/bp1k-carp-sc50",
        f"vmp-train {_BP_CARP} policy.self_correction=0.75 run_dir=runs/bp1k-carp-sc75",
        f"vmp-train {_BP_CARP} encoder.goal_in_lowdim=true policy.self_correction=0.75 run_dir=runs/bp1k-carp-goalcat",
        f"vmp-train {_BP_CARP} encoder.goal_in_lowdim=true policy.self_correction=0 run_dir=runs/bp1k-carp-goalcat-sc0",
        _eval("bp1k-long-beso", "success_blockpush_lowdim_beso", f"3-step euler; {_BP_VARIANT}"),
        _eval("bp1k-long-ddpm", "success_blockpush_lowdim_ddpm", f"100-step DDPM; {_BP_VARIANT}"),
        _eval("bp1k-carp-sc50", "success_blockpush_lowdim_carp", f"{_CARP}, self-correction 0.5; {_BP_VARIANT}"),
        _eval("bp1k-carp-sc75", "success_blockpush_lowdim_carp_sc75", f"{_CARP}, self-correction 0.75; {_BP_VARIANT}"),
        _eval("bp1k-carp-goalcat", "success_blockpush_lowdim_carp_goal",
              f"{_CARP}, self-correction 0.75, goal in the low-dim MLP; {_BP_VARIANT}"),
        _eval("bp1k-carp-goalcat-sc0", "success_blockpush_lowdim_carp_goal_sc0",
              f"{_CARP}, no self-correction, goal in the low-dim MLP; {_BP_VARIANT}"),
    ]),
    Recipe("metaworld_mt", {"stores/metaworld_mt.zarr": "vmp-collect task=metaworld_mt n_episodes=500 action_noise=0.1",
                            "stores/metaworld_video.zarr": "vmp-collect task=metaworld_video n_episodes=200 action_free=true"}, [
        "vmp-train task=metaworld_mt policy=pad_vae device=cuda training.batch_size=128 training.steps=6000 "
        "training.lr=5e-4 run_dir=runs/metaworld_mt-pad_vae",
        f"vmp-train {_PAD} run_dir=runs/metaworld_mt-pad 'mix=[{{store: stores/metaworld_video.zarr, weight: 0.5}}]'",
        f"vmp-train {_PAD} run_dir=runs/metaworld_mt-pad-novideo",
        f"vmp-train {_PAD} policy.predict_future=false run_dir=runs/metaworld_mt-pad-nofuture",
        "vmp-train task=metaworld_mt policy=beso encoder=compact_cnn training.batch_size=64 training.steps=8000 "
        "training.num_workers=1 run_dir=runs/metaworld_mt-beso",
        f"vmp-train {_MT_DIVLA} run_dir=runs/metaworld_mt-divla",
        f"vmp-train {_MT_DIVLA} policy.inject_reasoning=false run_dir=runs/metaworld_mt-divla-noinject",
        # BESO's spatial-softmax token beside the grid: is the gap to BESO the image features the head reads?
        f"vmp-train {_MT_DIVLA.replace('=tokens', '=tokens_and_keypoints')} training.keep_every=2000 "
        "run_dir=runs/metaworld_mt-divla-keypoints",
        # a tenth of the reasoning loss: does the reasoning objective take the shared encoder from the actions?
        f"vmp-train {_MT_DIVLA} policy.reasoning_weight=0.1 training.keep_every=2000 "
        "run_dir=runs/metaworld_mt-divla-rw01",
        # the denoiser attends to the encoder's tokens, not the reasoning model's hidden states: is that path the gap?
        f"vmp-train {_MT_DIVLA} policy.action_context=encoder training.keep_every=2000 "
        "run_dir=runs/metaworld_mt-divla-encoder-context",
        # and one spatial-softmax token per camera, as BESO and DDPM read, instead of the grid: the DDPM baseline plus
        # the reasoning model and FiLM. Is the gap what the action head attends to from the image?
        f"vmp-train {_MT_DIVLA_SOFTMAX} training.keep_every=2000 "
        "run_dir=runs/metaworld_mt-divla-softmax-encoder-context",
        # and without FiLM: the DDPM baseline plus the reasoning model trained beside it on the shared encoder
        f"vmp-train {_MT_DIVLA_SOFTMAX} policy.inject_reasoning=false training.keep_every=2000 "
        "run_dir=runs/metaworld_mt-divla-softmax-encoder-context-noinject",
        # a second training seed of both: is injection's cost there (7.5 points at seed 0) larger than the spread?
        f"vmp-train {_MT_DIVLA_SOFTMAX} training.keep_every=2000 seed=1 "
        "run_dir=runs/metaworld_mt-divla-softmax-encoder-context-seed1",
        f"vmp-train {_MT_DIVLA_SOFTMAX} policy.inject_reasoning=false training.keep_every=2000 seed=1 "
        "run_dir=runs/metaworld_mt-divla-softmax-encoder-context-noinject-seed1",
        # BESO at two training seeds, kept every 2000 steps: is its 45.5% (the row above: one seed, one checkpoint)
        # above Diffusion-VLA's two seeds by more than the spread between trainings, and is its curve flat by 8000?
        *(f"vmp-train task=metaworld_mt policy=beso encoder=compact_cnn training.batch_size=64 training.steps=8000 "
          f"training.num_workers=1 training.keep_every=2000 seed={seed} run_dir=runs/metaworld_mt-beso-seed{seed}"
          for seed in (0, 1)),
        # BESO's network under DDPM's objective: is the gap from Diffusion-VLA to BESO the denoising objective?
        "vmp-train task=metaworld_mt policy=ddpm encoder=compact_cnn training.batch_size=64 training.steps=8000 "
        "training.num_workers=1 training.keep_every=2000 run_dir=runs/metaworld_mt-ddpm",
        _eval("metaworld_mt-pad", "success_metaworld_mt_image_pad", "10-step DDIM; VAE latents 8x8x4, DiT width 192 "
              "depth 6; co-trained on 200 action-free video episodes (weight 0.5)", episodes=200, videos=10),
        _eval("metaworld_mt-pad-novideo", "success_metaworld_mt_image_pad_novideo",
              "ablation: no action-free video; 10-step DDIM", episodes=200, videos=10),
        _eval("metaworld_mt-pad-nofuture", "success_metaworld_mt_image_pad_nofuture",
              "ablation: no future-image prediction (action loss only); 10-step DDIM", episodes=200, videos=10),
        _eval("metaworld_mt-beso", "success_metaworld_mt_image_beso",
              "3-step euler; compact CNN on the 64 px image, proprioception, learned instruction token",
              episodes=200, videos=10),
        _eval("metaworld_mt-divla", "success_metaworld_mt_image_divla",
              f"reasoning injected by FiLM; {_MT_DIVLA_VARIANT}", episodes=200, videos=10),
        _eval("metaworld_mt-divla-noinject", "success_metaworld_mt_image_divla_noinject",
              f"ablation: no reasoning injection; {_MT_DIVLA_VARIANT}", episodes=200, videos=0),
        # its curve: the last checkpoint first, then the earlier ones
        *(_step_eval("metaworld_mt-divla-keypoints", "success_metaworld_mt_image_divla_keypoints",
                     "reasoning injected by FiLM; compact CNN spatial-softmax token beside the token grid of the 64 px "
                     "image, proprioception; 500 DART demos, batch 64 (CPU)", 0, step, "of 8000", episodes=200,
                     workers=2) for step in (8000, 6000, 4000)),
        _step_eval("metaworld_mt-divla-rw01", "success_metaworld_mt_image_divla_rw01", "reasoning injected by FiLM, "
                   "reasoning loss weight 0.1; compact CNN tokens of the 64 px image, proprioception; 500 DART demos, "
                   "batch 64 (CPU)", 0, 8000, "of 8000", episodes=200, workers=2),
        _step_eval("metaworld_mt-divla-encoder-context", "success_metaworld_mt_image_divla_encoder_context",
                   "reasoning injected by FiLM, action head attending to the encoder tokens (not the reasoning "
                   "model hidden states); compact CNN tokens of the 64 px image, proprioception; 500 DART demos, "
                   "batch 64 (CPU)", 0, 8000, "of 8000", episodes=200, workers=2),
        _step_eval("metaworld_mt-divla-softmax-encoder-context",
                   "success_metaworld_mt_image_divla_softmax_encoder_context",
                   f"reasoning injected by FiLM, {_MT_DIVLA_SOFTMAX_SETTING}", 0, 8000, "of 8000", episodes=200,
                   workers=2),
        # the same checkpoint told the expert's phase for every state: does the wrong reasoning it generates cost?
        _step_eval("metaworld_mt-divla-softmax-encoder-context",
                   "success_metaworld_mt_image_divla_softmax_encoder_context",
                   f"reasoning injected by FiLM, told the expert phase (oracle), {_MT_DIVLA_SOFTMAX_SETTING}", 0, 8000,
                   "of 8000", episodes=200, workers=2, overrides="reasoning_source=expert", tag="_told_expert"),
        _step_eval("metaworld_mt-divla-softmax-encoder-context-noinject",
                   "success_metaworld_mt_image_divla_softmax_encoder_context_noinject",
                   f"ablation: no reasoning injection, {_MT_DIVLA_SOFTMAX_SETTING}", 0, 8000, "of 8000", episodes=200,
                   workers=2),
        *(_step_eval(f"metaworld_mt-divla-softmax-encoder-context{suffix}-seed1",
                     f"success_metaworld_mt_image_divla_softmax_encoder_context{suffix.replace('-', '_')}_seed1",
                     f"{what}, {_MT_DIVLA_SOFTMAX_SETTING}", 1, 8000, "of 8000", episodes=200, workers=2)
          for suffix, what in (("", "reasoning injected by FiLM"), ("-noinject", "ablation: no reasoning injection"))),
        # BESO's two seeds, each curve from its last checkpoint back
        *(_step_eval(f"metaworld_mt-beso-seed{seed}", f"success_metaworld_mt_image_beso_seed{seed}", "3-step euler; "
                     "compact CNN on the 64 px image, proprioception, learned instruction token; 500 DART demos, batch "
                     "64 (CPU)", seed, step, "of 8000", episodes=200, workers=2)
          for seed in (0, 1) for step in (8000, 6000, 4000)),
        # sampled as Diffusion-VLA samples (10-step DDIM): against BESO it differs in objective and sampler only
        _step_eval("metaworld_mt-ddpm", "success_metaworld_mt_image_ddpm", "10-step DDIM; compact CNN on the 64 px "
                   "image, proprioception, learned instruction token; 500 DART demos, batch 64 (CPU)", 0, 8000,
                   "of 8000", episodes=200, workers=2, overrides="sampler=ddim n_steps=10", tag="_ddim10"),
    ]),
    Recipe("metaworld_mt_lowdim", {"stores/metaworld_mt_lowdim.zarr": "vmp-collect task=metaworld_mt_lowdim "
                                                                      "n_episodes=500 action_noise=0.1"}, [
        f"vmp-train {_MT_LOWDIM} policy=beso run_dir=runs/mt-beso",
        f"vmp-train {_MT_LOWDIM} policy=divla run_dir=runs/mt-divla",
        f"vmp-train {_MT_LOWDIM} policy=divla policy.inject_reasoning=false run_dir=runs/mt-divla-noinject",
        f"vmp-train {_MT_LOWDIM} policy=divla seed=1 run_dir=runs/mt-divla-seed1",
        f"vmp-train {_MT_LOWDIM} policy=divla policy.inject_reasoning=false seed=1 run_dir=runs/mt-divla-noinject-seed1",
        _eval("mt-beso", "success_metaworld_mt_lowdim_beso", _MT_LOWDIM_VARIANT, episodes=200, videos=0),
        _eval("mt-divla", "success_metaworld_mt_lowdim_divla", f"reasoning injected by FiLM; {_MT_LOWDIM_VARIANT}",
              episodes=200, videos=2),
        _eval("mt-divla-noinject", "success_metaworld_mt_lowdim_divla_noinject",
              f"ablation: no reasoning injection; {_MT_LOWDIM_VARIANT}", episodes=200, videos=0),
        _eval("mt-divla-seed1", "success_metaworld_mt_lowdim_divla_seed1",
              f"reasoning injected by FiLM; seed 1; {_MT_LOWDIM_VARIANT}", episodes=200, videos=0),
        _eval("mt-divla-noinject-seed1", "success_metaworld_mt_lowdim_divla_noinject_seed1",
              f"ablation: no reasoning injection; seed 1; {_MT_LOWDIM_VARIANT}", episodes=200, videos=0),
        # what the injected reasoning does: the same checkpoint given its own reasoning, the expert's phase for each
        # state (the most injection could add), and always the first phase (does the action head follow it?)
        _eval("mt-divla", "success_metaworld_mt_lowdim_divla_generated",
              f"reasoning injected by FiLM, its own reasoning (same checkpoint as the told rows); {_MT_LOWDIM_VARIANT}",
              episodes=200, videos=0, out="eval_generated"),
        _eval("mt-divla", "success_metaworld_mt_lowdim_divla_told_expert",
              f"reasoning injected by FiLM, told the expert phase (oracle); {_MT_LOWDIM_VARIANT}", episodes=200,
              videos=0, extra="+overrides.reasoning_source=expert", out="eval_expert"),
        _eval("mt-divla", "success_metaworld_mt_lowdim_divla_told_reach",
              f"reasoning injected by FiLM, always told: reach the object; {_MT_LOWDIM_VARIANT}", episodes=200,
              videos=0, extra="+overrides.reasoning_source=text '+overrides.reasoning_text=\"reach the object\"'",
              out="eval_wrong"),
    ]),
    Recipe("pointnav", {"stores/pointnav1k.zarr": "vmp-collect task=pointnav n_episodes=1000 n_workers=2 "
                                                  "action_noise=0.1 out=stores/pointnav1k.zarr"}, [
        "vmp-train task=pointnav policy=navdp encoder=compact_cnn encoder.image_output=tokens "
        "store=stores/pointnav1k.zarr training.batch_size=64 training.steps=6000 training.warmup_steps=300 "
        "training.num_workers=1 training.val_every=2000 training.ckpt_every=500 run_dir=runs/pointnav-navdp-1k",
        _eval("pointnav-navdp-1k", "success_pointnav_rgbd_navdp", f"16 samples, best by critic; {_NAV}", videos=2),
        _eval("pointnav-navdp-1k", "success_pointnav_cluttered_rgbd_navdp",
              f"16 samples, best by critic; cluttered held-out scenes; trained on sparse; {_NAV}",
              extra="task=pointnav_cluttered", out="eval_cluttered", videos=0),
        _eval("pointnav-navdp-1k", "success_pointnav_rgbd_navdp_single", f"one sample (critic ablated); {_NAV}",
              extra="+overrides.selection=single", out="eval_single", videos=0),
        _eval("pointnav-navdp-1k", "success_pointnav_rgbd_navdp_random",
              f"random pick among 16 (critic ablated); {_NAV}", extra="+overrides.selection=random",
              out="eval_random", videos=0),
        # maze scenes (narrow doors, dead ends, goals behind obstacles): where the pick among candidates decides
        *(_eval("pointnav-navdp-1k", f"success_pointnav_maze_rgbd_navdp{suffix}",
                f"{pick}; maze held-out scenes; trained on sparse; {_NAV}", episodes=200,
                extra=f"task=pointnav_maze{selection}", out=f"eval_maze{suffix}", videos=0)
          for suffix, pick, selection in (("", "16 samples, best by critic", ""),
                                          ("_single", "one sample (critic ablated)", " +overrides.selection=single"),
                                          ("_random", "random pick among 16 (critic ablated)",
                                           " +overrides.selection=random"))),
    ]),
    # the Can rows of record: demonstrations that go on 10 steps past success (the expert letting go and moving away),
    # the first observation complete (adc12ad), 8 actions per chunk; BESO and CARP, three training seeds each
    Recipe("can_lowdim", {"stores/can_dart_after10_obs.zarr": "vmp-collect task=can n_episodes=200 "
                                                              "out=stores/can_dart_after10_obs.zarr action_noise=0.1 "
                                                              "steps_after_success=10"}, [
        *(f"vmp-train {_CAN_AFTER10} policy=beso run_dir=runs/can-beso-after10obs-seed{seed} seed={seed}"
          for seed in (0, 1, 2)),
        *(_step_eval(f"can-beso-after10obs-seed{seed}", f"success_can_lowdim_beso_after10obs_seed{seed}",
                     f"3-step euler, {_AFTER10_SETTING}", seed, k, "of 8000 (stopped at 5000)", workers=2)
          for seed in (0, 1, 2) for k in (3000, 4000, 5000)),
        *(line for seed in (0, 1, 2)
          for line in _carp(_CAN_AFTER10, "-after10obs", seed)),
        *(_step_eval(f"can-carp-after10obs-seed{seed}", f"success_can_lowdim_carp_after10obs_seed{seed}",
                     f"{_CARP}, {_AFTER10_SETTING}", seed, k, "of 8000 (stopped at 5000)", workers=2)
          for seed in (0, 1, 2) for k in (3000, 4000, 5000)),
        # the Diffusion Policy baseline on BESO's network: one seed, as the issue allows for it
        f"vmp-train {_CAN_AFTER10} policy=ddpm run_dir=runs/can-ddpm-after10obs-seed0 seed=0",
        *(_step_eval("can-ddpm-after10obs-seed0", "success_can_lowdim_ddpm_after10obs_seed0",
                     f"100-step ddpm, {_AFTER10_SETTING}", 0, k, "of 8000 (stopped at 5000)", workers=2)
          for k in (3000, 4000, 5000)),
    ]),
    # how the Can rows got there, measured on the first store (the episodes end 1-5 steps after success) and with the
    # first observation's can-to-hand values zero (before adc12ad): this code remakes them only approximately
    Recipe("can_lowdim_diagnosis", {
        "stores/can_dart.zarr": "vmp-collect task=can n_episodes=200 out=stores/can_dart.zarr action_noise=0.1",
        "stores/can_dart_after10.zarr": "vmp-collect task=can n_episodes=200 out=stores/can_dart_after10.zarr "
                                        "action_noise=0.1 steps_after_success=10"}, [
        *(f"vmp-train {_CAN} policy=beso run_dir=runs/can-beso-seed{seed} seed={seed}" for seed in (0, 1, 2)),
        *(line for seed in (0, 1, 2) for line in _carp(_CAN, "", seed)),
        *(_can_eval("beso", 0, k, "3-step euler") for k in (2000, 3000, 4000, 5000)),
        *(_can_eval("beso", seed, k, "3-step euler") for seed in (1, 2) for k in (3000, 4000, 5000)),
        *(_can_eval("carp", 0, k, _CARP) for k in (2000, 3000, 4000, 5000)),
        *(_can_eval("carp", seed, k, _CARP) for seed in (1, 2) for k in (3000, 4000, 5000)),
        # the same schedule run to its end (the learning rate annealed): is the gap to the papers data or budget?
        f"vmp-train {_CAN_FULL} policy=beso run_dir=runs/can-beso-anneal-seed0 seed=0",
        *(_full_eval("can-beso-anneal-seed0", "success_can_lowdim_beso_full_seed0", k)
          for k in (8000, 6000, 7000, 5000)),
        # actions executed per chunk (inference-time; 8 above): in the failures that placed the can and kept the hand
        # on it, the next chunk closed the fingers again, or half "close", half "open" cancelled in robosuite's ramp
        *(f"vmp-eval checkpoint=runs/can-beso-anneal-seed0/checkpoints/step_{k:07d}.pt n_episodes=50 n_workers=2 "
          f"n_videos=1 +overrides.n_action_steps={n} out_dir=runs/can-beso-anneal-seed0/eval_step{k}_act{n} "
          f"'variant=\"{_FULL_SETTING}, {n} actions per chunk; seed 0 at step {k}\"' "
          f"results_json=results/success_can_lowdim_beso_full_seed0_step{k}_act{n}.json"
          for k, n in ((5000, 12), (8000, 12), (5000, 10), (5000, 15))),
        # the demonstrations go on 10 steps past success: the stall goes; the grasp misses were the first observation
        f"vmp-train task=can store=stores/can_dart_after10.zarr {_ROBOMIMIC_SCHEDULE} training.stop_after=5000 "
        "policy=beso run_dir=runs/can-beso-after10-seed0 seed=0",
        *(_step_eval("can-beso-after10-seed0", "success_can_lowdim_beso_after10_seed0",
                     "3-step euler, demos 10 steps past success", 0, k, "of 8000 (stopped at 5000)", workers=2)
          for k in (3000, 4000, 5000)),
    ], notes=[", ".join(f"success_can_lowdim_beso_rise_seed0_step{k}" for k in
                        ("3000", "4000", "5000", "5000_euler10", "5000_act12"))
              + ": the BESO recipe above (seed 0; 10-step euler; 12 actions per chunk) on a store collected by an "
              "expert that rose 1 cm a step while it opened (5718c09, reverted: it did not change success), kept for "
              "the comparison; this code cannot remake them"]),
    # Square as the Can rows of record: demonstrations 10 steps past success, the first observation complete
    Recipe("square_lowdim", {
        store: f"vmp-collect task=square n_episodes={n} out={store} action_noise=0.1 steps_after_success=10"
        for store, n in ((_SQUARE_AFTER10_STORE, 200), (_SQUARE_500_STORE, 500))}, [
        f"vmp-train {_SQUARE_AFTER10} policy=beso run_dir=runs/square-beso-after10obs-seed0 seed=0",
        *(_step_eval("square-beso-after10obs-seed0", "success_square_lowdim_beso_after10obs_seed0",
                     f"3-step euler, {_AFTER10_SETTING}", 0, k, "of 8000", workers=2) for k in (6000, 7000, 8000)),
        # inference-time: does the insertion want a shorter open-loop stretch, or more denoising steps?
        _step_eval("square-beso-after10obs-seed0", "success_square_lowdim_beso_after10obs_seed0",
                   f"3-step euler, 4 actions per chunk, {_AFTER10_SETTING}", 0, 8000, "of 8000", workers=2,
                   overrides="n_action_steps=4", tag="_act4"),
        _step_eval("square-beso-after10obs-seed0", "success_square_lowdim_beso_after10obs_seed0",
                   f"10-step euler, {_AFTER10_SETTING}", 0, 8000, "of 8000", workers=2, overrides="n_steps=10",
                   tag="_euler10"),
        # the 16000-step schedule, three training seeds; seed 0 also at steps 10000 and 8000, for its curve
        *(f"vmp-train {_SQUARE_16K} policy=beso run_dir=runs/square-beso-after10obs-16k-seed{seed} seed={seed}"
          for seed in (0, 1, 2)),
        *(_step_eval(f"square-beso-after10obs-16k-seed{seed}", f"success_square_lowdim_beso_after10obs_16k_seed{seed}",
                     f"3-step euler, {_AFTER10_SETTING}", seed, k, "of 16000", workers=2)
          for seed, k in _SQUARE_16K_CHECKPOINTS),
        # inference-time settings at the plateau (seeds 1 and 2, step 16000): more or fewer denoising steps, a shorter
        # open-loop stretch, a stochastic sampler, Karras sigmas; does any close the gap to CARP?
        *(_step_eval(f"square-beso-after10obs-16k-seed{seed}", f"success_square_lowdim_beso_after10obs_16k_seed{seed}",
                     f"{setting}, {_AFTER10_SETTING}", seed, 16000, "of 16000", workers=2, overrides=overrides, tag=tag)
          for seed in (1, 2) for setting, overrides, tag in (
              ("10-step euler", "n_steps=10", "_euler10"),
              ("3-step euler, 4 actions per chunk", "n_action_steps=4", "_act4"),
              ("3-step euler ancestral", "sampler=euler_ancestral", "_ancestral"),
              ("2-step euler", "n_steps=2", "_euler2"),
              ("3-step euler, karras sigmas", "sigma_schedule=karras", "_karras"))),
        # CARP on the same store and schedule (its tokenizer first, as on Can), three training seeds; seed 0 also at
        # steps 10000 and 8000, for its curve
        *(line for seed in (0, 1, 2)
          for line in _carp(_SQUARE_16K, "-after10obs-16k", seed)),
        *(_step_eval(f"square-carp-after10obs-16k-seed{seed}", f"success_square_lowdim_carp_after10obs_16k_seed{seed}",
                     f"{_CARP}, {_AFTER10_SETTING}", seed, k, "of 16000", workers=2)
          for seed, k in _SQUARE_16K_CHECKPOINTS),
        # the DDPM baseline on the same store and schedule, one seed (as on Can)
        f"vmp-train {_SQUARE_16K} policy=ddpm run_dir=runs/square-ddpm-after10obs-16k-seed0 seed=0",
        *(_step_eval("square-ddpm-after10obs-16k-seed0", "success_square_lowdim_ddpm_after10obs_16k_seed0",
                     f"100-step ddpm, {_AFTER10_SETTING}", 0, k, "of 16000", workers=2) for k in (12000, 14000, 16000)),
        # its 10-step DDIM sampling at the end (a tenth of the denoising time): does Square need the 100 steps?
        _step_eval("square-ddpm-after10obs-16k-seed0", "success_square_lowdim_ddpm_after10obs_16k_seed0",
                   f"10-step ddim, {_AFTER10_SETTING}", 0, 16000, "of 16000", workers=2,
                   overrides="sampler=ddim n_steps=10", tag="_ddim10"),
        # CARP on 500 demonstrations (the same expert, seeds 0-499), the same schedule: does data lift the carry?
        *(line for seed in (0, 1, 2) for line in _carp(_SQUARE_500_16K, "-dart500-16k", seed)),
        *(_step_eval(f"square-carp-dart500-16k-seed{seed}", f"success_square_lowdim_carp_dart500_16k_seed{seed}",
                     f"{_CARP}, 500 {_AFTER10_SETTING}", seed, k, "of 16000", workers=2)
          for seed in (0, 1, 2) for k in (12000, 14000, 16000)),
        # 4 and 2 actions per chunk over the three seeds' last checkpoints: does a shorter open-loop stretch save the
        # carry?
        *(_step_eval(f"square-carp-dart500-16k-seed{seed}", f"success_square_lowdim_carp_dart500_16k_seed{seed}",
                     f"{_CARP}, {n} actions per chunk, 500 {_AFTER10_SETTING}", seed, k, "of 16000", workers=2,
                     overrides=f"n_action_steps={n}", tag=f"_act{n}")
          for seed in (0, 1, 2) for n in (4, 2) for k in (12000, 14000, 16000)),
    ]),
    # the first Square store: episodes end at success, the first observation's nut-to-hand values zero (before
    # adc12ad); this code remakes it only approximately
    Recipe("square_lowdim_diagnosis", {"stores/square_dart.zarr": "vmp-collect task=square n_episodes=200 "
                                                                  "out=stores/square_dart.zarr action_noise=0.1"}, [
        f"vmp-train {_SQUARE} policy=beso run_dir=runs/square-beso-seed0 seed=0",
        *(_full_eval("square-beso-seed0", "success_square_lowdim_beso_full_seed0", k)
          for k in (8000, 6000, 7000, 5000, 4000)),
    ]),
    # the image rows of Can and Square: skipped without a GPU
    Recipe("robomimic_image_gpu", {**_robomimic_image_store("can"), **_robomimic_image_store("square")},
           [*_robomimic_image_gpu("can"), *_robomimic_image_gpu("square")]),
    # Can from the two cameras on two CPU cores: BESO with one observation step (half the images of two: 0.41 s a
    # step at batch 128 against 0.77 s), 10000 x 128 steps (68 minutes), every kept checkpoint evaluated; then the
    # same on a 16000-step schedule (110 minutes), its last three kept checkpoints: the plateau
    Recipe("can_image_cpu", {**_robomimic_image_store("can"), **_robomimic_image_store("can", 400)}, [
        f"vmp-train {_robomimic_image_cpu('can')} training.steps=10000 run_dir=runs/can_image-beso-cpu-seed0 seed=0",
        *(_step_eval("can_image-beso-cpu-seed0", "success_can_image_beso_cpu_seed0", _IMAGE_CPU_SETTING, 0, k,
                     "of 10000", workers=2) for k in (10000, 8000, 6000, 4000, 2000)),
        # inference settings at the end (the failures at the default are missed grasps)
        *_image_cpu_inference_evals("can_image-beso-cpu-seed0", "success_can_image_beso_cpu_seed0"),
        f"vmp-train {_robomimic_image_cpu('can')} training.steps=16000 run_dir=runs/can_image-beso-cpu16k-seed0 seed=0",
        *(_step_eval("can_image-beso-cpu16k-seed0", "success_can_image_beso_cpu16k_seed0", _IMAGE_CPU_SETTING, 0,
                     k, "of 16000", workers=2) for k in (16000, 14000, 12000)),
        # twice the demonstrations (the first 200 are the store above): the same steps, twice the start states
        f"vmp-train {_robomimic_image_cpu('can', 400)} training.steps=10000 "
        "run_dir=runs/can_image-beso-cpu400-seed0 seed=0",
        *(_step_eval("can_image-beso-cpu400-seed0", "success_can_image_beso_cpu400_seed0",
                     _IMAGE_CPU_400_SETTING, 0, k, "of 10000", workers=2)
          for k in (10000, 8000, 6000)),
        # both stores' last checkpoints on 150 other start states (where the failures start: per_episode[i].start)
        *(_step_eval(run, result, f"{setting}, episode seeds 200000-200149", 0, 10000, "of 10000", episodes=150,
                     workers=2, tag="_other150", first_episode_seed=200000)
          for run, result, setting in (
              ("can_image-beso-cpu400-seed0", "success_can_image_beso_cpu400_seed0", _IMAGE_CPU_400_SETTING),
              ("can_image-beso-cpu-seed0", "success_can_image_beso_cpu_seed0", _IMAGE_CPU_SETTING))),
    ], notes=["then, what each store's camera features say of the can's position (a minute each on the CPU): "
              "vmp-bench encoder-probe --checkpoint runs/can_image-beso-cpu400-seed0/checkpoints/step_0010000.pt, "
              "and so for runs/can_image-beso-cpu-seed0"]),
    # Square from the two cameras on two CPU cores: the Can line's settings (0.45 s a step: 75 minutes), every kept
    # checkpoint evaluated
    Recipe("square_image_cpu", {**_robomimic_image_store("square"), **_robomimic_image_store("square", 400)}, [
        f"vmp-train {_robomimic_image_cpu('square')} training.steps=10000 run_dir=runs/square_image-beso-cpu-seed0 "
        "seed=0",
        *(_step_eval("square_image-beso-cpu-seed0", "success_square_image_beso_cpu_seed0", _IMAGE_CPU_SETTING, 0, k,
                     "of 10000", workers=2) for k in (10000, 8000, 6000, 4000, 2000)),
        *_image_cpu_inference_evals("square_image-beso-cpu-seed0", "success_square_image_beso_cpu_seed0"),
        # twice the demonstrations, as took Can from 0.86 to 0.91 (the first 200 are the store above)
        f"vmp-train {_robomimic_image_cpu('square', 400)} training.steps=10000 "
        "run_dir=runs/square_image-beso-cpu400-seed0 seed=0",
        *(_step_eval("square_image-beso-cpu400-seed0", "success_square_image_beso_cpu400_seed0",
                     _IMAGE_CPU_400_SETTING, 0, k, "of 10000", workers=2) for k in (10000, 8000, 6000, 4000)),
    ], notes=["then, what the camera features say of the object's pose (a minute each on the CPU): vmp-bench "
              "encoder-probe --checkpoint runs/square_image-beso-cpu-seed0/checkpoints/step_0010000.pt, and so for "
              "every kept checkpoint of both runs and Can's runs/can_image-beso-cpu-seed0/checkpoints/step_0010000.pt"]),
    # ten-task Meta-World from the state, trained to a plateau: checkpoints every 2000 steps, 200 episodes each
    Recipe("metaworld_mt_lowdim_curves", {"stores/metaworld_mt_lowdim.zarr": "vmp-collect task=metaworld_mt_lowdim "
                                                                             "n_episodes=500 action_noise=0.1"}, [
        f"vmp-train {_MT_CURVE} policy=beso run_dir=runs/mt-beso-seed0 seed=0",
        *(_step_eval("mt-beso-seed0", "success_metaworld_mt_lowdim_beso_seed0", "3-step euler", 0, k, "of 12000",
                     episodes=200) for k in (4000, 6000, 8000, 10000, 12000)),
    ]),
    # PAD's claim on two CPU cores: PAD against its two ablations at equal steps, two training seeds each
    Recipe("metaworld_mt_pad_cpu", {
        "stores/metaworld_mt.zarr": "vmp-collect task=metaworld_mt n_episodes=500 action_noise=0.1",
        "stores/metaworld_video.zarr": "vmp-collect task=metaworld_video n_episodes=200 action_free=true"}, [
        f"vmp-train {_PAD_VAE_CPU}",
        *(f"vmp-train {_PAD_CPU} {extra} seed={seed} run_dir=runs/mt-pad_cpu{suffix}-seed{seed}".replace("  ", " ")
          for seed in (0, 1) for suffix, extra, _ in _PAD_CPU_ROWS),
        *(_step_eval(f"mt-pad_cpu{suffix}-seed{seed}", f"success_metaworld_mt_image_pad_cpu{suffix}_seed{seed}",
                     setting, seed, k, "of 8000", episodes=200)
          for seed in (0, 1) for suffix, _, setting in _PAD_CPU_ROWS for k in (4000, 6000, 8000)),
    ], notes=["then, whether each run's actions use the future it predicts (held-out windows, minutes on the CPU): "
              "vmp-bench pad-probe --checkpoint runs/mt-pad_cpu-seed0/checkpoints/step_0008000.pt, and so for "
              "-novideo-, -nofuture- and seed1"]),
]
BY_NAME = {r.name: r for r in RECIPES}


def run_of(command: str) -> str | None:
    """The run folder a training writes or an evaluation reads (checkpoint=runs/X[/checkpoints/...] -> runs/X);
    None for any other command."""
    if not command.startswith(("vmp-train", "vmp-eval")):
        return None
    if command.startswith("vmp-train"):
        return option(command, "run_dir")
    checkpoint = option(command, "checkpoint")
    return None if checkpoint is None else "/".join(checkpoint.split("/")[:2])


def markdown(recipe: Recipe) -> str:
    """The recipe as the results page shows it: a bash block of its commands, one per line, its notes as comments."""
    return "```bash\n" + "\n".join(recipe.commands() + [f"# {note}" for note in recipe.notes]) + "\n```"
