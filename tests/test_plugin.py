"""End to end: inner pytest sessions with boxed tests behave as unboxed ones."""

from __future__ import annotations

import json
import re
import textwrap
import time
import xml.etree.ElementTree as ET

import pytest
from helpers import processes_with, token

SUITE = """
    import logging, os, socket, sys, warnings
    import pytest

    def test_passes():
        assert True

    def test_fails():
        x = 3
        assert x == 4

    def test_prints(record_property):
        print("out line")
        sys.stderr.write("err line\\n")
        logging.getLogger("suite").warning("log line")
        record_property("answer", 42)
        warnings.warn(UserWarning("boxed warning"))

    def test_skip():
        pytest.skip("skipped on purpose")

    @pytest.mark.skipif(True, reason="skipif mark")
    def test_skipif():
        pass

    @pytest.mark.xfail(reason="expected")
    def test_xfail():
        assert 0

    @pytest.mark.xfail(strict=True)
    def test_xpass_strict():
        pass

    @pytest.mark.xfail
    def test_xpass():
        pass

    @pytest.fixture
    def broken():
        raise RuntimeError("fixture broke")

    def test_setup_error(broken):
        pass

    @pytest.fixture
    def bad_teardown():
        yield
        raise RuntimeError("teardown broke")

    def test_teardown_error(bad_teardown):
        pass

    @pytest.mark.parametrize("n", [1, 2])
    def test_param(n, tmp_path):
        (tmp_path / "f").write_text(str(n))
        assert n == 1

    class TestClass:
        def test_method(self):
            assert socket.gethostname()
"""


def outcomes(result: pytest.RunResult) -> dict[str, str]:
    """Each test's outcome word from `-rA` short summary lines."""
    found = {}
    for line in result.outlines:
        match = re.match(r"^(PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS) (\S+::\S+)", line)
        if match:
            found.setdefault(match.group(2), "")
            found[match.group(2)] += match.group(1) + " "
    return found


def test_boxed_outcomes_equal_unboxed(pytester: pytest.Pytester, run_inner) -> None:
    pytester.makepyfile(test_suite=SUITE)
    plain = run_inner("-rA")
    boxed = run_inner("-rA", "--nsbox")
    assert plain.parseoutcomes() == boxed.parseoutcomes()
    assert outcomes(plain) == outcomes(boxed)
    assert boxed.parseoutcomes() == {
        "passed": 5, "failed": 3, "skipped": 2, "xfailed": 1, "xpassed": 1, "errors": 2,
        "warnings": 1,
    }
    for lines in (["*assert 3 == 4*"],
                  ["*Captured stdout call*", "out line", "*Captured stderr call*", "err line",
                   "*Captured log call*", "*log line*"],
                  ["*warnings summary*", "*UserWarning: boxed warning*"],
                  ["*RuntimeError: fixture broke*"], ["*RuntimeError: teardown broke*"],
                  ["*XPASS(strict)*"]):
        boxed.stdout.fnmatch_lines(lines)


def test_tests_really_run_in_a_box(pytester: pytest.Pytester, run_inner) -> None:
    pytester.makepyfile(test_where="""
        import os, socket, pytest

        def test_boxed():
            assert os.getpid() == 2
            assert socket.gethostname() == "nsbox"

        @pytest.mark.nsbox(enabled=False)
        def test_opted_out():
            assert os.getpid() != 2
    """)
    run_inner("--nsbox").assert_outcomes(passed=2)
    pytester.makepyfile(test_marked="""
        import os, pytest

        @pytest.mark.nsbox(hostname="marked")
        def test_marked():
            import socket
            assert os.getpid() == 2 and socket.gethostname() == "marked"

        def test_unmarked():
            assert os.getpid() != 2
    """)
    run_inner("test_marked.py").assert_outcomes(passed=2)


