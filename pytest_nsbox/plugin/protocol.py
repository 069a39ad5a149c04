"""The runtest protocol of a boxed test, split between the pytest process and the box.

Parent: set up the collector chain and every fixture of class scope or wider (once, here,
where they are torn down at the normal time), then start the box. Box: detach the
finalizers it inherited, run setup (function fixtures), call and teardown of the item,
and send each report as it is made. Parent: log the reports, make a failure report for
the phase a dead box never finished, then tear down what `nextitem` no longer needs.
"""

from __future__ import annotations

import contextlib
import sys
import warnings
from typing import Any, Literal

import pytest
from pytest import CallInfo

from ..box.api import Box
from ..box.errors import BoxExited, BoxUnavailable
from ..box.options import BoxOptions, OptionError
from ..box.outcome import Outcome
from . import pytest_internals as internals

Phase = Literal["setup", "call", "teardown"]
PHASES: tuple[Phase, ...] = ("setup", "call", "teardown")


def boxed_runtestprotocol(item: pytest.Item, nextitem: pytest.Item | None,
                          options: BoxOptions, paths: Any, log: bool = True,
                          ) -> list[pytest.TestReport]:
    """`runtestprotocol` for a boxed item: its reports, logged when `log` is true."""
    ihook = item.ihook
    internals.renew_request_for_rerun(item)  # a rerun of this item
    shared, shared_out = _setup_shared(item)
    for name, text in zip(("stdout", "stderr"), shared_out, strict=True):
        if text:
            item.add_report_section("setup", name, text)  # the box's reports carry it
    reports: dict[str, pytest.TestReport] = {}
    pairs: list[tuple[str, Any]] = []  # one set of (name, value) tuples for both reports
    exit_request = None
    outcome = None
    if shared.excinfo is None:
        try:
            options = _adjusted(item, options)
        except OptionError as exc:
            shared = _refused_call(f"a pytest_nsbox_options hook: {exc}", "fail")
    if shared.excinfo is None:
        box = _box(options, paths)
        refusal = None
        try:
            outcome = box.execute(
                lambda send: _in_box(item, nextitem, send),
                on_frozen=lambda pids: item.ihook.pytest_nsbox_frozen(item=item, pids=pids),
                next_box=_next_box(nextitem, paths), defer=True,
                watch=paths.session_output.watching() if paths.session_output else None)
            if isinstance(refused := outcome.error(options), BoxUnavailable):
                outcome = None
                raise refused
        except BoxUnavailable as exc:
            refusal = str(exc)
        if refusal is not None:  # out of the except: the report shows no chained exception
            if paths.unavailable == "run":
                return _run_unboxed(item, nextitem, refusal, log)
            shared = _refused_call(refusal, paths.unavailable)
    if outcome is None:
        reports["setup"] = _make_report(item, shared)
    else:
        item.ihook.pytest_nsbox_outcome(item=item, outcome=outcome)
        internals.clear_report_sections(item)  # the box's reports hold them now
        reports, exit_request = _reports_from(item, options, outcome)
        if paths.session_output is not None:
            failed = [report for report in reports.values() if report.failed]
            target = failed[0] if failed else reports.get("call") or reports.get("setup")
            if target is not None:
                paths.session_output.attach(target)
        if paths.keep_failed and options.tmpfs:
            _keep_if_failed(item, options, outcome, reports)
        pairs = list(_usage_properties(outcome).items())
        last = reports.get("call") or reports.get("setup")
        if last is not None:
            last.user_properties.extend(pairs)
    session = item.session
    if session.shouldfail or session.shouldstop:
        nextitem = None
    with internals.captured_as_a_phase(item) as out:
        teardown = CallInfo.from_call(lambda: internals.teardown_towards(item, nextitem),
                                      "teardown",
                                      reraise=(pytest.exit.Exception, KeyboardInterrupt))
    for name, text in zip(("stdout", "stderr"), out[0], strict=True):
        if text:
            item.add_report_section("teardown", name, text)
    parent_teardown = _make_report(item, teardown)
    reports["teardown"] = _merge_teardown(reports.get("teardown"), parent_teardown)
    reports["teardown"].user_properties.extend(pairs)  # junitxml reads the teardown's
    ordered = [reports[phase] for phase in PHASES if phase in reports]
    if log:
        for report in ordered:
            ihook.pytest_runtest_logreport(report=report)
    internals.clear_report_sections(item)
    internals.release_request(item)
    if exit_request is not None:
        pytest.exit(exit_request[0], exit_request[1])
    return ordered


