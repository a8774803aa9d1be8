"""The documentation: the site builds with no warning (`make docs`: mkdocs --strict, so every link, heading anchor and
API reference resolves), the README stays a short entry point, and every head has its page."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEADS = ("beso", "carp", "pad", "navdp", "divla", "ddpm")


def test_the_site_builds_strictly(tmp_path):
    site = tmp_path / "site"
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(site)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert done.returncode == 0, done.stderr[-5000:]
    assert (site / "heads" / "beso" / "index.html").is_file()
    api = (site / "api" / "index.html").read_text()
    for name in ("vmp.policies.base.Policy", "vmp.data.store.EpisodeStore", "vmp.real.robot.Robot"):
        assert name in api, f"the API page lacks {name}"


def test_the_readme_is_short_and_every_head_has_a_page():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 200, "the README is an entry point: details belong in docs/"
    nav = (ROOT / "mkdocs.yml").read_text()
    for head in HEADS:
        page = ROOT / "docs" / "heads" / f"{head}.md"
        assert page.is_file(), f"{head} has no page in docs/heads/"
        assert f"heads/{head}.md" in nav, f"docs/heads/{head}.md is not in mkdocs.yml's nav"
        assert f"docs/heads/{head}.md" in readme, f"the README does not link {head}'s page"
