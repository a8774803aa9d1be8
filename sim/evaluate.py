"""``vmp-eval``: run a policy for N episodes across worker processes and write ``metrics.json`` + videos.

    vmp-eval checkpoint=runs/x/checkpoint.pt n_episodes=50
    vmp-eval policy=expert task=lift n_episodes=50 results_json=results/expert_lift.json

Episode i uses env seed ``seed + i``, which also seeds the policy's sampling. ``run_evaluation`` is the one runner that ``vmp-eval``, the training
loop's periodic evaluation and the demo all call. A crashed or stuck worker's episode is reported and
counted as a failure; a non-finite action stops the evaluation with an error.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import logging
import math
import os
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol, Sequence, runtime_checkable

import hydra
import numpy as np
from omegaconf import DictConfig, OmegaConf

from vmp.disk import exit_on_full_disk, write_json
from vmp.results import latency_summary
from vmp.sim.experts.base import Expert

log = logging.getLogger(__name__)

VIDEO_SIZE = 256  # px: the side of the rollout videos' frames (tasks render 128 px by default: too small to watch)


def wilson_interval(successes: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score 95% interval of a binomial proportion (sensible at 0 % and 100 %, unlike the normal one)."""
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == n else min(1.0, centre + half)
    return low, high


@runtime_checkable
class TakesReasoning(Protocol):
    """A reasoning head that can be given the task expert's phase in place of its own reasoning (Diffusion-VLA with
    ``reasoning_source=expert``): the runner tells it the phase every step."""

    reasoning_source: str

    def set_reasoning(self, text: str) -> None: ...


class ActorCapabilities(Protocol):
    """The part of an actor's capabilities evaluation reads (`vmp.policies.base.Capabilities`, `ActionOnly`)."""

    @property
    def extras(self) -> tuple[str, ...]: ...


class Actor(Protocol):
    """What an evaluation runs: a learned head (`vmp.policies.base.Policy`), a task's `Expert`, or a scripted actor
    built on `vmp.sim.experts.base.ActorDefaults`. Declared once so that the runner never probes what the actor it
    was given offers."""

    # False: skip decoding predicted frames among the extras; the runner sets it per episode (only videos draw them)
    decode_frames: bool

    @property
    def capabilities(self) -> ActorCapabilities:
        """``extras``: the names of the extras the actor returns beside its chunks (see `last_extras`)."""

    @property
    def camera(self) -> str | None:
        """The camera whose future frames come with the extras ``future_frames`` (None: none predicted) ..."""

    @property
    def future_offsets(self) -> Sequence[int]:
        """... at these steps after the current one."""

    @property
    def last_extras(self) -> Mapping[str, Any]:
        """The extras that came with the latest chunk; a new object with each chunk."""

    @property
    def inference_times_ms(self) -> Sequence[float]:
        """Each chunk's inference time, appended as chunks are predicted (the latency the metrics report)."""

    def reset(self) -> None: ...

    def set_goal(self, goal: dict[str, np.ndarray] | None) -> None: ...

    def set_language(self, instruction: str | None) -> None: ...

    def select_action(self, obs: dict[str, np.ndarray]) -> np.ndarray: ...

    def bind_env(self, env: Any) -> None:
        """Attach to the env it will act in (privileged experts read its state)."""


@dataclasses.dataclass
class _EvalState:
    env: Any
    policy: Actor
    video_dir: str | None
    fps: int
    annotator: Expert | None = None  # the task's expert, run beside a reasoning policy to judge its reasoning
    first_seed: int = 0  # the evaluation's base seed: episode k of it has seed first_seed + k

    def close(self) -> None:
        self.env.close()


def video_env_kwargs(task_cfg: dict) -> dict[str, Any]:
    """Env settings of an evaluation that records videos: ``render_size`` raised to ``VIDEO_SIZE`` px, so that a person
    can watch them. ``render()`` draws only the video frame: the policy's camera observations keep their size."""
    env_kwargs = {**dict(task_cfg.get("env_kwargs") or {}), **dict(task_cfg.get("eval_env_kwargs") or {})}
    size = env_kwargs.get("render_size")
    return {"render_size": VIDEO_SIZE} if size is not None and int(size) < VIDEO_SIZE else {}


