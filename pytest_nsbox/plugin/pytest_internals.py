"""Every pytest internal the plugin touches, each behind one small name.

A boxed test's runtest protocol is split between the pytest process and the box, which
pytest's public API does not offer: the plugin must set up a test's collectors and wider
fixtures without its function fixtures, hand a forked process the rest, and merge what
comes back as if one process had run it. What that needs of pytest's private objects
lives here, and nowhere else in the package, one section an internal, each naming the
pytest versions it was read against. ``tests/test_pytest_internals.py`` has a test for
each that fails on a pytest that changed it; when one does, the fix belongs in this
module.

Read against: pytest 8.0.2 (the oldest supported, tox cell py311-pytest80), 8.1.1,
8.4.2 and 9.2.0; pytest-rerunfailures 12.0 (the oldest the test extra allows) and 16.7.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import pytest
from _pytest.fixtures import FixtureDef
from _pytest.runner import call_and_report, runtestprotocol

__all__ = [
    "PYTEST_ITEM_ATTRIBUTES",
    "REPORT_TYPE_KEY",
    "SHORT_SUMMARY_TITLE",
    "Execute",
    "RunProtocol",
    "capture_drained",
    "captured_as_a_phase",
    "clear_report_sections",
    "count_in_summary",
    "crash_line_only",
    "fixture_execute_replaced",
    "forget_resolved",
    "leave_wider_teardowns_to_parent",
    "logging_settings",
    "output_and_logs_captured",
    "release_request",
    "renew_request_for_rerun",
    "rerunfailures_protocol_replaced",
    "rerunfailures_will_run",
    "resolve_fixture",
    "run_phase",
    "run_unboxed",
    "section_titles_noted",
    "session_capture",
    "set_up_collectors",
    "share_node_id",
    "skipped_before_setup",
    "stash_xfail_evaluation",
    "teardown_towards",
    "tmp_path_base",
    "top_request",
    "unset_up",
]

# -- an item's fixture request: item._request, item._initrequest(), item.funcargs -------
# pytest 8.0.2 .. 9.2.0: `Function._initrequest()` sets `funcargs = {}` and `_request =
# TopRequest(item)`; `runtestprotocol` sets `_request = False` and `funcargs = None` after
# the teardown, and calls `_initrequest()` again when `_request` is falsy (a rerun, as
# pytest-rerunfailures does). `_fixtureinfo` is None for an item without fixtures
# support (not a `Function`). Items of other kinds have no `_request` at all.


def renew_request_for_rerun(item: pytest.Item) -> None:
    """A rerun item gets a fresh request, as `runtestprotocol` gives it."""
    if hasattr(item, "_request") and not item._request:
        item._initrequest()  # type: ignore[attr-defined]


def top_request(item: pytest.Item) -> Any:
    """The item's `TopRequest`, or None for an item that resolves no fixtures."""
    top = getattr(item, "_request", None)
    if not top or getattr(item, "_fixtureinfo", None) is None:
        return None
    return top


def release_request(item: pytest.Item) -> None:
    """Drop the item's request and fixture values after its teardown, as
    `runtestprotocol` does (5000 tests must not keep 5000 requests alive)."""
    if hasattr(item, "_request"):
        item._request = False
        item.funcargs = None  # type: ignore[attr-defined]


# -- fixture resolution: FixtureDef.execute, request._get_active_fixturedef,
#    request._fixture_defs, request._arg2index ----------------------------------------
# pytest 8.0.2 .. 9.2.0: every fixture a request resolves goes through
# `request._get_active_fixturedef(argname)`, which caches the `FixtureDef` in the dict
# `request._fixture_defs` (shared by the item's TopRequest and its SubRequests) and runs
# it through `FixtureDef.execute(self, request)`, looked up on the class. pytest 8.0 keeps
# a fixture's override depth in the dict `request._arg2index` (gone from 8.1). A
# `FixtureDef`'s `cached_result` is (value, cache key, exception or None) in every one
# (the exception is (exc, traceback) from 8.4; only "is None" is read here).

#: `FixtureDef.execute` as a function of (fixturedef, request=)
Execute = Callable[..., Any]


