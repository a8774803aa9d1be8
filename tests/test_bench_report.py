"""vmp-bench report: the results page's tables come from the results records, per-task success and env metrics
included."""

from vmp.bench.report import tables


def record(kind, **metrics):
    return {"kind": kind, "task": "metaworld_mt", "obs": "image", "policy": "pad", "variant": "v", "metrics": metrics,
            "budget": {"train_steps": 5}, "device": "cpu", "command": "vmp-eval ..."}


def test_per_task_and_env_metrics_are_tabulated():
    per_task = {"reach-v3": {"n_episodes": 20, "successes": 15, "success_rate": 0.75},
                "push-v3": {"n_episodes": 20, "successes": 10, "success_rate": 0.5}}
    text = tables([record("success", success_rate=0.625, ci95_low=0.5, ci95_high=0.7, n_episodes=40, per_task=per_task),
                   record("expert", success_rate=1.0, n_episodes=50, env_metrics={"spl": 0.905, "collisions": 0.0})])
    assert "| metaworld_mt | pad | v | 0.50 (20) | 0.75 (20) |" in text  # push before reach: sorted task names
    assert "| push | reach |" in text
    assert "collisions=0.00, spl=0.91" in text


def test_report_draws_the_plots_and_a_rerun_changes_nothing(tmp_path):
    import json

    from vmp.bench.report import BEGIN, END, main

    results = tmp_path / "results"
    results.mkdir()
    rows = [record("success", success_rate=0.6, ci95_low=0.5, ci95_high=0.7, n_episodes=40),
            {**record("latency", p50_ms=3.0, p99_ms=4.0), "task": "-", "device": "NVIDIA H200"},
            {**record("latency", p50_ms=30.0, p99_ms=40.0), "task": "-"},
            {**record("latency", p50_ms=33.0, p99_ms=44.0), "task": "can"}]  # --task can: a table row, not plotted
    rows[0]["budget"]["train_minutes"] = 7.5
    timeline = [{"step": 100, "minutes": 1.0, "success_rate": 0.2, "n_episodes": 20},
                {"step": 200, "minutes": 2.0, "success_rate": 0.9, "n_episodes": 20}]
    for command in ("vmp-bench lerobot --tag a", "vmp-bench lerobot --tag b"):  # one contender in two runs
        rows.append({**record("comparison", success_rate=0.9, ci95_low=0.8, ci95_high=0.95, n_episodes=20, bar=0.95,
                              time_to_bar_min=None, timeline=timeline, p50_ms=5.0, p99_ms=6.0, n_params=10),
                     "command": command})
    for i, r in enumerate(rows):
        (results / f"r{i}.json").write_text(json.dumps(r))
    page = tmp_path / "docs" / "results.md"
    page.parent.mkdir()
    page.write_text(f"# x\n{BEGIN}\n{END}\n")
    main(["--results", str(results), "--page", str(page)])
    plots = sorted((tmp_path / "docs" / "plots").glob("*.png"))  # beside the page: docs/plots
    assert [p.name for p in plots] == ["latency.png", "lerobot_metaworld_mt_image.png", "success.png",
                                       "success_vs_minutes.png"]
    first = {p.name: p.read_bytes() for p in plots}
    text = page.read_text()
    assert "![latency](plots/latency.png)" in text and "| 0.60 |" in text  # linked relative to the page (mkdocs)
    assert "| can | image | pad | v | 33.00 | 44.00 | cpu |" in text
    main(["--results", str(results), "--page", str(page)])
    assert {p.name: p.read_bytes() for p in plots} == first and page.read_text() == text  # a rerun: the same bytes
    rows[2]["metrics"]["p50_ms"] = 60.0  # another measurement: another latency plot, the others unchanged
    (results / "r2.json").write_text(json.dumps(rows[2]))
    main(["--results", str(results), "--page", str(page)])
    again = {p.name: p.read_bytes() for p in plots}
    assert again["latency.png"] != first["latency.png"] and again["success.png"] == first["success.png"]
    rows[3]["metrics"]["p50_ms"] = 66.0  # another task's measurement: in the table, not in the plot
    (results / "r3.json").write_text(json.dumps(rows[3]))
    main(["--results", str(results), "--page", str(page)])
    assert (tmp_path / "docs" / "plots" / "latency.png").read_bytes() == again["latency.png"]