def _keep_if_failed(item: pytest.Item, options: BoxOptions, outcome: Outcome,
                    reports: dict[str, pytest.TestReport]) -> None:
    """--nsbox-keep-failed: what a failed box wrote to its private paths stays on disk,
    and its failing report says where (as Bazel's --sandbox_debug keeps a sandbox)."""
    failed = [report for report in reports.values() if report.failed]
    if not failed:
        return
    if outcome.storage is None:
        text = ("nothing kept: the box's private paths were in RAM (tmpfs_storage='ram', "
                "or no storage on disk here: `pytest-nsbox doctor` says why)")
    else:
        from ..box import spawn

        try:
            kept = spawn.keep_files(outcome.storage, item.nodeid, options.tmpfs)
        except OSError as exc:
            text = f"the box's files could not be kept: {exc}"
        else:
            text = "\n".join(f"{path} is kept at {where}" for path, where in kept.items())
            text += ("\n(removed by the next session without --nsbox-keep-failed, or by "
                     "`pytest-nsbox clean`)")
    failed[-1].sections.append(("nsbox: the box's files", text))


def _adjusted(item: pytest.Item, options: BoxOptions) -> BoxOptions:
    """Options after the `pytest_nsbox_options` hooks (each may return changes)."""
    changes: dict[str, Any] = {}
    for result in reversed(item.ihook.pytest_nsbox_options(item=item, options=options)):
        changes.update(result)
    return options.replace(**changes) if changes else options


def _refused_call(message: str, policy: str) -> CallInfo[None]:
    """The setup outcome of a box that cannot be made: a failure, or a skip."""

    def refuse() -> None:
        if policy == "skip":
            pytest.skip(f"[nsbox] {message}")
        pytest.fail(f"[nsbox] {message}", pytrace=False)

    return CallInfo.from_call(refuse, "setup")


def _next_box(nextitem: pytest.Item | None, paths: Any) -> Box | None:
    """The next test's box, made ahead while this one runs (its options as collected:
    a `pytest_nsbox_options` hook that changes them makes that box unused)."""
    if nextitem is None:
        return None
    from .state import options_key

    options = nextitem.stash.get(options_key, None)
    return None if options is None else _box(options, paths)


_boxes: dict[int, tuple[BoxOptions, Any, Box]] = {}


def forget_boxes() -> None:
    _boxes.clear()


def _box(options: BoxOptions, paths: Any) -> Box:
    """One Box per distinct options (the items that share a marker share its options)."""
    known = _boxes.get(id(options))
    if known is not None and known[0] is options and known[1] is paths:
        return known[2]
    if len(_boxes) > 256:
        _boxes.clear()
    box = Box(options, keep_paths=paths.keep_paths, writable_paths=paths.writable_paths)
    _boxes[id(options)] = (options, paths, box)
    return box


def _run_unboxed(item: pytest.Item, nextitem: pytest.Item | None, message: str,
                 log: bool) -> list[pytest.TestReport]:
    """nsbox_unavailable = run: the test runs here, unisolated, with a warning saying so."""
    item.warn(pytest.PytestWarning(f"nsbox: running unboxed, the box is unavailable: {message}"))
    internals.unset_up(item)  # set up again for real below
    return internals.run_unboxed(item, nextitem, log)


# -- parent: fixtures of class scope and wider ------------------------------------------


