"""The CI recipe's commands, run as written: docs/recipes/usage-regressions.md.

Its ``ini`` block becomes the suite's pytest.ini, its two ``sh`` blocks run in bash (the
``pytest`` on PATH is this Python's), with the artifact download stood in for by a move;
the workflow's ``run:`` steps must hold the same commands, so the page cannot drift.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest


@pytest.fixture
def _writable_cgroups() -> None:
    from hostcheck import cgroups_writable

    from conftest import needs

    needs(cgroups_writable(), "lacks: a writable cgroup (root, or a delegated v2 subtree): "
          "memory peaks and limits come from it")


needs_cgroups = pytest.mark.usefixtures("_writable_cgroups")

RECIPE = Path(__file__).resolve().parent.parent / "docs" / "recipes" / "usage-regressions.md"

SUITE = """
def touch(mib):
    data = bytearray(mib << 20)
    for i in range(0, len(data), 4096):
        data[i] = 1

def test_steady():
    touch(20)

def test_grows():
    touch({grows})
"""


def blocks(language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", RECIPE.read_text(), re.M | re.S)


def run_block(script: str, where: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep
               + os.environ.get("PATH", ""), PYTEST_ADDOPTS="-p no:randomly -p no:cacheprovider")
    return subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=where, env=env,
                          capture_output=True, text=True, timeout=600)


def test_the_workflow_runs_the_commands_of_the_recipe() -> None:
    (workflow,) = blocks("yaml")
    steps = [line.strip() for line in workflow.splitlines()]
    main, pull_request = blocks("sh")
    assert main.startswith("# on main\n") and pull_request.startswith("# on a pull request\n")
    for line in (main + pull_request).splitlines():
        assert line.strip() in steps, line
    assert "name: nsbox-usage-main" in workflow and "--name nsbox-usage-main" in workflow


@needs_cgroups
def test_the_recipe_commands_catch_a_regression(pytester: pytest.Pytester) -> None:
    (ini,) = blocks("ini")
    main, pull_request = blocks("sh")
    (pytester.path / "pytest.ini").write_text(ini)
    pytester.makepyfile(test_suite=SUITE.format(grows=30))

    recorded = run_block(main, pytester.path)
    assert recorded.returncode == 0, recorded.stdout + recorded.stderr
    assert "usage of 2 boxed tests saved to nsbox-usage.json" in recorded.stdout
    assert (pytester.path / "nsbox-usage.html").exists()
    properties = {p.get("name") for p in ET.parse(pytester.path / "junit.xml").iter("property")}
    assert {"nsbox_memory_peak", "nsbox_cpu_seconds", "nsbox_wall_seconds"} <= properties

    first = run_block(pull_request, pytester.path)  # no artifact from main yet
    assert first.returncode == 0, first.stdout + first.stderr
    assert "no baseline from main yet: recording only" in first.stdout

    (pytester.path / "baseline").mkdir()  # what the download step does
    (pytester.path / "nsbox-usage.json").rename(pytester.path / "baseline" / "nsbox-usage.json")
    same = run_block(pull_request, pytester.path)
    assert same.returncode == 0, same.stdout + same.stderr
    assert "no test changed beyond its thresholds" in same.stdout

    pytester.makepyfile(test_suite=SUITE.format(grows=60))
    grown = run_block(pull_request, pytester.path)
    assert grown.returncode == 1, grown.stdout + grown.stderr
    assert re.search(r"^REGRESSED\s+memory\s.*test_suite.py::test_grows$", grown.stdout, re.M)
    assert re.search(r"^USAGE test_suite.py::test_grows - memory peak", grown.stdout, re.M)
    assert "2 passed, 1 over usage threshold" in grown.stdout
    page = (pytester.path / "nsbox-usage.html").read_text()
    assert page.count('<g class="bar over"') == 1
