"""Usage baselines end to end: real pytest sessions whose boxes allocate real memory.

A session saves a baseline; a changed suite (one test allocating 50% more, one new,
one removed) is compared with it: the table, exit status 1, the short summary lines and
the HTML report; the same under ``-n 2``. Then what must not happen: an interrupted
session clobbering the old file, a deselected test counted, a warn-only run failing.
"""

from __future__ import annotations

import html
import json
import re
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

SUITE = """
import pytest

MiB = 1 << 20


def touch(mib):
    data = bytearray(mib * MiB)
    for i in range(0, len(data), 4096):
        data[i] = 1  # every page charged to the box's cgroup
    return data


@pytest.mark.nsbox
def test_steady():
    touch(40)


@pytest.mark.nsbox(memory="300M")
def test_grows():
    touch({grows})

{extra}
"""

REMOVED = """
@pytest.mark.nsbox
def test_removed():
    touch(5)
"""

NEW = """
@pytest.mark.nsbox(pids=64)
def test_new():
    touch(10)
"""

QUIET = ("--nsbox-usage-fail=cpu:off,wall:off,tasks:off",)  # only memory: steady on CI


def write_suite(pytester: pytest.Pytester, grows: int, extra: str) -> None:
    pytester.makepyfile(test_suite=SUITE.format(grows=grows, extra=extra))


def saved(path: Path) -> dict:
    data = json.loads(path.read_text())
    assert data["schema"] == 1
    assert data["kind"] == "pytest-nsbox-usage"
    return data


@needs_cgroups
@pytest.mark.parametrize("workers", [(), ("-n", "2")], ids=["one-process", "xdist"])
def test_save_then_compare_a_changed_suite(pytester: pytest.Pytester, run_inner,
                                           workers: tuple[str, ...]) -> None:
    write_suite(pytester, 40, REMOVED)
    first = run_inner(*workers, "--nsbox-usage-save=base.json")
    first.assert_outcomes(passed=3)
    base = saved(pytester.path / "base.json")
    assert set(base["tests"]) == {"test_suite.py::test_steady", "test_suite.py::test_grows",
                                  "test_suite.py::test_removed"}
    grows = base["tests"]["test_suite.py::test_grows"]
    assert 40 << 20 < grows["memory_peak"] < 120 << 20
    assert grows["limits"] == {"memory": 300 << 20}
    assert grows["oom"] is False and grows["outcome"] == "passed" and grows["runs"] == 1
    assert grows["cpu_seconds"] > 0 and grows["wall_seconds"] > 0
    assert base["python"] and base["pytest"] == pytest.__version__
    assert base["pytest_nsbox"] and base["machine"]["cpus"]
    assert base["totals"]["tests"] == 3
    if workers:
        assert base["session"]["workers"] == 2
        assert {row["worker"] for row in base["tests"].values()} <= {"gw0", "gw1"}

    write_suite(pytester, 60, NEW)
    second = run_inner(*workers, "--nsbox-usage-compare=base.json",
                       "--nsbox-usage-report=report.html", *QUIET)
    out = second.stdout.str()
    assert second.ret == 1, out
    second.assert_outcomes(passed=3)  # the tests pass; the run fails for their usage
    assert "nsbox usage against base.json" in out
    regressed = [line for line in second.stdout.lines if line.startswith("REGRESSED")]
    assert len(regressed) == 1, out
    assert "memory" in regressed[0] and regressed[0].endswith("test_suite.py::test_grows")
    assert re.search(r"\+[3-9]\d%", regressed[0]), regressed[0]  # 40 -> 60 MiB of ~48
    assert "new: test_suite.py::test_new" in out
    assert "vanished (not run in this session): test_suite.py::test_removed" in out
    assert re.search(r"^boxed tests\s+3\s+3", out, re.M), out
    assert re.search(r"^largest memory peak\s+\S+ MiB\s+\S+ MiB\s+\+", out, re.M), out
    summary = out[out.index("short test summary info"):]
    assert re.search(r"^USAGE test_suite.py::test_grows - memory peak .* from .*threshold "
                     r"\+20%", summary, re.M), summary
    assert "test_steady" not in summary
    assert re.search(r"3 passed.* 1 over usage threshold", second.stdout.lines[-1])

    page = (pytester.path / "report.html").read_text()
    assert page.count('<g class="bar') == 3
    assert page.count('<g class="bar over"') == 1
    assert "test_suite.py::test_removed" in page  # listed as vanished
    assert "http://" not in page and "https://" not in page and "<link" not in page


