"""Training curves over seeds, reported as the papers report them: each training seed is evaluated at several
checkpoints (its records' variants read "<setting>; seed S, step N of ..."), contributes its maximum and the mean of
its last K evaluated checkpoints, and a row gives the mean and spread of those across seeds.

Diffusion Policy reports the maximum and the mean of the last 10 checkpoints; CARP the mean of its top 3. We
evaluate fewer checkpoints (each costs 10-30 CPU minutes on Can), so K is stated with every row.

A seed has reached its plateau when each of its last K evaluations lies inside the 95% (Wilson) interval of every
other one: more training at this budget's rate would not be told apart from noise at these episode counts.
"""

from __future__ import annotations

import re
import statistics
from dataclasses import dataclass

LAST_K = 3
_VARIANT = re.compile(r"^(?P<setting>.*?);\s*seed (?P<seed>\d+), step (?P<step>\d+)(?: of (?P<schedule>\d+))?\b")


@dataclass(frozen=True)
class Point:
    step: int
    minutes: float | None
    success: float
    episodes: int


def curves(records: list[dict]) -> dict[tuple[str, str, str, str, int | None], dict[int, list[Point]]]:
    """{(task, obs, head, setting, schedule): {seed: checkpoints in step order}} of the success records that name a
    seed and a step ("..., step N of SCHEDULE": runs of different lengths are different curves, their learning rates
    anneal differently); a seed evaluated twice at one step keeps the record with more episodes."""
    out: dict[tuple[str, str, str, str, int | None], dict[int, dict[int, Point]]] = {}
    for r in records:
        match = _VARIANT.match(r.get("variant") or "") if r["kind"] == "success" else None
        if match is None:
            continue
        point = Point(int(match["step"]), (r.get("budget") or {}).get("train_minutes"),
                      float(r["metrics"]["success_rate"]), int(r["metrics"].get("n_episodes") or 0))
        schedule = int(match["schedule"]) if match["schedule"] else None
        seeds = out.setdefault((r["task"], r["obs"], r["policy"], match["setting"], schedule), {})
        steps = seeds.setdefault(int(match["seed"]), {})
        if point.step not in steps or point.episodes > steps[point.step].episodes:
            steps[point.step] = point
    return {key: {seed: [steps[s] for s in sorted(steps)] for seed, steps in sorted(seeds.items())}
            for key, seeds in sorted(out.items(), key=lambda item: (item[0][:4], item[0][4] or 0))}


def plateaued(points: list[Point], k: int = LAST_K) -> bool:
    """True when the last ``k`` evaluations (k at least) each lie inside the others' 95% Wilson intervals."""
    from vmp.sim.evaluate import wilson_interval

    last = points[-k:]
    if len(last) < k:
        return False
    intervals = [wilson_interval(round(p.success * p.episodes), p.episodes) for p in last]
    return all(low <= p.success <= high for p in last for low, high in intervals)


def seed_summary(points: list[Point], k: int = LAST_K) -> dict[str, float]:
    """One seed's maximum and mean of its last ``k`` evaluated checkpoints (fewer when it has fewer), and whether
    those have flattened (`plateaued`)."""
    last = points[-k:]
    return {"max": max(p.success for p in points), "last_k": statistics.fmean(p.success for p in last),
            "k": len(last), "last_step": points[-1].step, "minutes": points[-1].minutes,
            "plateau": plateaued(points, k)}


def _spread(values: list[float]) -> str:
    mean = statistics.fmean(values)
    return f"{mean:.2f}" if len(values) == 1 else f"{mean:.2f} ± {statistics.stdev(values):.2f}"


def table(records: list[dict], k: int = LAST_K) -> list[str]:
    """The results page's rows: one per (task, obs, head, setting, schedule) with seeds; mean ± standard deviation across
    seeds (a single seed: its value, and the row says so)."""
    found = curves(records)
    if not found:
        return []
    out = ["### Training curves over seeds (max and mean of the last checkpoints)", "",
           f"Each seed evaluated at several checkpoints on vmp-eval's fixed seeds; per seed its maximum and the mean of "
           f"its last {k} checkpoints; the row: mean ± standard deviation across seeds. Plateau: seeds whose last {k} "
           "evaluations each lie inside the others' 95% intervals.", "",
           f"| task | obs | head | setting | seeds | max | mean of last {k} | per seed (max / last-{k} mean) | "
           "plateau | checkpoints (episodes each) | minutes at last checkpoint |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    for (task, obs, head, setting, schedule), seeds in found.items():
        summaries = {seed: seed_summary(points, k) for seed, points in seeds.items()}
        per_seed = "; ".join(f"{seed}: {s['max']:.2f} / {s['last_k']:.2f}" for seed, s in summaries.items())
        steps = sorted({p.step for points in seeds.values() for p in points})
        episodes = "/".join(map(str, sorted({p.episodes for points in seeds.values() for p in points})))
        minutes = ", ".join(f"{s['minutes']:.0f}" for s in summaries.values() if s["minutes"] is not None) or "-"
        label = f"{len(seeds)}" + (" (one seed)" if len(seeds) == 1 else "")
        flat = sum(s["plateau"] for s in summaries.values())
        out.append(f"| {task} | {obs} | {head} | {setting} | {label} | "
                   f"{_spread([s['max'] for s in summaries.values()])} | "
                   f"{_spread([s['last_k'] for s in summaries.values()])} | {per_seed} | {flat} of {len(seeds)} | "
                   f"{', '.join(map(str, steps))}{f' of {schedule}' if schedule else ''} ({episodes}) | {minutes} |")
    return out + [""]
