"""The console scripts exist, answer --help, and reject a wrong config choice with the valid ones."""

import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent
HYDRA_APPS = ["vmp-collect", "vmp-train", "vmp-eval", "vmp-deploy"]


def run(*args, timeout=120):
    return subprocess.run([str(BIN / args[0]), *args[1:]], capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("app", HYDRA_APPS)
def test_hydra_apps_have_help(app):
    out = run(app, "--help")
    assert out.returncode == 0, out.stderr
    assert "== Configuration groups ==" in out.stdout and "task:" in out.stdout, out.stdout[:500]
    assert out.stdout.startswith(app), f"--help should open with what {app} does, not hydra's banner: {out.stdout[:200]}"
    assert "Examples" in out.stdout


def test_wrong_policy_lists_valid_choices():
    out = run("vmp-train", "policy=nope")
    assert out.returncode != 0
    text = out.stdout + out.stderr
    assert "nope" in text and "beso" in text and "ddpm" in text, text[-1500:]


def test_bench_and_data_help():
    out = run("vmp-bench", "--help")
    assert out.returncode == 0 and "latency" in out.stdout
    out = run("vmp-bench", "nope")
    assert out.returncode == 2 and "latency" in out.stdout
    out = run("vmp-data", "--help")
    assert out.returncode == 0 and "info" in out.stdout and "validate" in out.stdout


def test_import_sets_egl_by_default():
    code = "import os; os.environ.pop('MUJOCO_GL', None); import vmp; print(os.environ['MUJOCO_GL'])"
    env = {k: v for k, v in __import__("os").environ.items() if k != "MUJOCO_GL"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert out.stdout.strip() == "egl"


def test_ci_runs_the_readme_test_command():
    root = Path(__file__).resolve().parents[1]
    readme = (root / "README.md").read_text()
    ci = (root / ".ci" / "run").read_text()
    assert "make test" in readme.split("\n\n")[1], "the README opens with the test command"
    assert "make test" in ci