@needs_cgroups
def test_the_report_marks_baseline_and_budget(pytester: pytest.Pytester, run_inner) -> None:
    pytester.makepyfile(test_budget="""
        import pytest

        @pytest.mark.nsbox(memory_budget="20M")
        def test_over():
            data = bytearray(40 << 20)
            for i in range(0, len(data), 4096):
                data[i] = 1

        @pytest.mark.nsbox(memory_budget="500M", cpu_budget=30)
        def test_within():
            pass
    """)
    result = run_inner("--nsbox-usage-report=r.html", "--junitxml=j.xml")
    assert result.ret == 0, result.stdout.str()  # no check asked: a budget only reports
    result.assert_outcomes(passed=2, warnings=1)
    out = result.stdout.str()
    assert "NsboxBudgetWarning: nsbox: over budget: memory peak" in out
    assert "is over its budget of 20 MiB" in out
    assert re.search(r"^OVER BUDGET test_budget.py::test_over - memory peak", out, re.M)
    assert "test_within" not in out[out.index("short test summary info"):]
    properties = junit_properties(pytester.path / "j.xml")
    assert properties["test_over"]["nsbox_memory_budget"] == str(20 << 20)
    assert "over its budget" in properties["test_over"]["nsbox_over_budget"]
    assert "nsbox_over_budget" not in properties["test_within"]
    assert properties["test_within"]["nsbox_cpu_budget"] == "30.0"
    page = (pytester.path / "r.html").read_text()
    assert "over budget</span>" in page and page.count('<g class="bar over"') == 1


def test_a_budget_fails_a_run_that_checks_usage(pytester: pytest.Pytester, run_inner) -> None:
    pytester.makepyfile(test_budget="""
        import pytest, time

        @pytest.mark.nsbox(cpu_budget=0.05)
        def test_burns():
            end = time.process_time() + 0.3
            while time.process_time() < end:
                pass
    """)
    result = run_inner("--nsbox-usage-fail=memory:+20%")
    assert result.ret == 1, result.stdout.str()
    result.assert_outcomes(passed=1, warnings=1)
    assert re.search(r"^OVER BUDGET test_budget.py::test_burns - CPU 0\.\d+ s is over its "
                     r"budget of 0.05 s", result.stdout.str(), re.M)
    assert "1 over budget" in result.stdout.lines[-1]
    plain = run_inner()  # the budget is checked without any usage flag too
    assert plain.ret == 0
    plain.assert_outcomes(passed=1, warnings=1)


def junit_properties(path: Path) -> dict[str, dict[str, str]]:
    tree = ET.parse(path)
    return {case.get("name", ""): {p.get("name", ""): p.get("value", "")
                                   for p in case.iter("property")}
            for case in tree.iter("testcase")}