def test_comparison_rows_tell_reached_not_reached_and_not_measured_apart():
    def row(policy, time_to_bar, timeline):
        r = record("comparison", success_rate=0.9, ci95_low=0.8, ci95_high=0.95, n_episodes=50, bar=0.95,
                   time_to_bar_min=time_to_bar, timeline=timeline, p50_ms=5.0, p99_ms=6.0, n_params=1000)
        return {**r, "policy": policy, "budget": {"minutes_budget": 12.0, "train_steps": 900, "batch_size": 64}}

    point = {"step": 900, "minutes": 12.0, "success_rate": 0.9, "n_episodes": 50}
    early = {**point, "step": 600, "minutes": 8.0}
    other_task = {**row("dp", None, [point]), "task": "can", "command": "vmp-bench lerobot --tag a"}
    text = tables([row("beso", 3.6, [early, point]), row("act", None, [early, point]),
                   {**row("dp", None, [point]), "command": "vmp-bench lerobot --tag b"}, other_task])
    lines = {line.split(" | ")[3]: line for line in text.splitlines() if line.startswith("| metaworld_mt | image |")}
    # rows carry the run (command) they were measured in: wall-clock figures compare within a run; runs are numbered
    # within their task, so the can run (whose command sorts first) leaves metaworld_mt's numbers as they were
    assert {name: line.split(" | ")[2] for name, line in lines.items()} == {"dp": "1", "act": "2", "beso": "2"}
    assert "| can | image | 1 | dp |" in text
    assert ("- can 1: `vmp-bench lerobot --tag a`\n- metaworld_mt 1: `vmp-bench lerobot --tag b`\n"
            "- metaworld_mt 2: `vmp-eval ...`") in text  # runs listed by task, in the order of their commands
    assert "| 3.60 (≥0.95; every 300 steps) |" in lines["beso"]  # how finely the time was measured, beside it
    assert "| not reached (≥0.95; every 300 steps) |" in lines["act"]
    assert "| not measured (end of budget only) |" in lines["dp"]  # one checkpoint evaluated: no timeline to read


def test_runs_are_listed_without_the_measuring_machine_paths():
    from vmp.bench.report import shown

    command = "vmp-bench lerobot --python /home/me/.venv/bin/python --python /home/me/.venv/bin/python --task lift"
    assert shown(command) == "vmp-bench lerobot --task lift"
    assert shown("vmp-bench lerobot --python .venv/bin/python --task lift") == \
        "vmp-bench lerobot --python .venv/bin/python --task lift"  # a relative path names no machine: kept
    r = {**record("comparison", success_rate=0.9, ci95_low=0.8, ci95_high=0.95, n_episodes=20, bar=0.95,
                  time_to_bar_min=None, timeline=[], p50_ms=5.0, p99_ms=6.0, n_params=10),
         "command": command}
    assert "metaworld_mt 1: `vmp-bench lerobot --task lift`" in tables([r])


