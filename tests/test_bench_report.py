"""vmp-bench report: the README tables come from the results records, per-task success and env metrics included."""

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