def _setup_shared(item: pytest.Item) -> tuple[CallInfo[None], tuple[str, str]]:
    """Set up the collectors and the wider-scoped fixtures of `item` in this process."""

    def setup() -> None:
        if internals.skipped_before_setup(item):
            return  # the box's setup skips it, as unboxed, before any fixture is set up
        internals.set_up_collectors(item)
        _request_shared_fixtures(item)

    with internals.captured_as_a_phase(item) as out:
        call = CallInfo.from_call(setup, "setup",
                                  reraise=(pytest.exit.Exception, KeyboardInterrupt))
    return call, out[0]


def _request_shared_fixtures(item: pytest.Item) -> None:
    """Set up here every fixture of class scope or wider that the box's setup will reach.

    pytest's own resolution walks the item's fixtures, with function fixtures stood in
    for: a stand-in requests what its fixture requests (so a same-name override reaches
    the definition it overrides, at any depth) and runs nothing. Wider fixtures run for
    real, once, here, with their teardown on the collector that owns them. The stand-ins
    leave no trace, so the box sets its function fixtures up in pytest's order, and finds
    the wider ones cached.
    """
    top = internals.top_request(item)
    if top is None:
        return
    stood_in: set[int] = set()

    def stand_in_for(execute: internals.Execute) -> internals.Execute:
        def stand_in(fixturedef: Any, request: Any) -> Any:
            if fixturedef.scope != "function":
                return execute(fixturedef, request=request)
            stood_in.add(id(fixturedef))
            for argname in fixturedef.argnames:
                internals.resolve_fixture(request, argname)
            return None

        return stand_in

    try:
        with internals.fixture_execute_replaced(stand_in_for):
            for name in item.fixturenames:  # type: ignore[attr-defined]
                internals.resolve_fixture(top, name)
    finally:
        # the request as if only the wider fixtures had been asked for
        internals.forget_resolved(item, top, stood_in)


def warn_of_wider_fixtures_set_up_here(
        item: pytest.Item) -> contextlib.AbstractContextManager[None]:
    """In a box: a fixture of class scope or wider that a test first asks for at run time
    (``request.getfixturevalue``) cannot have been set up before the box; it is set up
    here, in the box, and not torn down by pytest. Say so, with the fix, while the block
    runs (the box's phases)."""

    def noting_for(execute: internals.Execute) -> internals.Execute:
        def noting(fixturedef: Any, request: Any) -> Any:
            if fixturedef.scope != "function" and fixturedef.cached_result is None:
                warnings.warn(NsboxFixtureWarning(
                    f"nsbox: the {fixturedef.scope}-scoped fixture {fixturedef.argname!r} was "
                    f"first requested while {item.name} ran (request.getfixturevalue), so it "
                    "was set up in the test's box, not once in pytest, and ends with the box. "
                    "Fix: name it as an argument of the test or of a fixture it uses, or "
                    f"@pytest.mark.usefixtures({fixturedef.argname!r})."), stacklevel=2)
            return execute(fixturedef, request=request)

        return noting

    return internals.fixture_execute_replaced(noting_for)


class NsboxFixtureWarning(pytest.PytestWarning):
    """A wider fixture had to be set up inside a box."""


# -- box: the item's own setup, call and teardown ---------------------------------------


def _in_box(item: pytest.Item, nextitem: pytest.Item | None, send: Any) -> None:
    internals.leave_wider_teardowns_to_parent(item)
    config = item.config
    hook = config.hook
    before = {name: id(value) for name, value in vars(item).items()}
    caught: list[warnings.WarningMessage] = []
    reports_passed = False
    try:
        with warnings.catch_warnings(record=True) as caught, \
                warn_of_wider_fixtures_set_up_here(item):
            prepared = CallInfo.from_call(lambda: hook.pytest_nsbox_setup(item=item), "setup",
                                          reraise=(pytest.exit.Exception,))
            for phase in PHASES:
                if phase == "setup" and prepared.excinfo is not None:
                    report = _make_report(item, prepared)
                elif phase == "call" and (not reports_passed or config.getoption("setuponly")):
                    continue
                else:
                    report = _run_phase(item, phase, nextitem)
                reports_passed = report.passed
                data = hook.pytest_report_to_serializable(config=config, report=report)
                changed = _changed_attributes(item, before)
                try:
                    send(("report", data, changed))
                except Exception:  # an odd user property or attribute: send what pickles
                    send(("report", _portable(data), _picklable(changed)))
    except pytest.exit.Exception as exc:
        send(("exit", exc.msg, exc.returncode))
        raise
    finally:
        if caught:
            send(("warnings", [_portable_warning(w) for w in caught]))