def _init_eval(task_cfg: dict, make_policy: Callable[[], Actor], render: bool, video_dir: str | None,
               max_episode_steps: int | None, first_seed: int = 0) -> _EvalState:
    from vmp.sim import make

    # a task may evaluate on other env settings than it trains on (pointnav: held-out scenes)
    env = make(task_cfg, render_mode="rgb_array" if render else None, max_episode_steps=max_episode_steps,
               **{**dict(task_cfg.get("eval_env_kwargs") or {}), **(video_env_kwargs(task_cfg) if render else {})})
    policy = make_policy()
    policy.bind_env(env)  # privileged experts read the env's state
    annotator = None
    if "reasoning" in policy.capabilities.extras and task_cfg.get("expert"):
        from vmp.sim.experts import make_expert

        annotator = make_expert(task_cfg["expert"], env=env, **dict(task_cfg.get("expert_kwargs") or {}))
    return _EvalState(env, policy, video_dir, int(task_cfg.get("control_hz", 20)), annotator, first_seed)


def rollout_policy(env: Any, policy: Actor, seed: int, record_video: bool = False, annotator: Expert | None = None
                   ) -> dict[str, Any]:
    """One episode of ``policy`` in ``env`` -> {success, length, return, latencies_ms, start?, frames?, text?,
    future_frames?} (``start``: the env's reset info of that name, where the episode starts).

    Extras a head returns with a chunk (`Policy.last_extras`) are kept: text (reasoning) in ``text`` as
    [{step, name, text}] whenever it changes; in a video episode, a panel under each frame draws the latest extras
    and predicted future frames are kept per chunk as ``future_frames`` [(step, [F, H, W, 3])]; ``candidates`` (with
    ``candidate_scores``) go to the env's ``show_candidates`` when it has one, for its own rendering (PointNav's map).

    ``annotator``: the task's expert, bound to the env and stepped beside the policy (its actions unused) only to
    track its phase; each chunk's ``reasoning`` is compared with the phase name the expert gives the same state, and
    the episode's ``metrics["reasoning_accuracy"]`` is the fraction of chunks whose reasoning matched. A head that
    `TakesReasoning` from the expert is told that phase every step instead.
    """
    obs, info = _start_episode(env, policy, seed, record_video, annotator)
    start = info.get("start")  # where the episode starts, as the env reports it (robosuite: the object's pose)
    times = policy.inference_times_ms
    n_times = len(times)
    record = _EpisodeRecord(env, policy, obs, record_video, annotator)
    tell = annotator is not None and isinstance(policy, TakesReasoning) and policy.reasoning_source == "expert"
    total, length, success = 0.0, 0, False
    while True:
        if annotator is not None:
            annotator.act(obs)  # the expert's phase for this state
            if tell:
                policy.set_reasoning(annotator.phase_names[annotator.phase])
        action = np.asarray(policy.select_action(obs))
        if not np.isfinite(action).all():
            raise FloatingPointError(f"non-finite action at step {length} of seed {seed}: {action}")
        record.take_extras(length, policy.last_extras)
        obs, reward, terminated, truncated, info = env.step(action)
        total += float(reward)
        length += 1
        success = success or bool(info.get("success", False))
        record.observe(obs)
        if terminated or truncated:
            break
    out = {"seed": seed, "success": success, "length": length, "return": total, "latencies_ms": list(times[n_times:])}
    if info.get("task_name"):
        out["task_name"] = info["task_name"]
    if isinstance(info.get("metrics"), dict):  # episode metrics an env reports (e.g. SPL, collisions)
        out["metrics"] = {k: float(v) for k, v in info["metrics"].items()}
    if isinstance(start, dict):
        out["start"] = start
    return record.add_to(out)