def test_a_box_made_ahead_is_used_only_by_a_test_with_its_options(
        pytester: pytest.Pytester, run_inner) -> None:
    """Each test's box is made while the previous test runs, for the next test's options:
    alternating hostnames (and a read-only root) show that a box made for other options is never
    used, and a pytest_nsbox_options hook that changes them makes a fresh one; nothing
    of the thrown-away boxes is left (the inner session's maker and its inits carry its
    import path, which holds pytester's directory, in their command lines)."""
    pytester.makeconftest("""
        def pytest_nsbox_options(item, options):
            if item.name.startswith("test_hooked"):
                return {"hostname": "hooked"}
    """)
    pytester.makepyfile(test_ahead="""
        import socket, pytest

        @pytest.mark.parametrize("round", range(3))
        @pytest.mark.nsbox(hostname="a")
        def test_a(round):
            assert socket.gethostname() == "a"

        @pytest.mark.parametrize("round", range(3))
        @pytest.mark.nsbox(hostname="b", readonly=True)
        def test_b(round):
            assert socket.gethostname() == "b"

        @pytest.mark.nsbox(hostname="b")
        def test_hooked():
            assert socket.gethostname() == "hooked"
    """)
    result = run_inner("-p", "no:randomly", "test_ahead.py::test_a[0]",
                       "test_ahead.py::test_b[0]", "test_ahead.py::test_a[1]",
                       "test_ahead.py::test_b[1]", "test_ahead.py::test_hooked",
                       "test_ahead.py::test_a[2]", "test_ahead.py::test_b[2]")
    result.assert_outcomes(passed=7)
    deadline = time.monotonic() + 5  # the kernel ends them after the inner pytest exits
    while (left := processes_with(str(pytester.path))) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert left == []


def test_a_box_that_cannot_be_made_says_why_once(pytester: pytest.Pytester, run_inner) -> None:
    """A refused box fails its test's set-up with the reason, not a chained exception
    ("During handling of the above exception, another exception occurred")."""
    pytester.makepyfile(test_refused="""
        import pytest

        @pytest.mark.nsbox(io={"path": "/dev/shm", "write_bps": "1M"})
        def test_refused():
            pass
    """)
    result = run_inner("test_refused.py")
    result.assert_outcomes(errors=1)
    out = result.stdout.str()
    assert "no block device to throttle" in out
    assert "During handling" not in out


def test_wider_fixtures_set_up_once_in_the_parent(pytester: pytest.Pytester, run_inner) -> None:
    log = pytester.path / "log.txt"
    pytester.makeconftest(f"""
        import os, pytest
        LOG = {str(log)!r}

        def note(text):
            with open(LOG, "a") as f:
                f.write(f"{{text}} pid={{os.getpid()}}\\n")

        @pytest.fixture(scope="session")
        def session_thing():
            note("session setup")
            yield {{"value": 1}}
            note("session teardown")

        @pytest.fixture(scope="module")
        def module_thing(request):
            note(f"module setup {{request.module.__name__}}")
            yield
            note(f"module teardown {{request.module.__name__}}")

        @pytest.fixture
        def function_thing(module_thing):
            note("function setup")
            yield
            note("function teardown")
    """)
    body = """
        import os

        def test_a(session_thing, function_thing):
            session_thing["value"] += 1   # a box's change stays in the box
            assert os.getpid() == 2

        def test_b(session_thing, function_thing):
            assert session_thing["value"] == 1

        class TestC:
            def test_c(self, session_thing, module_thing):
                pass
    """
    pytester.makepyfile(test_mod1=body, test_mod2=body)
    result = run_inner("--nsbox", "-p", "no:randomly")
    result.assert_outcomes(passed=6)
    lines = log.read_text().splitlines()
    events = [line.rsplit(" pid=", 1)[0] for line in lines]
    assert events == [
        "session setup",
        "module setup test_mod1", "function setup", "function teardown",
        "function setup", "function teardown",
        "module teardown test_mod1",
        "module setup test_mod2", "function setup", "function teardown",
        "function setup", "function teardown",
        "module teardown test_mod2",
        "session teardown",
    ]
    pids = {line.rsplit(" pid=", 1)[0]: line.rsplit(" pid=", 1)[1] for line in lines}
    assert pids["function setup"] == "2"  # function fixtures run in the box
    assert pids["session setup"] == pids["module setup test_mod1"] != "2"


