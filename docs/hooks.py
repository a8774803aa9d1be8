"""mkdocs hook: lets mkdocstrings read `vmp.*` from the checkout.

The repository's top-level folders install as subpackages of `vmp` (pyproject.toml's `package-dir`: `vmp.data` is
`data/`, `vmp.policies` is `policies/`, ...). griffe, which mkdocstrings reads the source with, follows an editable
install's top-level package only, so it would find `vmp/` and none of its subpackages. Before the build this hook
lays the installed tree out as links into the checkout, `build/api_src/vmp/<sub>` -> `<folder>` (git-ignored), the
folder that mkdocs.yml's python handler searches (`paths`).
"""

from __future__ import annotations

import os
import re
from pathlib import Path


def package_dirs(pyproject: Path) -> dict[str, str]:
    """pyproject.toml's `package-dir` mapping: {"vmp": "vmp", "vmp.data": "data", ...}."""
    line = next(line for line in pyproject.read_text().splitlines() if line.startswith("package-dir"))
    return dict(re.findall(r'"([\w.]+)"\s*=\s*"([\w./-]+)"', line))


def _link(target: Path, link: Path) -> None:
    if link.is_symlink() and Path(os.readlink(link)) == target:
        return
    if link.is_symlink() or link.exists():
        link.unlink()
    try:
        link.symlink_to(target)
    except FileExistsError:  # another build made it at the same moment
        pass


def on_startup(command, dirty, **kwargs):
    # on_startup, not on_config: mkdocstrings drops search paths that do not exist yet when it reads its config
    root = Path(__file__).resolve().parents[1]
    tree = root / "build" / "api_src"
    for name, folder in package_dirs(root / "pyproject.toml").items():
        if name == "vmp":  # the top-level package: its files, beside the subpackage links
            (tree / "vmp").mkdir(parents=True, exist_ok=True)
            for source in (root / folder).glob("*.py"):
                _link(source, tree / "vmp" / source.name)
        else:
            link = tree / Path(*name.split("."))
            link.parent.mkdir(parents=True, exist_ok=True)
            _link(root / folder, link)
