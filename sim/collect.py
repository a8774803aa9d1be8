"""``vmp-collect``: run a task's expert in parallel workers and append its episodes to a zarr store.

    vmp-collect task=lift n_episodes=100 out=stores/lift.zarr

Episode i uses env seed ``seed + i``; finished episodes are appended in the main process in seed order,
so a store is reproducible whatever the number of workers. Only successful episodes are kept unless
``keep_failed=true``; collection stops after ``n_episodes`` kept episodes (or ``max_attempts``).
Each step stores the observation, the expert's action and its phase index (int16 ``phase``, names in the
store attr ``phase_names``), plus any training-only keys the expert declares (``Expert.extra_specs``); each
episode stores ``language`` and ``reasoning`` text.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from pathlib import Path
from typing import Any

import hydra
import numpy as np
from omegaconf import DictConfig, OmegaConf

from vmp.disk import DISK_FULL, exit_on_full_disk

log = logging.getLogger(__name__)


@dataclasses.dataclass
class _CollectState:
    env: Any
    expert: Any

    def close(self) -> None:
        self.env.close()


def _init_collect(task_cfg: dict, expert_kwargs: dict | None = None) -> _CollectState:
    from vmp.sim import make
    from vmp.sim.experts import make_expert

    env = make(task_cfg)
    expert = make_expert(task_cfg["expert"], env=env, **(expert_kwargs or {}))
    return _CollectState(env, expert)


def rollout_expert(env: Any, expert: Any, seed: int, action_noise: float = 0.0, steps_after_success: int = 0
                   ) -> dict[str, Any]:
    """One expert episode -> {"episode": {key: [T, ...]}, "text": {...}, "success", "length", "goal"}.

    steps_after_success > 0 keeps the expert acting, and recorded, that many steps after the env reports success
    (evaluation ends there): the data then show what follows, e.g. the hand letting go and moving away.

    action_noise > 0 executes the expert's action plus Gaussian noise of that std (clipped to the action space)
    but records the clean action (DART, Laskey et al. 2017): the data then show how the expert recovers from the
    small deviations a learned policy makes, instead of only the expert's own narrow path.
    """
    obs, info = env.reset(seed=seed)
    noise_rng = np.random.default_rng([seed, 7919])
    expert.reset(seed=seed)
    goal = info.get("goal")
    expert.set_goal(goal)
    keys = list(obs)
    frames: dict[str, list] = {k: [] for k in keys}
    extra_keys = list(expert.extra_specs())
    extras: dict[str, list] = {k: [] for k in extra_keys}
    actions, phases = [], []
    success, after = False, 0
    while True:
        action = expert.act(obs)
        if not np.isfinite(action).all():
            raise FloatingPointError(f"expert produced a non-finite action at seed {seed}: {action}")
        for k in keys:
            frames[k].append(obs[k])
        actions.append(action)
        phases.append(expert.phase)
        if extra_keys:
            step_extras = expert.extras()
            missing = [k for k in extra_keys if k not in step_extras]
            if missing:
                raise KeyError(f"{type(expert).__name__}.extras() lacks key(s) {missing} its extra_specs() declares")
            for k in extra_keys:
                extras[k].append(step_extras[k])
        if action_noise > 0:
            space = env.action_space
            action = np.clip(action + noise_rng.normal(0.0, action_noise, size=action.shape), space.low, space.high)
        obs, _, terminated, truncated, info = env.step(action.astype(np.float32))
        success = success or bool(info.get("success", False))  # steps past success do not undo it
        if truncated:
            break
        if terminated or after:
            if after >= steps_after_success:
                break
            after += 1
    episode = {k: np.stack(v) for k, v in (*frames.items(), *extras.items())}
    episode["action"] = np.stack(actions).astype(np.float32)
    episode["phase"] = np.asarray(phases, dtype=np.int16)
    text = {"language": info.get("language", ""), "reasoning": expert.reasoning(), "seed": int(seed)}
    if goal is not None:
        text["goal"] = {k: np.asarray(v).tolist() for k, v in goal.items()}
    return {"episode": episode, "text": text, "success": success, "length": len(actions)}


def _run_collect(state: _CollectState, job, action_noise: float = 0.0, steps_after_success: int = 0
                 ) -> dict[str, Any]:
    return rollout_expert(state.env, state.expert, job.seed, action_noise, steps_after_success)


def store_schema(task_cfg: dict, phase_names: list[str], extra_specs: dict | None = None) -> dict:
    """KeySpecs for a task's store: its shape_meta obs keys, ``action`` float32 [A], int16 ``phase`` and the
    expert's training-only ``extra_specs``."""
    from vmp.data import KeySpec

    schema = {}
    for key, meta in task_cfg["shape_meta"]["obs"].items():
        kind = meta.get("type", "low_dim")
        shape = tuple(int(s) for s in meta["shape"])
        if kind == "rgb":
            schema[key] = KeySpec(shape, "uint8", "rgb image uint8 HWC")
        elif kind == "depth":
            schema[key] = KeySpec(shape, "float32", "depth image float32 HW (m)")
        else:
            schema[key] = KeySpec(shape, "float32", f"low-dim observation {key}")
    adim = int(task_cfg["shape_meta"]["action"]["shape"][0])
    schema["action"] = KeySpec((adim,), "float32", task_cfg.get("action_meaning", f"float32 [{adim}] env action"))
    schema["phase"] = KeySpec((), "int16", "expert phase index into phase_names: " + ", ".join(phase_names))
    clash = sorted(set(extra_specs or {}) & set(schema))
    if clash:
        raise ValueError(f"expert extra key(s) {clash} clash with the task's observation/action/phase keys")
    schema.update(extra_specs or {})
    return schema