@contextlib.contextmanager
def fixture_execute_replaced(make: Callable[[Execute], Execute]) -> Iterator[None]:
    """Every fixture pytest runs in the block goes through ``make(execute)``, which gets
    the `FixtureDef.execute` it replaces; the original is back after the block."""
    execute: Execute = FixtureDef.execute
    FixtureDef.execute = make(execute)  # type: ignore[method-assign]
    try:
        yield
    finally:
        FixtureDef.execute = execute  # type: ignore[method-assign]


def resolve_fixture(request: Any, argname: str) -> Any:
    """Resolve `argname` as pytest resolves an argument (override depth, cache, execute)."""
    return request._get_active_fixturedef(argname)


def forget_resolved(item: pytest.Item, request: Any, forget: set[int]) -> None:
    """Leave `request` as if the fixtures in `forget` (ids of their `FixtureDef`) had never
    been resolved, and put the values of the others that succeeded in `item.funcargs`."""
    cached = request._fixture_defs
    depth = getattr(request, "_arg2index", None)  # pytest 8.0 counts override depth here
    for name, fixturedef in list(cached.items()):
        if id(fixturedef) in forget:
            del cached[name]
            if depth is not None:
                depth.pop(name, None)
        elif (result := getattr(fixturedef, "cached_result", None)) and result[2] is None:
            item.funcargs[name] = result[0]  # type: ignore[attr-defined]


# -- the session's SetupState: session._setupstate .stack, .setup, .teardown_exact -----
# pytest 8.0.2 .. 9.2.0: `stack` is a dict, node -> (list of finalizers, exception or
# None) in set-up order (the exception is (exc, traceback) from 8.4; it is only copied
# here); `setup(item)` sets up every node of the item's chain not yet on it (any node,
# not only an item, works); `teardown_exact(nextitem)` tears down what `nextitem` does not
# share, popping `stack` and calling each finalizers list from its end.


def set_up_collectors(item: pytest.Item) -> None:
    """Set up the item's collectors, then push the item as set up, so its wider fixtures
    can be requested as pytest expects while its own setup is left to the box."""
    state = item.session._setupstate
    state.setup(item.parent)  # type: ignore[arg-type]
    state.stack[item] = ([item.teardown], None)


def unset_up(item: pytest.Item) -> None:
    """Take the item off the stack `set_up_collectors` pushed it on, to set it up again."""
    item.session._setupstate.stack.pop(item, None)


def teardown_towards(item: pytest.Item, nextitem: pytest.Item | None) -> None:
    """Tear down what `nextitem` does not share (all of it when None), as pytest does."""
    item.session._setupstate.teardown_exact(nextitem)


class _Dropped(list):  # type: ignore[type-arg]
    """The finalizers of a node the parent owns, as the box sees them: none, and none added.

    A wider fixture's teardown belongs to the pytest process. pytest 8.0 and 8.1 register
    a cached fixture's finish again each time a function fixture asks for it; kept, the
    box that ends a module or the session would run that teardown a second time.
    """

    def append(self, _finalizer: Any) -> None:
        return None


def leave_wider_teardowns_to_parent(item: pytest.Item) -> None:
    """In a box: the item is not set up yet (the parent pushed it), and the collectors'
    finalizers it inherited are the parent's to run, not the box's."""
    stack = item.session._setupstate.stack
    for node, (_, exc) in list(stack.items()):
        if node is item:
            del stack[node]
        else:
            stack[node] = (_Dropped(), exc)


# -- the item's captured sections: item._report_sections -------------------------------
# pytest 8.0.2 .. 9.2.0: a list of (when, key, text) that `Item.add_report_section` fills
# and `TestReport.from_item_and_call` reads; `runtestprotocol` does not clear it (the
# plugin does, once the box's reports hold it).


def clear_report_sections(item: pytest.Item) -> None:
    """Forget the captured sections the item's next report would carry."""
    item._report_sections.clear()


#: attributes pytest itself sets on an item while it runs (8.0.2 .. 9.2.0; `_store` is the
#: old alias of `stash`, still set, `_instance` a `Function`'s cached instance): the box
#: sends back the attributes other plugins set, never these
PYTEST_ITEM_ATTRIBUTES = frozenset({"_request", "funcargs", "_report_sections", "stash",
                                    "_store", "setup", "user_properties", "keywords",
                                    "_obj", "_instance"})