@needs_cgroups
def test_junit_carries_limits_and_oom_when_recording(pytester: pytest.Pytester,
                                                     run_inner) -> None:
    pytester.makepyfile(test_oom="""
        import pytest

        @pytest.mark.nsbox(memory="32M", pids=16, timeout=60)
        def test_too_big():
            data = bytearray(200 << 20)
            for i in range(0, len(data), 4096):
                data[i] = 1
    """)
    result = run_inner("--nsbox-usage-save=u.json", "--junitxml=j.xml")
    result.assert_outcomes(failed=1)
    row = saved(pytester.path / "u.json")["tests"]["test_oom.py::test_too_big"]
    assert row["oom"] is True and row["outcome"] == "failed"
    assert row["limits"] == {"memory": 32 << 20, "pids": 16, "timeout": 60.0}
    properties = junit_properties(pytester.path / "j.xml")["test_too_big"]
    assert properties["nsbox_oom"] == "True"
    assert properties["nsbox_limit_memory"] == str(32 << 20)


def test_a_failed_session_that_ran_to_its_end_saves(pytester: pytest.Pytester,
                                                    run_inner) -> None:
    pytester.makepyfile(test_fail="""
        import pytest

        @pytest.mark.nsbox
        def test_fails():
            assert False

        @pytest.mark.nsbox
        def test_passes():
            pass

        def test_unboxed():
            pass
    """)
    result = run_inner("--nsbox-usage-save=u.json")
    assert result.ret == 1
    tests = saved(pytester.path / "u.json")["tests"]
    assert tests.keys() == {"test_fail.py::test_fails", "test_fail.py::test_passes"}
    assert tests["test_fail.py::test_fails"]["outcome"] == "failed"
    assert tests["test_fail.py::test_passes"]["outcome"] == "passed"


INTERRUPTING = {
    "pytest.exit in a boxed test": """
        @pytest.mark.nsbox
        def test_stops():
            pytest.exit("enough")
    """,
    "KeyboardInterrupt in pytest": """
        def test_stops():
            raise KeyboardInterrupt
    """,
    "-x after a failure": """
        @pytest.mark.nsbox
        def test_stops():
            assert False

        @pytest.mark.nsbox
        def test_after():
            pass
    """,
}


@pytest.mark.parametrize("how", list(INTERRUPTING))
def test_an_interrupted_session_leaves_the_old_file(pytester: pytest.Pytester, run_inner,
                                                    how: str) -> None:
    old = '{"schema": 1, "tests": {}, "note": "the old baseline"}\n'
    (pytester.path / "u.json").write_text(old)
    pytester.makepyfile(test_stop="import pytest\n\n@pytest.mark.nsbox\ndef test_first():\n"
                        "    pass\n\n" + INTERRUPTING[how].replace("\n        ", "\n"))
    result = run_inner("-x", "--nsbox-usage-save=u.json")
    assert result.ret in (1, 2), result.stdout.str()
    assert (pytester.path / "u.json").read_text() == old
    assert re.search(r"nsbox: usage not saved \(the session (was interrupted|stopped early)",
                     result.stdout.str())
    assert [p.name for p in pytester.path.iterdir() if p.name.startswith(".nsbox-usage-")] == []


@needs_cgroups
def test_only_the_tests_that_ran_are_saved(pytester: pytest.Pytester, run_inner) -> None:
    write_suite(pytester, 10, REMOVED)
    run_inner("-k", "not removed", "--nsbox-usage-save=u.json").assert_outcomes(passed=2)
    assert set(saved(pytester.path / "u.json")["tests"]) == {
        "test_suite.py::test_steady", "test_suite.py::test_grows"}


LAST_FAILED = """
import os
import pytest

MARK = os.path.join(os.path.dirname(__file__), "failed-once")


@pytest.mark.nsbox
def test_passes():
    pass


@pytest.mark.nsbox
def test_fails_once():
    if not os.path.exists(MARK):
        open(MARK, "w").close()
        assert False, "the first session's failure"


@pytest.mark.nsbox
def test_also_passes():
    pass
"""


