"""Regenerate the README's results tables from results/*.json (the only source of quoted figures).

    vmp-bench report            # rewrites the block between the results markers in README.md
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

BEGIN, END = "<!-- results:begin (vmp-bench report) -->", "<!-- results:end -->"


def _fmt(x, digits=2):
    if isinstance(x, bool) or isinstance(x, int):
        return str(x)
    return f"{x:.{digits}f}" if isinstance(x, float) else str(x)


def _budget(b: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in b.items()) or "-"


def tables(records: list[dict]) -> str:
    out = []
    success = [r for r in records if r["kind"] == "success"]
    if success:
        out += ["### Policy success (vmp-eval, fixed seeds)", "",
                "| task | obs | policy | variant | success | 95% CI | episodes | budget | device | command |",
                "|---|---|---|---|---|---|---|---|---|---|"]
        for r in sorted(success, key=lambda r: (r["task"], r["obs"], r["policy"], r["variant"])):
            m = r["metrics"]
            out.append(f"| {r['task']} | {r['obs']} | {r['policy']} | {r['variant']} | {_fmt(m['success_rate'])} | "
                       f"{_fmt(m.get('ci95_low'))}–{_fmt(m.get('ci95_high'))} | {m.get('n_episodes')} | {_budget(r.get('budget') or {})} | "
                       f"{r['device']} | `{r['command']}` |")
        out.append("")
    expert = [r for r in records if r["kind"] == "expert"]
    if expert:
        out += ["### Scripted / privileged experts", "",
                "Each row: `vmp-eval policy=expert task=<task> n_episodes=50 results_json=...` (Meta-World tasks: "
                "`task=metaworld task.env_kwargs.task_name=<name>`); the exact command is in the row's JSON file.", "",
                "| task | obs | success | 95% CI | episodes | mean length |", "|---|---|---|---|---|---|"]
        for r in sorted(expert, key=lambda r: r["task"]):
            m = r["metrics"]
            out.append(f"| {r['task']} | {r['obs']} | {_fmt(m['success_rate'])} | {_fmt(m.get('ci95_low'))}–{_fmt(m.get('ci95_high'))} | "
                       f"{m.get('n_episodes')} | {_fmt(m.get('episode_length_mean', '-'), 0)} |")
        out.append("")
    latency = [r for r in records if r["kind"] == "latency"]
    if latency:
        out += ["### Action-chunk latency (batch 1)", "", "| obs | head | variant | p50 ms | p99 ms | device |", "|---|---|---|---|---|---|"]
        for r in sorted(latency, key=lambda r: (r["device"], r["obs"], r["metrics"]["p50_ms"])):
            m = r["metrics"]
            out.append(f"| {r['obs']} | {r['policy']} | {r['variant']} | {_fmt(m['p50_ms'])} | {_fmt(m['p99_ms'])} | {r['device']} |")
        out.append("")
    other = [r for r in records if r["kind"] in ("throughput", "jitter")]
    if other:
        out += ["### Throughput and timing", "", "| kind | task | obs | what | metrics | device | command |", "|---|---|---|---|---|---|---|"]
        for r in sorted(other, key=lambda r: (r["kind"], r["task"])):
            metrics = ", ".join(f"{k}={_fmt(v)}" for k, v in r["metrics"].items()
                                if isinstance(v, (int, float)) and not k.startswith("host_"))
            out.append(f"| {r['kind']} | {r['task']} | {r['obs']} | {r['policy']} {r['variant']} | {metrics} | {r['device']} | `{r['command']}` |")
        out.append("")
    return "\n".join(out) if out else "_No measurements recorded yet._\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="vmp-bench report", description="Regenerate README tables from results/*.json")
    parser.add_argument("--results", default="results")
    parser.add_argument("--readme", default="README.md")
    args = parser.parse_args(argv)
    records = []
    for path in sorted(Path(args.results).glob("*.json")):
        record = json.loads(path.read_text())
        if not {"kind", "metrics", "task"} <= set(record):
            raise ValueError(f"{path} is not a results record (needs kind, task, metrics)")
        records.append(record)
    readme = Path(args.readme)
    text = readme.read_text()
    if BEGIN not in text or END not in text:
        raise ValueError(f"{readme} has no '{BEGIN}' ... '{END}' block to fill")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    readme.write_text(f"{head}{BEGIN}\n{tables(records)}\n{END}{tail}")
    print(f"{readme}: {len(records)} records from {args.results}/")


if __name__ == "__main__":
    main()
