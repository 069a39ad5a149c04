"""Usage across CI shards: ``pytest-nsbox usage merge`` and ``usage report`` on saved
files, and the commands of docs/recipes/usage-across-shards.md run as written (shards by
``-k``, so no new dependency), with the artifact moves stood in for by renames."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from test_usage_recipe import run_block

from pytest_nsbox.plugin.usage.baseline import save
from pytest_nsbox.plugin.usage.record import Row

RECIPE = Path(__file__).resolve().parent.parent / "docs" / "recipes" / "usage-across-shards.md"
MiB = 1 << 20


@pytest.fixture
def _writable_cgroups() -> None:
    from hostcheck import cgroups_writable

    from conftest import needs

    needs(cgroups_writable(), "lacks: a writable cgroup (root, or a delegated v2 subtree): "
          "memory peaks and limits come from it")


def usage(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pytest_nsbox", "usage", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=60)


def write(path: Path, rows: dict[str, int], created: str = "", **machine: object) -> None:
    """A saved file as --nsbox-usage-save writes it, with `rows` as memory peaks in MiB."""
    save(str(path), {nodeid: Row(nodeid, memory_peak=mib * MiB, cpu_seconds=0.01)
                     for nodeid, mib in rows.items()}, {"exitstatus": 0, "args": []})
    data = json.loads(path.read_text())
    data["machine"].update(machine)
    data["machine"]["hostname"] = path.stem  # every runner of a matrix has its own
    if created:
        data["created"] = created
    path.write_text(json.dumps(data))


def test_merge_combines_shards_and_the_later_run_wins(tmp_path: Path) -> None:
    write(tmp_path / "s1.json", {"t.py::a": 10, "t.py::b": 20}, "2026-12-01T10:00:00+00:00")
    write(tmp_path / "s2.json", {"t.py::c": 30}, "2026-12-01T10:00:05+00:00")
    write(tmp_path / "s1-again.json", {"t.py::b": 25}, "2026-12-01T11:00:00+00:00")
    done = usage("merge", "-o", "all.json", "s1-again.json", "s1.json", "s2.json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "1 test in both s1.json and s1-again.json: the later run wins (s1-again.json, created "
        "2026-12-01T11:00:00+00:00): t.py::b",
        "usage of 3 boxed tests from 3 files merged into all.json"]
    merged = json.loads((tmp_path / "all.json").read_text())
    assert merged["schema"] == 1 and merged["kind"] == "pytest-nsbox-usage"
    assert {k: v["memory_peak"] // MiB for k, v in merged["tests"].items()} == {
        "t.py::a": 10, "t.py::b": 25, "t.py::c": 30}
    assert merged["totals"]["tests"] == 3 and merged["totals"]["memory_peak_max"] == 30 * MiB
    assert [f["file"] for f in merged["merged_from"]] == ["s1-again.json", "s1.json", "s2.json"]
    assert merged["machine"]["hostname"] == "s1, s1-again, s2"
    assert "cpus" in merged["machine"] and merged["python"]


def test_merge_refuses_other_machines_or_keeps_them_apart(tmp_path: Path) -> None:
    write(tmp_path / "a.json", {"t.py::a": 10})
    write(tmp_path / "b.json", {"t.py::b": 10}, cpus=64, cgroup="v9")
    refused = usage("merge", "-o", "all.json", "a.json", "b.json", cwd=tmp_path)
    assert refused.returncode == 2 and not (tmp_path / "all.json").exists()
    assert re.fullmatch(
        r"pytest-nsbox usage merge: b\.json was measured on another kind of machine than "
        r"a\.json \(cpus 64 against \d+, cgroup v9 against \w+\): their figures do not "
        r"compare; merge each kind apart with --per-machine\n", refused.stderr), refused.stderr
    apart = usage("merge", "--per-machine", "-o", "all.json", "a.json", "b.json", cwd=tmp_path)
    assert apart.returncode == 0, apart.stderr
    written = sorted(p.name for p in tmp_path.glob("all.*.json"))
    assert len(written) == 2 and any("-64cpus-cgroup-v9-" in name for name in written)
    for name in written:
        assert len(json.loads((tmp_path / name).read_text())["tests"]) == 1


def test_merge_refuses_another_schema_and_junk(tmp_path: Path) -> None:
    write(tmp_path / "a.json", {"t.py::a": 10})
    (tmp_path / "new.json").write_text(json.dumps({"schema": 2, "kind": "pytest-nsbox-usage",
                                                   "tests": {}}))
    (tmp_path / "junk.json").write_text("{")
    for name, words in (("new.json", "new.json: schema 2; this pytest-nsbox reads schema 1"),
                        ("junk.json", "junk.json: not JSON")):
        done = usage("merge", "-o", "all.json", "a.json", name, cwd=tmp_path)
        assert done.returncode == 2 and words in done.stderr, done.stderr
    assert not (tmp_path / "all.json").exists()


def test_report_takes_a_merged_file_against_a_baseline(tmp_path: Path) -> None:
    write(tmp_path / "base.json", {"t.py::a": 10, "t.py::b": 20, "t.py::c": 30})
    write(tmp_path / "s1.json", {"t.py::a": 10, "t.py::b": 40})
    write(tmp_path / "s2.json", {"t.py::c": 30})
    assert usage("merge", "-o", "pr.json", "s1.json", "s2.json", cwd=tmp_path).returncode == 0
    done = usage("report", "--compare", "base.json", "-o", "pr.html", "pr.json", cwd=tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr
    assert re.search(r"^REGRESSED\s+memory\s+20 MiB\s+40 MiB\s+\+100%.*t\.py::b$", done.stdout,
                     re.M), done.stdout
    assert "vanished" not in done.stdout
    page = (tmp_path / "pr.html").read_text()
    assert page.count('<g class="bar') == 3 and page.count('<g class="bar over"') == 1
    alone = usage("report", "-o", "alone.html", "pr.json", cwd=tmp_path)
    assert alone.returncode == 0 and (tmp_path / "alone.html").exists()


def blocks(language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", RECIPE.read_text(), re.M | re.S)


def test_the_workflow_runs_the_commands_of_the_recipe() -> None:
    (workflow,) = blocks("yaml")
    steps = [line.strip() for line in workflow.splitlines()]
    scripts = blocks("sh")
    assert [script.splitlines()[0] for script in scripts] == [
        "# each shard on main", "# the merge job on main", "# each shard on a pull request",
        "# the report job on a pull request"]
    for line in "".join(scripts).splitlines():
        assert line.strip() in steps, line


SUITE = """
def touch(mib):
    data = bytearray(mib << 20)
    for i in range(0, len(data), 4096):
        data[i] = 1