def test_last_failed_saves_only_the_tests_that_ran(pytester: pytest.Pytester) -> None:
    """--lf with the cache provider on: the second session runs (and saves) the failed
    test alone; the tests --lf deselected are not in the file."""
    pytester.makepyfile(test_lf=LAST_FAILED, test_other="import pytest\n\n@pytest.mark.nsbox\n"
                        "def test_elsewhere():\n    pass\n")
    run = ("-p", "cacheprovider", "-p", "no:rerunfailures", "-p", "no:randomly")
    first = pytester.runpytest_subprocess(*run, "--nsbox-usage-save=all.json")
    first.assert_outcomes(passed=3, failed=1)
    assert set(saved(pytester.path / "all.json")["tests"]) == {
        "test_lf.py::test_passes", "test_lf.py::test_fails_once", "test_lf.py::test_also_passes",
        "test_other.py::test_elsewhere"}
    assert (pytester.path / ".pytest_cache").is_dir()  # the cache provider did run
    second = pytester.runpytest_subprocess(*run, "--lf", "--nsbox-usage-save=lf.json")
    out = second.stdout.str()
    assert second.ret == 0, out
    second.assert_outcomes(passed=1)  # the passing tests of test_lf.py are not collected
    assert "run-last-failure: rerun previous 1 failure (skipped 1 file)" in out, out
    data = saved(pytester.path / "lf.json")
    assert set(data["tests"]) == {"test_lf.py::test_fails_once"}, data["tests"]
    assert data["tests"]["test_lf.py::test_fails_once"]["outcome"] == "passed"
    assert data["totals"]["tests"] == 1
    assert "nsbox: usage of 1 boxed tests saved to lf.json" in out


@needs_cgroups
def test_under_xdist_only_the_selected_tests_are_saved(pytester: pytest.Pytester,
                                                       run_inner) -> None:
    pytest.importorskip("xdist", reason="lacks: pytest-xdist (pip install -e '.[test]')")
    write_suite(pytester, 10, REMOVED + NEW)
    result = run_inner("-n", "2", "-k", "not removed and not steady", "--nsbox-usage-save=u.json")
    result.assert_outcomes(passed=2)
    data = saved(pytester.path / "u.json")
    assert set(data["tests"]) == {"test_suite.py::test_grows", "test_suite.py::test_new"}
    assert data["session"]["workers"] == 2 and data["totals"]["tests"] == 2
    assert {row["worker"] for row in data["tests"].values()} <= {"gw0", "gw1"}


FLAKY = """
import os
import pytest

MARK = os.path.join(os.path.dirname(__file__), "ran-once-" + {name!r})


def touch(mib):
    data = bytearray(mib << 20)
    for i in range(0, len(data), 4096):
        data[i] = 1
    return data


@pytest.mark.nsbox
def test_{name}():
    if not os.path.exists(MARK):
        open(MARK, "w").close()
        touch(80)
        assert False, "first run fails"
    touch(5)
"""


@needs_cgroups
def test_under_xdist_with_reruns_the_last_run_counts(pytester: pytest.Pytester) -> None:
    pytest.importorskip("xdist", reason="lacks: pytest-xdist (pip install -e '.[test]')")
    pytest.importorskip("pytest_rerunfailures",
                        reason="lacks: pytest-rerunfailures (pip install -e '.[test]')")
    pytester.makepyfile(test_flaky_a=FLAKY.format(name="a"), test_flaky_b=FLAKY.format(name="b"),
                        test_steady="import pytest\n\n@pytest.mark.nsbox\ndef test_steady():\n"
                                    "    pass\n")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:randomly",
                                           "-n", "2", "--reruns", "1",
                                           "--nsbox-usage-save=u.json")
    assert result.parseoutcomes() == {"passed": 3, "rerun": 2}, result.stdout.str()
    data = saved(pytester.path / "u.json")
    assert data["session"]["workers"] == 2 and data["session"]["reruns"] == 1
    assert set(data["tests"]) == {"test_flaky_a.py::test_a", "test_flaky_b.py::test_b",
                                  "test_steady.py::test_steady"}
    for name in ("test_flaky_a.py::test_a", "test_flaky_b.py::test_b"):
        row = data["tests"][name]
        assert row["runs"] == 2 and row["outcome"] == "passed", row
        assert row["memory_peak"] < 60 << 20, row  # the second run's, not the first's 80 MiB
        assert row["worker"] in ("gw0", "gw1"), row
    steady = data["tests"]["test_steady.py::test_steady"]
    assert steady["runs"] == 1 and steady["outcome"] == "passed"


