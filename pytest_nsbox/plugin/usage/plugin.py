"""The pytest hooks of the usage flags; registered by `pytest_nsbox.plugin.usage.configure` only
when a flag asks for them, so a session without them runs none of this."""

from __future__ import annotations

import contextlib
from collections.abc import Generator
from typing import Any

import pytest

from ..pytest_internals import SHORT_SUMMARY_TITLE, count_in_summary, section_titles_noted
from .baseline import Baseline, BaselineError, document, load, save, write_atomically
from .compare import Comparison, RulesError, Threshold, compare, default_thresholds, parse_rules
from .names import CONTROLLER, NsboxBudgetWarning
from .record import Recorder, box_properties

_FORMAT = "a JSON file written by --nsbox-usage-save (schema 1)"
#: the key of an xdist worker's output that carries the node ids it deselected
DESELECTED = "nsbox_usage_deselected"


class BoxSide:
    """In the process that runs the boxes (pytest, or each xdist worker): put the limits,
    OOM and budgets of each box on its teardown report, and warn of an exceeded budget."""

    def __init__(self, limits: bool) -> None:
        self.limits = limits
        self._pending: dict[str, list[tuple[str, Any]]] = {}
        self._deselected: list[str] = []

    def pytest_deselected(self, items: list[pytest.Item]) -> None:
        if items and hasattr(items[0].config, "workeroutput"):  # an xdist worker
            self._deselected.extend(item.nodeid for item in items)

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        output = getattr(session.config, "workeroutput", None)
        if output is not None:  # the controller never collects: it learns them from here
            output[DESELECTED] = self._deselected

    def pytest_nsbox_outcome(self, item: pytest.Item, outcome: Any) -> None:
        from ..state import options_key

        pairs = box_properties(item.stash.get(options_key, None), outcome, self.limits)
        for name, value in pairs:
            if name == "nsbox_over_budget":
                with contextlib.suppress(Warning):  # -W error: the property still says it
                    item.warn(NsboxBudgetWarning(
                        f"nsbox: over budget: {value} (the test is not failed for it)"))
        if pairs:
            self._pending[item.nodeid] = pairs

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.when == "teardown":
            pairs = self._pending.pop(report.nodeid, None)
            if pairs:
                report.user_properties.extend(pairs)  # before junitxml and xdist read it


class TopUsage:
    """``--nsbox-usage N`` in pytest or the xdist controller: each boxed test's figures from
    its teardown report, which xdist forwards from the worker that ran it, into the session
    state whose tables pytest_terminal_summary prints (the controller runs no box itself)."""

    def __init__(self, config: pytest.Config) -> None:
        from ..state import state_key

        self.usage = config.stash[state_key].usage

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.when != "teardown":
            return
        figures = {name: value for name, value in report.user_properties
                   if name in _TOP_FIGURES}
        if "nsbox_wall_seconds" in figures:  # boxed
            self.usage[report.nodeid] = figures


_TOP_FIGURES = frozenset(("nsbox_wall_seconds", "nsbox_cpu_seconds", "nsbox_memory_peak",
                          "nsbox_tasks_peak", "nsbox_cpu_throttled_seconds",
                          "nsbox_io_read_bytes", "nsbox_io_write_bytes"))


def _thresholds(config: pytest.Config) -> dict[str, Threshold | None]:
    thresholds = default_thresholds()
    for source, text in (("ini nsbox_usage_fail", config.getini("nsbox_usage_fail")),
                         ("--nsbox-usage-fail", config.getoption("nsbox_usage_fail"))):
        try:
            thresholds = parse_rules(text, thresholds)
        except RulesError as exc:
            raise pytest.UsageError(f"{source}: {exc}") from None
    return thresholds


