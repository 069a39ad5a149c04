"""Threshold rules, the comparison and the baseline file, on their own (no session)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pytest_nsbox.plugin.usage.baseline import BaselineError, load, save, write_atomically
from pytest_nsbox.plugin.usage.compare import (
    DEFAULT_RULES,
    RulesError,
    compare,
    default_thresholds,
    parse_rules,
)
from pytest_nsbox.plugin.usage.record import Row

MiB = 1 << 20


def test_a_percentage_keeps_the_noise_floor() -> None:
    cpu = parse_rules("cpu:+100%")["cpu"]
    assert cpu is not None
    assert not cpu.beyond(0.002, 0.006)  # +200%, but 4 ms: noise
    assert cpu.beyond(0.2, 0.6)
    assert not cpu.beyond(0.4, 0.75)  # +0.35 s, but +88%


def test_both_terms_must_be_exceeded() -> None:
    memory = parse_rules("memory:+20%+8M")["memory"]
    assert memory is not None
    assert not memory.beyond(10 * MiB, 17 * MiB)  # +70%, +7 MiB
    assert not memory.beyond(100 * MiB, 115 * MiB)  # +15 MiB, +15%
    assert memory.beyond(100 * MiB, 130 * MiB)
    assert memory.describe() == "+20% and +8 MiB"


def test_an_amount_alone_and_off() -> None:
    rules = parse_rules("tasks:+2,wall:off", default_thresholds())
    assert rules["wall"] is None
    tasks = rules["tasks"]
    assert tasks is not None and tasks.percent is None
    assert not tasks.beyond(10, 12) and tasks.beyond(10, 13)
    assert rules["memory"] == default_thresholds()["memory"]  # not named: the default


def test_the_defaults() -> None:
    rules = default_thresholds()
    assert {name for name, rule in rules.items() if rule is not None} == {
        "memory", "cpu", "wall", "tasks"}
    assert "memory:+20%" in DEFAULT_RULES


@pytest.mark.parametrize("text", ["mem:+20%", "memory:+lots%", "memory:20%", "memory",
                                  "cpu:+1x", "memory:+20%+30%", "memory:-5%"])
def test_bad_rules(text: str) -> None:
    with pytest.raises(RulesError, match="accepted: comma-separated FIGURE:RULE"):
        parse_rules(text)


def test_compare_sorts_changes_new_and_vanished() -> None:
    old = {"a": Row("a", memory_peak=40 * MiB, cpu_seconds=1.0),
           "b": Row("b", memory_peak=40 * MiB, cpu_seconds=1.0),
           "gone": Row("gone", memory_peak=MiB)}
    now = {"a": Row("a", memory_peak=60 * MiB, cpu_seconds=1.1),
           "b": Row("b", memory_peak=20 * MiB, cpu_seconds=0.9),
           "new": Row("new", memory_peak=MiB)}
    result = compare(old, now, default_thresholds())
    assert [(c.nodeid, c.figure.name, c.up) for c in result.changes] == [
        ("a", "memory", True), ("b", "memory", False)]
    assert result.new == ["new"] and result.vanished == ["gone"]
    assert result.regressed("a") and not result.regressed("b")


def test_saved_rows_read_back(tmp_path: Path) -> None:
    rows = {"t::x": Row("t::x", memory_peak=5 * MiB, cpu_seconds=0.5, oom=True,
                        limits={"memory": 8 * MiB}, runs=2)}
    path = tmp_path / "u.json"
    save(str(path), rows, {"exitstatus": 1})
    back = load(str(path))
    assert back.rows["t::x"].memory_peak == 5 * MiB and back.rows["t::x"].oom is True
    assert back.rows["t::x"].limits == {"memory": 8 * MiB}
    assert back.meta["schema"] == 1 and back.meta["session"] == {"exitstatus": 1}


@pytest.mark.parametrize(("content", "message"), [
    ("[1, 2]", "not a pytest-nsbox usage file"),
    ('{"schema": 2, "tests": {}}', "schema 2; this pytest-nsbox reads schema 1"),
    ('{"schema": 1, "tests": []}', '"tests" is not an object'),
    ('{"schema": 1, "tests": {"t": {"memory_peak": "big"}}}', "memory_peak='big', not a number"),
    ("{", "not JSON"),
])
def test_unusable_baselines(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "u.json"
    path.write_text(content)
    with pytest.raises(BaselineError, match=message.replace("(", r"\(")):
        load(str(path))


def test_a_write_that_fails_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    (tmp_path / "target").mkdir()  # os.replace cannot put a file over a directory
    (tmp_path / "target" / "keep").write_text("old")
    with pytest.raises(OSError):
        write_atomically(str(tmp_path / "target"), json.dumps({"schema": 1}))
    assert (tmp_path / "target" / "keep").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["target"]