def test_curves_over_seeds_give_each_seeds_max_and_last_k_mean_and_the_spread_across_seeds(tmp_path):
    """Records named '<setting>; seed S, step N ...' form one row per head and setting: per seed its maximum and the
    mean of its last K checkpoints, the row their mean ± standard deviation; other records stay out of it, and a run
    of another length ("of 16000") is a row of its own."""
    from vmp.bench.curves import curves, table
    from vmp.bench.plots import plot_curves

    def record(seed, step, success, episodes=50, variant="3-step euler", schedule=8000):
        return {"kind": "success", "task": "can", "obs": "lowdim", "policy": "beso",
                "variant": f"{variant}; seed {seed}, step {step} of {schedule}",
                "metrics": {"success_rate": success, "n_episodes": episodes}, "budget": {"train_minutes": step / 100}}

    records = [record(0, 1000, 0.2), record(0, 2000, 0.9), record(0, 3000, 0.6), record(0, 4000, 0.6),
               record(1, 2000, 0.5), record(1, 3000, 0.7), record(1, 4000, 0.8), record(1, 4000, 0.1, episodes=10),
               {**record(2, 1000, 1.0), "variant": "no seed named here"}]
    longer = [record(0, 8000, 0.3, schedule=16000), record(0, 16000, 0.4, schedule=16000)]
    found = curves(records + longer)
    assert list(found) == [("can", "lowdim", "beso", "3-step euler", 8000),
                           ("can", "lowdim", "beso", "3-step euler", 16000)]
    assert [p.step for p in found[("can", "lowdim", "beso", "3-step euler", 16000)][0]] == [8000, 16000]
    unnamed = {**record(0, 1000, 0.1), "variant": "3-step euler; seed 0, step 1000"}  # no schedule named: sorts first
    assert [key[4] for key in curves(records + [unnamed])] == [None, 8000]
    seeds = found[("can", "lowdim", "beso", "3-step euler", 8000)]
    assert sorted(seeds) == [0, 1] and seeds[1][-1].success == 0.8  # the 50-episode evaluation, not the 10-episode one
    rows = [line for line in table(records + longer, k=3) if line.startswith("| can")]
    assert len(rows) == 2 and "| 8000, 16000 of 16000 (50) |" in rows[1]
    row = rows[0]
    # seed 0: max 0.9, last-3 mean 0.7; seed 1: max 0.8, last-3 mean 0.6667
    assert "| 2 | 0.85 ± 0.07 | 0.68 ± 0.02 |" in row and "0: 0.90 / 0.70; 1: 0.80 / 0.67 | 0 of 2 |" in row
    assert plot_curves(records, tmp_path / "curves.png") and (tmp_path / "curves.png").stat().st_size > 1000
    assert not plot_curves(records[-1:], tmp_path / "none.png") and not (tmp_path / "none.png").exists()
    one_checkpoint = [record(0, 4000, 0.5, variant="10-step euler"), record(1, 4000, 0.6, variant="10-step euler")]
    assert not plot_curves(one_checkpoint, tmp_path / "points.png")  # a setting tried at one checkpoint: no curve
    other_task = [{**r, "task": "square"} for r in records[:4]]  # two panels side by side
    assert plot_curves(records + other_task, tmp_path / "two.png")


def test_a_seed_has_plateaued_when_its_last_evaluations_lie_inside_each_others_intervals():
    from vmp.bench.curves import Point, plateaued

    def points(*successes, episodes=50):
        return [Point(1000 * (i + 1), None, s, episodes) for i, s in enumerate(successes)]

    assert plateaued(points(0.2, 0.74, 0.78, 0.74))  # 50 episodes: 0.74 and 0.78 inside each other's intervals
    assert not plateaued(points(0.5, 0.6, 0.78))  # 0.78 is outside 0.5's interval (0.37-0.63): still rising
    # 0.5, 0.6, 0.7: rising at 50 episodes, not told apart at 10 (the intervals are twice as wide)
    assert not plateaued(points(0.5, 0.6, 0.7)) and plateaued(points(0.5, 0.6, 0.7, episodes=10))
    assert not plateaued(points(0.74, 0.78))  # fewer evaluations than K: not yet known


def test_a_comparison_that_trained_none_of_our_heads_draws_their_leading_curves_beside():
    """The LeRobot plot of a task whose comparison trained only LeRobot's contenders shows, per head of ours, its
    training curve with the most seeds (then the most checkpoints up to the last K, then the best last-checkpoints
    mean); a head the comparison trained is left to its own timeline."""
    from vmp.bench.plots import headline_curves

    def record(policy, setting, seed, step, success, task="can"):
        return {"kind": "success", "task": task, "obs": "lowdim", "policy": policy,
                "variant": f"{setting}; seed {seed}, step {step} of 8000",
                "metrics": {"success_rate": success, "n_episodes": 50}, "budget": {"train_minutes": step / 500}}

    records = [record("beso", "three seeds", seed, step, 0.9) for seed in (0, 1, 2) for step in (4000, 8000)]
    records += [record("beso", "one better seed", 0, step, 1.0) for step in (4000, 8000)]
    records += [record("carp", "low", 0, 8000, 0.5), record("carp", "high", 0, 8000, 0.7),
                record("ddpm", "other task", 0, 8000, 0.9, task="square")]
    # one checkpoint of an inference setting scores above the curve it was taken from: not the leading curve
    records += [record("ddpm", "curve", 0, step, 0.8) for step in (4000, 6000, 8000)]
    records += [record("ddpm", "one checkpoint re-planned", 0, 8000, 0.9)]
    chosen = headline_curves(records, "can", "lowdim", skip=set())
    assert list(chosen) == ["beso", "carp", "ddpm"]
    assert chosen["beso"][0] == "three seeds" and sorted(chosen["beso"][1]) == [0, 1, 2]
    assert chosen["carp"][0] == "high"
    assert chosen["ddpm"][0] == "curve"
    assert {head: setting for head, (setting, _) in headline_curves(records, "square", "lowdim", set()).items()} == {
        "ddpm": "other task"}  # another task's curves stay on that task
    assert list(headline_curves(records, "can", "lowdim", skip={"beso"})) == ["carp", "ddpm"]
    # beside a comparison (CPU, 200 demonstrations): a better curve trained on a GPU or on more data is not drawn
    for r in records:
        r["budget"].update(device="cpu (2 threads)", n_demos=200)
    records += [{**record("carp", "on a GPU", 0, step, 1.0), "budget": {"train_minutes": 1.0, "device": "NVIDIA H200",
                                                                        "n_demos": 200}} for step in (4000, 8000)]
    records += [{**record("ddpm", "400 demos", 0, step, 1.0), "budget": {"train_minutes": 9.0,
                                                                         "device": "cpu (2 threads)", "n_demos": 400}}
                for step in (4000, 6000, 8000)]
    assert headline_curves(records, "can", "lowdim", set())["carp"][0] == "on a GPU"  # the results page's lead
    comparison = [{"kind": "comparison", "budget": {"n_demos": 200}}]
    beside = headline_curves(records, "can", "lowdim", skip={"beso"}, like=comparison)
    assert {head: setting for head, (setting, _) in beside.items()} == {"carp": "high", "ddpm": "curve"}