class UsagePlugin:
    """In pytest or the xdist controller: rows from the reports, then at the session's end
    the comparison, the saved file and the report page."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.save_path: str | None = config.getoption("nsbox_usage_save")
        self.compare_path: str | None = config.getoption("nsbox_usage_compare")
        self.report_path: str | None = config.getoption("nsbox_usage_report")
        self.thresholds = _thresholds(config)
        warn_only = config.getoption("nsbox_usage_warn_only")
        self.warn_only = bool(warn_only if warn_only is not None
                              else config.getini("nsbox_usage_warn_only"))
        #: budgets fail the run only in a session that checks usage
        self.checking = bool(self.compare_path or config.getoption("nsbox_usage_fail"))
        self.baseline: Baseline | None = None
        if self.compare_path:
            try:
                self.baseline = load(self.compare_path)
            except BaselineError as exc:
                raise pytest.UsageError(f"--nsbox-usage-compare: {exc}; accepted: "
                                        f"{_FORMAT}") from None
        self.recorder = Recorder()
        #: what this run selected and deselected: a shard is compared on its own tests
        self.selected: set[str] = set()
        self.deselected: set[str] = set()
        self.interrupted = False
        self.comparison: Comparison | None = None
        self.failing = False
        self.notes: list[tuple[str, dict[str, bool]]] = []
        config.pluginmanager.register(_ShortSummary(self), CONTROLLER + "-short")

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self.recorder.add(report)

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        self.selected.update(item.nodeid for item in session.items)

    def pytest_deselected(self, items: list[pytest.Item]) -> None:
        self.deselected.update(item.nodeid for item in items)

    @pytest.hookimpl(optionalhook=True)
    def pytest_xdist_node_collection_finished(self, node: Any, ids: list[str]) -> None:
        self.selected.update(ids)

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self, node: Any, error: Any) -> None:
        self.deselected.update(getattr(node, "workeroutput", {}).get(DESELECTED, ()))

    def unselected(self) -> list[str]:
        """Baseline tests this run did not select: deselected (-k, -m, a shard plugin), or
        in files it did not collect (other paths) that still exist."""
        if self.baseline is None:
            return []
        rows, selected, deselected = self.recorder.rows, self.selected, self.deselected
        files = {nodeid.split("::", 1)[0] for nodeid in selected | deselected}
        root = self.config.rootpath
        found = []
        for nodeid in self.baseline.rows:
            if nodeid in rows or nodeid in selected:
                continue
            file = nodeid.split("::", 1)[0]
            if nodeid in deselected or (file not in files and (root / file).exists()):
                found.append(nodeid)
        return found

    def pytest_keyboard_interrupt(self) -> None:
        self.interrupted = True  # Ctrl-C, or pytest.exit() from a test

    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        rows = self.recorder.rows
        base_rows = self.baseline.rows if self.baseline is not None else None
        self.comparison = compare(base_rows, rows, self.thresholds, self.unselected())
        self.failing = bool(self.comparison.regressions
                            or (self.checking and self.comparison.over_budget))
        if self.failing and not self.warn_only and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED
        meta = self._session_meta(session, exitstatus)
        if self.save_path:
            why_not = self._incomplete(session, exitstatus)
            if why_not:
                import os

                kept = (f"{self.save_path} is left as it was" if os.path.exists(self.save_path)
                        else f"nothing was written to {self.save_path}")
                self.notes.append((f"nsbox: usage not saved ({why_not}); {kept}",
                                   {"yellow": True}))
            else:
                try:
                    save(self.save_path, rows, meta)
                    self.notes.append((f"nsbox: usage of {len(rows)} boxed tests saved to "
                                       f"{self.save_path}", {}))
                except OSError as exc:
                    self.notes.append((f"nsbox: usage not saved to {self.save_path}: {exc}",
                                       {"red": True}))
        if self.report_path:
            from .html import render

            page_meta = document({}, meta)
            if self.baseline is not None:
                page_meta["baseline"] = self.baseline.path
            try:
                write_atomically(self.report_path, render(
                    rows, base_rows, self.comparison, self.thresholds, page_meta))
                self.notes.append((f"nsbox: usage report written to {self.report_path}", {}))
            except OSError as exc:
                self.notes.append((f"nsbox: usage report not written to {self.report_path}: "
                                   f"{exc}", {"red": True}))

    def _incomplete(self, session: pytest.Session, exitstatus: int) -> str:
        """Why this session's usage is not a baseline ("" when it is)."""
        if self.interrupted or exitstatus == pytest.ExitCode.INTERRUPTED:
            return "the session was interrupted"
        if session.shouldfail or session.shouldstop:
            return f"the session stopped early: {session.shouldfail or session.shouldstop}"
        if exitstatus not in (pytest.ExitCode.OK, pytest.ExitCode.TESTS_FAILED):
            return f"the session ended with exit status {int(exitstatus)}"
        return ""

    def _session_meta(self, session: pytest.Session, exitstatus: int) -> dict[str, Any]:
        args = [str(arg) for arg in self.config.invocation_params.args]
        workers = getattr(self.config.option, "numprocesses", None)
        return {"exitstatus": int(exitstatus), "args": args,
                "workers": workers if isinstance(workers, int) else None,
                "reruns": getattr(self.config.option, "reruns", None) or 0}

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        comparison = self.comparison
        if comparison is None:
            return
        from .compare import render_table

        base_rows = self.baseline.rows if self.baseline is not None else None
        lines = render_table(comparison, base_rows, self.recorder.rows)
        if self.baseline is not None or comparison.over_budget:
            title = (f"nsbox usage against {self.compare_path}" if self.baseline is not None
                     else "nsbox usage: budgets")
            terminalreporter.write_sep("=", title, bold=True)
            for line in lines:
                red = line.startswith(("REGRESSED", "OVER BUDGET"))
                terminalreporter.write_line(line, red=red and not self.warn_only,
                                            yellow=red and self.warn_only)
        for text, markup in self.notes:
            terminalreporter.write_line(text, **markup)
        regressed = sorted({change.nodeid for change in comparison.regressions})
        budget = list(dict.fromkeys(nodeid for nodeid, _ in comparison.over_budget))
        for key, nodeids in (("over usage threshold", regressed), ("over budget", budget)):
            if nodeids:  # counted in the last line, "3 passed, 1 over budget in 2.0s"
                count_in_summary(terminalreporter, key, nodeids)

    def short_lines(self) -> list[tuple[str, dict[str, bool]]]:
        """The lines this plugin adds to the short test summary."""
        comparison = self.comparison
        if comparison is None:
            return []
        markup = {"yellow": True} if self.warn_only else {"red": True}
        tail = " (warn only)" if self.warn_only else ""
        lines = [(f"USAGE {change.nodeid} - {change.words()}{tail}", markup)
                 for change in comparison.regressions]
        budget_markup = markup if self.checking else {"yellow": True}
        lines += [(f"OVER BUDGET {nodeid} - {reason}", budget_markup)
                  for nodeid, reason in comparison.over_budget]
        return lines