def collect(
    task_cfg: Any,
    n_episodes: int,
    out: str | Path,
    n_workers: int = 2,
    seed: int = 0,
    keep_failed: bool = False,
    max_attempts: int | None = None,
    overwrite: bool = False,
    episode_timeout_s: float = 900.0,
    progress: bool = True,
    action_noise: float = 0.0,
    append: bool = False,
    action_free: bool = False,
    launcher: Any = None,
    steps_after_success: int = 0,
) -> dict[str, Any]:
    """Collect ``n_episodes`` expert episodes of ``task_cfg`` into a new store at ``out``; returns the summary.

    ``append=True`` continues the store at ``out`` (one killed mid-append included) until it holds ``n_episodes``:
    with the seeds an uninterrupted run would have tried next, so the result is the same store. Its task, settings
    and schema must match; the finished episodes are never touched.

    ``action_free=True`` stores the episodes as video without actions (co-training data for heads that predict
    frames, such as PAD): the expert still acts, its actions are dropped.

    ``steps_after_success``: see `rollout_expert`.

    ``launcher``: where the experts run (`vmp.sim.workers.make_pool`: local processes by default, or Ray actors);
    episodes come back in any order and this process alone appends them, in seed order.
    """
    from vmp.progress import progress as progress_bar
    from vmp.sim import _plain
    from vmp.sim.workers import make_pool

    task = _plain(task_cfg)
    if n_episodes < 1:
        raise ValueError(f"n_episodes must be >= 1, got {n_episodes}")
    max_attempts = int(max_attempts or 3 * n_episodes + 10)
    expert_kwargs = dict(task.get("expert_kwargs") or {})
    if steps_after_success < 0:
        raise ValueError(f"steps_after_success must be >= 0, got {steps_after_success}")
    schema, attrs = _store_layout(task, expert_kwargs, seed, action_noise, action_free, steps_after_success)
    store, first_seed = _open_store(out, schema, attrs, append, overwrite, seed)
    n_episodes -= store.n_episodes if append else 0  # appending: n_episodes is what the store holds in the end
    if n_episodes <= 0:
        log.info("%s already holds %d episodes: nothing to collect", out, store.n_episodes)
        store.close()
        return _Tally().summary(task["name"], out, 0.0)
    start = time.perf_counter()
    bar = progress_bar(total=n_episodes, desc=f"collect {task['name']}", unit="ep", disable=not progress)
    pool = make_pool(launcher, functools.partial(_init_collect, task, expert_kwargs),
                     functools.partial(_run_collect, action_noise=float(action_noise),
                                       steps_after_success=int(steps_after_success)), n_workers,
                     episode_timeout_s=episode_timeout_s)
    try:
        with store, pool:
            tally = _append_in_seed_order(pool, store, first_seed, max_attempts, n_episodes, keep_failed, action_free,
                                          bar)
    finally:
        bar.close()
    summary = tally.summary(task["name"], out, time.perf_counter() - start)
    if tally.kept < n_episodes:
        log.warning("collected only %d of %d episodes in %d attempts", tally.kept, n_episodes, tally.attempted)
    return summary


