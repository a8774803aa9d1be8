"""A small process pool for episodes: each worker builds its state once (env, policy, renderer) and runs
episodes handed to it one at a time. `make_pool` picks it (``launcher=local``, the default) or the Ray pool
(``launcher=ray``, `vmp.sim.ray_pool`), which has the same interface.

Why not ``multiprocessing.Pool``: a worker that segfaults or hangs there stalls the pool. Here every job
goes to one named worker, the parent watches each worker's liveness and per-episode deadline, and a dead
or stuck worker's episode comes back as an error result (the worker is replaced), never a hang.
Workers use the ``spawn`` start method (MuJoCo/EGL and torch state must not be forked). Each worker reports on
its own pipe with synchronous sends: a worker killed mid-message can only truncate its own pipe (read as EOF),
never leave a shared queue half-written and the parent blocked on it.
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing as mp
import os
from multiprocessing import connection as mp_connection
import time
import traceback
from typing import Any, Callable, Iterator

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Job:
    """One episode: its index in the run, its env seed, whether to record a video, and which worker state runs it
    (``key``: None for a pool of one init function; a sweep's cell index when the pool has one per cell)."""

    index: int
    seed: int
    record_video: bool = False
    key: Any = None


InitFn = Callable[[], Any]


class WorkerStates:
    """The states one worker keeps between episodes: one init function, or one per job key (a sweep's cells), each
    built on its first job. At most ``keep`` are held; the least recently used is closed to make room."""

    def __init__(self, init: InitFn | dict[Any, InitFn], keep: int = 2):
        self.init, self.keep = init, keep
        self.states: dict[Any, Any] = {}

    def get(self, key: Any = None) -> Any:
        if key in self.states:
            self.states[key] = self.states.pop(key)  # most recently used last
            return self.states[key]
        while len(self.states) >= self.keep:
            _close(self.states.pop(next(iter(self.states))))
        make = self.init if callable(self.init) else self.init[key]
        self.states[key] = make()
        return self.states[key]

    def close(self) -> None:
        for state in self.states.values():
            _close(state)
        self.states.clear()


def _close(state: Any) -> None:
    close = getattr(state, "close", None)
    if callable(close):
        close()


@dataclasses.dataclass
class JobResult:
    job: Job
    value: Any = None
    error: str | None = None  # traceback text, "worker crashed ...", or "timed out ..."
    fatal: bool = False  # an error that must stop the run (e.g. a non-finite action)


def run_one(states: WorkerStates, run_fn: Callable[[Any, Job], Any], job: Job) -> JobResult:
    """One job in a worker: a non-finite action (FloatingPointError) is fatal to the run, other exceptions fail the
    episode only. A state that fails to build fails its jobs the same way."""
    try:
        return JobResult(job, value=run_fn(states.get(job.key), job))
    except FloatingPointError:
        return JobResult(job, error=traceback.format_exc(), fatal=True)
    except Exception:
        return JobResult(job, error=traceback.format_exc())


def _worker_main(worker_id: int, init: InitFn | dict[Any, InitFn], run_fn: Callable[[Any, Job], Any], jobs, conn) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    logging.basicConfig(level=logging.WARNING)
    states = WorkerStates(init)
    try:
        import vmp  # noqa: F401  (MUJOCO_GL before any MuJoCo import)

        if callable(init):
            states.get(None)  # one state: built before any job, so a failure stops the run at once
    except BaseException:
        conn.send(("init_error", worker_id, None, traceback.format_exc()))
        return
    conn.send(("ready", worker_id, None, None))
    try:
        while True:
            job = jobs.get()
            if job is None:
                break
            conn.send(("start", worker_id, job.index, None))
            res = run_one(states, run_fn, job)
            kind = "done" if res.error is None else "fatal" if res.fatal else "error"
            conn.send((kind, worker_id, job.index, res.value if res.error is None else res.error))
    finally:
        states.close()


class _Worker:
    def __init__(self, ctx, worker_id: int, init_fn, run_fn):
        self.id = worker_id
        self.jobs = ctx.Queue()
        self.conn, child_conn = ctx.Pipe(duplex=False)
        self.proc = ctx.Process(target=_worker_main, args=(worker_id, init_fn, run_fn, self.jobs, child_conn), daemon=True)
        self.proc.start()
        child_conn.close()  # the child holds the only write end: its death reads as EOF here
        self.ready = False
        self.started_at = time.monotonic()
        self.job: Job | None = None
        self.job_started: float | None = None

    def kill(self) -> None:
        if self.proc.is_alive():
            self.proc.kill()
        self.proc.join(timeout=10)


class EpisodePool:
    """Run jobs across ``n_workers`` spawned processes; ``n_workers=0`` runs them in this process.

    ``init_fn() -> state`` runs once per worker (or a dict {job key: init function}, each run on a worker's first job
    of that key); ``run_fn(state, job) -> value`` once per job. Both must be picklable (module-level functions or
    ``functools.partial`` of them).
    """

    def __init__(
        self,
        init_fn: InitFn | dict[Any, InitFn],
        run_fn: Callable[[Any, Job], Any],
        n_workers: int,
        episode_timeout_s: float = 900.0,
        init_timeout_s: float = 600.0,
    ):
        if n_workers < 0:
            raise ValueError(f"n_workers must be >= 0, got {n_workers}")
        self.init_fn, self.run_fn = init_fn, run_fn
        self.n_workers = n_workers
        self.episode_timeout_s, self.init_timeout_s = episode_timeout_s, init_timeout_s
        self._ctx = mp.get_context("spawn")
        self._workers: dict[int, _Worker] = {}
        self._next_id = 0
        self._local_states: WorkerStates | None = None

    # ---- lifecycle ----
    def __enter__(self) -> "EpisodePool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _spawn(self) -> _Worker:
        w = _Worker(self._ctx, self._next_id, self.init_fn, self.run_fn)
        self._workers[w.id] = w
        self._next_id += 1
        return w

    def close(self) -> None:
        for w in list(self._workers.values()):
            if w.job is not None or not w.ready:
                w.kill()  # an unfinished episode nobody waits for any more
            elif w.proc.is_alive():
                try:
                    w.jobs.put(None)
                except (OSError, ValueError):
                    pass
        deadline = time.monotonic() + 30
        for w in list(self._workers.values()):
            w.proc.join(timeout=max(0.0, deadline - time.monotonic()))
            w.kill()
        self._workers.clear()
        if self._local_states is not None:
            self._local_states.close()
            self._local_states = None

    # ---- running ----
    def run(self, jobs: Iterator[Job] | list[Job]) -> Iterator[JobResult]:
        """Yield one JobResult per job, in completion order. ``jobs`` may be a lazy generator: the next job
        is drawn only when a worker is free, so a consumer can stop early by breaking out of the loop."""
        jobs = iter(jobs)
        if self.n_workers == 0:
            yield from self._run_local(jobs)
            return
        pending_jobs_exhausted = False
        while len(self._workers) < self.n_workers:
            self._spawn()
        while True:
            # hand out work to ready, idle workers
            for w in list(self._workers.values()):
                if w.ready and w.job is None and not pending_jobs_exhausted:
                    job = next(jobs, None)
                    if job is None:
                        pending_jobs_exhausted = True
                        break
                    w.job, w.job_started = job, time.monotonic()
                    w.jobs.put(job)
            if pending_jobs_exhausted and all(w.job is None for w in self._workers.values()):
                return
            for kind, wid, index, payload in self._receive(timeout=0.5):
                w = self._workers.get(wid)
                if w is None:
                    continue  # a message from a worker already replaced
                if kind == "ready":
                    w.ready = True
                elif kind == "init_error":
                    self.close()
                    raise RuntimeError(f"episode worker {wid} failed to start:\n{payload}")
                elif kind == "start":
                    w.job_started = time.monotonic()
                elif kind in ("done", "error", "fatal") and w.job is not None and w.job.index == index:
                    job, w.job = w.job, None
                    if kind == "done":
                        yield JobResult(job, value=payload)
                    else:
                        yield JobResult(job, error=payload, fatal=kind == "fatal")
            yield from self._check_health()

    def _receive(self, timeout: float) -> list[tuple]:
        """Messages from every worker that has one (waiting at most ``timeout``); a dead worker's pipe reads as EOF
        and is left for `_check_health`."""
        conns = {w.conn: w for w in self._workers.values() if not w.conn.closed}
        messages = []
        for conn in mp_connection.wait(list(conns), timeout=timeout):
            try:
                messages.append(conn.recv())
            except (EOFError, OSError):
                conn.close()
        return messages

    def _check_health(self) -> Iterator[JobResult]:
        now = time.monotonic()
        for w in list(self._workers.values()):
            alive = w.proc.is_alive()
            if not w.ready:
                if not alive:
                    self.close()
                    raise RuntimeError(f"episode worker {w.id} died while starting (exit code {w.proc.exitcode})")
                if now - w.started_at > self.init_timeout_s:
                    self.close()
                    raise RuntimeError(f"episode worker {w.id} did not start within {self.init_timeout_s:.0f} s")
                continue
            if w.job is None:
                if not alive:
                    log.warning("worker %d exited while idle (exit code %s); replacing it", w.id, w.proc.exitcode)
                    del self._workers[w.id]
                    self._spawn()
                continue
            if not alive:
                error = f"worker crashed (exit code {w.proc.exitcode}) during episode {w.job.index} (seed {w.job.seed})"
            elif now - (w.job_started or now) > self.episode_timeout_s:
                error = f"episode {w.job.index} (seed {w.job.seed}) timed out after {self.episode_timeout_s:.0f} s"
            else:
                continue
            log.error("%s; replacing worker %d", error, w.id)
            job = w.job
            w.kill()
            del self._workers[w.id]
            self._spawn()
            yield JobResult(job, error=error)

    def _run_local(self, jobs: Iterator[Job]) -> Iterator[JobResult]:
        if self._local_states is None:
            self._local_states = WorkerStates(self.init_fn)
            if callable(self.init_fn):
                self._local_states.get(None)
        for job in jobs:
            yield run_one(self._local_states, self.run_fn, job)


LAUNCHERS = ("local", "ray")


def make_pool(launcher: Any, init_fn: InitFn | dict[Any, InitFn], run_fn: Callable[[Any, Job], Any], n_workers: int,
              episode_timeout_s: float = 900.0):
    """The episode pool a ``launcher`` config names: ``{name: local}`` (None too) this machine's spawned processes,
    ``{name: ray, address, cpus_per_worker, max_retries}`` actors on a Ray cluster."""
    options = dict(launcher or {"name": "local"})
    name = options.pop("name", "local")
    if name == "local":
        if options:
            raise ValueError(f"launcher=local takes no options, got {sorted(options)}")
        return EpisodePool(init_fn, run_fn, n_workers, episode_timeout_s=episode_timeout_s)
    if name == "ray":
        from vmp.sim.ray_pool import RayEpisodePool

        unknown = sorted(set(options) - {"address", "cpus_per_worker", "max_retries"})
        if unknown:
            raise ValueError(f"launcher=ray: unknown option(s) {unknown}; known: address, cpus_per_worker, max_retries")
        return RayEpisodePool(init_fn, run_fn, n_workers, episode_timeout_s=episode_timeout_s, **options)
    raise ValueError(f"launcher.name={name!r} is not a launcher; choose from {list(LAUNCHERS)}")