class _ShortSummary:
    """Lines of the usage regressions at the end of pytest's short test summary.

    The terminal reporter writes that section after every other pytest_terminal_summary
    implementation, in its own wrapper; this wrapper is outside it (tryfirst), so its lines
    follow the section; it writes the section's title when pytest had nothing to list.
    """

    def __init__(self, plugin: UsagePlugin) -> None:
        self.plugin = plugin

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_terminal_summary(self, terminalreporter: Any) -> Generator[None, None, None]:
        titles: list[str] = []
        try:
            with section_titles_noted(terminalreporter, titles):
                yield
        finally:
            lines = self.plugin.short_lines()
            if lines:
                if SHORT_SUMMARY_TITLE not in titles:
                    terminalreporter.write_sep("=", SHORT_SUMMARY_TITLE, cyan=True)
                for text, markup in lines:
                    terminalreporter.write_line(text, **markup)


class HtmlColumns:
    """pytest-html's results table gets a memory peak and a CPU column."""

    @pytest.hookimpl(optionalhook=True)
    def pytest_html_results_table_header(self, cells: list[str]) -> None:
        cells.insert(3, "<th>Memory peak</th>")
        cells.insert(4, "<th>CPU s</th>")

    @pytest.hookimpl(optionalhook=True)
    def pytest_html_results_table_row(self, report: pytest.TestReport, cells: list[str]) -> None:
        properties = dict(report.user_properties)
        memory, cpu = properties.get("nsbox_memory_peak"), properties.get("nsbox_cpu_seconds")
        from .compare import FIGURES

        memory_text = FIGURES["memory"].show(memory) if isinstance(memory, int) else ""
        cpu_text = f"{cpu:.3f}" if isinstance(cpu, int | float) else ""
        cells.insert(3, f'<td class="col-nsbox_memory">{memory_text}</td>')
        cells.insert(4, f'<td class="col-nsbox_cpu">{cpu_text}</td>')

