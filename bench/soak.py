"""Soak test: `vmp-deploy` for a long time on the simulated toy robot, with the fault injections it must survive.

No deployment had run for longer than a few minutes; leaks, stuck threads and stops that stop happening show only
over time. The soak runs the daemon as an operator does (``python -m vmp.real.daemon``, a process of its own, so its
memory and threads are measured from outside through /proc) in a schedule of segments, one fault kind each, cycling
through the kinds until ``--minutes`` are used (the first cycle always runs every kind):

* long kinds run many episodes in ONE daemon process until their share of the time is used, then get SIGTERM (as an
  operator stops the daemon): ``none``, ``dropped_frames``, ``late_frames``, ``slow_inference`` (every chunk slower than
  a tick, every 10th far slower, never as long as the watchdog), ``reconnects`` (the robot server dies every 300 steps,
  ``reconnect.enabled=true``) and ``mixed`` (all of these at once);
* ending kinds are faults after which the daemon must stop the robot and exit non-zero: ``inference_killed`` (the
  inference process SIGKILLed), ``inference_stalled`` (a chunk that never comes: the watchdog), ``inference_nan``,
  ``robot_lost`` (a disconnect without reconnection).

Checks (exit 1 if any fails; the results record is written either way): every episode the daemons ran is in the
record store they wrote; no stop that a fault required was missed (fault kinds: the episode's reason, the exit code
and error, the robot's last command a stop; SIGTERM: exit 0 with the robot stopped; each server death: an episode
ended ``robot_disconnected``); every fault visibly happened; no episode stopped for a fault its segment did not
inject; and in every long segment, each process's RSS, threads (and the control process's open files) grew less than
``--max-growth``: the median of the last 20% of samples against the median of the first 20% after a warm-up
(``--warmup-s``; in a segment shorter than 4 warm-ups, its first fifth)::

    vmp-bench soak --minutes 60 --out results/soak_toy_60min.json
    vmp-bench soak --seconds 15 --kinds mixed,inference_killed,inference_stalled,robot_lost   (every fault, ~90 s)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from vmp.bench.common import device_name, given_args, write_result
from vmp.real.testing import ReachPolicy

log = logging.getLogger("vmp.bench.soak")

REACH = "{_target_:vmp.real.testing.ReachPolicy,seed:0,offset_scale:0.05}"
SLOW = "{_target_:vmp.bench.soak.SlowChunksPolicy,seed:0,offset_scale:0.05,delay_s:0.03,slow_every:10,slow_s:0.2}"
SLOW_S = 0.2
EXIT_AFTER_STEPS = 300  # reconnects: the robot server dies every this many steps (6 s of ticks at 50 Hz)
LATENCY_S, JITTER_S, DROP_PROB = 0.005, 0.010, 0.2
FAULT_STEP = 24  # ending inference faults: the chunk for control step >= 24 (as tests/test_real_daemon.py)
ENDING_RUN = ("n_episodes=3", "robot.env.kwargs.tol=0.0", "max_ticks=400")  # the fault comes in episode 1 of 3


def _inference_fault(fault: str) -> str:
    return REACH[:-1] + f",fault:'{fault}',fault_at_step:{FAULT_STEP}}}"


class SlowChunksPolicy(ReachPolicy):
    """ReachPolicy whose chunks all take ``delay_s`` and every ``slow_every``-th ``slow_s`` more: slow inference that
    recurs for a whole run (ReachPolicy's ``stall`` names single calls), never as long as the watchdog."""

    name = "soak_slow_reach"

    def __init__(self, slow_every: int = 10, slow_s: float = 0.2, **kw: Any):
        super().__init__(**kw)
        self.slow_every, self.slow_s = slow_every, slow_s

    def predict_action_chunk(self, obs, goal=None, generator=None, prefix=None, prefix_weights=None):
        if self.slow_every and self.calls % self.slow_every == self.slow_every - 1:
            time.sleep(self.slow_s)
        return super().predict_action_chunk(obs, goal, generator, prefix, prefix_weights)


@dataclasses.dataclass(frozen=True)
class Kind:
    long: bool  # many episodes in one daemon, ended by SIGTERM; else a fault that ends the run
    overrides: tuple[str, ...] = ()
    policy: str = REACH
    # ending kinds: the error text, the last episode's reason
    error: str | None = None
    reason: str | None = None
    robot_stop: bool = True  # whether the robot can be told to stop (not when its server died)


_RECONNECT = (f"robot.faults.exit_after_steps={EXIT_AFTER_STEPS}", "reconnect.enabled=true")
_DROP = (f"robot.faults.drop_prob={DROP_PROB}",)
_LATE = (f"robot.faults.latency_s={LATENCY_S}", f"robot.faults.jitter_s={JITTER_S}")
KINDS: dict[str, Kind] = {
    "none": Kind(True),
    "dropped_frames": Kind(True, _DROP),
    "late_frames": Kind(True, _LATE),
    "slow_inference": Kind(True, policy=SLOW),
    "reconnects": Kind(True, _RECONNECT),
    "mixed": Kind(True, _DROP + _LATE + _RECONNECT, SLOW),
    "inference_killed": Kind(False, ENDING_RUN, _inference_fault("die"), "the inference process died",
                             "inference_error"),
    "inference_stalled": Kind(False, ENDING_RUN, _inference_fault("stall"), "inference stalled", "inference_stalled"),
    "inference_nan": Kind(False, ENDING_RUN, _inference_fault("nan"), "non-finite", "inference_error"),
    "robot_lost": Kind(False, (*ENDING_RUN, "robot.faults.exit_after_steps=60"), REACH, "robot connection lost",
                       "robot_disconnected", robot_stop=False),
}
# long and ending kinds alternate, so a fault that ends a run comes after each long stretch
DEFAULT_KINDS = ["none", "inference_killed", "dropped_frames", "inference_stalled", "late_frames", "robot_lost",
                 "slow_inference", "inference_nan", "reconnects", "mixed"]
# episodes may end so in a long segment; robot_disconnected only where the server is made to die
CALM_REASONS = {"success", "max_ticks", "done", "signal"}


# ---- the schedule ----

def running_share(remaining_s: float, long_left: int, ending_left: int, startup_s: float, ending_s: float,
                  min_s: float, max_s: float) -> float:
    """Seconds of running (after start-up) for the next long segment: what is left of the duration, less the
    expected cost of this cycle's other segments, shared among its long segments left; within [min_s, max_s]."""
    share = (remaining_s - ending_left * ending_s - long_left * startup_s) / max(long_left, 1)
    return float(min(max(share, min_s), max_s))


# ---- /proc ----

def _proc_table() -> dict[int, int]:
    """pid -> parent pid of every process."""
    table = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    table[int(entry)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass
    return table


def _role(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return "gone"
    if "vmp.real.sim_server" in cmd:
        return "robot"
    if "spawn_main" in cmd:
        return "inference"
    return "other"  # multiprocessing's resource tracker


def _status(pid: int) -> dict[str, float] | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            fields = dict(line.split(":", 1) for line in f if ":" in line)
        return {"rss_mb": int(fields["VmRSS"].split()[0]) / 1024, "threads": int(fields["Threads"])}
    except (OSError, KeyError, ValueError):
        return None  # exited, or a zombie (no VmRSS)


def sample_tree(pid: int) -> dict[str, dict[str, float]]:
    """The daemon's processes by role -> their RSS (MiB) and threads, summed over the role's processes; the
    control process's open file descriptors too."""
    table = _proc_table()
    kids: dict[int, list[int]] = {}
    for p, pp in table.items():
        kids.setdefault(pp, []).append(p)
    out: dict[str, dict[str, float]] = {}
    todo = [(pid, "control")]
    while todo:
        p, role = todo.pop()
        st = _status(p)
        if st is not None:
            agg = out.setdefault(role, {"rss_mb": 0.0, "threads": 0})
            agg["rss_mb"] += st["rss_mb"]
            agg["threads"] += st["threads"]
        todo += [(c, _role(c)) for c in kids.get(p, [])]
    if "control" in out:
        try:
            out["control"]["fds"] = len(os.listdir(f"/proc/{pid}/fd"))
        except OSError:
            pass
    return out


def growth(t: np.ndarray, v: np.ndarray, warmup_s: float) -> float | None:
    """Median of the last 20% of samples over the median of the first 20% after the warm-up, minus 1; None with
    fewer than 5 samples. The warm-up is ``warmup_s``, or in a run shorter than four of them its first fifth (the
    first episodes still start threads and fill buffers)."""
    span = t[-1] - t[0] if t.size else 0.0
    v = v[t >= t[0] + (warmup_s if span >= 4 * warmup_s else span / 5)] if t.size else v
    if v.size < 5:
        return None
    q = max(1, v.size // 5)
    base = float(np.median(v[:q]))
    return float(np.median(v[-q:])) / base - 1.0 if base > 0 else None


# ---- one segment ----

class Segment:
    """One daemon run of one fault kind: its command, its /proc samples, and what its summary and store say."""

    def __init__(self, index: int, kind: str, work: Path, extra: list[str]):
        self.index, self.kind, self.spec = index, kind, KINDS[kind]
        self.dir = work / f"{index:02d}_{kind}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.status_file, self.store = self.dir / "status.json", self.dir / "episodes.zarr"
        self.summary_file, self.log_file = self.dir / "summary.json", self.dir / "daemon.log"
        self.cmd = [sys.executable, "-m", "vmp.real.daemon", f"policy={self.spec.policy}", "robot=toy",
                    "metrics.port=0", f"seed={1000 * index}", f"robot.fault_seed={index}",
                    f"robot.status_file={self.status_file}", f"record.path={self.store}",
                    f"summary_path={self.summary_file}", f"hydra.run.dir={self.dir / 'hydra'}",
                    *(["n_episodes=1000000"] if self.spec.long else []), *self.spec.overrides, *extra]
        self.samples: list[tuple[float, dict[str, dict[str, float]]]] = []
        self.started = self.running_at = self.termed = self.ended = 0.0  # monotonic times; 0: not (yet)
        self.exit_code: int | None = None
        self.killed = False  # did not exit in time: SIGKILLed

    def status(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.status_file.read_text())
        except (OSError, ValueError):
            return None

    def run(self, running_s: float, sample_s: float, start_timeout_s: float, stop_timeout_s: float) -> None:
        """Start the daemon; sample its processes every ``sample_s``; a long kind gets SIGTERM after ``running_s``
        of running (its first episode on), an ending kind is waited for (at most start-up plus ``running_s``)."""
        env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
        log.info("segment %d %s: %s", self.index, self.kind, " ".join(self.cmd[3:]))
        with open(self.log_file, "w") as out:
            self.started = time.monotonic()
            proc = subprocess.Popen(self.cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
            try:
                self._watch(proc, running_s, sample_s, start_timeout_s, stop_timeout_s)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
                self.exit_code, self.ended = proc.returncode, time.monotonic()

    def _watch(self, proc: subprocess.Popen, running_s: float, sample_s: float, start_timeout_s: float,
               stop_timeout_s: float) -> None:
        next_sample = time.monotonic()
        while proc.poll() is None:
            now = time.monotonic()
            if now >= next_sample:
                self.samples.append((now - self.started, sample_tree(proc.pid)))
                next_sample += sample_s
            if self.termed:
                if now - self.termed > stop_timeout_s:
                    log.error("segment %d %s: no exit %.0f s after SIGTERM: SIGKILL", self.index, self.kind,
                              stop_timeout_s)
                    self.killed = True
                    proc.kill()
                    break
            elif not self.running_at:
                st = self.status()
                if st is not None and st.get("state") == "running":
                    self.running_at = now
                elif now - self.started > start_timeout_s:
                    log.error("segment %d %s: no episode began within %.0f s", self.index, self.kind, start_timeout_s)
                    self._term(proc, now)
            elif now - self.running_at >= running_s:
                if not self.spec.long:
                    log.error("segment %d %s: the fault did not end the run within %.0f s", self.index, self.kind,
                              running_s)
                self._term(proc, now)
            time.sleep(min(0.1, max(0.0, next_sample - time.monotonic())))
        proc.wait()

    def _term(self, proc: subprocess.Popen, now: float) -> None:
        proc.send_signal(signal.SIGTERM)
        self.termed = now

    # ---- judging ----
    def judge(self, warmup_s: float) -> dict[str, Any]:
        """-> this segment's figures: episodes run and recorded, required and missed stops, unexpected stops,
        whether the fault showed, growth per process role (long kinds)."""
        spec, missed, unexpected = self.spec, [], []
        summary = json.loads(self.summary_file.read_text()) if self.summary_file.exists() else None
        status = self.status() or {}
        episodes = summary["episodes"] if summary else []
        run = [e for e in episodes if e["ticks"] > 0]  # an episode stopped before its first tick records nothing
        recorded, lengths, texts = self._store()
        reasons: dict[str, int] = {}
        for e in episodes:
            reasons[e["reason"]] = reasons.get(e["reason"], 0) + 1
        error = (summary or {}).get("error") or ""
        robot_stopped = status.get("state") == "stopped" or status.get("steps") == 0  # a fresh server never moved
        required = 1  # the fault's stop, or SIGTERM's
        if summary is None:
            (unexpected if spec.long else missed).append(f"no summary (exit code {self.exit_code})")
        if spec.long:
            if not self.termed:
                unexpected.append(f"the daemon exited by itself (exit code {self.exit_code}, error {error or None})")
            elif self.killed or self.exit_code != 0 or (summary and summary.get("stopped_by_signal") != "SIGTERM"):
                missed.append(f"SIGTERM: exit code {self.exit_code}, stopped_by_signal "
                              f"{(summary or {}).get('stopped_by_signal')}, error {error or None}")
            elif not robot_stopped:
                missed.append(f"SIGTERM: the robot's last state is {status.get('state')!r}, not stopped")
            calm = CALM_REASONS | ({"robot_disconnected"} if "reconnect.enabled=true" in spec.overrides else set())
            unexpected += [f"episode seed {e['seed']}: {e['reason']} after {e['ticks']} ticks" for e in episodes
                           if e["reason"] not in calm]
        elif summary is not None:
            last = episodes[-1] if episodes else {}
            if self.exit_code != 1 or self.killed:
                missed.append(f"exit code {self.exit_code}{' (SIGKILLed)' if self.killed else ''}, expected 1")
            if spec.error not in error:
                missed.append(f"error {error!r} does not name {spec.error!r}")
            if last.get("reason") != spec.reason or len(episodes) != 1:
                missed.append(f"episodes ended {[e['reason'] for e in episodes]}, expected [{spec.reason!r}]")
            if spec.robot_stop and status.get("state") != "stopped":
                missed.append(f"the robot's last state is {status.get('state')!r}, not stopped")
        seen, evidence = self._fault_seen(summary, lengths, reasons)
        if "reconnect.enabled=true" in spec.overrides and summary is not None:
            deaths = evidence["server_deaths"]
            required += deaths
            lost = reasons.get("robot_disconnected", 0)
            if lost < deaths:
                missed.append(f"{deaths} robot server deaths but {lost} episodes ended robot_disconnected")
            if (summary["counters"].get("reconnects", 0)) < lost:
                missed.append(f"{lost} disconnects, {summary['counters'].get('reconnects', 0)} reconnections")
        # the store holds exactly the episodes run, in order, with their outcomes
        matches = summary is not None and [(e["seed"], e["reason"]) for e in run] == [(t.get("seed"), t.get("outcome"))
                                                                                     for t in texts]
        out = {"index": self.index, "kind": self.kind, "long": spec.long, "exit_code": self.exit_code,
               "startup_s": round(self.running_at - self.started, 1) if self.running_at else None,
               "running_s": round((self.termed or self.ended) - self.running_at, 1) if self.running_at else 0.0,
               "wall_s": round(self.ended - self.started, 1),
               "episodes_run": len(run), "episodes_recorded": recorded,
               "episodes_without_ticks": len(episodes) - len(run),
               "recorded_matches": matches,
               "reasons": reasons, "required_stops": required, "missed_stops": len(missed), "missed": missed,
               "unexpected_stops": len(unexpected), "unexpected": unexpected[:20], "fault_seen": seen,
               "evidence": evidence, "error": error or None,
               "counters": {k: v for k, v in ((summary or {}).get("counters") or {}).items()
                            if k in ("episodes", "reconnects", "dropped_frames", "holds", "overruns", "missed_ticks",
                                     "chunks", "stale_actions")}}
        out.update(self._series(warmup_s))
        return out

    def _store(self) -> tuple[int, list[int], list[dict]]:
        if not (self.store / "zarr.json").exists():
            return 0, [], []
        from vmp.data import EpisodeStore

        with EpisodeStore.open(self.store) as store:
            return (store.n_episodes, [int(n) for n in store.episode_lengths],
                    [store.episode_text(i) for i in range(store.n_episodes)])

    def _fault_seen(self, summary: dict | None, lengths: list[int],
                    reasons: dict[str, int]) -> tuple[bool, dict[str, Any]]:
        """Did the injected faults happen? (A soak whose faults never fire tests nothing.)"""
        if summary is None:
            return False, {}
        over = self.spec.overrides
        counters = summary.get("counters") or {}
        ev: dict[str, Any] = {}
        checks = []
        if any("drop_prob" in o for o in over):
            ev["dropped_frames"] = counters.get("dropped_frames", 0)
            checks.append(ev["dropped_frames"] > 0)
        if any("latency_s" in o for o in over):  # every observation's reply is at least latency_s late
            ev["obs_to_action_p50_ms"] = summary.get("obs_to_action_p50_ms")
            checks.append((ev["obs_to_action_p50_ms"] or 0) >= LATENCY_S * 1e3)
        if self.spec.policy == SLOW:
            ev["inference_latency_p99_ms"] = summary.get("inference_latency_p99_ms")
            checks.append((ev["inference_latency_p99_ms"] or 0) >= SLOW_S * 1e3)
        if "reconnect.enabled=true" in over:
            # each server lives EXIT_AFTER_STEPS commands: the recorded ones plus each lost episode's last (unanswered)
            lost = reasons.get("robot_disconnected", 0)
            ev["server_deaths"] = (sum(lengths) + lost) // EXIT_AFTER_STEPS
            ev["reconnects"] = counters.get("reconnects", 0)
            checks.append(lost > 0)
        if not self.spec.long:
            checks.append(self.spec.error in (summary.get("error") or ""))
        return all(checks), ev

    def _series(self, warmup_s: float) -> dict[str, Any]:
        """Growth per role and measure while the daemon ran episodes (long kinds: from its first episode to SIGTERM),
        and the time series (at most 120 points)."""
        t0 = self.running_at - self.started if self.running_at else 0.0
        t1 = (self.termed or self.ended) - self.started
        names = [(r, m) for r in ("control", "inference", "robot") for m in ("rss_mb", "threads", "fds")
                 if any(m in s.get(r, {}) for _, s in self.samples)]
        out: dict[str, Any] = {"growth": {}, "rss_mb": {}}
        for role, m in names:
            pts = [(t, s[role][m]) for t, s in self.samples if role in s and m in s[role]]
            t = np.array([p[0] for p in pts])
            v = np.array([p[1] for p in pts], dtype=float)
            run = (t >= t0) & (t < t1)
            if self.spec.long and run.sum():
                g = growth(t[run], v[run], warmup_s)
                out["growth"][f"{role}_{m}"] = None if g is None else round(g, 4)
            if m == "rss_mb" and run.sum():
                out["rss_mb"][role] = {"first": round(float(v[run][0]), 1), "last": round(float(v[run][-1]), 1),
                                       "max": round(float(v.max()), 1)}
        step = max(1, len(self.samples) // 120)
        series: dict[str, list] = {"t_s": [round(t, 1) for t, _ in self.samples[::step]]}
        for role, m in names:
            series[f"{role}_{m}"] = [None if role not in s or m not in s[role] else round(s[role][m], 1)
                                     for _, s in self.samples[::step]]
        out["series"] = series
        return out


# ---- the soak ----

def soak(duration_s: float, kinds: list[str], work: Path, sample_s: float = 2.0, warmup_s: float = 90.0,
         segment_max_s: float = 600.0, min_running_s: float = 15.0, max_growth: float = 0.10,
         extra: list[str] | None = None) -> dict[str, Any]:
    """Run the schedule -> the results record's metrics (``passed`` and the failed ``checks`` among them)."""
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown:
        raise ValueError(f"unknown soak kinds {unknown}; choose from {sorted(KINDS)}")
    start = time.monotonic()
    deadline = start + duration_s
    startups, endings, segments = [20.0], [35.0], []
    cycle = 0
    while True:
        for i, kind in enumerate(kinds):
            now = time.monotonic()
            rest = kinds[i:]
            if cycle > 0 and now >= deadline:
                break
            spec = KINDS[kind]
            if spec.long:
                running_s = running_share(deadline - now, sum(KINDS[k].long for k in rest),
                                          sum(not KINDS[k].long for k in rest), float(np.mean(startups)),
                                          float(np.mean(endings)), min_running_s, segment_max_s)
                if cycle > 0 and deadline - now < min_running_s + np.mean(startups):
                    break
            else:
                running_s = 120.0  # the fault comes within a few seconds of the first episode
            seg = Segment(len(segments), kind, work, list(extra or []))
            seg.run(running_s, sample_s, start_timeout_s=300.0, stop_timeout_s=60.0)
            result = seg.judge(warmup_s)
            segments.append(result)
            if result["startup_s"]:
                startups.append(result["startup_s"])
            if not spec.long:
                endings.append(result["wall_s"])
            log.info("segment %d %s: %d episodes (%d recorded), %s, missed stops %d, growth %s", seg.index, kind,
                     result["episodes_run"], result["episodes_recorded"], result["reasons"], result["missed_stops"],
                     {k: v for k, v in result["growth"].items() if v is not None})
        else:
            cycle += 1
            if time.monotonic() < deadline:
                continue
        break
    return _totals(segments, time.monotonic() - start, duration_s, sample_s, warmup_s, max_growth)


def _totals(segments: list[dict], elapsed_s: float, duration_s: float, sample_s: float, warmup_s: float,
            max_growth: float) -> dict[str, Any]:
    longs = [s for s in segments if s["long"]]
    worst: dict[str, float] = {}
    for s in longs:
        for name, g in s["growth"].items():
            if g is not None:
                worst[name] = max(worst.get(name, -1.0), g)
    grew = {n: g for n, g in worst.items() if g >= max_growth}
    m = {
        "minutes": round(duration_s / 60, 2), "elapsed_min": round(elapsed_s / 60, 2), "n_segments": len(segments),
        "kinds": sorted({s["kind"] for s in segments}),
        "episodes_run": sum(s["episodes_run"] for s in segments),
        "episodes_recorded": sum(s["episodes_recorded"] for s in segments),
        "episodes_without_ticks": sum(s["episodes_without_ticks"] for s in segments),
        "required_stops": sum(s["required_stops"] for s in segments),
        "missed_stops": sum(s["missed_stops"] for s in segments),
        "unexpected_stops": sum(s["unexpected_stops"] for s in segments),
        "faults_not_seen": [s["kind"] for s in segments if s["kind"] != "none" and not s["fault_seen"]],
        "growth_max": {n: round(g, 4) for n, g in sorted(worst.items())},
        "max_rss_growth": max([g for n, g in worst.items() if n.endswith("rss_mb")], default=None),
        "max_thread_growth": max([g for n, g in worst.items() if n.endswith("threads")], default=None),
        "max_growth_allowed": max_growth, "sample_s": sample_s, "warmup_s": warmup_s,
        "long_running_min": round(sum(s["running_s"] for s in longs) / 60, 2),
    }
    m["checks"] = {
        "recorded_equals_run": all(s["recorded_matches"] for s in segments),
        "no_missed_stops": m["missed_stops"] == 0,
        "no_unexpected_stops": m["unexpected_stops"] == 0,
        "every_fault_seen": not m["faults_not_seen"],
        "growth_below_max": not grew and bool(worst),
    }
    m["grew"] = grew
    m["passed"] = all(m["checks"].values())
    m["segments"] = segments
    return m


def report(m: dict[str, Any]) -> str:
    """The short human summary."""
    lines = [f"soak: {m['elapsed_min']:.1f} min ({m['minutes']:g} asked), {m['n_segments']} segments, "
             f"{m['long_running_min']:.1f} min in long runs"]
    for s in m["segments"]:
        g = ", ".join(f"{k} {v:+.1%}" for k, v in s["growth"].items() if v is not None)
        lines.append(f"  {s['index']:2d} {s['kind']:<17} {s['running_s']:7.1f} s  {s['episodes_run']:5d} run "
                     f"{s['episodes_recorded']:5d} rec  exit {s['exit_code']}  "
                     f"{' '.join(f'{r}:{n}' for r, n in sorted(s['reasons'].items()))}"
                     f"{'  MISSED ' + '; '.join(s['missed']) if s['missed'] else ''}"
                     f"{'  UNEXPECTED ' + '; '.join(s['unexpected'][:3]) if s['unexpected'] else ''}"
                     f"{'' if s['fault_seen'] or s['kind'] == 'none' else '  FAULT NOT SEEN'}"
                     + (f"\n     {g}" if g else ""))
    lines.append(f"episodes run {m['episodes_run']}, recorded {m['episodes_recorded']}; required stops "
                 f"{m['required_stops']}, missed {m['missed_stops']}; unexpected stops {m['unexpected_stops']}; "
                 f"faults not seen {m['faults_not_seen'] or 'none'}")
    lines.append("growth (worst long segment): " + ", ".join(f"{k} {v:+.1%}" for k, v in m["growth_max"].items()))
    failed = [k for k, ok in m["checks"].items() if not ok]
    lines.append("PASS" if m["passed"] else f"FAIL: {', '.join(failed)}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="vmp-bench soak", description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=60.0)
    ap.add_argument("--seconds", type=float, default=None, help="the duration in seconds instead (short runs, tests)")
    ap.add_argument("--kinds", default=",".join(DEFAULT_KINDS), help=f"comma-separated, in order; of {sorted(KINDS)}")
    ap.add_argument("--segment-minutes", type=float, default=10.0, help="the longest a long segment runs")
    ap.add_argument("--min-segment-s", type=float, default=15.0,
                    help="the shortest a long segment runs (after start-up)")
    ap.add_argument("--sample-s", type=float, default=2.0, help="seconds between /proc samples")
    ap.add_argument("--warmup-s", type=float, default=90.0, help="samples left out of the growth figures")
    ap.add_argument("--max-growth", type=float, default=0.10)
    ap.add_argument("--work-dir", default=None, help="segment folders (stores, logs); default a temporary folder, "
                    "removed after a passing run")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="a vmp-deploy override for every segment")
    ap.add_argument("--out", default="results/soak_toy.json")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))  # as the daemons run (and the record says)
    duration_s = args.seconds if args.seconds is not None else args.minutes * 60
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    work = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="vmp_soak_"))
    m = soak(duration_s, kinds, work, args.sample_s, args.warmup_s, args.segment_minutes * 60, args.min_segment_s,
             args.max_growth, args.set)
    write_result(Path(args.out).stem, "soak", "-", "-", "synthetic",
                 f"vmp-deploy robot=toy 50 Hz, {m['n_segments']} segments of {len(set(kinds))} kinds "
                 f"({', '.join(kinds)}), {m['elapsed_min']:.0f} min" + (f", {' '.join(args.set)}" if args.set else ""),
                 m, device_name("cpu"), " ".join(["vmp-bench soak", *given_args(argv)]),
                 budget={"minutes": round(duration_s / 60, 2)}, out_dir=Path(args.out).parent)
    print(report(m))
    print(f"-> {args.out}; segment logs and stores in {work}" + ("" if m["passed"] or args.work_dir else " (kept)"))
    if m["passed"] and not args.work_dir:
        shutil.rmtree(work, ignore_errors=True)
    if not m["passed"]:
        sys.exit(1)

if __name__ == "__main__":
    main()