# -- the runner: _pytest.runner.call_and_report, runtestprotocol --------------------------
# pytest 8.0.2 .. 9.2.0: `call_and_report(item, when, log=True, **kwds)` runs one phase's
# hook (the keywords, e.g. nextitem, go to the hook) and makes its report through
# pytest_runtest_makereport; `runtestprotocol(item, log=True, nextitem=None)` is the
# whole unboxed protocol. (`CallInfo.from_call(func, when, reraise=None)` is public:
# `pytest.CallInfo`.)


def run_phase(item: pytest.Item, phase: str,
              nextitem: pytest.Item | None) -> pytest.TestReport:
    """One phase of the item and its report, as pytest makes it, not logged."""
    if phase == "teardown":
        return call_and_report(item, "teardown", log=False, nextitem=nextitem)
    return call_and_report(item, phase, log=False)  # type: ignore[arg-type]


def run_unboxed(item: pytest.Item, nextitem: pytest.Item | None,
                log: bool) -> list[pytest.TestReport]:
    """pytest's own runtest protocol for the item."""
    return runtestprotocol(item, log=log, nextitem=nextitem)


# -- the skipping plugin: _pytest.skipping.evaluate_skip_marks, evaluate_xfail_marks,
#    xfailed_key ----------------------------------------------------------------------
# pytest 8.0.2 .. 9.2.0: `evaluate_skip_marks(item)` returns a Skip or None,
# `evaluate_xfail_marks(item)` an Xfail (`.run`) or None; either raises on a bad
# condition. `pytest_runtest_setup` skips before any fixture on a Skip or on an Xfail
# with run=False (unless --runxfail), and keeps the Xfail in `item.stash[xfailed_key]`,
# which `pytest_runtest_makereport` reads. Imported late, as a pytest that moved them
# costs the plugin only this nicety.


def skipped_before_setup(item: pytest.Item) -> bool:
    """Whether pytest's skipping plugin stops this test's setup before any fixture: a skip
    mark, ``xfail(run=False)``, or a mark condition that raises. Unboxed, such a test sets
    up no fixture (a missing one is no error, a session fixture only it uses never runs)."""
    try:
        from _pytest.skipping import evaluate_skip_marks, evaluate_xfail_marks
    except ImportError:  # pragma: no cover - pytest moved them
        return False
    try:
        if evaluate_skip_marks(item):
            return True
        xfailed = evaluate_xfail_marks(item)
    except BaseException:
        return True  # the box's setup reports the mark's error, as unboxed
    return bool(xfailed and not xfailed.run and not item.config.option.runxfail)


def stash_xfail_evaluation(item: pytest.Item) -> None:
    """Evaluate the item's xfail mark here, where the box that did so died, so the
    skipping plugin judges a crash as it judges a failure."""
    try:
        from _pytest.skipping import evaluate_xfail_marks, xfailed_key
    except ImportError:  # pragma: no cover - pytest moved it
        return
    if xfailed_key not in item.stash:
        item.stash[xfailed_key] = evaluate_xfail_marks(item)


# -- the capture manager: plugin "capturemanager" .is_globally_capturing(),
#    .resume_global_capture(), .suspend_global_capture(in_=), .read_global_capture() ---
# pytest 8.0.2 .. 9.2.0: all four on `CaptureManager`, registered as "capturemanager";
# `read_global_capture()` returns a CaptureResult (out, err). Not capturing: -s, or
# -p no:capture (no plugin at all).


@contextlib.contextmanager
def captured_as_a_phase(item: pytest.Item) -> Iterator[list[tuple[str, str]]]:
    """Capture what runs in the block the way pytest captures a phase: [(out, err)] after."""
    capman = item.config.pluginmanager.getplugin("capturemanager")
    result = [("", "")]
    if capman is None or not capman.is_globally_capturing():
        yield result
        return
    capman.resume_global_capture()
    try:
        yield result
    finally:
        capman.suspend_global_capture(in_=False)
        out, err = capman.read_global_capture()
        result[0] = (out, err)


