"""Episodes on a Ray cluster (``launcher=ray``): `RayEpisodePool` has `EpisodePool`'s interface, so `vmp-collect` and
`vmp-eval` run unchanged on it.

Each worker is a Ray actor that builds its states (env, renderer, policy) on its first job and keeps them between
episodes. The driver keeps one job in flight per actor, so a job goes to whichever actor is free, on any node. An
actor that dies (its node lost, the process killed) loses only its current episode: that job is re-run on a fresh
actor, up to ``max_retries`` times, then reported as an error; every job yields exactly one result. An episode past
``episode_timeout_s`` is reported as timed out and its actor replaced, as in the local pool.

``address``: the cluster to join (``ray://host:10001``, ``auto``); None starts a local Ray on the spot (shut down
again on close) with as many CPUs as workers need. The driver's working tree is not shipped: every node needs vmp
installed (the same version) and its stores and checkpoints at the same paths, e.g. on a shared file system.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from collections import deque
from typing import Any, Callable, Iterator

from vmp.sim.workers import InitFn, Job, JobResult, WorkerStates, run_one

log = logging.getLogger(__name__)


class EpisodeActor:
    """The body of one Ray worker (wrapped by ``ray.remote`` in `RayEpisodePool`)."""

    def __init__(self, init: InitFn | dict[Any, InitFn], run_fn: Callable[[Any, Job], Any]):
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        import vmp  # noqa: F401  (MUJOCO_GL before any MuJoCo import)

        self.states, self.run_fn = WorkerStates(init), run_fn
        if callable(init):
            self.states.get(None)  # one state: built now, so a failure surfaces in ready()

    def ready(self) -> int:
        return os.getpid()

    def run(self, job: Job) -> JobResult:
        return run_one(self.states, self.run_fn, job)


@dataclasses.dataclass
class _Slot:
    actor: Any
    job: Job | None = None
    ref: Any = None
    started: float = 0.0


class RayEpisodePool:
    """Run jobs on ``n_workers`` Ray actors; results in completion order (see the module doc)."""

    def __init__(self, init_fn: InitFn | dict[Any, InitFn], run_fn: Callable[[Any, Job], Any], n_workers: int,
                 episode_timeout_s: float = 900.0, address: str | None = None, cpus_per_worker: float = 1.0,
                 max_retries: int = 2, init_timeout_s: float = 600.0):
        try:
            import ray
        except ImportError as e:
            raise ImportError("launcher=ray needs Ray: pip install 'vmp[ray]'") from e
        if n_workers < 1:
            raise ValueError(f"launcher=ray needs n_workers >= 1, got {n_workers}")
        if max_retries < 0:
            raise ValueError(f"launcher.max_retries must be >= 0, got {max_retries}")
        self.ray = ray
        self.init_fn, self.run_fn, self.n_workers = init_fn, run_fn, n_workers
        self.episode_timeout_s, self.init_timeout_s = episode_timeout_s, init_timeout_s
        self.cpus_per_worker, self.max_retries = float(cpus_per_worker), int(max_retries)
        self.started_ray = False
        if not ray.is_initialized():
            if address:
                ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
            else:  # a local Ray for this run: room for every worker asked for, even past the cores
                cpus = max(os.cpu_count() or 1, math.ceil(n_workers * self.cpus_per_worker))
                ray.init(num_cpus=cpus, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
            self.started_ray = True
        self._actor_cls = ray.remote(EpisodeActor)
        self._slots: list[_Slot] = []

    def __enter__(self) -> "RayEpisodePool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        for slot in self._slots:
            self.ray.kill(slot.actor)
        self._slots.clear()
        if self.started_ray:
            self.ray.shutdown()
            self.started_ray = False

    def worker_pids(self) -> list[int]:
        """The process ids of the actors (started if they are not yet)."""
        if not self._slots:
            self._start()
        return self.ray.get([slot.actor.ready.remote() for slot in self._slots])

    def _new_actor(self) -> Any:
        return self._actor_cls.options(num_cpus=self.cpus_per_worker, max_restarts=0).remote(self.init_fn, self.run_fn)

    def _start(self) -> None:
        actors = [self._new_actor() for _ in range(self.n_workers)]
        try:
            self.ray.get([a.ready.remote() for a in actors], timeout=self.init_timeout_s)
        except Exception as e:  # an init error (its traceback included) or a start that never finished
            for a in actors:
                self.ray.kill(a)
            detail = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__  # the cause, last
            raise RuntimeError(f"Ray episode workers failed to start: {detail}") from e
        self._slots = [_Slot(a) for a in actors]

    def run(self, jobs: Iterator[Job] | list[Job]) -> Iterator[JobResult]:
        """Yield one JobResult per job, in completion order; ``jobs`` may be lazy (drawn when an actor is free)."""
        ray = self.ray
        jobs = iter(jobs)
        retry: deque[Job] = deque()
        attempts: dict[int, int] = {}
        exhausted = False
        if not self._slots:
            self._start()
        while True:
            for slot in self._slots:  # hand out work: re-runs first
                if slot.job is None and (retry or not exhausted):
                    job = retry.popleft() if retry else next(jobs, None)
                    if job is None:
                        exhausted = True
                        continue
                    slot.job, slot.ref, slot.started = job, slot.actor.run.remote(job), time.monotonic()
            busy = [slot for slot in self._slots if slot.job is not None]
            if not busy and exhausted and not retry:
                return
            done, _ = ray.wait([slot.ref for slot in busy], num_returns=1, timeout=0.5)
            for slot in busy:
                if slot.ref not in done:
                    if time.monotonic() - slot.started > self.episode_timeout_s:
                        job = slot.job
                        log.error("episode %d (seed %d) timed out after %.0f s; replacing its Ray worker",
                                  job.index, job.seed, self.episode_timeout_s)
                        self._replace(slot)
                        yield JobResult(job, error=f"episode {job.index} (seed {job.seed}) timed out after "
                                                   f"{self.episode_timeout_s:.0f} s")
                    continue
                job = slot.job
                try:
                    result = ray.get(slot.ref)
                except (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError,
                        ray.exceptions.ObjectLostError) as e:
                    attempts[job.index] = attempts.get(job.index, 0) + 1
                    self._replace(slot)
                    if attempts[job.index] <= self.max_retries:
                        log.warning("Ray worker died during episode %d (seed %d): re-running it elsewhere (%s)",
                                    job.index, job.seed, type(e).__name__)
                        retry.append(job)
                        continue
                    yield JobResult(job, error=f"Ray worker died during episode {job.index} (seed {job.seed}) "
                                               f"{attempts[job.index]} times: {type(e).__name__}")
                    continue
                slot.job, slot.ref = None, None
                yield result

    def _replace(self, slot: _Slot) -> None:
        self.ray.kill(slot.actor)
        slot.actor, slot.job, slot.ref = self._new_actor(), None, None