def test_module_fixture_failure_is_a_setup_error_of_each_test(pytester, run_inner) -> None:
    pytester.makepyfile("""
        import pytest

        @pytest.fixture(scope="module")
        def broken():
            raise RuntimeError("module fixture broke")

        def test_one(broken): pass
        def test_two(broken): pass
        def test_three(): pass
    """)
    result = run_inner("--nsbox")
    result.assert_outcomes(errors=2, passed=1)
    result.stdout.fnmatch_lines(["*RuntimeError: module fixture broke*"])


def test_session_fixture_output_is_captured_in_the_first_test(pytester, run_inner) -> None:
    pytester.makeconftest("""
        import pytest

        @pytest.fixture(scope="session", autouse=True)
        def loud():
            print("session says hello")
            yield
    """)
    pytester.makepyfile("def test_x(): assert 0")
    result = run_inner("--nsbox")
    result.stdout.fnmatch_lines(["*Captured stdout setup*", "session says hello"])


def test_a_dying_box_fails_only_its_test(pytester: pytest.Pytester, run_inner) -> None:
    pytester.makepyfile("""
        import ctypes, os, signal, time
        import pytest

        def test_segfault():
            print("before the crash")
            ctypes.string_at(0)

        def test_after():
            print("after output")

        def test_exit():
            os._exit(7)

        def test_kill():
            os.kill(os.getpid(), signal.SIGKILL)

        @pytest.mark.nsbox(timeout=0.5)
        def test_hang():
            time.sleep(30)

        def test_last():
            pass
    """)
    result = run_inner("--nsbox", "-rA")
    result.assert_outcomes(failed=4, passed=2)
    result.stdout.fnmatch_lines([
        "*test_segfault*", "*box was killed by SIGSEGV*", "*in test_segfault*",
        "*Captured stdout call*", "before the crash",
    ])
    result.stdout.fnmatch_lines(["*box exited with code 7 during call*"])
    result.stdout.fnmatch_lines(["*box was killed by SIGKILL*"])
    result.stdout.fnmatch_lines(["*box timed out after 0.5 s*stuck at*", "*in test_hang*"])
    # the crashed test's output did not leak into the next test's report
    after = result.stdout.str().split("test_after")[-1]
    assert "before the crash" not in after.split("test_exit")[0]


def test_timeout_leaves_no_process(pytester: pytest.Pytester, run_inner) -> None:
    marker = token()
    pytester.makepyfile(f"""
        import subprocess, sys, time, pytest

        @pytest.mark.nsbox(timeout=0.5)
        def test_hang():
            subprocess.Popen([sys.executable, "-c", "import time; time.sleep(100)", {marker!r}])
            time.sleep(30)
    """)
    run_inner().assert_outcomes(failed=1)
    assert processes_with(marker) == []


def test_bad_options_are_collection_errors(pytester: pytest.Pytester, run_inner) -> None:
    pytester.makepyfile("""
        import pytest

        @pytest.mark.nsbox(memory="lots")
        def test_memory(): pass

        @pytest.mark.nsbox(net="bogus")
        def test_net(): pass

        @pytest.mark.nsbox(colour="red")
        def test_unknown(): pass

        @pytest.mark.nsbox(timeout=-1)
        def test_timeout(): pass

        @pytest.mark.nsbox("64M")
        def test_positional(): pass

        @pytest.mark.nsbox(pids="many")
        def test_type(): pass

        def test_fine(): pass
    """)
    result = run_inner()
    assert result.ret == pytest.ExitCode.INTERRUPTED
    result.stdout.fnmatch_lines([
        "*test_memory: nsbox option memory='lots' is not valid; accepted: *'64M'*",
        "*test_net: nsbox option net='bogus' is not valid; accepted: "
        "'isolated' or 'none' or 'host'",
        "*test_unknown: nsbox option colour='red' is not valid; accepted: the options memory*",
        "*test_timeout: nsbox option timeout=-1*positive number of seconds*",
        "*test_positional: *keyword options only*",
        "*test_type: nsbox option pids='many'*whole number*",
    ])
    assert "6 errors" in result.stdout.str()