def _store_layout(task: dict, expert_kwargs: dict, seed: int, action_noise: float, action_free: bool,
                  steps_after_success: int = 0) -> tuple[dict, dict[str, Any]]:
    """-> (the store's schema, its attributes: what it was collected from and with, which an append must match).
    The expert's phase vocabulary and extra keys come from an expert built without an env."""
    from vmp.sim.experts import EXPERTS, make_expert

    if task.get("expert") not in EXPERTS:
        raise KeyError(f"task {task.get('name')!r}: expert {task.get('expert')!r} unknown; known: {sorted(EXPERTS)}")
    probe = make_expert(task["expert"], **expert_kwargs)
    phase_names = list(probe.phase_names)
    attrs = {
        "task": task["name"],
        "control_hz": int(task["control_hz"]),
        "env_id": task["env_id"],
        "obs_type": task["obs_type"],
        "expert": task["expert"],
        "phase_names": phase_names,
        "language": task.get("language", ""),
        "seed": int(seed),
        "action_noise": float(action_noise),
    }
    if action_free:
        attrs["action_free"] = True
    if steps_after_success:
        attrs["steps_after_success"] = int(steps_after_success)
    return store_schema(task, phase_names, probe.extra_specs()), attrs


def _open_store(out: str | Path, schema: dict, attrs: dict[str, Any], append: bool, overwrite: bool, seed: int
                ) -> tuple[Any, int]:
    """-> (the store, the seed of its next episode). ``append``: the store collected with these settings, continued
    after its last episode's seed, or a new one. A full disk is reported naming the store (zarr's error does not)."""
    from vmp.data import EpisodeStore

    try:
        if not append:
            return EpisodeStore.create(out, schema, attrs, overwrite=overwrite), seed
        store = EpisodeStore.open_or_create(out, schema, attrs, same_attrs=tuple(attrs))
        first_seed = _next_seed(store, seed)
        log.info("%s holds %d episodes: continuing from seed %d", out, store.n_episodes, first_seed)
        return store, first_seed
    except OSError as err:
        if err.errno not in DISK_FULL or err.filename is not None:
            raise
        raise OSError(err.errno, f"could not {'open' if append else 'create'} store {out}: {err.strerror}") from err


@dataclasses.dataclass
class _Tally:
    """A collection's counts so far: episodes kept and attempted (in seed order), expert successes, steps kept,
    episodes whose worker failed."""

    kept: int = 0
    attempted: int = 0
    successes: int = 0
    steps: int = 0
    errors: int = 0

    def summary(self, task_name: str, out: str | Path, elapsed: float) -> dict[str, Any]:
        return {
            "task": task_name,
            "out": str(out),
            "episodes": self.kept,
            "attempted": self.attempted,
            "expert_success_rate": self.successes / max(self.attempted, 1),
            "errors": self.errors,
            "steps": self.steps,
            "seconds": round(elapsed, 2),
            "steps_per_s": round(self.steps / max(elapsed, 1e-9), 1),
        }


