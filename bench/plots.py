"""The results page's plots (docs/plots/), drawn with matplotlib from the results records (`vmp-bench report`
calls `write_plots`).

- latency.png: chunk latency p50 per head and setting at batch 1 (log scale), CPU and GPU side by side, on each
  head's default task (`vmp-bench latency` without --task);
- success.png: one bar per task and head, its best setting (`best_success`): a training curve's mean over seeds
  with the seeds' range, or a single evaluation with its 95% (Wilson) interval;
- success_vs_minutes.png: success against the training minutes each checkpoint's budget records;
- curves.png: the same for runs evaluated at several checkpoints per training seed, one line per head and seed
  (`vmp.bench.curves` reads them);
- lerobot_<task>_<obs>.png (one per task compared by `vmp-bench lerobot`): each contender's success against its
  training minutes (the checkpoints' timeline) and its chunk latency, our heads beside LeRobot's; each head of ours
  that the comparison did not train is drawn beside from its leading training curve on that task (the recipes'
  runs), labelled as a separate run.

The PNGs carry no date or version, so the same records draw the same files.
"""

from __future__ import annotations

from pathlib import Path

PLOTS = ("latency.png", "success.png", "success_vs_minutes.png")


def comparison_runs(records: list[dict], task: str) -> list[str]:
    """The commands of the `vmp-bench lerobot` runs on `task` among the records, in order: run N of a task is its
    N-th (1-based) in the results page's table and in the task's comparison plot. Numbered within each task, so that
    a run on a new task leaves the others' numbers as the docs cite them."""
    return sorted({r["command"] for r in records if r["kind"] == "comparison" and r["task"] == task})


def _figure(width: float, height: float, ncols: int = 1):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt, plt.subplots(1, ncols, figsize=(width, height), dpi=100)


def _save(plt, fig, path: Path, tight: bool = True) -> None:
    if tight:
        fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp")
    # bbox_inches="tight": the canvas grows to hold legends placed outside the axes; no version stamp: reruns give
    # the same bytes
    fig.savefig(tmp, format="png", bbox_inches="tight", pad_inches=0.1, metadata={"Software": None})
    plt.close(fig)
    tmp.replace(path)


def plot_latency(records: list[dict], path: Path) -> None:
    rows = sorted((r for r in records if r["kind"] == "latency" and r["task"] == "-"),  # the default tasks only
                  key=lambda r: (r["obs"], r["policy"], r["variant"], "cuda" in r["device"].lower() or "nvidia" in r["device"].lower()))
    labels = sorted({f"{r['obs']} {r['policy']} {r['variant']}" for r in rows})
    plt, (fig, ax) = _figure(10, 0.28 * len(labels) + 1.5)
    for offset, (device, colour) in ((-0.2, ("cpu", "tab:blue")), (0.2, ("gpu", "tab:orange"))):
        ys, xs = [], []
        for r in rows:
            gpu = "cpu" not in r["device"].lower()
            if (device == "gpu") != gpu:
                continue
            ys.append(labels.index(f"{r['obs']} {r['policy']} {r['variant']}") + offset)
            xs.append(r["metrics"]["p50_ms"])
        ax.barh(ys, xs, height=0.4, color=colour, label=device.upper())
    ax.set_yticks(range(len(labels)), labels, fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel("chunk latency p50, ms (batch 1, log scale)")
    ax.invert_yaxis()
    ax.legend(loc="lower right")
    _save(plt, fig, path)


def best_success(records: list[dict]) -> list[dict]:
    """Per (task, obs, head), the one row a user choosing a head reads: the training curve the results page leads
    with (`headline_curves`), as the mean over its seeds of their last-K means, with the lowest and highest seed;
    a head with no curve on that task: its best single evaluation, with its 95% interval. Ablations (variants that
    say "ablation" or "ablated") are not the head and draw no bar."""
    from vmp.bench.curves import seed_summary

    records = [r for r in records if "ablat" not in (r.get("variant") or "")]
    evaluations: dict[tuple[str, str, str], list[dict]] = {}
    for r in records:
        if r["kind"] == "success":
            evaluations.setdefault((r["task"], r["obs"], r["policy"]), []).append(r)
    rows, led = [], {}
    for (task, obs, head), own in sorted(evaluations.items()):
        if (task, obs) not in led:  # once per task and input: it reads every record
            led[task, obs] = headline_curves(records, task, obs, set())
        if head in led[task, obs]:
            setting, seeds = led[task, obs][head]
            last = [seed_summary(points)["last_k"] for points in seeds.values()]
            label = f"{setting[:50]} ({len(seeds)} seed{'s' if len(seeds) > 1 else ''}, last-checkpoints mean)"
            rows.append({"task": task, "obs": obs, "head": head, "success": sum(last) / len(last), "low": min(last),
                         "high": max(last), "label": label})
            continue
        best = max(own, key=lambda r: (r["metrics"]["success_rate"], r["metrics"].get("n_episodes") or 0))
        m = best["metrics"]
        rows.append({"task": task, "obs": obs, "head": head, "success": m["success_rate"],
                     "low": m.get("ci95_low", m["success_rate"]), "high": m.get("ci95_high", m["success_rate"]),
                     "label": f"{best['variant'][:50]} (best single evaluation)"})
    return rows


def plot_success(records: list[dict], path: Path) -> None:
    """One bar per task and head (`best_success`): the seeds' range for training curves, the 95% interval for
    single evaluations; every evaluation is in the tables below the plots."""
    rows = best_success(records)
    heads = sorted({r["head"] for r in rows})
    plt, (fig, ax) = _figure(10, 0.25 * len(rows) + 1.5)
    ax.barh(range(len(rows)), [r["success"] for r in rows],
            xerr=[[r["success"] - r["low"] for r in rows], [r["high"] - r["success"] for r in rows]],
            color=[f"C{heads.index(r['head']) % 10}" for r in rows], capsize=2)
    ax.set_yticks(range(len(rows)), [f"{r['task']} ({r['obs']}) {r['head']}: {r['label']}" for r in rows], fontsize=6)
    ax.set_xlim(0, 1)
    ax.set_xlabel("success rate, best setting per task and head (seeds' range or 95% interval)")
    ax.invert_yaxis()
    _save(plt, fig, path)


def plot_success_vs_minutes(records: list[dict], path: Path) -> None:
    rows = [r for r in records if r["kind"] == "success" and (r.get("budget") or {}).get("train_minutes")]
    plt, (fig, ax) = _figure(8, 5)
    heads, tasks = sorted({r["policy"] for r in rows}), sorted({r["task"] for r in rows})
    markers = "osD^v<>Px*h"
    for r in rows:
        ax.scatter(r["budget"]["train_minutes"], r["metrics"]["success_rate"], color=f"C{heads.index(r['policy'])}",
                   marker=markers[tasks.index(r["task"]) % len(markers)], s=22)
    for i, head in enumerate(heads):  # legend: colour = head, marker = task
        ax.scatter([], [], color=f"C{i}", marker="o", label=head)
    for j, task in enumerate(tasks):
        ax.scatter([], [], color="grey", marker=markers[j % len(markers)], label=task)
    ax.set_xscale("log")
    ax.set_xlabel("training minutes (as each checkpoint records them; CPU and GPU)")
    ax.set_ylabel("success rate")
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=7, ncol=2, loc="lower right")
    _save(plt, fig, path)