def test_bad_cli_and_ini_defaults_are_usage_errors(pytester: pytest.Pytester, run_inner) -> None:
    pytester.makepyfile("def test_x(): pass")
    result = run_inner("--nsbox-memory=lots")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--nsbox-memory: nsbox option memory='lots'*'64M'*"])
    pytester.makeini("[pytest]\nnsbox_net = bogus\n")
    result = run_inner()
    result.stderr.fnmatch_lines(["*ini nsbox_net: nsbox option net='bogus'*"])


def test_defaults_from_ini_cli_and_marker(pytester: pytest.Pytester, run_inner) -> None:
    pytester.makeini("[pytest]\nnsbox = true\nnsbox_hostname = from-ini\n")
    pytester.makepyfile(test_names="""
        import socket, pytest

        def test_default(nsbox):
            assert socket.gethostname() == nsbox.options.hostname
            print("HOST", socket.gethostname())

        @pytest.mark.nsbox(hostname="from-marker")
        def test_marker():
            assert socket.gethostname() == "from-marker"
    """)
    run_inner("-s").stdout.fnmatch_lines(["*HOST from-ini*"])
    result = run_inner("-s", "--nsbox-hostname=from-cli")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*HOST from-cli*"])


def test_class_marker_and_nearest_marker_wins(pytester: pytest.Pytester, run_inner) -> None:
    pytester.makepyfile("""
        import socket, pytest

        pytestmark = pytest.mark.nsbox(hostname="module")

        @pytest.mark.nsbox(hostname="klass")
        class TestK:
            def test_class(self):
                assert socket.gethostname() == "klass"

            @pytest.mark.nsbox(hostname="method")
            def test_method(self):
                assert socket.gethostname() == "method"

        def test_module():
            assert socket.gethostname() == "module"
    """)
    run_inner().assert_outcomes(passed=3)


def test_markers_and_help_list_the_plugin(pytester: pytest.Pytester, run_inner) -> None:
    run_inner("--markers").stdout.fnmatch_lines(["@pytest.mark.nsbox(**options)*memory*"])
    help_text = run_inner("--help").stdout.str()
    for flag in ("--nsbox ", "--nsbox-memory", "--nsbox-net", "--nsbox-timeout",
                 "--nsbox-hostname", "--nsbox-readonly", "--nsbox-user", "nsbox_memory"):
        assert flag in help_text


def test_nsbox_fixture_outside_a_box_says_how(pytester: pytest.Pytester, run_inner) -> None:
    pytester.makepyfile("def test_x(nsbox): pass")
    result = run_inner()
    result.stdout.fnmatch_lines(["*nsbox fixture works only in a boxed test*"])


def test_junit_xml_has_usage_and_record_property(pytester: pytest.Pytester, run_inner) -> None:
    pytester.makepyfile("""
        def test_x(record_property):
            record_property("mine", "yes")
            sum(range(100000))
    """)
    run_inner("--nsbox", "--junitxml=out.xml", "-o", "junit_family=legacy").assert_outcomes(
        passed=1)
    tree = ET.parse(pytester.path / "out.xml")
    props = {p.get("name"): p.get("value") for p in tree.iter("property")}
    assert props["mine"] == "yes"
    assert float(props["nsbox_wall_seconds"]) > 0
    assert float(props["nsbox_cpu_seconds"]) > 0


def test_tmp_path_is_kept_after_the_run(pytester: pytest.Pytester, run_inner) -> None:
    pytester.makepyfile("""
        def test_write(tmp_path):
            (tmp_path / "result.txt").write_text("from the box")
            print("TMP", tmp_path)
    """)
    basetemp = pytester.path / "base"
    result = run_inner("--nsbox", "-s", f"--basetemp={basetemp}")
    result.assert_outcomes(passed=1)
    assert (basetemp / "test_write0" / "result.txt").read_text() == "from the box"
    # default basetemp (under /tmp, which is a private tmpfs in the box) works too
    result = run_inner("--nsbox", "-s")
    result.assert_outcomes(passed=1)
    match = re.search(r"TMP (\S+)", result.stdout.str())
    assert match is not None
    from pathlib import Path

    assert match.group(1).startswith("/tmp/")
    assert (Path(match.group(1)) / "result.txt").read_text() == "from the box"


