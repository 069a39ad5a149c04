"""What the pytest process keeps per boxed test, against an unboxed test of the same session.

pytest keeps every report to the end of the session, so a byte more per report is 15 kB
over 5000 tests (benchmarks/soak.py measures RSS over such a session; too slow and too
noisy for a test). Here one inner session runs a block of boxed tests, then a block of
opted-out (unboxed) ones, and counts with tracemalloc (after a full collection) the
Python heap each block leaves behind: boxing may add its usage properties, not copies of
what an unboxed report shares with its item. No timing, no RSS.
"""

from __future__ import annotations

import json

import pytest

#: Tests measured per block (after WARMUP tests of the same kind).
MEASURED = 30
WARMUP = 10
#: Bytes a boxed test may keep beyond an unboxed one. Measured here: ~160 (its usage
#: properties: a few (name, value) tuples, a rounded float or int each, in the call and
#: teardown reports). Before the reports shared the item's NodeId and pytest's strings it
#: was ~2.9 kB: a NodeId parsed anew per report is ~850 bytes a test, a copy of "passed",
#: "call" and "$report_type" per report ~500 (each is also checked by identity, in PLUGIN).
EXTRA_BOUND = 600

PLUGIN = """
import gc, json, sys, tracemalloc

_WARMUP, _MEASURED = {warmup}, {measured}
_marks = {{_WARMUP, _WARMUP + _MEASURED, 2 * _WARMUP + _MEASURED, 2 * (_WARMUP + _MEASURED)}}
_done = 0
_traced = []
tracemalloc.start()  # from the start: objects from free lists filled before are traced too
_items = {{}}
_problems = []
_BOX_TYPES = {{"Outcome", "FrameDecoder", "Box", "Plan", "Usage", "BoxContext"}}


def pytest_collection_modifyitems(items):
    _items.update((item.nodeid, item) for item in items)


def pytest_runtest_logreport(report):
    item = _items[report.nodeid]
    if item.get_closest_marker("nsbox") is not None:
        return  # opted out: pytest's own report
    same_id = report.id is item.id if hasattr(item, "id") else report.nodeid is item.nodeid
    if not same_id:
        _problems.append(("node id not the item's", report.nodeid, report.when))
    if report.location is not item.location:
        _problems.append(("location not the item's", report.nodeid, report.when))
    for name in ("outcome", "when", "$report_type"):
        value = vars(report).get(name)
        if isinstance(value, str) and value is not sys.intern(value):
            _problems.append((f"a copy of the string {{name}}", report.nodeid, report.when))


def pytest_runtest_logfinish(nodeid, location):
    global _done
    _done += 1
    if _done in _marks:
        gc.collect()
        _traced.append(tracemalloc.get_traced_memory()[0])


def pytest_sessionfinish(session):
    gc.collect()
    alive = sorted(type(o).__name__ for o in gc.get_objects()
                   if type(o).__name__ in _BOX_TYPES
                   and type(o).__module__.startswith("pytest_nsbox"))
    with open("memory.json", "w") as file:
        json.dump({{"traced": _traced, "problems": _problems, "alive": alive}}, file)
"""

TESTS = """
import pytest
{mark}
@pytest.mark.parametrize("n", range({count}))
def test_trivial(n):
    assert n >= 0
"""


def test_a_boxed_test_keeps_little_more_than_an_unboxed_one(pytester: pytest.Pytester,
                                                            run_inner) -> None:
    pytester.makepyfile(
        memory_plugin=PLUGIN.format(warmup=WARMUP, measured=MEASURED),
        test_1_boxed=TESTS.format(mark="", count=WARMUP + MEASURED),
        test_2_unboxed=TESTS.format(mark="@pytest.mark.nsbox(enabled=False)",
                                    count=WARMUP + MEASURED))
    pytester.syspathinsert()
    result = run_inner("--nsbox", "-p", "memory_plugin", "-q")
    result.assert_outcomes(passed=2 * (WARMUP + MEASURED))
    with open(pytester.path / "memory.json") as file:
        measured = json.load(file)
    assert measured["problems"] == []
    assert measured["alive"] == [], "box-side objects outlive their test"
    start, boxed_end, unboxed_start, end = measured["traced"]
    boxed = (boxed_end - start) / MEASURED
    unboxed = (end - unboxed_start) / MEASURED
    assert boxed - unboxed < EXTRA_BOUND, (
        f"a boxed test keeps {boxed:.0f} bytes, an unboxed one {unboxed:.0f}")