def _append_in_seed_order(pool: Any, store: Any, first_seed: int, max_attempts: int, n_episodes: int,
                          keep_failed: bool, action_free: bool, bar: Any) -> _Tally:
    """Run episodes of seeds ``first_seed`` on and append the finished ones to ``store`` in seed order, until
    ``n_episodes`` are kept or ``max_attempts`` were tried; a non-finite expert action stops the collection."""
    from vmp.sim.workers import Job

    tally = _Tally()
    done: dict[int, Any] = {}
    next_index = 0
    for res in pool.run(Job(i, first_seed + i) for i in range(max_attempts)):
        if res.fatal:
            raise FloatingPointError(f"episode {res.job.index} (seed {res.job.seed}): {res.error}")
        done[res.job.index] = res
        while next_index in done and tally.kept < n_episodes:
            _take_episode(done.pop(next_index), store, tally, keep_failed, action_free, bar)
            next_index += 1
        if tally.kept >= n_episodes:
            break
    return tally


def _take_episode(res: Any, store: Any, tally: _Tally, keep_failed: bool, action_free: bool, bar: Any) -> None:
    """Count one finished episode, and append it to the store if it succeeded (or failures are kept)."""
    tally.attempted += 1
    if res.error is not None:
        tally.errors += 1
        log.warning("episode %d (seed %d) failed: %s", res.job.index, res.job.seed, res.error.strip().splitlines()[-1])
        return
    tally.successes += int(res.value["success"])
    if res.value["success"] or keep_failed:
        _write_episode(store, res.value, action_free)
        tally.kept += 1
        tally.steps += res.value["length"]
        bar.update(1)
    bar.set_postfix(success=f"{tally.successes / tally.attempted:.0%}")


def _write_episode(store: Any, value: dict[str, Any], action_free: bool) -> None:
    """Append one episode (without its actions when ``action_free``); a full disk says how to resume."""
    episode = value["episode"]
    if action_free:
        episode = {k: v for k, v in episode.items() if k != "action"}
    try:
        store.append_episode(episode, value["text"], action_free=action_free)
    except OSError as err:
        if err.errno not in DISK_FULL:
            raise
        raise OSError(err.errno, f"{err.strerror}. Collection stopped: free some space, then run the same command "
                                 f"with append=true to collect the rest (the same episodes an uninterrupted run "
                                 f"would have)") from err


def _next_seed(store: Any, seed: int) -> int:
    """The seed after the last collected episode's (``seed`` for an empty store)."""
    if store.n_episodes == 0:
        return seed
    last = store.episode_text(store.n_episodes - 1).get("seed")
    if last is None:
        store.close()
        raise ValueError(f"append=true: {store.path}'s episodes do not record their seeds (collected by an older "
                         f"vmp-collect), so the run cannot be continued exactly; collect into a new store")
    return int(last) + 1


@hydra.main(config_path="pkg://vmp.configs", config_name="collect", version_base=None)
def main(cfg: DictConfig) -> None:
    """CLI entry point (hydra app)."""
    if cfg.out is None:
        cfg.out = cfg.task.store
    with exit_on_full_disk("vmp-collect"):
        summary = collect(
            cfg.task,
            n_episodes=int(cfg.n_episodes),
            out=cfg.out,
            n_workers=int(cfg.n_workers),
            seed=int(cfg.seed),
            keep_failed=bool(cfg.keep_failed),
            max_attempts=cfg.max_attempts,
            overwrite=bool(cfg.overwrite),
            episode_timeout_s=float(cfg.episode_timeout_s),
            action_noise=float(cfg.action_noise),
            append=bool(cfg.append),
            action_free=bool(cfg.action_free),
            steps_after_success=int(cfg.steps_after_success),
            launcher=OmegaConf.to_container(cfg.launcher, resolve=True) if cfg.get("launcher") is not None else None,
        )
    print(
        f"{summary['task']}: {summary['episodes']} episodes ({summary['steps']} steps) -> {summary['out']}; "
        f"expert success {summary['expert_success_rate']:.1%} over {summary['attempted']} attempts; "
        f"{summary['seconds']:.1f} s ({summary['steps_per_s']} steps/s)"
    )


if __name__ == "__main__":
    main()