def test_network_steady():
    touch(20)

def test_network_grows():
    touch({grows})

def test_parse():
    touch(10)

def test_render():
    touch(10)
"""

SHARDS = {"1": "network", "2": "not network"}


@pytest.mark.usefixtures("_writable_cgroups")
def test_the_recipe_commands_run_a_sharded_suite(pytester: pytest.Pytester) -> None:
    (ini,) = blocks("ini")
    shard, merge, pr_shard, pr_report = blocks("sh")
    (pytester.path / "pytest.ini").write_text(ini)
    pytester.makepyfile(test_suite=SUITE.format(grows=20))
    where = pytester.path
    (where / "shards").mkdir()

    def run_shards(script: str) -> dict[str, subprocess.CompletedProcess[str]]:
        done = {}
        for number, expression in SHARDS.items():
            done[number] = run_block(f'SHARD={number}\nSHARD_K="{expression}"\n{script}', where)
            (where / f"nsbox-usage-{number}.json").rename(
                where / "shards" / f"nsbox-usage-{number}.json")  # the artifact steps
        return done

    for done in run_shards(shard).values():
        assert done.returncode == 0, done.stdout + done.stderr
    merged = run_block(merge, where)
    assert merged.returncode == 0, merged.stdout + merged.stderr
    assert "usage of 4 boxed tests from 2 files merged into nsbox-usage.json" in merged.stdout
    assert (where / "nsbox-usage.html").exists()
    (where / "baseline").mkdir()
    (where / "nsbox-usage.json").rename(where / "baseline" / "nsbox-usage.json")

    pytester.makepyfile(test_suite=SUITE.format(grows=50))
    first, second = run_shards(pr_shard).values()
    assert first.returncode == 1, first.stdout + first.stderr
    assert re.search(r"^REGRESSED\s+memory\s.*test_suite.py::test_network_grows$",
                     first.stdout, re.M), first.stdout
    for done in (first, second):
        assert "vanished" not in done.stdout, done.stdout
        assert ("not compared: 2 tests of the baseline this run did not select (deselected, "
                "another shard's, or outside its paths)") in done.stdout
        assert re.search(r"^boxed tests\s+2\s+2\s+\+0%$", done.stdout, re.M), done.stdout
    assert second.returncode == 0, second.stdout + second.stderr

    report = run_block(pr_report, where)
    assert report.returncode == 0, report.stdout + report.stderr
    assert re.search(r"^REGRESSED\s+memory\s.*test_network_grows$", report.stdout, re.M)
    page = (where / "nsbox-usage.html").read_text()
    assert page.count('<g class="bar') == 4 and page.count('<g class="bar over"') == 1