def capture_drained(item: pytest.Item) -> tuple[str, str]:
    """What pytest's global capture holds now, taken out of it (out, err)."""
    capman = item.config.pluginmanager.getplugin("capturemanager")
    if capman is None or not capman.is_globally_capturing():
        return "", ""
    out, err = capman.read_global_capture()
    return out, err


# -- capture and logging machinery: _pytest.capture.FDCapture, SysCapture(tee=),
#    MultiCapture; _pytest.logging.LogCaptureHandler, catching_logs; the plugin
#    "logging-plugin" .formatter, .log_level --------------------------------------------
# pytest 8.0.2 .. 9.2.0: `FDCapture(fd)`, `SysCapture(fd, tee=)`, `MultiCapture(in_, out,
# err)` with start_capturing, suspend_capturing, resume_capturing, readouterr (out, err)
# and stop_capturing; `LogCaptureHandler()` writes to `.stream` (a StringIO);
# `catching_logs(handler, level=None)` attaches it to the root logger in a with block;
# `LoggingPlugin` (registered as "logging-plugin") has `formatter` and `log_level`.


def session_capture(config: pytest.Config) -> Any:
    """A capture of fd 1 and 2 (or sys.stdout and sys.stderr) by the session's --capture
    method, started and suspended, stopped when the session ends; None under -s."""
    from _pytest.capture import FDCapture, MultiCapture, SysCapture

    capturing = config.pluginmanager.getplugin("capturemanager") is not None
    method = config.getoption("capture", "no") if capturing else "no"  # -p no:capture
    out: Any
    err: Any
    if method == "fd":
        out, err = FDCapture(1), FDCapture(2)
    elif method in ("sys", "tee-sys"):
        tee = method == "tee-sys"
        out, err = SysCapture(1, tee=tee), SysCapture(2, tee=tee)
    else:
        return None
    capture: Any = MultiCapture(in_=None, out=out, err=err)
    capture.start_capturing()
    capture.suspend_capturing()
    config.add_cleanup(capture.stop_capturing)
    return capture


def logging_settings(config: pytest.Config) -> tuple[Any, int | None]:
    """The formatter and level of the session's log capture (log_format, log_level)."""
    logging_plugin = config.pluginmanager.get_plugin("logging-plugin")
    return getattr(logging_plugin, "formatter", None), getattr(logging_plugin, "log_level", None)


@contextlib.contextmanager
def output_and_logs_captured(capture: Any, formatter: Any, level: int | None,
                             ended: Callable[[str, str, str], None]) -> Iterator[None]:
    """Capture output by `capture` (from `session_capture`) and log records, formatted
    as pytest formats them, while the block runs; ``ended(out, err, log)`` after."""
    from _pytest.logging import LogCaptureHandler, catching_logs

    handler = LogCaptureHandler()
    if formatter is not None:
        handler.setFormatter(formatter)
    if capture is not None:
        capture.resume_capturing()
    try:
        with catching_logs(handler, level=level):
            yield
    finally:
        out = err = ""
        if capture is not None:
            capture.suspend_capturing()
            out, err = capture.readouterr()
        ended(out, err, handler.stream.getvalue().strip())


# -- reports: TestReport._id (pytest 9's parsed node id), the "$report_type" key -------
# pytest 9.0 .. 9.2.0: a report's node id is a `NodeId` in `_id` (`nodeid` is a property
# that parses a string again), the same type as `item.id`; pytest 8.0.2 .. 8.4.2 keep the
# string in `nodeid` and items have no `id`. pytest 8.0.2 .. 9.2.0: the serialized report
# names its class under "$report_type", and the deserializer leaves that key among the
# report's attributes.

#: the key pytest's report serialization names a report's class under
REPORT_TYPE_KEY = "$report_type"


def share_node_id(report: pytest.TestReport, item: pytest.Item) -> None:
    """Give `report` the item's node id object (pytest 9's `NodeId`, else the string),
    not a copy of its own."""
    attributes = vars(report)
    node_id = getattr(item, "id", None)
    if "_id" in attributes and type(node_id) is type(attributes["_id"]):
        attributes["_id"] = node_id  # what `report.nodeid = item.nodeid` would parse anew
    else:
        report.nodeid = item.nodeid


# -- the terminal reporter: --tb styles (config.option.tbstyle) --------------------------
# pytest 8.0.2 .. 8.4.2 show a failure under --tb=line and --tb=no as its crash line
# alone; pytest 9.0 .. 9.2.0 show a report's sections under --tb=line.