def test_the_success_plot_has_one_bar_per_task_and_head_its_leading_curve_else_its_best_evaluation():
    """success.png reads as a choice of head: per task and head one bar, the leading training curve's mean over seeds
    (with the seeds' range) where the head has curves, else its best single evaluation (with its interval); an
    ablation is not the head."""
    from vmp.bench.plots import best_success

    def record(policy, variant, success, task="square", low=None, high=None):
        return {"kind": "success", "task": task, "obs": "lowdim", "policy": policy, "variant": variant,
                "metrics": {"success_rate": success, "n_episodes": 50, "ci95_low": low or success,
                            "ci95_high": high or success}, "budget": {"train_minutes": 1.0}}

    records = [record("carp", f"greedy; seed {seed}, step {step} of 16000", success)
               for seed, last in ((0, 0.9), (1, 0.7)) for step, success in ((8000, 0.2), (16000, last))]
    records += [record("carp", "an untimed sweep", 1.0),  # carp has curves: the single evaluation is not its bar
                record("ddpm", "100-step", 0.4, low=0.3, high=0.5), record("ddpm", "10-step", 0.6, low=0.45, high=0.7),
                record("ddpm", "ablation: no x", 0.9), record("ddpm", "random pick (critic ablated)", 0.9),
                record("beso", "x", 0.9, task="can"), {**record("beso", "y", 0.1), "kind": "expert"}]
    rows = {(r["task"], r["head"]): r for r in best_success(records)}
    assert list(rows) == [("can", "beso"), ("square", "carp"), ("square", "ddpm")]  # the expert record is no head
    carp = rows[("square", "carp")]
    # each seed's last-3 mean: (0.2 + 0.9) / 2 and (0.2 + 0.7) / 2 (two checkpoints); the bar spans the two seeds
    assert [round(carp[k], 3) for k in ("success", "low", "high")] == [0.5, 0.45, 0.55] and "2 seeds" in carp["label"]
    ddpm = rows[("square", "ddpm")]
    assert (ddpm["success"], ddpm["low"], ddpm["high"]) == (0.6, 0.45, 0.7) and ddpm["label"].startswith("10-step")


def test_a_probe_of_a_head_without_future_prediction_shows_dashes_where_it_has_no_future():
    overall = {"windows": 8, "action_mse": {"own": 0.0834},
               "action_attention": {"current": [0.9], "proprio": [0.05], "future": [0.0], "action": [0.05]}}
    shares = {"current": 16 / 18, "proprio": 1 / 18, "future": 0.0, "action": 1 / 18}
    text = tables([record("pad_probe", overall=overall, per_task={}, token_share=shares)])
    (row,) = [line for line in text.splitlines() if line.startswith("| metaworld_mt | v |")]
    assert "| 8 | 0.083 / - / - | - | - | - | - |" in row and "None" not in row