def test_exitfirst_and_keyword(pytester: pytest.Pytester, run_inner) -> None:
    pytester.makepyfile("""
        def test_a(): assert 0
        def test_b(): assert 0
        def test_c(): pass
    """)
    run_inner("--nsbox", "-x").assert_outcomes(failed=1)
    run_inner("--nsbox", "-k", "test_c").assert_outcomes(passed=1, deselected=2)


def test_pytest_exit_in_a_box_ends_the_session(pytester: pytest.Pytester, run_inner) -> None:
    pytester.makepyfile("""
        import pytest
        def test_a(): pytest.exit("enough", returncode=3)
        def test_b(): pass
    """)
    result = run_inner("--nsbox", "-v")
    assert result.ret == 3
    result.stdout.fnmatch_lines(["*enough*"])
    assert "test_b" not in result.stdout.str()  # the session ended before it


def test_keyboard_interrupt_raised_by_a_test_fails_that_test(pytester, run_inner) -> None:
    pytester.makepyfile("""
        def test_a(): raise KeyboardInterrupt
        def test_b(): pass
    """)
    result = run_inner("--nsbox")
    result.assert_outcomes(failed=1, passed=1)
    result.stdout.fnmatch_lines(["*KeyboardInterrupt*"])


def test_usage_recorded_for_every_boxed_test(pytester: pytest.Pytester, run_inner) -> None:
    pytester.makeconftest("""
        import json
        def pytest_runtest_logreport(report):
            if report.when == "call":
                with open("props.jsonl", "a") as f:
                    f.write(json.dumps(dict(report.user_properties)) + "\\n")
    """)
    pytester.makepyfile("def test_a(): pass\ndef test_b(): pass")
    run_inner("--nsbox").assert_outcomes(passed=2)
    rows = [json.loads(line) for line in (pytester.path / "props.jsonl").read_text().splitlines()]
    assert len(rows) == 2
    assert all({"nsbox_wall_seconds", "nsbox_cpu_seconds"} <= set(row) for row in rows)


def test_assertion_rewriting_detail(pytester: pytest.Pytester, run_inner) -> None:
    pytester.makepyfile(textwrap.dedent("""
        def test_dict():
            assert {"a": 1, "b": 2} == {"a": 1, "b": 3}
    """))
    result = run_inner("--nsbox")
    result.stdout.fnmatch_lines(["*Differing items*", "*'b': 2*"])


def test_rerunfailures_reruns_in_a_fresh_box(pytester: pytest.Pytester) -> None:
    counter = pytester.path / "count"
    pytester.makepyfile(f"""
        import os, pytest

        @pytest.mark.flaky(reruns=2)
        def test_flaky():
            path = {str(counter)!r}
            runs = int(open(path).read()) if os.path.exists(path) else 0
            open(path, "w").write(str(runs + 1))
            print("RUN", runs, "PID", os.getpid())
            assert os.getpid() == 2
            assert runs == 2

        def test_plain():
            assert os.getpid() == 2
    """)
    result = pytester.runpytest_subprocess("--nsbox", "-p", "no:cacheprovider", "-rA")
    assert result.parseoutcomes() == {"passed": 2, "rerun": 2}
    assert counter.read_text() == "3"