def crash_line_only(config: pytest.Config) -> bool:
    """Whether the terminal shows a failure as its crash line alone, without sections."""
    style = getattr(config.option, "tbstyle", "auto")
    return style == "no" or (style == "line" and pytest.version_tuple < (9,))


# -- the terminal reporter's summary: TerminalReporter.stats, .write_sep, the short test
#    summary -------------------------------------------------------------------------
# pytest 8.0.2 .. 9.2.0: `stats` is a dict, a category -> the reports in it; the final line
# ("3 passed, 1 over budget in 2.0s") counts each category's entries whose
# `count_towards_summary` is true (missing: true). The reporter's own
# pytest_terminal_summary wrapper writes the "short test summary info" section, titled
# through `write_sep(sep, title, ...)`, after every other implementation has run.

#: the title of pytest's short test summary section
SHORT_SUMMARY_TITLE = "short test summary info"


class _Counted:
    """An entry of the terminal reporter's stats: other plugins read them as reports."""

    when = "usage"
    longrepr = None
    count_towards_summary = True

    def __init__(self, nodeid: str, outcome: str) -> None:
        self.nodeid = nodeid
        self.outcome = outcome
        self.user_properties: list[tuple[str, Any]] = []
        self.sections: list[tuple[str, str]] = []


def count_in_summary(terminalreporter: Any, category: str, nodeids: Iterable[str]) -> None:
    """Count `nodeids` in pytest's final line, as "N <category>"."""
    entries = terminalreporter.stats.setdefault(category, [])
    entries.extend(_Counted(nodeid, category) for nodeid in nodeids)


@contextlib.contextmanager
def section_titles_noted(terminalreporter: Any, titles: list[str]) -> Iterator[None]:
    """Note in `titles` the title of each section the terminal reporter writes in the block."""
    write_sep = terminalreporter.write_sep

    def noting(sep: str, title: str | None = None, *args: Any, **kwargs: Any) -> None:
        titles.append(title or "")
        write_sep(sep, title, *args, **kwargs)

    terminalreporter.write_sep = noting
    try:
        yield
    finally:
        del terminalreporter.write_sep


# -- the tmp_path plugin: config._tmp_path_factory -----------------------------------------
# pytest 8.0.2 .. 9.2.0: the tmpdir plugin's pytest_configure sets it (a TempPathFactory,
# `getbasetemp()` makes and returns the session's base); absent under -p no:tmpdir.


def tmp_path_base(config: pytest.Config) -> str | None:
    """The session's tmp_path base directory (made now), or None without the plugin."""
    factory = getattr(config, "_tmp_path_factory", None)
    if factory is None:
        return None
    return str(factory.getbasetemp())


# -- pytest-rerunfailures: its module's `runtestprotocol` and `get_reruns_count(item)` ---
# pytest-rerunfailures 12.0 and 16.7: the plugin module (registered as
# "rerunfailures") imports `runtestprotocol` from `_pytest.runner` and calls it by its
# module global, once a run, in its own pytest_runtest_protocol; `get_reruns_count(item)`
# is None for an item it leaves to pytest.

#: `runtestprotocol(item, log=True, nextitem=None)`
RunProtocol = Callable[..., list[pytest.TestReport]]


def rerunfailures_protocol_replaced(config: pytest.Config,
                                    make: Callable[[RunProtocol], RunProtocol]) -> None:
    """Each run pytest-rerunfailures makes goes through ``make(runtestprotocol)`` until the
    session ends; nothing when the plugin is not there."""
    module = config.pluginmanager.get_plugin("rerunfailures")
    original = getattr(module, "runtestprotocol", None)
    if original is None:
        return
    module.runtestprotocol = make(original)  # type: ignore[union-attr]
    config.add_cleanup(lambda: setattr(module, "runtestprotocol", original))


def rerunfailures_will_run(item: pytest.Item) -> bool:
    """Whether pytest-rerunfailures runs this item's protocol (its own loop)."""
    module = item.config.pluginmanager.get_plugin("rerunfailures")
    count = getattr(module, "get_reruns_count", None)
    return count is not None and count(item) is not None