@needs_cgroups
def test_with_reruns_the_last_run_counts(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_flaky="""
        import os
        import pytest

        MARK = os.path.join(os.path.dirname(__file__), "ran-once")

        @pytest.mark.nsbox
        def test_flaky():
            if not os.path.exists(MARK):
                open(MARK, "w").close()
                data = bytearray(80 << 20)
                for i in range(0, len(data), 4096):
                    data[i] = 1
                assert False, "first run fails"
    """)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:randomly",
                                           "--reruns", "1", "--nsbox-usage-save=u.json")
    assert result.parseoutcomes() == {"passed": 1, "rerun": 1}
    row = saved(pytester.path / "u.json")["tests"]["test_flaky.py::test_flaky"]
    assert row["runs"] == 2 and row["outcome"] == "passed"
    assert row["memory_peak"] < 60 << 20  # the second run's, not the 80 MiB of the first


@needs_cgroups
def test_warn_only_reports_and_passes(pytester: pytest.Pytester, run_inner) -> None:
    write_suite(pytester, 20, "")
    run_inner("--nsbox-usage-save=base.json").assert_outcomes(passed=2)
    write_suite(pytester, 60, "")
    result = run_inner("--nsbox-usage-compare=base.json", "--nsbox-usage-warn-only", *QUIET)
    assert result.ret == 0, result.stdout.str()
    assert re.search(r"^USAGE test_suite.py::test_grows - memory .*\(warn only\)$",
                     result.stdout.str(), re.M)
    pytester.makeini("[pytest]\nnsbox_usage_warn_only = true\n"
                     "nsbox_usage_fail = cpu:off,wall:off,tasks:off,memory:+500%\n")
    loose = run_inner("--nsbox-usage-compare=base.json")
    assert loose.ret == 0 and "no test changed beyond its thresholds" in loose.stdout.str()


def test_cpu_beyond_its_threshold(pytester: pytest.Pytester, run_inner) -> None:
    body = """
        import pytest, time

        @pytest.mark.nsbox
        def test_burns():
            end = time.process_time() + {seconds}
            while time.process_time() < end:
                pass
    """
    pytester.makepyfile(test_cpu=body.format(seconds=0.02))
    run_inner("--nsbox-usage-save=base.json").assert_outcomes(passed=1)
    pytester.makepyfile(test_cpu=body.format(seconds=1.0))
    result = run_inner("--nsbox-usage-compare=base.json", "--nsbox-usage-fail=wall:off")
    assert result.ret == 1
    assert re.search(r"^REGRESSED\s+cpu\s.*\+100%\s+test_cpu.py::test_burns$",
                     result.stdout.str(), re.M), result.stdout.str()


@needs_cgroups
def test_tasks_beyond_their_threshold(pytester: pytest.Pytester, run_inner) -> None:
    """The box's peak task count comes from the kernel (pids.peak, Linux 6.13+)."""
    body = """
        import pytest, threading

        @pytest.mark.nsbox(pids=64)
        def test_threads():
            stop = threading.Event()
            threads = [threading.Thread(target=stop.wait) for _ in range({count})]
            for thread in threads:
                thread.start()
            stop.set()
            for thread in threads:
                thread.join()
    """
    pytester.makepyfile(test_tasks=body.format(count=2))
    run_inner("--nsbox-usage-save=base.json").assert_outcomes(passed=1)
    row = saved(pytester.path / "base.json")["tests"]["test_tasks.py::test_threads"]
    if row["tasks_peak"] is None:  # the kernel keeps no peak: nothing to compare
        from helpers import has_pids_peak

        assert not has_pids_peak()
        return
    assert row["tasks_peak"] >= 4  # init, the test and its two threads
    pytester.makepyfile(test_tasks=body.format(count=12))
    result = run_inner("--nsbox-usage-compare=base.json", "--nsbox-usage-fail=cpu:off,wall:off")
    assert result.ret == 1
    assert re.search(r"^REGRESSED\s+tasks\s.*test_tasks.py::test_threads$",
                     result.stdout.str(), re.M), result.stdout.str()


