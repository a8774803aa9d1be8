"""The results table's recipes: every command composes against the configs, every success record has its recipe,
the results page shows them as they are, and the full suite skips what it cannot run here and says why."""

import json
import shlex
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from vmp.bench import recipes
from vmp.bench.report import fill_recipes
from vmp.bench.suite import recipe_steps

ROOT = Path(__file__).resolve().parents[1]
CONFIG = {"vmp-collect": "collect", "vmp-train": "train", "vmp-eval": "eval"}


def _same(selected, value: str) -> bool:
    if str(selected).lower() == value.lower():
        return True
    try:
        return float(selected) == float(value)
    except (TypeError, ValueError):
        return False


def test_every_recipe_command_composes_against_the_configs():
    """A renamed or misspelt option fails here, not hours into `vmp-bench suite=full`."""
    with initialize_config_module(config_module="vmp.configs", version_base=None):
        for recipe in recipes.RECIPES:
            for command in recipe.commands():
                words = shlex.split(command, comments=True)
                cfg = compose(CONFIG[words[0]], overrides=words[1:], return_hydra_config=True)
                for word in words[1:]:  # every override landed where it says
                    key, value = word.lstrip("+").split("=", 1)
                    if key in ("task", "policy", "encoder"):
                        assert cfg.hydra.runtime.choices[key] == value, command
                    elif value[:1] in "'\"":  # a string quoted for hydra
                        assert OmegaConf.select(cfg, key) == value[1:-1], (command, key)
                    elif not value.startswith(("[", "{")):
                        assert _same(OmegaConf.select(cfg, key), value), (command, key)


def test_every_success_record_has_a_recipe_and_every_evaluation_a_training_before_it():
    made = {}
    for recipe in recipes.RECIPES:
        trained: set[str] = set()
        for command in recipe.steps:
            if command.startswith("vmp-train"):
                trained.add(recipes.run_of(command))
            else:
                assert recipes.run_of(command) in trained, f"{recipe.name}: {command} evaluates a run trained nowhere before it"
                made[recipes.option(command, "results_json")] = recipe.name
    noted = " ".join(note for recipe in recipes.RECIPES for note in recipe.notes)
    for path in sorted((ROOT / "results").glob("success_*.json")):
        name = f"results/{path.name}"
        assert name in made or path.stem in noted, f"{name} has no recipe in bench/recipes.py (nor a note why not)"
        if name in made:  # the record was written by an evaluation into the file the recipe names
            assert f"results_json={name}" in json.loads(path.read_text())["command"], name


def test_the_results_page_shows_the_recipes_as_they_are():
    page = (ROOT / "docs" / "results.md").read_text()
    for recipe in recipes.RECIPES:
        assert f"<!-- recipe:{recipe.name}:begin" in page, f"docs/results.md lacks the markers of recipe {recipe.name}"
    assert fill_recipes(page) == page, "docs/results.md's recipe blocks are stale: run vmp-bench report"


def test_recipe_argv_runs_the_module_and_refuses_other_programs():
    argv = recipes.argv("vmp-train task=lift 'mix=[{store: a.zarr, weight: 0.5}]'   # a comment")
    assert argv[1:] == ["-m", "vmp.policies.train", "task=lift", "mix=[{store: a.zarr, weight: 0.5}]"]
    with pytest.raises(ValueError, match="expected one of"):
        recipes.argv("rm -rf runs")