def headline_curves(records: list[dict], task: str, obs: str, skip: set[str], like: list[dict] | None = None
                    ) -> dict[str, tuple[str, dict]]:
    """{head: (setting, {seed: points})}: per head not in ``skip``, its training curve on (task, obs) with the most
    seeds, then the most checkpoints per seed up to the last K (one evaluated checkpoint of an inference setting is
    not a curve's last-K mean), then the highest mean of the last checkpoints: the row the results page leads with.
    ``like`` (a comparison's records, trained on the CPU): only curves trained on the CPU from as many
    demonstrations, so that their minutes and data are the comparison's."""
    from vmp.bench.curves import LAST_K, curves, seed_summary

    if like is not None:
        def budget(record: dict) -> dict:
            return record.get("budget") or {}

        demos = {budget(r).get("n_demos") for r in like} - {None}
        records = [r for r in records if "cpu" in str(budget(r).get("device", "cpu")).lower()
                   and (not demos or budget(r).get("n_demos") in demos)]
    best: dict[str, tuple[tuple[int, int, float], str, dict]] = {}
    for (t, o, head, setting, _), seeds in curves(records).items():
        if (t, o) != (task, obs) or head in skip:
            continue
        rank = (len(seeds), min(LAST_K, *(len(points) for points in seeds.values())),
                sum(seed_summary(points)["last_k"] for points in seeds.values()) / len(seeds))
        if head not in best or rank > best[head][0]:
            best[head] = (rank, setting, seeds)
    return {head: (setting, seeds) for head, (_, setting, seeds) in sorted(best.items())}