def _run_phase(item: pytest.Item, phase: Phase,
               nextitem: pytest.Item | None) -> pytest.TestReport:
    """One phase in the box. A KeyboardInterrupt the test raises fails only that test: the
    user's Ctrl-C reaches pytest, never the box, which is its own session."""
    try:
        return internals.run_phase(item, phase, nextitem)
    except KeyboardInterrupt as interrupt:
        raised = interrupt

        def again() -> None:
            raise raised

        return _make_report(item, CallInfo.from_call(again, phase))


def _portable(data: dict[str, Any]) -> dict[str, Any]:
    """A serialized report whose values that do not pickle are replaced by their repr."""
    import cloudpickle

    def portable(value: Any) -> Any:
        try:
            cloudpickle.dumps(value)
        except Exception:
            return _safe_repr(value)
        return value

    data = {key: portable(value) for key, value in data.items()}
    if isinstance(data.get("user_properties"), list):
        data["user_properties"] = [(name, portable(value))
                                   for name, value in data["user_properties"]]
    return data


def _safe_repr(value: Any) -> str:
    try:
        return repr(value)
    except Exception:
        return f"<{type(value).__name__} object (repr failed)>"


def _changed_attributes(item: pytest.Item, before: dict[str, int]) -> dict[str, Any]:
    """Attributes plugins set on the item in the box (rerunfailures keeps its state there),
    so the parent's item looks as it would unboxed."""
    return {name: value for name, value in vars(item).items()
            if name not in internals.PYTEST_ITEM_ATTRIBUTES and before.get(name) != id(value)}


def _picklable(values: dict[str, Any]) -> dict[str, Any]:
    """Only the values that pickle: the others stay behind in the box."""
    import cloudpickle

    kept = {}
    for name, value in values.items():
        try:
            cloudpickle.dumps(value)
        except Exception:
            continue
        kept[name] = value
    return kept


def _portable_warning(message: warnings.WarningMessage) -> warnings.WarningMessage:
    """A copy of a recorded warning that pickles (its `source` object and odd messages dropped)."""
    import cloudpickle

    text = message.message
    try:
        cloudpickle.dumps((message.message, message.category))
    except Exception:
        text = UserWarning(f"{message.category.__name__}: {message.message}")
    return warnings.WarningMessage(text, type(text) if isinstance(text, Warning) else UserWarning,
                                   message.filename, message.lineno, None, message.line)


# -- parent: reports from frames, and from the way a box died ---------------------------


def _reports_from(item: pytest.Item, options: BoxOptions,
                  outcome: Outcome) -> tuple[dict[str, pytest.TestReport], Any]:
    config = item.config
    reports: dict[str, pytest.TestReport] = {}
    exit_request = None
    for frame in outcome.frames:
        try:
            kind = frame[0]
            if kind == "report":
                report = config.hook.pytest_report_from_serializable(config=config,
                                                                     data=frame[1])
                if report.when not in PHASES:
                    raise ValueError(f"a report of phase {report.when!r}")
                _like_unboxed(report, item)
                reports[report.when] = report
                for name, value in frame[2].items():
                    setattr(item, name, value)
            elif kind == "warnings":
                for message in frame[1]:
                    item.ihook.pytest_warning_recorded.call_historic(kwargs=dict(
                        warning_message=message, nodeid=item.nodeid, when="runtest",
                        location=None))
            elif kind == "exit":
                exit_request = (str(frame[1]), frame[2])
        except Exception as exc:
            outcome.channel_error = outcome.channel_error or (
                f"a {type(frame).__name__} frame the plugin cannot read: {exc!r}")
    error = outcome.error(options)
    if error is None and exit_request is None and "teardown" not in reports:
        code = outcome.exit_code()
        error = BoxExited(code if code is not None else 0, outcome.stack.strip())
    if error is not None:
        phase = _unfinished_phase(reports)
        # what a dead box left in pytest's capture files: not for the next test's report
        reports[phase] = _failure_report(item, phase, _describe(error, phase),
                                         internals.capture_drained(item))
    return reports, exit_request