BAD_INPUT = [
    (("--nsbox-usage-compare=missing.json",), "--nsbox-usage-compare: missing.json: no such "
     "file; accepted: a JSON file written by --nsbox-usage-save (schema 1)"),
    (("--nsbox-usage-compare=corrupt.json",), "--nsbox-usage-compare: corrupt.json: not JSON"),
    (("--nsbox-usage-compare=other.json",), "other.json: not a pytest-nsbox usage file"),
    (("--nsbox-usage-fail=mem:+20%",), "--nsbox-usage-fail: unknown figure 'mem' in "
     "'mem:+20%'; accepted: comma-separated FIGURE:RULE, FIGURE one of memory, cpu, wall"),
    (("--nsbox-usage-fail=memory:+lots%",), "--nsbox-usage-fail: 'memory:+lots%': 'lots%' is "
     "not a percentage or an amount of memory peak (e.g. +8M); accepted:"),
    (("--nsbox-usage-fail=cpu:-5%",), "a rule is a growth and starts with '+'"),
]


@pytest.mark.parametrize(("args", "message"), BAD_INPUT)
def test_bad_input_is_a_usage_error(pytester: pytest.Pytester, run_inner,
                                    args: tuple[str, ...], message: str) -> None:
    (pytester.path / "corrupt.json").write_text('{"schema": 1, "tests": {')
    (pytester.path / "other.json").write_text('{"tests": {}}')
    pytester.makepyfile("def test_nothing():\n    pass\n")
    result = run_inner(*args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert message in result.stderr.str()


def test_bad_ini_thresholds_name_the_ini_key(pytester: pytest.Pytester, run_inner) -> None:
    pytester.makeini("[pytest]\nnsbox_usage_fail = memory:+1x\n")
    pytester.makepyfile("def test_nothing():\n    pass\n")
    result = run_inner("--nsbox-usage-save=u.json")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "ini nsbox_usage_fail: 'memory:+1x'" in result.stderr.str()


def test_a_session_without_the_flags_registers_nothing(pytester: pytest.Pytester) -> None:
    plain = pytester.parseconfigure()
    assert not plain.pluginmanager.has_plugin("nsbox-usage")
    assert not plain.pluginmanager.has_plugin("nsbox-usage-box")
    recording = pytester.parseconfigure("--nsbox-usage-save=u.json")
    assert recording.pluginmanager.has_plugin("nsbox-usage")
    assert recording.pluginmanager.has_plugin("nsbox-usage-box")


@needs_cgroups
def test_pytest_html_gets_memory_and_cpu_columns(pytester: pytest.Pytester, run_inner) -> None:
    pytest.importorskip("pytest_html", reason="lacks: pytest-html (pip install -e '.[test]')")
    write_suite(pytester, 10, "")
    result = run_inner("--html=h.html", "--self-contained-html")
    result.assert_outcomes(passed=2)
    page = html.unescape((pytester.path / "h.html").read_text())  # rows are a JSON blob
    assert "<th>Memory peak</th>" in page and "<th>CPU s</th>" in page
    memory = re.findall(r'col-nsbox_memory\\?">(\d+(?:\.\d)? MiB)<', page)
    cpu = re.findall(r'col-nsbox_cpu\\?">(\d+\.\d{3})<', page)
    assert len(memory) == 2 and len(cpu) == 2, page[-3000:]


@needs_cgroups
def test_the_top_tables_are_printed_under_xdist(pytester: pytest.Pytester, run_inner) -> None:
    """--nsbox-usage N: under xdist the figures come from the workers' reports (the tables
    of one process: tests/test_limits.py)."""
    pytest.importorskip("xdist", reason="lacks: pytest-xdist (pip install -e '.[test]')")
    write_suite(pytester, 30, REMOVED)
    result = run_inner("-n", "2", "--nsbox", "--nsbox-usage=2")
    result.assert_outcomes(passed=3)
    out = result.stdout.str()
    assert "nsbox: top 2 boxed tests by memory peak" in out, out
    assert "nsbox: top 2 boxed tests by CPU" in out, out
    table = out[out.index("by memory peak"):out.index("by CPU")]
    assert re.search(r"^\s+\d+(\.\d+)? MiB  test_suite.py::test_steady$", table, re.M), table
    assert re.search(r"^\s+\d+(\.\d+)? MiB  test_suite.py::test_grows$", table, re.M), table
    assert "test_removed" not in table  # 5 MiB: third


def test_an_interrupted_first_session_says_nothing_was_written(pytester: pytest.Pytester,
                                                               run_inner) -> None:
    pytester.makepyfile(test_stop="""
        import pytest

        @pytest.mark.nsbox
        def test_stops():
            assert False

        @pytest.mark.nsbox
        def test_after():
            pass
    """)
    result = run_inner("-x", "--nsbox-usage-save=base.json")
    out = result.stdout.str()
    assert "nsbox: usage not saved (the session stopped early: " in out, out
    assert "nothing was written to base.json" in out
    assert "left as it was" not in out
    assert not (pytester.path / "base.json").exists()


@needs_cgroups
@pytest.mark.parametrize("workers", [(), ("-n", "2")], ids=["one-process", "xdist"])
def test_a_shard_is_compared_on_the_tests_it_selected(pytester: pytest.Pytester, run_inner,
                                                       workers: tuple[str, ...]) -> None:
    """A full baseline, then one shard (-k, another path): the other shards' tests are not
    "vanished", one line counts them, the totals are over the tests in both."""
    if workers:
        pytest.importorskip("xdist", reason="lacks: pytest-xdist (pip install -e '.[test]')")
    write_suite(pytester, 20, REMOVED + NEW)
    pytester.makepyfile(test_other="""
        import pytest

        @pytest.mark.nsbox
        def test_elsewhere():
            pass
    """)
    run_inner("--nsbox-usage-save=base.json").assert_outcomes(passed=5)
    write_suite(pytester, 20, REMOVED)  # test_new is gone from its file: that one vanished
    shard = run_inner(*workers, "test_suite.py", "-k", "steady or grows or new",
                      "--nsbox-usage-compare=base.json", "--nsbox-usage-report=shard.html",
                      *QUIET)
    out = shard.stdout.str()
    assert shard.ret == 0, out
    shard.assert_outcomes(passed=2)
    vanished = [line for line in shard.stdout.lines if line.startswith("vanished")]
    assert vanished == ["vanished (not run in this session): test_suite.py::test_new"], out
    assert ("not compared: 2 tests of the baseline this run did not select (deselected, "
            "another shard's, or outside its paths)") in out
    assert re.search(r"^totals \(figures: the 2 tests in both\)", out, re.M), out
    assert re.search(r"^boxed tests\s+3\s+2\s+-33%$", out, re.M), out  # 2 + the vanished one
    summed = re.search(r"^memory peaks, summed\s+\S+ MiB\s+\S+ MiB\s+(\S+)%$", out, re.M)
    assert summed and abs(int(summed.group(1))) < 15, out  # not 2 tests against 5
    page = (pytester.path / "shard.html").read_text()
    assert "not selected in this run" in page and "test_elsewhere" not in page