def test_full_suite_skips_gpu_trainings_and_their_evaluations_without_a_gpu(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("stores/metaworld_mt.zarr").mkdir(parents=True)  # one store on disk: kept, the other collected
    steps = recipe_steps(["metaworld_mt"], gpu=False)
    skipped = {command: why for command, argv, why in steps if why}
    collect = [c for c, argv, why in steps if c.startswith("vmp-collect")]
    assert skipped[collect[0]] == "stores/metaworld_mt.zarr exists" and collect[1] not in skipped
    pad = [c for c, _, _ in steps if "policy=pad" in c]
    assert pad and all(skipped[c] == "trained on a GPU; none here" for c in pad)
    assert skipped[next(c for c, _, _ in steps if "checkpoint=runs/metaworld_mt-pad " in c)] == \
        "runs/metaworld_mt-pad was not trained in this run"
    beso = [(c, argv) for c, argv, why in steps if "runs/metaworld_mt-beso" in c]  # a CPU training and its evaluation run
    assert all(c not in skipped for c, _ in beso) and beso[0][1][-1] == "overwrite=true"
    with_gpu = recipe_steps(["metaworld_mt"], gpu=True)
    assert [c for c, _, why in with_gpu if why] == [collect[0]]
    with pytest.raises(SystemExit, match="no recipe \\['lift'\\]; the recipes are"):
        recipe_steps(["lift"], gpu=False)


def test_full_suite_skips_the_evaluation_of_a_failed_training_and_fails(tmp_path, monkeypatch):
    """The suite's loop with the programs replaced: image BESO's training fails, so its evaluation never runs (it
    would score a stale or missing checkpoint), CARP's rows go on, and the suite exits non-zero naming the failure.
    Naming a group remakes its rows only: no benchmark runs before them."""
    import subprocess
    import sys
    import types

    from vmp.bench import suite

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(suite, "FULL", [["latency"]])
    monkeypatch.setattr(suite, "LEROBOT", [("stores/lift_image_dart.zarr", ["lerobot"])])
    calls, real_run = [], subprocess.run

    def fake_run(argv, **kwargs):
        if argv[0] != sys.executable:  # git, for the record's revision
            return real_run(argv, **kwargs)
        calls.append(" ".join(argv))
        return types.SimpleNamespace(returncode=1 if "run_dir=runs/lift_image-beso-dart" in argv else 0)

    monkeypatch.setattr(subprocess, "run", fake_run)
    with pytest.raises(SystemExit) as exit_:
        suite.main(["full", "--recipes", "lift_image"])
    assert exit_.value.code == 1
    assert not any("vmp.sim.evaluate checkpoint=runs/lift_image-beso-dart" in c for c in calls)
    assert any("vmp.sim.evaluate checkpoint=runs/lift_image-carp-sc50" in c for c in calls)
    assert any(c.endswith("vmp.bench.cli report") for c in calls)  # the results page still regenerated
    assert not any("vmp.bench.cli latency" in c or "vmp.bench.cli lerobot" in c for c in calls)
    record = json.loads((tmp_path / "results" / "bench_suite_full.json").read_text())
    steps = record["metrics"]["steps"]
    assert record["metrics"]["failed"] == 1 and record["command"] == "vmp-bench suite=full --recipes lift_image"
    assert [s["skipped"] for s in steps if s.get("skipped")] == ["the training of runs/lift_image-beso-dart failed"]
    assert [s["command"] for s in steps if s["exit"]] == [recipes.BY_NAME["lift_image"].steps[0]]


def test_full_suite_runs_a_comparison_after_the_recipe_that_collects_its_store(tmp_path, monkeypatch):
    """On a fresh machine the comparisons' stores are not there yet: one whose store this run's recipes collect runs
    after them; one whose store nothing here collects, or any without the LeRobot environment, is skipped by name."""
    import subprocess
    import sys
    import types

    from vmp.bench import suite

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(suite, "FULL", [])
    monkeypatch.setattr(suite, "LEROBOT", [(f"stores/{name}.zarr", ["lerobot", "--store", f"stores/{name}.zarr"])
                                           for name in ("here", "lift_image_dart", "nowhere")])
    assert [why for _, _, why in suite.lerobot_steps(set())[0]] == \
        ["no LeRobot environment (.venv-lerobot; make test-lerobot builds it)"] * 3
    Path(".venv-lerobot/bin").mkdir(parents=True)
    Path(".venv-lerobot/bin/python").touch()
    Path("stores/here.zarr").mkdir(parents=True)
    calls, real_run = [], subprocess.run

    def fake_run(argv, **kwargs):
        if argv[0] != sys.executable:  # git, for the record's revision
            return real_run(argv, **kwargs)
        calls.append(" ".join(argv))
        return types.SimpleNamespace(returncode=0)

    monkeypatch.setattr(subprocess, "run", fake_run)
    monkeypatch.setattr(recipes, "RECIPES", [recipes.BY_NAME["lift_image"]])  # the whole suite, of one group
    suite.main(["full"])
    compared = [i for i, c in enumerate(calls) if "vmp.bench.cli lerobot" in c]
    recipe = [i for i, c in enumerate(calls) if "vmp.sim." in c or "vmp.policies.train" in c]
    assert len(compared) == 2 and "stores/here.zarr" in calls[compared[0]] and compared[0] < min(recipe)
    assert "stores/lift_image_dart.zarr" in calls[compared[1]] and max(recipe) < compared[1] < len(calls) - 1
    record = json.loads((tmp_path / "results" / "bench_suite_full.json").read_text())
    assert [s["skipped"] for s in record["metrics"]["steps"] if s.get("skipped")] == \
        ["stores/nowhere.zarr is missing and no recipe of this run collects it"]
    calls.clear()
    suite.main(["full", "--recipes"])  # the benchmarks only: the comparisons whose store is here, no training
    assert [c for c in calls if "vmp.bench.cli lerobot" in c] == [calls[compared[0]]]
    assert not any("vmp.sim." in c or "vmp.policies.train" in c for c in calls)