def _like_unboxed(report: pytest.TestReport, item: pytest.Item) -> None:
    """Let a report read from a frame hold what an unboxed report holds, no copies of its own:
    pytest keeps every report to the end of the session (5000 tests, 15000 reports).

    The item's node id (pytest 9's parsed `NodeId`, else the string), location and keyword
    names, and one "passed", "call", ... string for all reports, not a copy from every
    pickle. The ``$report_type`` key the deserializer leaves in the report's attributes
    (as in xdist's) stays: deleting it makes Python 3.10 unshare the attribute dict.
    """
    internals.share_node_id(report, item)
    report.location = item.location
    report.keywords = dict.fromkeys(item.keywords, 1)
    attributes = vars(report)
    for name in ("outcome", "when", internals.REPORT_TYPE_KEY):
        value = attributes.get(name)
        if type(value) is str:
            attributes[name] = sys.intern(value)


def _unfinished_phase(reports: dict[str, pytest.TestReport]) -> Phase:
    if "setup" not in reports:
        return "setup"
    if reports["setup"].passed and "call" not in reports:
        return "call"
    return "teardown"


def _describe(error: Exception, phase: str) -> str:
    text = str(error)
    detail = getattr(error, "detail", "")
    if isinstance(error, BoxExited):
        text = (f"box exited with code {error.exitcode} during {phase} before it sent a report "
                "(os._exit, a crash, or sys.exit outside the test)")
    if detail and detail not in text:
        text += "\n" + detail
    return f"[nsbox] {text}"


def _failure_report(item: pytest.Item, phase: Phase, message: str,
                    captured: tuple[str, str]) -> pytest.TestReport:
    internals.stash_xfail_evaluation(item)  # the box that evaluated it died

    def fail() -> None:
        pytest.fail(message, pytrace=False)

    call = CallInfo.from_call(fail, phase)
    report = _make_report(item, call)
    for name, text in zip(("stdout", "stderr"), captured, strict=True):
        if text:
            report.sections.append((f"Captured {name} {phase}", text))
    return report


def _make_report(item: pytest.Item, call: CallInfo[None]) -> pytest.TestReport:
    """A report through the makereport hooks, as unboxed; plain if a plugin's hook cannot
    cope with a phase it did not see start (its state was in a box that died)."""
    try:
        report: pytest.TestReport = item.ihook.pytest_runtest_makereport(item=item, call=call)
    except Exception:
        report = pytest.TestReport.from_item_and_call(item, call)
    return report


def _merge_teardown(box_report: pytest.TestReport | None,
                    parent_report: pytest.TestReport) -> pytest.TestReport:
    """One teardown report: the box's (function fixtures) and the parent's (wider scopes)."""
    if box_report is None:
        return parent_report
    if parent_report.failed and not box_report.failed:
        parent_report.sections[:0] = box_report.sections
        parent_report.duration += box_report.duration
        return parent_report
    box_report.sections += parent_report.sections
    box_report.duration += parent_report.duration
    return box_report


def _usage_properties(outcome: Outcome) -> dict[str, Any]:
    usage = outcome.usage
    properties: dict[str, Any] = {
        "nsbox_wall_seconds": round(usage.wall_seconds, 6),
        "nsbox_cpu_seconds": round(usage.cpu_seconds, 6),
    }
    optional = {
        "nsbox_memory_peak": usage.memory_peak,
        "nsbox_tasks_peak": usage.tasks_peak,
        "nsbox_cpu_throttled_seconds": usage.cpu_throttled_seconds,
        "nsbox_best_effort": usage.extra.get("best_effort"),
        "nsbox_io_read_bytes": usage.io_read_bytes,
        "nsbox_io_write_bytes": usage.io_write_bytes,
    }
    properties.update((name, value) for name, value in optional.items() if value is not None)
    return properties