def test_coverage_of_boxed_tests_equals_unboxed(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(mathlib="""
        def used(x):
            if x > 0:
                return "positive"
            return "other"

        def unused():
            return 1
    """)
    pytester.makepyfile(test_cov="""
        import os
        import mathlib

        def test_used():
            assert mathlib.used(1) == "positive"
            assert mathlib.used(-1) == "other"
    """)

    def percent(*extra: str) -> str:
        result = pytester.runpytest_subprocess("--cov=mathlib", "--cov-report=term",
                                               "-p", "no:cacheprovider", *extra)
        result.assert_outcomes(passed=1)
        line = next(line for line in result.outlines if line.startswith("mathlib"))
        return line.split()[-1]

    assert percent() == percent("--nsbox") == "83%"


def test_pytest_timeout_kills_the_whole_box(pytester: pytest.Pytester) -> None:
    marker = token()
    pytester.makepyfile(f"""
        import subprocess, sys, time, pytest

        @pytest.mark.timeout(1)
        def test_marked():
            subprocess.Popen([sys.executable, "-c", "import time; time.sleep(100)", {marker!r}])
            time.sleep(30)

        def test_cli_timeout():
            time.sleep(30)

        def test_next():
            pass
    """)
    for method in ("signal", "thread"):
        result = pytester.runpytest_subprocess("--nsbox", "--timeout=2",
                                               f"--timeout-method={method}",
                                               "-p", "no:cacheprovider")
        result.assert_outcomes(failed=2, passed=1)
        result.stdout.fnmatch_lines(["*box timed out after 1 s*", "*in test_marked*"])
        result.stdout.fnmatch_lines(["*box timed out after 2 s*", "*in test_cli_timeout*"])
        assert processes_with(marker) == []


def test_pytest_timeout_func_only_runs_inside_the_box(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("""
        import time

        def test_slow():
            time.sleep(30)
    """)
    result = pytester.runpytest_subprocess("--nsbox", "--timeout=1",
                                           "-o", "timeout_func_only=true",
                                           "-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*Timeout*"])


def test_xdist_outcomes_equal_serial(pytester: pytest.Pytester, run_inner) -> None:
    pytester.makepyfile(test_suite=SUITE)
    serial = run_inner("--nsbox", "-rA", "-p", "xdist", "-n", "0")
    parallel = run_inner("--nsbox", "-rA", "-p", "xdist", "-n", "2")
    assert serial.parseoutcomes() == parallel.parseoutcomes()
    assert outcomes(serial) == outcomes(parallel)


def test_pdb_turns_boxing_off_with_a_warning(pytester: pytest.Pytester, run_inner) -> None:
    pytester.makepyfile("""
        import os

        def test_where():
            assert os.getpid() != 2
    """)
    result = run_inner("--nsbox", "--pdb")
    result.assert_outcomes(passed=1, warnings=1)
    result.stdout.fnmatch_lines(["*nsbox: boxing is off for this run: --pdb and --trace*"])


def test_unavailable_policy(pytester: pytest.Pytester, run_inner) -> None:
    pytester.makepyfile("""
        import os, pytest

        @pytest.mark.nsbox(tmpfs=["/nonexistent-nsbox-dir"])
        def test_needs_a_missing_dir():
            print("PID", os.getpid())
    """)
    run_inner().stdout.fnmatch_lines(["*ERROR at setup of test_needs_a_missing_dir*",
                                      "*tmpfs path /nonexistent-nsbox-dir does not exist*"])
    pytester.makeini("[pytest]\nnsbox_unavailable = skip\n")
    result = run_inner("-rs")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["*tmpfs path /nonexistent-nsbox-dir does not exist*"])
    pytester.makeini("[pytest]\nnsbox_unavailable = run\n")
    result = run_inner("-s")
    result.assert_outcomes(passed=1, warnings=1)
    result.stdout.fnmatch_lines(["*running unboxed, the box is unavailable*"])
    pytester.makeini("[pytest]\nnsbox_unavailable = maybe\n")
    run_inner().stderr.fnmatch_lines(["*nsbox_unavailable='maybe' is not valid*"])


def test_a_hook_asking_for_a_bad_option_is_a_setup_error(pytester, run_inner) -> None:
    pytester.makeconftest("""
        def pytest_nsbox_options(item, options):
            return {"memory": "lots"}
    """)
    pytester.makepyfile("def test_x(): pass\ndef test_y(): pass")
    result = run_inner("--nsbox")
    result.assert_outcomes(errors=2)
    result.stdout.fnmatch_lines(["*a pytest_nsbox_options hook: nsbox option memory='lots'*"])