def _start_episode(env: Any, policy: Actor, seed: int, record_video: bool, annotator: Expert | None
                   ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Reset the env, the policy and the annotator for episode ``seed``, and give them its goal and instruction."""
    obs, info = env.reset(seed=seed)
    if isinstance(policy, Expert):
        policy.reset(seed=seed)
    else:
        import torch

        torch.manual_seed(seed)  # the policy's sampling too is the seed's: outcomes do not depend on which worker ran
        policy.reset()           # which episodes before (any number of workers, local or Ray)
    if annotator is not None:
        annotator.reset(seed=seed)
        annotator.set_goal(info.get("goal"))
        annotator.set_language(info.get("language"))
    if info.get("goal") is not None:
        policy.set_goal(info["goal"])
    if info.get("language"):
        policy.set_language(info["language"])
    policy.decode_frames = record_video  # predicted frames are only drawn into videos
    return obs, info


class _EpisodeRecord:
    """What a rollout keeps of a policy's extras beside reward and length: the reasoning judged against the
    annotator's phase, changed text, and in a video episode the frames (with an extras panel), the predicted future
    frames and the real frames of the camera they predict."""

    def __init__(self, env: Any, policy: Actor, obs: dict[str, np.ndarray], record_video: bool,
                 annotator: Expert | None):
        self.env, self.annotator, self.record_video = env, annotator, record_video
        self.panel = bool(policy.capabilities.extras)  # a head that returns extras gets a panel under each frame
        self.extras: Mapping[str, Any] = {}
        self.last_text: dict[str, str] = {}
        self.texts: list[dict[str, Any]] = []
        self.futures: list[tuple[int, np.ndarray]] = []
        self.judged = [0, 0]  # chunks with reasoning, and those matching the expert's phase
        self.frames = [self._video_frame(obs)] if record_video else None
        # the real frames of the camera a head predicts, to set beside its predictions (heads that return
        # future_frames name their camera and offsets: PAD)
        self.camera, self.offsets = policy.camera, policy.future_offsets
        self.seen = [obs[self.camera]] if record_video and self.offsets and self.camera in obs else None

    def _video_frame(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        frame = _frame(self.env, obs)
        if not self.panel:
            return frame
        from vmp.sim.render import extras_panel

        return np.concatenate([frame, extras_panel(self.extras, frame.shape[1])], axis=0)

    def take_extras(self, step: int, extras: Mapping[str, Any]) -> None:
        """The policy's extras after ``step``'s action; a new object means a new chunk came with them."""
        if extras is self.extras:
            return
        self.extras = extras
        annotator = self.annotator
        if annotator is not None and isinstance(extras.get("reasoning"), str):
            self.judged[0] += 1
            self.judged[1] += int(extras["reasoning"].strip() == annotator.phase_names[annotator.phase])
        for name, value in extras.items():
            if isinstance(value, str) and self.last_text.get(name) != value:
                self.texts.append({"step": step, "name": name, "text": value})
                self.last_text[name] = value
        if self.record_video and "future_frames" in extras:
            self.futures.append((step, np.asarray(extras["future_frames"], np.uint8)))
        show = getattr(getattr(self.env, "unwrapped", self.env), "show_candidates", None)
        if self.record_video and show is not None and "candidates" in extras:
            show(extras["candidates"], extras.get("candidate_scores"))  # the env draws them from this pose on

    def observe(self, obs: dict[str, np.ndarray]) -> None:
        """The observation after a step: one more video frame and real camera frame."""
        if self.frames is not None:
            self.frames.append(self._video_frame(obs))
        if self.seen is not None:
            self.seen.append(obs[self.camera])

    def add_to(self, out: dict[str, Any]) -> dict[str, Any]:
        """``out`` with the reasoning accuracy, the text and the video's frames and predicted futures added."""
        if self.judged[0]:
            out.setdefault("metrics", {})["reasoning_accuracy"] = self.judged[1] / self.judged[0]
        if self.texts:
            out["text"] = self.texts
        if self.frames is not None:
            out["frames"] = self.frames
            if self.futures:
                out["future_frames"] = self._futures_over_real()
        return out

    def _futures_over_real(self) -> list[tuple[int, np.ndarray]]:
        """Each chunk's predicted frames (top) over the real ones at the same offsets (bottom, the last frame standing
        in past the end) when the real camera was kept."""
        if self.seen is None:
            return self.futures
        seen = self.seen
        return [(step, np.concatenate([pred, np.stack([seen[min(step + o, len(seen) - 1)] for o in self.offsets])]))
                for step, pred in self.futures]


def _frame(env: Any, obs: dict[str, np.ndarray]) -> np.ndarray:
    frame = env.render()
    if frame is None:  # no renderer: show the first camera observation
        images = [v for k, v in obs.items() if k.endswith("_image")]
        if not images:
            raise RuntimeError("cannot record a video: the env has no render_mode and no image observation")
        frame = images[0]
    return np.asarray(frame, dtype=np.uint8)


def _run_eval(state: _EvalState, job) -> dict[str, Any]:
    from vmp.sim.render import image_grid, write_video

    res = rollout_policy(state.env, state.policy, job.seed, record_video=job.record_video, annotator=state.annotator)
    frames = res.pop("frames", None)
    futures = res.pop("future_frames", None)
    if frames is not None and state.video_dir is not None:
        episode = job.seed - state.first_seed
        path = Path(state.video_dir) / f"episode{episode:03d}_seed{job.seed}.mp4"
        write_video(path, frames, fps=state.fps)
        res["video"] = str(path)
        if futures:  # one PNG per chunk: the future the head predicted from that step
            import imageio.v2 as imageio

            grids = Path(state.video_dir) / f"episode{episode:03d}_future_frames"
            grids.mkdir(parents=True, exist_ok=True)
            for step, future in futures:
                rows = [future] if len(future) % 2 else np.split(future, 2)  # predicted row over real row
                imageio.imwrite(grids / f"step{step:04d}.png", np.concatenate([image_grid(r) for r in rows]))
            res["future_frames_dir"] = str(grids)
    return res


@dataclasses.dataclass
class EvalCell:
    """One evaluation of a sweep: a policy on a task from a base seed (episode i: env seed ``seed + i``), its
    ``metrics.json`` and videos under ``out_dir``."""

    name: str
    task: dict
    make_policy: Callable[[], Actor]
    seed: int
    out_dir: Path | None = None


def run_evaluation(
    task_cfg: Any,
    make_policy: Callable[[], Actor],
    n_episodes: int = 50,
    seed: int = 100000,
    n_workers: int = 2,
    out_dir: str | Path | None = None,
    n_videos: int = 3,
    max_episode_steps: int | None = None,
    episode_timeout_s: float = 900.0,
    progress: bool = True,
    launcher: Any = None,
) -> dict[str, Any]:
    """Evaluate the policy ``make_policy()`` builds (once per worker; it must be picklable) on ``task_cfg``.

    What ``make_policy()`` builds is an `Actor`: a `Policy`, an `Expert`, or a scripted actor built on
    `vmp.sim.experts.base.ActorDefaults`.
    ``launcher``: where the episodes run (`vmp.sim.workers.make_pool`; None: local worker processes).
    Returns the metrics dict, also written to ``out_dir/metrics.json`` when ``out_dir`` is given.
    """
    from vmp.sim import _plain

    cell = EvalCell(_plain(task_cfg)["name"], _plain(task_cfg), make_policy, seed, Path(out_dir) if out_dir else None)
    return evaluate_cells([cell], n_episodes, n_workers, n_videos, max_episode_steps, episode_timeout_s, progress,
                          launcher)[0]


def evaluate_cells(
    cells: list[EvalCell],
    n_episodes: int,
    n_workers: int = 2,
    n_videos: int = 3,
    max_episode_steps: int | None = None,
    episode_timeout_s: float = 900.0,
    progress: bool = True,
    launcher: Any = None,
) -> list[dict[str, Any]]:
    """Every cell's episodes in one pool (a sweep keeps all workers busy across cells; each worker builds a cell's
    env and policy on its first episode of it and keeps the latest ones); -> each cell's metrics, in order."""
    from vmp.progress import progress as progress_bar
    from vmp.sim.workers import Job, make_pool

    if n_episodes < 1:
        raise ValueError(f"n_episodes must be >= 1, got {n_episodes}")
    inits, jobs = {}, []
    for c, cell in enumerate(cells):
        videos = min(int(n_videos), n_episodes) if cell.out_dir is not None else 0
        video_dir = str(cell.out_dir / "videos") if videos > 0 else None
        # one renderer per worker and cell, used only by the episodes that get a video
        inits[c] = functools.partial(_init_eval, cell.task, cell.make_policy, videos > 0, video_dir, max_episode_steps,
                                     cell.seed)
        jobs += [Job(c * n_episodes + i, cell.seed + i, record_video=i < videos, key=c) for i in range(n_episodes)]
    init = inits[0] if len(cells) == 1 else inits
    if len(cells) == 1:
        jobs = [dataclasses.replace(job, key=None) for job in jobs]
    start = time.perf_counter()
    bar = progress_bar(total=len(jobs), desc=f"eval {cells[0].task['name'] if len(cells) == 1 else f'{len(cells)} cells'}",
                       unit="ep", disable=not progress)
    try:
        with make_pool(launcher, init, _run_eval, n_workers, episode_timeout_s=episode_timeout_s) as pool:
            episodes = _gather_episodes(pool.run(jobs), len(jobs), bar)
    finally:
        bar.close()
    seconds = round(time.perf_counter() - start, 2)
    out = []
    for c, cell in enumerate(cells):
        metrics = summarize(episodes[c * n_episodes:(c + 1) * n_episodes], cell.task)  # type: ignore[arg-type]
        metrics["seconds"] = seconds
        if cell.out_dir is not None:
            cell.out_dir.mkdir(parents=True, exist_ok=True)
            write_json(cell.out_dir / "metrics.json", metrics)
            log.info("wrote %s", cell.out_dir / "metrics.json")
        out.append(metrics)
    return out


def _gather_episodes(results: Any, n_jobs: int, bar: Any) -> list[dict[str, Any] | None]:
    """The pool's results, in job order: a failed episode as an errored failure, a non-finite action raised."""
    episodes: list[dict[str, Any] | None] = [None] * n_jobs
    n_ok = 0
    for res in results:
        if res.fatal:
            raise FloatingPointError(f"episode {res.job.index} (seed {res.job.seed}): {res.error}")
        if res.error is not None:
            log.error("episode %d (seed %d) failed: %s", res.job.index, res.job.seed, res.error.strip().splitlines()[-1])
            ep = {"seed": res.job.seed, "success": False, "length": 0, "return": 0.0, "latencies_ms": [],
                  "error": res.error.strip().splitlines()[-1]}
        else:
            ep = res.value
            n_ok += int(ep["success"])
        if episodes[res.job.index] is not None:
            raise RuntimeError(f"episode {res.job.index} came back twice")
        episodes[res.job.index] = ep
        bar.update(1)
        bar.set_postfix(success=f"{n_ok}/{bar.n}")
    return episodes


def summarize(episodes: list[dict[str, Any]], task: dict) -> dict[str, Any]:
    """Per-seed results -> success rate with Wilson CI, episode lengths, latency percentiles."""
    n = len(episodes)
    successes = sum(int(e["success"]) for e in episodes)
    low, high = wilson_interval(successes, n)
    lengths = np.array([e["length"] for e in episodes], dtype=float)
    lat = np.array([t for e in episodes for t in e["latencies_ms"]], dtype=float)
    latency = latency_summary(lat)
    per_episode = [{k: v for k, v in e.items() if k != "latencies_ms"} for e in episodes]
    per_task: dict[str, dict[str, Any]] = {}
    for e in episodes:
        if e.get("task_name"):
            row = per_task.setdefault(e["task_name"], {"n_episodes": 0, "successes": 0})
            row["n_episodes"] += 1
            row["successes"] += int(e["success"])
    for row in per_task.values():
        row["success_rate"] = row["successes"] / row["n_episodes"]
    names = sorted({k for e in episodes for k in e.get("metrics", {})})
    env_metrics = {k: float(np.mean([e["metrics"][k] for e in episodes if k in e.get("metrics", {})])) for k in names}
    return {
        "task": task["name"],
        "n_episodes": n,
        "success_rate": successes / n,
        "ci95_low": low,
        "ci95_high": high,
        "n_errors": sum(1 for e in episodes if e.get("error")),
        "episode_length_mean": float(lengths.mean()),
        "episode_length_median": float(np.median(lengths)),
        "episode_length_max": int(lengths.max()),
        "n_chunks": int(lat.size),
        **{k: latency[k] for k in ("p50_ms", "p99_ms")},
        "videos": [e["video"] for e in episodes if e.get("video")],
        **({"per_task": dict(sorted(per_task.items()))} if per_task else {}),
        **({"env_metrics": env_metrics} if env_metrics else {}),
        "per_episode": per_episode,
    }


def refuse_all_errored(metrics: dict[str, Any], out_dir: str | Path) -> None:
    """An evaluation in which every episode errored measured nothing: exit non-zero (and write no results record)."""
    if metrics["n_errors"] == metrics["n_episodes"]:
        first = next(e["error"] for e in metrics["per_episode"] if e.get("error"))
        raise SystemExit(f"vmp-eval: all {metrics['n_episodes']} episodes failed with an error (first: {first}); "
                         f"see {out_dir}/metrics.json")


def results_record(metrics: dict, task: dict, policy: str, variant: str = "", budget: dict | None = None,
                   device: str | None = None, command: str | None = None) -> dict[str, Any]:
    """An evaluation's results record (kind "expert" for experts, else "success")."""
    from vmp.results import make_record

    keep = ("success_rate", "ci95_low", "ci95_high", "n_episodes", "episode_length_mean", "p50_ms", "p99_ms")
    figures = {**{k: metrics[k] for k in keep if metrics.get(k) is not None},
               **{k: metrics[k] for k in ("per_task", "env_metrics") if metrics.get(k)}}
    return make_record("expert" if policy == "expert" else "success", task["name"], task.get("obs_type", "-"), policy,
                       variant, figures, budget=budget, command=command,
                       device=device or f"cpu ({os.environ.get('OMP_NUM_THREADS', os.cpu_count())} threads)")


# ---- policy factories (module level so they pickle into spawned workers) ----
def expert_policy(task_cfg: dict):
    from vmp.sim.experts import make_expert

    return make_expert(task_cfg["expert"], **dict(task_cfg.get("expert_kwargs") or {}))


def checkpoint_policy(path: str, device: str = "cpu", overrides: dict | None = None):
    import torch

    from vmp.policies.checkpoint import load_policy

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    policy, _ = load_policy(path, device=device, overrides=overrides)
    return policy


def load_checkpoint_cell(checkpoint: str, task_cfg: Any, device: str, overrides: dict | None
                         ) -> tuple[Any, Callable[[], Any], str, dict]:
    """A checkpoint to evaluate -> (task config: the given one, or the checkpoint's training task; a picklable policy
    factory; head name; training budget). A task whose observations the checkpoint does not fit, and a stage-one
    model (not a policy), are refused naming the checkpoint."""
    from vmp.policies.checkpoint import check_same_io, model_io, read_checkpoint, refuse_stage_one
    from vmp.policies.lerobot_policy import pretrained_dir

    if pretrained_dir(checkpoint) is not None:  # a LeRobot policy folder (lerobot-train's), run by the adapter
        return load_lerobot_cell(checkpoint, task_cfg, device)
    payload = read_checkpoint(checkpoint)
    train_cfg = OmegaConf.create(payload["cfg"])
    if task_cfg is not None:  # another task than the one trained on: its observations must fit
        check_same_io(model_io(train_cfg), model_io(OmegaConf.create({"policy": train_cfg.policy, "task": task_cfg})),
                      str(checkpoint), f"task={task_cfg.name}")
    refuse_stage_one(checkpoint, train_cfg)
    make_policy = functools.partial(checkpoint_policy, str(checkpoint), str(device), overrides)
    return (task_cfg if task_cfg is not None else train_cfg.task), make_policy, str(train_cfg.policy.get("name", "policy")), \
        dict(payload.get("budget") or {})


def load_lerobot_cell(checkpoint: str, task_cfg: Any, device: str) -> tuple[Any, Callable[[], Any], str, dict]:
    """`load_checkpoint_cell` for a LeRobot policy: the task is the one its exported data set came from unless given;
    its observation keys and shapes must be the task's."""
    from hydra import compose

    from vmp.policies.lerobot_policy import lerobot_checkpoint_policy, lerobot_io

    io = lerobot_io(checkpoint)  # read from its files: the model is built once, in each worker
    if task_cfg is None:
        if not io["task"]:
            raise ValueError(f"{checkpoint}: its data set does not name a task; give task=<name>")
        task_cfg = compose(config_name="eval", overrides=[f"task={io['task']}"]).task
    task_obs = {k: tuple(v["shape"]) for k, v in task_cfg.shape_meta.obs.items()}
    wrong = {k: s for k, s in io["obs_shapes"].items() if task_obs.get(k) != s}
    if wrong:
        raise ValueError(f"{checkpoint} reads {wrong}, which task={task_cfg.name} does not give (its observations: "
                         f"{task_obs})")
    make_policy = functools.partial(lerobot_checkpoint_policy, str(checkpoint), str(device))
    return task_cfg, make_policy, f"lerobot-{io['type']}", io["budget"]


SWEEP_KEYS = ("checkpoints", "tasks", "seeds")


def run_sweep(cfg: DictConfig, launcher: Any, overrides: dict | None) -> list[dict[str, Any]]:
    """``vmp-eval sweep=...``: every checkpoint x task x seed, all episodes in one pool; writes each cell's
    metrics.json under out_dir/<cell>/ and the table of all in out_dir/sweep.json and sweep.md; -> the rows."""
    from hydra import compose

    from vmp.sim import _plain

    spec = cfg.sweep
    if isinstance(spec, str):
        if not Path(spec).is_file():
            raise FileNotFoundError(f"sweep={spec}: no such file (a YAML with checkpoints, tasks, seeds)")
        spec = OmegaConf.load(spec)
    spec = OmegaConf.to_container(spec, resolve=True) if not isinstance(spec, dict) else spec
    unknown = sorted(set(spec) - set(SWEEP_KEYS))
    if unknown or not spec.get("checkpoints"):
        raise ValueError(f"sweep must give `checkpoints` (a list) and may give `tasks` and `seeds`; got keys "
                         f"{sorted(spec)}" + (f" ({unknown} unknown)" if unknown else ""))
    if cfg.results_json:
        raise ValueError("results_json records one evaluation; a sweep writes out_dir/sweep.json")
    out_dir = Path(cfg.out_dir or f"outputs/sweep/{datetime.datetime.now():%Y-%m-%d_%H-%M-%S}")
    seeds = [int(x) for x in (spec.get("seeds") or [cfg.seed])]
    tasks = {name: compose(config_name="eval", overrides=[f"task={name}"]).task for name in spec.get("tasks") or []}
    cells, rows = [], []
    for checkpoint in spec["checkpoints"]:
        label = _checkpoint_label(str(checkpoint))
        for task_name in list(tasks) or [None]:
            task_cfg, make_policy, head, _ = load_checkpoint_cell(str(checkpoint), tasks.get(task_name), str(cfg.device),
                                                                  overrides)
            task = _plain(task_cfg)
            for seed in seeds:
                name = f"{label}__{task['name']}__seed{seed}"
                cells.append(EvalCell(name, task, make_policy, seed, out_dir / name))
                rows.append({"checkpoint": str(checkpoint), "head": head, "task": task["name"], "seed": seed})
    if len({c.name for c in cells}) != len(cells):
        raise ValueError(f"sweep: checkpoints {spec['checkpoints']} repeat a run name; give each once")
    results = evaluate_cells(cells, int(cfg.n_episodes), int(cfg.n_workers), int(cfg.n_videos), cfg.max_episode_steps,
                             float(cfg.episode_timeout_s), launcher=launcher)
    for row, cell, metrics in zip(rows, cells, results):
        row.update({k: metrics[k] for k in ("success_rate", "ci95_low", "ci95_high", "n_episodes", "n_errors")},
                   metrics=str(cell.out_dir / "metrics.json"))
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "sweep.json", {"n_episodes": int(cfg.n_episodes), "rows": rows})
    lines = ["| checkpoint | task | seed | success | 95% interval | episodes | errors |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['checkpoint']} | {r['task']} | {r['seed']} | {r['success_rate']:.2f} | "
              f"{r['ci95_low']:.2f}–{r['ci95_high']:.2f} | {r['n_episodes']} | {r['n_errors']} |" for r in rows]
    (out_dir / "sweep.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"{len(cells)} evaluations of {cfg.n_episodes} episodes; {out_dir}/sweep.json")
    return rows


def _checkpoint_label(path: str) -> str:
    """A sweep cell's name for a checkpoint: its run folder, plus the file's stem unless it is latest.pt."""
    p = Path(path)
    if p.is_dir():
        return p.name
    run = p.parent.parent.name if p.parent.name == "checkpoints" else p.parent.name
    return run if p.stem == "latest" else f"{run}-{p.stem}"


@hydra.main(config_path="pkg://vmp.configs", config_name="eval", version_base=None)
def main(cfg: DictConfig) -> None:
    """CLI entry point (hydra app)."""
    with exit_on_full_disk("vmp-eval"):
        evaluate_command(cfg)


def evaluate_command(cfg: DictConfig) -> None:
    """vmp-eval's work: a sweep, or one checkpoint or expert evaluated, its metrics and results record written."""
    overrides = OmegaConf.to_container(cfg.overrides, resolve=True) if cfg.get("overrides") else None
    launcher = OmegaConf.to_container(cfg.launcher, resolve=True) if cfg.get("launcher") is not None else None
    if cfg.get("sweep") is not None:
        if cfg.get("policy") is not None or cfg.checkpoint or cfg.get("task") is not None:
            raise ValueError("sweep=... names its checkpoints and tasks itself: leave out checkpoint=, task= and policy=")
        run_sweep(cfg, launcher, overrides)
        return
    # `policy` is hydra's policy group: `policy=expert` selects configs/policy/expert.yaml; none = checkpoint.
    mode = "expert" if cfg.get("policy") is not None and cfg.policy.get("name") == "expert" else "checkpoint"
    if cfg.get("policy") is not None and mode != "expert":
        raise ValueError(f"vmp-eval: policy must be 'expert' or left out (a checkpoint), got {cfg.policy.get('name')!r}")
    budget, variant, policy_name = {}, cfg.get("variant") or "", "expert"
    if mode == "checkpoint":
        if not cfg.checkpoint:
            raise ValueError("policy=checkpoint needs checkpoint=<path to a vmp-train checkpoint>")
        task_cfg, make_policy, policy_name, budget = load_checkpoint_cell(str(cfg.checkpoint), cfg.get("task"),
                                                                         str(cfg.device), overrides)
    else:
        if cfg.get("task") is None:
            raise ValueError("policy=expert needs task=<name>")
        task_cfg = cfg.task
        make_policy = functools.partial(expert_policy, OmegaConf.to_container(task_cfg, resolve=True))
    out_dir = cfg.out_dir or f"outputs/eval/{datetime.datetime.now():%Y-%m-%d_%H-%M-%S}"
    metrics = run_evaluation(
        task_cfg, make_policy, n_episodes=int(cfg.n_episodes), seed=int(cfg.seed), n_workers=int(cfg.n_workers),
        out_dir=out_dir, n_videos=int(cfg.n_videos), max_episode_steps=cfg.max_episode_steps,
        episode_timeout_s=float(cfg.episode_timeout_s), launcher=launcher,
    )
    refuse_all_errored(metrics, out_dir)
    if cfg.results_json:
        from vmp.sim import _plain

        import torch

        from vmp.policies.checkpoint import resolve_device

        resolved = resolve_device(str(cfg.device))
        device = torch.cuda.get_device_name(resolved) if resolved.type == "cuda" else None
        from vmp.results import write_record

        write_record(cfg.results_json, results_record(metrics, _plain(task_cfg), policy_name, variant=variant,
                                                      budget=budget, device=device))
    lat = f", latency p50 {metrics['p50_ms']:.1f} ms p99 {metrics['p99_ms']:.1f} ms" if metrics["p50_ms"] is not None else ""
    print(
        f"{metrics['task']}: success {metrics['success_rate']:.1%} [{metrics['ci95_low']:.1%}, {metrics['ci95_high']:.1%}] "
        f"over {metrics['n_episodes']} episodes ({metrics['n_errors']} errors), mean length "
        f"{metrics['episode_length_mean']:.1f}{lat}; {out_dir}/metrics.json"
    )


if __name__ == "__main__":
    main()