def plot_comparison(rows: list[dict], runs: list[str], path: Path, ours: dict[str, tuple[str, dict]] | None = None
                    ) -> None:
    """Left: success against training minutes per contender (its checkpoints); right: chunk latency (log scale).
    Each contender is labelled with its run's number (`comparison_runs`): wall-clock compares within a run. ``ours``
    (`headline_curves`): our heads' curves from the recipes' own trainings, where the comparison did not train them,
    drawn thin and labelled as separate runs."""
    rows = sorted(rows, key=lambda r: (runs.index(r["command"]), r["policy"]))
    run_of = [runs.index(r["command"]) for r in rows]
    labels = [f"{r['policy']} (run {run + 1})" for r, run in zip(rows, run_of)]
    # one colour per contender, one marker and line style per run
    policies = sorted({r["policy"] for r in rows})
    colours = [f"C{policies.index(r['policy']) % 10}" for r in rows]
    markers, styles = "osD^vPX", ("-", "--", ":", "-.")
    plt, (fig, left) = _figure(11, 5.2)
    left.set_position([0.07, 0.3, 0.4, 0.62])
    right = fig.add_axes([0.62, 0.3, 0.35, 0.62])
    for i, r in enumerate(rows):
        timeline = r["metrics"].get("timeline") or []
        if timeline:
            left.plot([t["minutes"] for t in timeline], [t["success_rate"] for t in timeline],
                      marker=markers[run_of[i] % len(markers)], linestyle=styles[run_of[i] % len(styles)],
                      color=colours[i], label=labels[i])
    for j, (head, (_, seeds)) in enumerate((ours or {}).items()):
        for k, (seed, points) in enumerate(seeds.items()):
            timed = [p for p in points if p.minutes is not None]
            left.plot([p.minutes for p in timed], [p.success for p in timed], color=f"C{(len(policies) + j) % 10}",
                      marker=".", linewidth=0.8, linestyle=styles[k % len(styles)],
                      label=f"{head}, seed {seed} (recipe's run)")
    bar = next((r["metrics"].get("bar") for r in rows), None)
    if bar:
        left.axhline(bar, color="grey", linestyle=":", linewidth=1)
    left.set_xlabel("training minutes (wall-clock; compare within a run)")
    left.set_ylabel("success rate")
    left.set_ylim(-0.02, 1.02)
    left.set_xlim(left=0)
    left.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=3)
    right.barh(range(len(rows)), [r["metrics"]["p50_ms"] for r in rows], color=colours)
    right.set_yticks(range(len(rows)), labels, fontsize=7)
    right.set_xscale("log")
    right.set_xlabel("chunk latency p50, ms (batch 1, log scale)")
    right.invert_yaxis()
    fig.suptitle(f"{rows[0]['task']} ({rows[0]['obs']}): vmp heads and LeRobot", fontsize=10)
    _save(plt, fig, path, tight=False)  # axes placed by hand


def plot_curves(records: list[dict], path: Path) -> bool:
    """Success against training minutes, one panel per (task, obs) with curves, one line per head and seed (colour:
    head); a seed evaluated at one checkpoint only (an inference setting tried at the end) is no curve and stays in
    the table. -> False when no record has a curve (nothing drawn)."""
    from vmp.bench.curves import curves

    found = {}
    for key, seeds in curves(records).items():
        drawn = {seed: points for seed, points in seeds.items() if sum(p.minutes is not None for p in points) > 1}
        if drawn:
            found[key] = drawn
    panels = sorted({(task, obs) for task, obs, *_ in found})
    if not panels:
        return False
    heads = sorted({head for _, _, head, *_ in found})
    lines = max(sum(len(seeds) for (t, o, *_), seeds in found.items() if (t, o) == panel) for panel in panels)
    plt, (fig, axes) = _figure(5 * len(panels), 3.2 + 0.12 * lines, ncols=len(panels))  # legends below the axes
    axes = [axes] if len(panels) == 1 else list(axes)
    for (task, obs, head, setting, schedule), seeds in found.items():
        ax = axes[panels.index((task, obs))]
        for i, (seed, points) in enumerate(seeds.items()):
            timed = [p for p in points if p.minutes is not None]
            ax.plot([p.minutes for p in timed], [p.success for p in timed], marker="o", markersize=3,
                    color=f"C{heads.index(head)}", linestyle=("-", "--", ":", "-.")[i % 4],
                    label=f"{head} ({setting}{f', {schedule} steps' if schedule else ''}), seed {seed}")
    for ax, (task, obs) in zip(axes, panels):
        ax.set_title(f"{task} ({obs})", fontsize=9)
        ax.set_xlabel("training minutes (as each checkpoint records them)")
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlim(left=0)
        ax.legend(fontsize=5, loc="upper left", bbox_to_anchor=(0, -0.2))
    axes[0].set_ylabel("success rate")
    _save(plt, fig, path, tight=False)  # the legends hang below the axes: the saved canvas grows to hold them
    return True


def write_plots(records: list[dict], out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / name for name in PLOTS]
    plot_latency(records, paths[0])
    plot_success(records, paths[1])
    plot_success_vs_minutes(records, paths[2])
    if plot_curves(records, out_dir / "curves.png"):
        paths.append(out_dir / "curves.png")
    comparisons: dict[tuple[str, str], list[dict]] = {}
    for r in records:
        if r["kind"] == "comparison":
            comparisons.setdefault((r["task"], r["obs"]), []).append(r)
    for (task, obs), rows in sorted(comparisons.items()):
        paths.append(out_dir / f"lerobot_{task}_{obs}.png")
        plot_comparison(rows, comparison_runs(records, task), paths[-1],
                        headline_curves(records, task, obs, {r["policy"] for r in rows}, like=rows))
    return paths