def test_hooks_adjust_setup_and_observe(pytester: pytest.Pytester, run_inner) -> None:
    pytester.makeconftest("""
        import os, socket

        def pytest_nsbox_options(item, options):
            if "big" in item.name:
                return {"hostname": "adjusted"}

        def pytest_nsbox_setup(item):
            os.environ["SET_IN_BOX"] = str(os.getpid())

        def pytest_nsbox_outcome(item, outcome):
            with open("outcomes.txt", "a") as f:
                f.write(f"{item.name} {outcome.status} {outcome.usage.wall_seconds > 0}\\n")
    """)
    pytester.makepyfile("""
        import os, socket

        def test_big():
            assert socket.gethostname() == "adjusted"
            assert os.environ["SET_IN_BOX"] == "2"

        def test_small():
            assert socket.gethostname() == "nsbox"
    """)
    run_inner("--nsbox").assert_outcomes(passed=2)
    assert (pytester.path / "outcomes.txt").read_text().splitlines() == [
        "test_big 0 True", "test_small 0 True"]


def test_randomly_seed_reaches_the_box(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("""
        import random

        def test_draw():
            print("DRAW", random.random())
    """)

    def draw(*extra: str) -> str:
        result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-s", *extra)
        result.assert_outcomes(passed=1)
        return result.stdout.str().split("DRAW ")[1].split()[0]

    seeded = draw("-p", "randomly", "--randomly-seed=1234")
    assert draw("--nsbox", "-p", "randomly", "--randomly-seed=1234") == seeded
    other = draw("-p", "randomly", "--randomly-seed=99")
    assert other != seeded
    assert draw("--nsbox", "-p", "randomly", "--randomly-seed=99") == other


def test_last_failed_stepwise_and_durations(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("""
        import time
        def test_a(): pass
        def test_b(): assert 0
        def test_c(): time.sleep(0.2)
    """)
    base = ("--nsbox", "-p", "no:randomly")
    pytester.runpytest_subprocess(*base).assert_outcomes(passed=2, failed=1)
    result = pytester.runpytest_subprocess(*base, "--lf")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*rerun previous 1 failure*"])
    result = pytester.runpytest_subprocess(*base, "--sw")
    result.assert_outcomes(passed=1, failed=1)
    result = pytester.runpytest_subprocess(*base, "--durations=1")
    result.stdout.fnmatch_lines(["*slowest 1 duration*", "0.2*call*test_c*"])


def test_header_says_what_boxes_get(pytester: pytest.Pytester, run_inner) -> None:
    pytester.makepyfile("def test_x(): pass")
    result = run_inner("--nsbox")
    result.stdout.fnmatch_lines(["nsbox: *namespaces*"])
    assert "best-effort" not in result.stdout.str()
    result = run_inner("--nsbox", "-o", "nsbox_best_effort=true")
    result.stdout.fnmatch_lines(["nsbox: *best-effort limits: rlimits*"])
    assert "nsbox:" not in run_inner().stdout.str()  # quiet when nothing is boxed


def test_header_says_when_boxing_is_unavailable(pytester: pytest.Pytester,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """On a machine without namespaces (macOS, a locked-down Linux) --nsbox says so at
    the start, and which of fail/skip/run boxed tests will do."""
    from pytest_nsbox import doctor

    monkeypatch.setattr(doctor, "boxing_available",
                        lambda: (False, "user namespaces are off (test)"))
    pytester.makepyfile("def test_x(): pass")
    result = pytester.runpytest_inprocess("--nsbox", "-p", "no:randomly",
                                          "-o", "nsbox_unavailable=skip")
    result.stdout.fnmatch_lines([
        "nsbox: boxing is unavailable here: user namespaces are off (test); boxed tests "
        "will skip (ini nsbox_unavailable)"])


def test_a_marker_another_plugin_adds_at_collection_boxes_the_test(run_inner,
                                                                    pytester) -> None:
    """The markers are read after other plugins' own collection_modifyitems (trylast): a
    plugin loaded before this one (``-p``) is called after it otherwise."""
    pytester.makepyfile(marking="""
        import pytest

        def pytest_collection_modifyitems(items):
            for item in items:
                item.add_marker(pytest.mark.nsbox)
    """)
    pytester.makepyfile(test_marked="""
        from pytest_nsbox import current_box

        def test_boxed():
            assert current_box() is not None
    """)
    run_inner("-q", "-p", "marking", "test_marked.py").assert_outcomes(passed=1)
