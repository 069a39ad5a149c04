"""The pytest internals the plugin touches (pytest_nsbox/plugin/pytest_internals.py) still
have the shape and behaviour it relies on: one test each, on real pytest objects (items
collected in this process by pytester), so a pytest that changed one fails here, by name,
rather than somewhere deep in a boxed run. Quick (no box is made): they run in every
tox cell, the oldest pytest included."""

from __future__ import annotations

import functools
import inspect
import logging
import os
from pathlib import Path
from typing import Any

import pytest
from _pytest.fixtures import FixtureDef
from _pytest.runner import SetupState, call_and_report, runtestprotocol

from pytest_nsbox.plugin import pytest_internals as internals
from pytest_nsbox.plugin.protocol import _request_shared_fixtures

# under --nsbox (this suite in boxes), the inner sessions' wider fixtures are set up in the
# outer test's box, as the plugin warns: true, and not the point here
pytestmark = pytest.mark.filterwarnings(
    "ignore::pytest_nsbox.plugin.protocol.NsboxFixtureWarning")

#: inner configurations with pytest's own plugins only (an installed plugin's entry point
#: can cost seconds: pytester unloads what a test imported, so each test imports it again)
QUIET = ("-p", "no:cacheprovider")


@pytest.fixture(autouse=True)
def _no_plugin_autoload(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")


def _items(pytester: pytest.Pytester, source: str, *args: str) -> list[pytest.Item]:
    """The items of `source`, collected in this process (their session started)."""
    module = pytester.getmodulecol(source, configargs=(*QUIET, *args), withinit=False)
    return [item for item in pytester.genitems([module]) if isinstance(item, pytest.Item)]


def _item(pytester: pytest.Pytester, source: str, *args: str) -> pytest.Item:
    (item,) = _items(pytester, source, *args)
    return item


def _parameters(function: Any) -> list[str]:
    return list(inspect.signature(function).parameters)


def _pytests_execute() -> Any:
    """pytest's own `FixtureDef.execute`: in a box (this suite under --nsbox) the plugin's
    stand-in for it is installed, and holds the one it replaced."""
    execute = FixtureDef.execute
    while execute.__module__ != "_pytest.fixtures":
        execute = inspect.getclosurevars(execute).nonlocals["execute"]
    return execute


def test_an_item_has_a_request_pytest_renews_for_a_rerun_and_drops_after_teardown(
        pytester: pytest.Pytester) -> None:
    """item._request, item._initrequest(), item.funcargs, item._fixtureinfo."""
    item = _item(pytester, "def test_it(): pass")
    top = internals.top_request(item)
    assert type(top).__name__ == "TopRequest" and item.funcargs == {}  # type: ignore[attr-defined]
    runtestprotocol(item, log=False)
    assert item._request is False and item.funcargs is None  # type: ignore[attr-defined]
    assert internals.top_request(item) is None
    internals.renew_request_for_rerun(item)
    assert type(item._request).__name__ == "TopRequest"  # type: ignore[attr-defined]
    assert item.funcargs == {}  # type: ignore[attr-defined]
    internals.release_request(item)
    assert item._request is False and item.funcargs is None  # type: ignore[attr-defined]


SHARED = """
import pytest

calls = []

@pytest.fixture(scope="module")
def wide():
    calls.append("wide")
    return "wide value"

@pytest.fixture
def narrow(wide):
    calls.append("narrow")
    return "narrow on " + wide

@pytest.fixture
def value(value, wide):
    return value + 1

def test_it(narrow, value):
    pass
"""


def test_every_fixture_pytest_runs_goes_through_fixturedef_execute(
        pytester: pytest.Pytester) -> None:
    """FixtureDef.execute(self, request), looked up on the class; request._get_active_fixturedef."""
    assert _parameters(_pytests_execute()) == ["self", "request"]
    pytester.makeconftest("import pytest\n@pytest.fixture\ndef value():\n    return 1\n")
    item = _item(pytester, SHARED)
    internals.set_up_collectors(item)
    seen: list[str] = []
    original = FixtureDef.execute

    def noting(execute: internals.Execute) -> internals.Execute:
        def note(fixturedef: Any, request: Any) -> Any:
            seen.append(fixturedef.argname)
            return execute(fixturedef, request=request)

        return note

    with internals.fixture_execute_replaced(noting):
        internals.resolve_fixture(internals.top_request(item), "narrow")
    assert FixtureDef.execute is original
    assert seen == ["narrow", "wide"]  # narrow's execute resolves what it requests
    assert item.module.calls == ["wide", "narrow"]  # type: ignore[attr-defined]
    internals.teardown_towards(item, None)


def test_a_request_caches_what_it_resolved_and_forgets_what_the_plugin_stood_in_for(
        pytester: pytest.Pytester) -> None:
    """request._fixture_defs (a dict of name -> FixtureDef), request._arg2index (pytest 8.0:
    override depth, else absent), FixtureDef.cached_result (value, key, None): the wider
    fixtures set up before the box, the function ones (an override of itself too) after,
    in the same process here, as pytest would."""
    pytester.makeconftest("import pytest\n@pytest.fixture\ndef value():\n    return 1\n")
    item = _item(pytester, SHARED)
    top = internals.top_request(item)
    internals.set_up_collectors(item)
    _request_shared_fixtures(item)  # the plugin's own use of them
    assert isinstance(top._fixture_defs, dict)
    assert set(top._fixture_defs) == {"wide"}
    depth = getattr(top, "_arg2index", None)
    assert (depth is not None) == (pytest.version_tuple[:2] == (8, 0))
    if depth is not None:
        assert isinstance(depth, dict) and "value" not in depth and "narrow" not in depth
    result = top._fixture_defs["wide"].cached_result
    assert result[0] == "wide value" and result[2] is None
    assert item.funcargs == {"wide": "wide value"}  # type: ignore[attr-defined]
    assert item.module.calls == ["wide"]  # type: ignore[attr-defined]
    internals.leave_wider_teardowns_to_parent(item)  # as the box does
    report = internals.run_phase(item, "setup", None)
    assert report.passed, report.longrepr
    assert item.funcargs["narrow"] == "narrow on wide value"  # type: ignore[attr-defined]
    assert item.funcargs["value"] == 2  # type: ignore[attr-defined]
    assert item.module.calls == ["wide", "narrow"]  # type: ignore[attr-defined]
    internals.run_phase(item, "teardown", None)
    internals.teardown_towards(item, None)


def test_setup_state_stack_maps_each_node_to_its_finalizers_and_exception(
        pytester: pytest.Pytester) -> None:
    """session._setupstate: .stack a dict node -> (list of finalizers, exception or None) in
    set-up order; .setup(node) takes a collector; finalizers are appended to the list;
    .teardown_exact(nextitem) pops them all."""
    assert _parameters(SetupState.setup) == ["self", "item"]
    assert _parameters(SetupState.teardown_exact) == ["self", "nextitem"]
    item = _item(pytester, "def test_it(): pass")
    state = item.session._setupstate
    assert isinstance(state, SetupState)
    internals.set_up_collectors(item)
    stack = state.stack
    assert isinstance(stack, dict)
    assert list(stack) == item.listchain()
    for node, entry in stack.items():
        finalizers, exc = entry
        assert isinstance(finalizers, list) and exc is None
        assert finalizers[0] == node.teardown
    ran: list[str] = []
    internals.leave_wider_teardowns_to_parent(item)
    assert item not in stack
    assert item.parent is not None
    state.addfinalizer(lambda: ran.append("module"), item.parent)
    assert stack[item.parent][0] == []  # dropped: the parent runs these
    internals.teardown_towards(item, None)
    assert stack == {} and ran == []
    internals.set_up_collectors(item)
    internals.unset_up(item)
    assert item not in stack and item.parent in stack
    internals.teardown_towards(item, None)


def test_report_sections_are_a_list_an_items_next_report_carries(
        pytester: pytest.Pytester) -> None:
    """item._report_sections: (when, key, text), filled by add_report_section."""
    item = _item(pytester, "def test_it(): pass")
    item.add_report_section("call", "stdout", "text")
    assert item._report_sections == [("call", "stdout", "text")]
    internals.clear_report_sections(item)
    assert item._report_sections == []


def test_the_attributes_pytest_sets_on_an_item_while_it_runs_are_known(
        pytester: pytest.Pytester) -> None:
    """What the box does not send back: the item attributes pytest itself (re)sets (a
    cached property computed on the way is harmless to send)."""
    item = _item(pytester, "def test_it(): print('out')")
    before = {name: id(value) for name, value in vars(item).items()}
    runtestprotocol(item, log=False)
    changed = {name for name, value in vars(item).items() if before.get(name) != id(value)}
    assert {"_request", "funcargs"} <= changed
    cached = {name for name in changed if isinstance(
        inspect.getattr_static(type(item), name, None), functools.cached_property)}
    assert changed - cached <= internals.PYTEST_ITEM_ATTRIBUTES


def test_call_and_report_runs_one_phase_passing_keywords_to_its_hook(
        pytester: pytest.Pytester) -> None:
    """_pytest.runner.call_and_report(item, when, log=True, **kwds), runtestprotocol(item,
    log=True, nextitem=None); CallInfo.from_call(func, when, reraise=None) is pytest.CallInfo."""
    assert _parameters(call_and_report) == ["item", "when", "log", "kwds"]
    assert _parameters(runtestprotocol) == ["item", "log", "nextitem"]
    assert _parameters(pytest.CallInfo.from_call) == ["func", "when", "reraise"]
    first, second = _items(pytester, "def test_a(): pass\ndef test_b(): assert 0")
    internals.set_up_collectors(first)
    internals.unset_up(first)
    reports = [internals.run_phase(first, phase, second)
               for phase in ("setup", "call", "teardown")]
    assert [(r.when, r.outcome) for r in reports] == [
        ("setup", "passed"), ("call", "passed"), ("teardown", "passed")]
    assert second.parent in first.session._setupstate.stack  # kept for nextitem
    assert [r.outcome for r in internals.run_unboxed(second, None, log=False)] == [
        "passed", "failed", "passed"]
    assert first.session._setupstate.stack == {}


def test_the_skipping_plugin_decides_before_setup_and_keeps_its_xfail_in_the_stash(
        pytester: pytest.Pytester) -> None:
    """_pytest.skipping.evaluate_skip_marks, evaluate_xfail_marks (.run), xfailed_key."""
    from _pytest.skipping import xfailed_key

    items = _items(pytester, """
import pytest

@pytest.mark.skip
def test_skip(): pass

@pytest.mark.skipif("1 +")
def test_bad_condition(): pass

@pytest.mark.xfail(run=False)
def test_not_run(): pass

@pytest.mark.xfail
def test_xfail(): pass

def test_plain(): pass
""")
    assert [internals.skipped_before_setup(item) for item in items] == [
        True, True, True, False, False]
    xfail, plain = items[3:]
    internals.stash_xfail_evaluation(xfail)
    internals.stash_xfail_evaluation(plain)
    assert xfail.stash[xfailed_key].run is True  # type: ignore[union-attr]
    assert plain.stash[xfailed_key] is None


def test_the_capture_manager_captures_a_phase_and_gives_up_what_it_holds(
        pytester: pytest.Pytester) -> None:
    """The "capturemanager" plugin: is_globally_capturing(), resume_global_capture(),
    suspend_global_capture(in_=), read_global_capture() -> (out, err)."""
    from _pytest.capture import CaptureManager

    assert _parameters(CaptureManager.suspend_global_capture) == ["self", "in_"]
    item = _item(pytester, "def test_it(): pass")
    assert isinstance(item.config.pluginmanager.getplugin("capturemanager"), CaptureManager)
    with internals.captured_as_a_phase(item) as out:
        print("printed")
        os.write(2, b"written\n")
    assert out[0] == ("printed\n", "written\n")
    assert internals.capture_drained(item) == ("", "")
    plain = _item(pytester, "def test_it(): pass", "-s")
    with internals.captured_as_a_phase(plain) as out:
        pass
    assert out[0] == ("", "") and internals.capture_drained(plain) == ("", "")


@pytest.mark.parametrize("method", ["fd", "sys", "tee-sys", "no"])
def test_capture_and_logging_machinery_captures_the_pytest_process(
        pytester: pytest.Pytester, method: str) -> None:
    """_pytest.capture FDCapture, SysCapture(tee=), MultiCapture; _pytest.logging
    LogCaptureHandler, catching_logs; "logging-plugin" .formatter and .log_level."""
    config = pytester.parseconfigure(*QUIET, f"--capture={method}", "--log-level=INFO",
                                     "--log-format=%(levelname)s %(message)s")
    capture = internals.session_capture(config)
    assert (capture is None) == (method == "no")
    formatter, level = internals.logging_settings(config)
    assert isinstance(formatter, logging.Formatter) and level == logging.INFO
    ended: list[tuple[str, str, str]] = []
    with internals.output_and_logs_captured(capture, formatter, level,
                                            lambda *texts: ended.append(texts)):
        print("printed", flush=True)
        logging.getLogger("nsbox-test").info("logged")
        logging.getLogger("nsbox-test").debug("below the level")
    ((out, err, log),) = ended
    assert out == ("" if method == "no" else "printed\n") and err == ""
    assert log == "INFO logged"


def test_a_deserialized_report_can_share_its_items_node_id(pytester: pytest.Pytester) -> None:
    """TestReport._id (pytest 9: the item's NodeId type), the "$report_type" key the
    deserializer leaves among the report's attributes."""
    item = _item(pytester, "def test_it(): pass")
    config = item.config
    report = call_and_report(item, "setup", log=False)
    data = config.hook.pytest_report_to_serializable(config=config, report=report)
    assert data[internals.REPORT_TYPE_KEY] == "TestReport"
    copy = config.hook.pytest_report_from_serializable(config=config, data=data)
    assert internals.REPORT_TYPE_KEY in vars(copy)
    internals.share_node_id(copy, item)
    assert copy.nodeid == item.nodeid
    if pytest.version_tuple >= (9,):
        assert vars(copy)["_id"] is item.id  # type: ignore[attr-defined]
    else:
        assert "_id" not in vars(copy) and not hasattr(item, "id")
    call_and_report(item, "teardown", log=False, nextitem=None)


def test_only_the_tb_styles_the_plugin_names_show_a_failure_as_its_crash_line_alone(
        pytester: pytest.Pytester) -> None:
    """config.option.tbstyle, and which styles print a failed report's sections."""
    pytester.makepyfile("""
def test_it(request):
    request.node.add_report_section("call", "nsbox network", "SECTION-TEXT")
    assert 0
""")
    for style in ("line", "no", "short"):
        config = pytester.parseconfig(f"--tb={style}")
        result = pytester.runpytest_inprocess(*QUIET, f"--tb={style}")
        shown = "SECTION-TEXT" in result.stdout.str()
        assert shown is not internals.crash_line_only(config), style


def test_the_session_tmp_path_base_comes_from_the_tmpdir_plugin(
        pytester: pytest.Pytester) -> None:
    """config._tmp_path_factory: set by the tmpdir plugin, absent without it."""
    config = pytester.parseconfigure(*QUIET, f"--basetemp={pytester.path / 'base'}")
    base = internals.tmp_path_base(config)
    assert base is not None and Path(base) == pytester.path / "base" and Path(base).is_dir()
    assert internals.tmp_path_base(pytester.parseconfigure(*QUIET, "-p", "no:tmpdir")) is None


def test_the_terminal_summary_counts_stats_and_titles_its_sections(
        pytester: pytest.Pytester) -> None:
    """TerminalReporter.stats (count_towards_summary), write_sep(sep, title), and the
    short test summary written after every other pytest_terminal_summary."""
    pytester.makeconftest("""
import pytest
from pytest_nsbox.plugin.pytest_internals import (
    SHORT_SUMMARY_TITLE, count_in_summary, section_titles_noted)

@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_terminal_summary(terminalreporter):
    titles = []
    with section_titles_noted(terminalreporter, titles):
        yield
    count_in_summary(terminalreporter, "over budget", ["test_it.py::test_fails"])
    terminalreporter.write_line(f"TITLES {titles}")
""")
    pytester.makepyfile(test_it="def test_fails(): assert 0\ndef test_passes(): pass")
    result = pytester.runpytest_inprocess(*QUIET)
    result.stdout.fnmatch_lines([
        "TITLES [[]*'short test summary info'*[]]",
        "*1 failed, 1 passed, 1 over budget in *",
    ])
    assert internals.SHORT_SUMMARY_TITLE == "short test summary info"


def test_rerunfailures_runs_each_try_through_its_modules_runtestprotocol(
        pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    """pytest-rerunfailures: the module global `runtestprotocol` its protocol hook calls,
    and `get_reruns_count(item)`."""
    try:
        import pytest_rerunfailures
    except ImportError:
        pytest.skip("lacks: pytest-rerunfailures (not in this tox cell)")
    hook = pytest_rerunfailures.pytest_runtest_protocol
    assert "runtestprotocol" in hook.__code__.co_names  # read from the module at each run
    assert _parameters(pytest_rerunfailures.get_reruns_count) == ["item"]
    pytester.makeconftest("""
from pytest_nsbox.plugin.pytest_internals import (
    rerunfailures_protocol_replaced, rerunfailures_will_run)

runs = []

def pytest_configure(config):
    def counting(original):
        def protocol(item, log=True, nextitem=None):
            runs.append(item.name)
            return original(item, log=log, nextitem=nextitem)
        return protocol
    rerunfailures_protocol_replaced(config, counting)

def pytest_runtest_setup(item):
    print("WILL RERUN", item.name, rerunfailures_will_run(item))

def pytest_unconfigure(config):
    print("RUNS", runs)
""")
    pytester.makepyfile(test_it="""
import pytest

tries = []

@pytest.mark.flaky(reruns=1)
def test_flaky():
    tries.append(1)
    assert len(tries) > 1

def test_plain():
    pass
""")
    monkeypatch.delenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD")  # its entry point names it
    result = pytester.runpytest_inprocess(*QUIET, "-p", "no:randomly", "-p",
                                          "no:hypothesispytest", "-s")
    assert result.parseoutcomes() == {"passed": 2, "rerun": 1}
    result.stdout.fnmatch_lines(["*WILL RERUN test_flaky True*", "*WILL RERUN test_plain False*",
                                 "RUNS ['test_flaky', 'test_flaky']"])
