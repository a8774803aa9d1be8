"""Regenerate the results page's tables and plots from results/*.json (the only source of quoted figures).

    vmp-bench report            # rewrites the block between the results markers in docs/results.md, and
                                # docs/plots/*.png (the plots folder is relative to the page)

It also copies each results-table recipe (`vmp.bench.recipes`) between its own markers, so the page shows the
commands the full suite runs, from one source.
"""

from __future__ import annotations

import argparse
import json
import shlex
from pathlib import Path

from vmp.bench.curves import table as curve_table

BEGIN, END = "<!-- results:begin (vmp-bench report) -->", "<!-- results:end -->"


def fill_recipes(text: str) -> str:
    """Each recipe's commands between its markers on the page (a page without a recipe's markers keeps its text)."""
    from vmp.bench.recipes import RECIPES, markdown

    for recipe in RECIPES:
        begin, end = f"<!-- recipe:{recipe.name}:begin (vmp-bench report) -->", f"<!-- recipe:{recipe.name}:end -->"
        if begin in text and end in text:
            head, rest = text.split(begin, 1)
            _, tail = rest.split(end, 1)
            text = f"{head}{begin}\n{markdown(recipe)}\n{end}{tail}"
    return text


def shown(command: str) -> str:
    """A recorded command as the page shows it: without `--python /abs/path` (the python it ran in, this machine's
    path; the default is the python that runs `vmp-bench`), so the page holds no paths of the machine that measured."""
    words, out = shlex.split(command), []
    i = 0
    while i < len(words):
        if words[i] == "--python" and i + 1 < len(words) and words[i + 1].startswith("/"):
            i += 2
            continue
        out.append(words[i])
        i += 1
    return shlex.join(out) if out != words else command


def _fmt(x, digits=2):
    if isinstance(x, bool) or isinstance(x, int):
        return str(x)
    return f"{x:.{digits}f}" if isinstance(x, float) else str(x)


def _budget(b: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in b.items()) or "-"


def _env_metrics(m: dict) -> str:
    """Episode metrics an env reports (SPL, collisions, ...), averaged over episodes."""
    return ", ".join(f"{k}={_fmt(v)}" for k, v in sorted((m.get("env_metrics") or {}).items())) or "-"


def _per_task(records: list[dict]) -> list[str]:
    """One row per multi-task record: success per task (episodes per task in the header)."""
    rows = [r for r in records if r["metrics"].get("per_task")]
    if not rows:
        return []
    tasks = sorted({t for r in rows for t in r["metrics"]["per_task"]})
    short = [t.removesuffix("-v3") for t in tasks]
    out = ["#### Success per task", "",
           "| task set | policy | variant | " + " | ".join(short) + " |", "|---|---|---|" + "---|" * len(tasks)]
    for r in sorted(rows, key=lambda r: (r["task"], r["policy"], r["variant"])):
        per = r["metrics"]["per_task"]
        cells = [f"{_fmt(per[t]['success_rate'])} ({per[t]['n_episodes']})" if t in per else "-" for t in tasks]
        out.append(f"| {r['task']} | {r['policy']} | {r['variant']} | " + " | ".join(cells) + " |")
    return out + [""]


