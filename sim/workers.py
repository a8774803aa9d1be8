"""A small process pool for episodes: each worker builds its state once (env, policy, renderer) and runs
episodes handed to it one at a time.

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
    """One episode: its index in the run, its env seed, and whether to record a video."""

    index: int
    seed: int
    record_video: bool = False


@dataclasses.dataclass
class JobResult:
    job: Job
    value: Any = None
    error: str | None = None  # traceback text, "worker crashed ...", or "timed out ..."
    fatal: bool = False  # an error that must stop the run (e.g. a non-finite action)


def _worker_main(worker_id: int, init_fn: Callable[[], Any], run_fn: Callable[[Any, Job], Any], jobs, conn) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    logging.basicConfig(level=logging.WARNING)
    try:
        import vmp  # noqa: F401  (MUJOCO_GL before any MuJoCo import)

        state = init_fn()
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
            try:
                value = run_fn(state, job)
            except FloatingPointError:
                conn.send(("fatal", worker_id, job.index, traceback.format_exc()))
                continue
            except Exception:
                conn.send(("error", worker_id, job.index, traceback.format_exc()))
                continue
            conn.send(("done", worker_id, job.index, value))
    finally:
        close = getattr(state, "close", None)
        if callable(close):
            close()


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

    ``init_fn() -> state`` runs once per worker; ``run_fn(state, job) -> value`` once per job. Both must be
    picklable (module-level functions or ``functools.partial`` of them).
    """

    def __init__(
        self,
        init_fn: Callable[[], Any],
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
        self._local_state: Any = None

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
        if self._local_state is not None:
            close = getattr(self._local_state, "close", None)
            if callable(close):
                close()
            self._local_state = None

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
        if self._local_state is None:
            self._local_state = self.init_fn()
        for job in jobs:
            try:
                value = self.run_fn(self._local_state, job)
            except FloatingPointError:
                yield JobResult(job, error=traceback.format_exc(), fatal=True)
                continue
            except Exception:
                log.exception("episode %d (seed %d) failed", job.index, job.seed)
                yield JobResult(job, error=traceback.format_exc())
                continue
            yield JobResult(job, value=value)
