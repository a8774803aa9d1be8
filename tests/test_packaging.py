"""A non-editable install ships every module and config: the wheel built from the repository holds each .py file under
the folders pyproject.toml maps into `vmp` (subpackages found automatically, none listed by hand) and every config
YAML, nested groups included."""

import importlib.util
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# The repository's top-level folders, each installed as `vmp.<folder>` (vmp/ itself as `vmp`).
FOLDERS = {"vmp", "data", "sim", "policies", "real", "bench", "configs"}
SKIP_DIRS = {"__pycache__", "tests"}


def _package_dir() -> dict[str, str]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]


def _sources(folder: Path, pattern: str) -> list[Path]:
    return sorted(p for p in folder.rglob(pattern) if not SKIP_DIRS & set(p.relative_to(folder).parts[:-1]))


@pytest.fixture(scope="module")
def wheel_names(tmp_path_factory) -> set[str]:
    if importlib.util.find_spec("setuptools") is None or importlib.util.find_spec("pip") is None:
        pytest.skip("building a wheel needs pip and setuptools in this environment (--no-build-isolation: no download)")
    tmp = tmp_path_factory.mktemp("wheel")
    # Build from a copy: an in-tree build would leave build/ and *.egg-info behind, and a stale build/lib could
    # hide a module that discovery misses.
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build")
    for folder in sorted(set(_package_dir().values())):
        shutil.copytree(ROOT / folder, src / folder, ignore=ignore)
    out = tmp / "dist"
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                           str(out), str(src)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"pip wheel failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    wheels = list(out.glob("vmp-*.whl"))
    assert len(wheels) == 1, wheels
    with zipfile.ZipFile(wheels[0]) as zf:
        return set(zf.namelist())


def test_pyproject_maps_each_top_level_folder_once():
    mapping = _package_dir()
    assert set(mapping.values()) >= FOLDERS, f"unmapped folders: {FOLDERS - set(mapping.values())}"
    for pkg, folder in mapping.items():
        assert pkg == ("vmp" if folder == "vmp" else f"vmp.{folder}"), (pkg, folder)
    assert "packages" not in tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"], (
        "a hand-written `packages` list turns off discovery: new subpackages would silently miss the wheel")


def test_wheel_holds_every_module(wheel_names):
    missing = []
    for pkg, folder in _package_dir().items():
        base = ROOT / folder
        prefix = pkg.replace(".", "/")
        missing += [f"{prefix}/{p.relative_to(base).as_posix()}" for p in _sources(base, "*.py")]
    missing = sorted(set(missing) - wheel_names)
    assert not missing, f"modules missing from the wheel: {missing}"


def test_wheel_holds_every_config(wheel_names):
    configs = _sources(ROOT / "configs", "*.yaml")
    assert any(len(p.relative_to(ROOT / "configs").parts) > 2 for p in configs), "expected nested groups (deploy/robot)"
    missing = sorted(f"vmp/configs/{p.relative_to(ROOT / 'configs').as_posix()}" for p in configs)
    missing = [name for name in missing if name not in wheel_names]
    assert not missing, f"configs missing from the wheel: {missing}"


def test_wheel_holds_no_bytecode(wheel_names):
    assert not [n for n in wheel_names if n.endswith(".pyc") or "__pycache__" in n]