def _success_tables(records: list[dict]) -> list[str]:
    """Policy success per evaluation, per task of multi-task rows, and the curves over seeds."""
    out: list[str] = []
    success = [r for r in records if r["kind"] == "success"]
    if success:
        out += ["### Policy success (vmp-eval, fixed seeds)", "",
                "| task | obs | policy | variant | success | 95% CI | episodes | env metrics | budget | device | command |",
                "|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in sorted(success, key=lambda r: (r["task"], r["obs"], r["policy"], r["variant"])):
            m = r["metrics"]
            out.append(f"| {r['task']} | {r['obs']} | {r['policy']} | {r['variant']} | {_fmt(m['success_rate'])} | "
                       f"{_fmt(m.get('ci95_low'))}–{_fmt(m.get('ci95_high'))} | {m.get('n_episodes')} | {_env_metrics(m)} | "
                       f"{_budget(r.get('budget') or {})} | {r['device']} | `{r['command']}` |")
        out.append("")
        out += _per_task(success)
        out += curve_table(success)
    return out


def _expert_table(records: list[dict]) -> list[str]:
    """The scripted and privileged experts."""
    out: list[str] = []
    expert = [r for r in records if r["kind"] == "expert"]
    if expert:
        out += ["### Scripted / privileged experts", "",
                "Each row: `vmp-eval policy=expert task=<task> n_episodes=50 results_json=...` (Meta-World tasks: "
                "`task=metaworld task.env_kwargs.task_name=<name>`); the exact command is in the row's JSON file.", "",
                "| task | obs | variant | success | 95% CI | episodes | mean length | env metrics |",
                "|---|---|---|---|---|---|---|---|"]
        for r in sorted(expert, key=lambda r: r["task"]):
            m = r["metrics"]
            out.append(f"| {r['task']} | {r['obs']} | {r.get('variant') or '-'} | {_fmt(m['success_rate'])} | "
                       f"{_fmt(m.get('ci95_low'))}–{_fmt(m.get('ci95_high'))} | {m.get('n_episodes')} | "
                       f"{_fmt(m.get('episode_length_mean', '-'), 0)} | {_env_metrics(m)} |")
        out.append("")
    return out


def _latency_table(records: list[dict]) -> list[str]:
    """Chunk latency at batch 1; task "-": the heads' default tasks (`vmp-bench latency` without --task)."""
    out: list[str] = []
    latency = [r for r in records if r["kind"] == "latency"]
    if latency:
        out += ["### Action-chunk latency (batch 1)", "",
                "Task -: Lift for BESO, DDPM and CARP; ten-task Meta-World for PAD and Diffusion-VLA; pointnav for "
                "NavDP (`vmp-bench latency`). A named task: `vmp-bench latency --task <task>`.", "",
                "| task | obs | head | variant | p50 ms | p99 ms | device |", "|---|---|---|---|---|---|---|"]
        for r in sorted(latency, key=lambda r: (r["device"], r["task"] != "-", r["task"], r["obs"],
                                                r["metrics"]["p50_ms"])):
            m = r["metrics"]
            out.append(f"| {r['task']} | {r['obs']} | {r['policy']} | {r['variant']} | {_fmt(m['p50_ms'])} | "
                       f"{_fmt(m['p99_ms'])} | {r['device']} |")
        out.append("")
    return out


def _comparison_table(records: list[dict]) -> list[str]:
    """Runs of vmp-bench lerobot: our heads and LeRobot's on one store and budget."""
    out: list[str] = []
    comparison = [r for r in records if r["kind"] == "comparison"]
    if comparison:
        out += ["### Side by side with LeRobot (vmp-bench lerobot)", "",
                "Same store, same evaluation seeds, same machine; within a run (one command, listed below the "
                "table) every contender trains for the same wall-clock budget, one after another, and its latency "
                "is measured in one process with the others': one chunk at batch 1, one thread. Compare wall-clock "
                "figures within a run: this machine's speed varies by up to 2x from hour to hour.", "",
                "| task | obs | run | contender | size | success at budget | 95% CI | episodes | time to bar (min) | "
                "chunk p50 ms | p99 ms | params | train samples/s | steps in budget | budget |",
                "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        from vmp.bench.plots import comparison_runs

        tasks = sorted({r["task"] for r in comparison})
        commands = {task: comparison_runs(comparison, task) for task in tasks}
        for r in sorted(comparison, key=lambda r: (r["task"], r["obs"], commands[r["task"]].index(r["command"]),
                                                   r["policy"])):
            m, b = r["metrics"], r.get("budget") or {}
            if "success_rate" in m:
                success = f"{_fmt(m['success_rate'])} | {_fmt(m['ci95_low'])}–{_fmt(m['ci95_high'])} | {m['n_episodes']}"
                timeline = m.get("timeline", [])
                # the checkpoint interval bounds how finely "time to bar" was measured: it belongs beside it
                every = f"; every {timeline[1]['step'] - timeline[0]['step']} steps" if len(timeline) > 1 else ""
                if m.get("time_to_bar_min") is not None:
                    bar = f"{_fmt(m['time_to_bar_min'])} (≥{_fmt(m['bar'])}{every})"
                elif len(timeline) > 1:
                    bar = f"not reached (≥{_fmt(m['bar'])}{every})"
                else:
                    bar = "not measured (end of budget only)"
            else:
                success, bar = "not evaluated (latency and throughput only) | - | -", "-"
            out.append(f"| {r['task']} | {r['obs']} | {commands[r['task']].index(r['command']) + 1} | {r['policy']} | "
                       f"{r['variant']} | {success} | {bar} | "
                       f"{_fmt(m['p50_ms'])} | {_fmt(m['p99_ms'])} | {m.get('n_params', '-'):,} | "
                       f"{_fmt(m.get('samples_per_s'), 0)} | {b.get('train_steps', '-')} | "
                       + (f"{_fmt(b.get('minutes_budget'), 1)} min" if "success_rate" in m else "a few steps")
                       + f", batch {b.get('batch_size')}, {b.get('trainer')} |")
        out += ["", "Runs, numbered within each task:", "",
                *(f"- {task} {i}: `{shown(c)}`" for task in tasks for i, c in enumerate(commands[task], 1)), ""]
    return out


def _seams_table(records: list[dict]) -> list[str]:
    """Chunk seams per blend mode."""
    out: list[str] = []
    seams = sorted((r for r in records if r["kind"] == "seams"), key=lambda r: (r["task"], r["policy"]))
    if seams:
        out += ["### Chunk seams per blend mode (vmp-bench deploy --seams)", "",
                "Episodes replayed on a simulated clock with the inference delay drawn per request (lognormal, 5% "
                "3x spikes). Seam jump: the largest step change of the command where one chunk hands over to the "
                "next (median over episodes; action-std units for recorded tasks); ratio: that jump over the 95th "
                "percentile of step changes inside chunks.", "",
                "| task | obs | head | delay (ticks) | blend | actions per chunk | late chunks | seam jump | ratio |",
                "|---|---|---|---|---|---|---|---|---|"]
        for r in seams:
            for row in r["metrics"]["rows"]:
                blend = row["blend"] + (f" ({row['prefix_schedule']})" if row.get("prefix_schedule") else "")
                out.append(f"| {r['task']} | {r['obs']} | {r['policy']} | {row['delay_ticks']} | {blend} | "
                           f"{row['exec_horizon']} | {row['late_chunks']} | {_fmt(row['seam_jump_median'])} | "
                           f"{_fmt(row['seam_jump_ratio_median'])} |")
        out += ["", "Commands: " + "; ".join(f"`{r['command']}`" for r in seams), ""]
    return out


def _probe_table(records: list[dict]) -> list[str]:
    """PAD's future against its actions (vmp-bench pad-probe), over all probed windows."""
    probes = sorted((r for r in records if r["kind"] == "pad_probe"), key=lambda r: (r["task"], r["variant"]))
    if not probes:
        return []
    out = ["### Does PAD use the future it predicts? (vmp-bench pad-probe)", "",
           "Held-out demonstration windows, each sampled from one starting noise with the head's own future, the real "
           "future frames inpainted, and another episode's real future. Action error: MSE against the demonstrated "
           "chunk in normalized units, with the paired differences' 95% intervals. Future error: predicted latents "
           "against the real ones, over copying the current frame (1: no better). Attention: the action token's share "
           "on the future-frame tokens, per layer, and (even) the future tokens' share of the sequence, what "
           "attention spread evenly would give.", "",
           "| task | run | windows | action error: own / real future / wrong future | real − own | wrong − own | "
           "future error over copying, per offset | attention on the future, per layer | device | command |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    for r in probes:
        m = r["metrics"]["overall"]
        mse, diff = m["action_mse"], m.get("action_mse_difference") or {}
        errors = " / ".join(_fmt(mse[k], 3) if k in mse else "-" for k in ("own", "real_future", "wrong_future"))
        spans = [f"{_fmt(d['mean'], 3)} [{_fmt(d['ci95_low'], 3)}, {_fmt(d['ci95_high'], 3)}]" if d else "-"
                 for d in (diff.get("real_minus_own"), diff.get("wrong_minus_own"))]
        ratio = ", ".join(_fmt(x) for x in (m.get("future_mse") or {}).get("predicted_over_copy", [])) or "-"
        even = (r["metrics"].get("token_share") or {}).get("future")
        # a head trained without future prediction has no future tokens to attend to
        shares = "-" if even == 0 else ", ".join(_fmt(x) for x in m["action_attention"]["future"]) or "-"
        shares += f" (even {_fmt(even)})" if even else ""
        out.append(f"| {r['task']} | {r['variant']} | {m['windows']} | {errors} | {spans[0]} | {spans[1]} | {ratio} | "
                   f"{shares} | {r['device']} | `{r['command']}` |")
    return out + [""]


def _encoder_probe_table(records: list[dict]) -> list[str]:
    """What an image run's camera features say of the object's pose (vmp-bench encoder-probe), both cameras."""
    probes = sorted((r for r in records if r["kind"] == "encoder_probe"), key=lambda r: (r["task"], r["variant"]))
    if not probes:
        return []
    out = ["### Do the camera features carry the object's pose? (vmp-bench encoder-probe)", "",
           "Start states of held-out episode seeds, each camera's pooled features (eval mode) read out linearly (ridge "
           "regression, half the seeds to fit, half to score): R² of the object's x, y position and of its yaw's cos and "
           "sin, and the median error of the yaw read out, for the run's encoder and for the same encoder with random "
           "weights; all cameras together.", "",
           "| task | run | episodes | encoder | x | y | cos yaw | sin yaw | yaw error (deg) | device | command |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in probes:
        m = r["metrics"]
        for name, label in (("trained", "trained"), ("random_weights", "random weights")):
            both = m[name].get("all_cameras") or next(iter(m[name].values()))
            scores = " | ".join(_fmt(both[k]) for k in ("x", "y", "cos_yaw", "sin_yaw"))
            out.append(f"| {r['task']} | {r['variant']} | {m['episodes']} | {label} | {scores} | "
                       f"{_fmt(both['yaw_error_deg'], 1)} | {r['device']} | `{r['command']}` |")
    return out + [""]


def _other_table(records: list[dict]) -> list[str]:
    """Throughput and timing records."""
    out: list[str] = []
    other = [r for r in records if r["kind"] in ("throughput", "jitter")]
    if other:
        out += ["### Throughput and timing", "", "| kind | task | obs | what | metrics | device | command |", "|---|---|---|---|---|---|---|"]
        for r in sorted(other, key=lambda r: (r["kind"], r["task"])):
            metrics = ", ".join(f"{k}={_fmt(v)}" for k, v in r["metrics"].items()
                                if isinstance(v, (int, float)) and not isinstance(v, bool) and not k.startswith("host_"))
            out.append(f"| {r['kind']} | {r['task']} | {r['obs']} | {r['policy']} {r['variant']} | {metrics} | {r['device']} | `{r['command']}` |")
        out.append("")
    return out


def tables(records: list[dict]) -> str:
    out = [line for section in (_success_tables, _expert_table, _latency_table, _comparison_table, _seams_table,
                                _probe_table, _encoder_probe_table, _other_table) for line in section(records)]
    return "\n".join(out) if out else "_No measurements recorded yet._\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="vmp-bench report",
                                     description="Regenerate the results page's tables and plots from results/*.json")
    parser.add_argument("--results", default="results")
    parser.add_argument("--page", default="docs/results.md", help="the Markdown page holding the results markers")
    parser.add_argument("--plots", default="plots", help="where the PNG plots go (relative to the page's folder)")
    args = parser.parse_args(argv)
    records = []
    for path in sorted(Path(args.results).glob("*.json")):
        record = json.loads(path.read_text())
        if not {"kind", "metrics", "task"} <= set(record):
            raise ValueError(f"{path} is not a results record (needs kind, task, metrics)")
        records.append(record)
    page = Path(args.page)
    text = page.read_text()
    if BEGIN not in text or END not in text:
        raise ValueError(f"{page} has no '{BEGIN}' ... '{END}' block to fill")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    from vmp.bench.plots import write_plots

    # image links relative to the page, as Markdown (and mkdocs, which rewrites them per page) resolves them
    plots = write_plots(records, page.parent / args.plots)
    figures = "\n".join(f"![{p.stem.replace('_', ' ')}]({p.relative_to(page.parent).as_posix()})" for p in plots)
    page.write_text(fill_recipes(f"{head}{BEGIN}\n{figures}\n\n{tables(records)}\n{END}{tail}"))
    print(f"{page}: {len(records)} records from {args.results}/")


if __name__ == "__main__":
    main()
