"""Usage regression checks across runs: save a baseline, compare against it, look at it.

This module is what the main plugin loads in every session, so it holds only the
flags and the decision whether to register the real hooks (`usage.plugin`): a session
that uses none of the ``--nsbox-usage-*`` flags and no budget pays for nothing else.
"""

from __future__ import annotations

from typing import Any

import pytest

from .names import BOX_SIDE, CONTROLLER, HTML_COLUMNS, TOP, NsboxBudgetWarning

__all__ = ["NsboxBudgetWarning", "add_options", "configure", "watch_budgets"]

def add_options(parser: pytest.Parser, group: Any) -> None:
    """The ``--nsbox-usage-*`` flags and their ini keys (called from pytest_addoption)."""
    group.addoption("--nsbox-usage-save", metavar="PATH", default=None,
                    help="write every boxed test's usage to PATH (JSON, schema 1) at the end "
                         "of a session that ran to its end")
    group.addoption("--nsbox-usage-compare", metavar="PATH", default=None,
                    help="compare this session's usage with the baseline saved at PATH; "
                         "tests beyond a threshold fail the run")
    group.addoption("--nsbox-usage-fail", metavar="RULES", default=None,
                    help="thresholds per figure, e.g. 'memory:+20%%,cpu:+100%%,wall:off' "
                         "(figures: memory, cpu, wall, tasks, io_read, io_write); also turns "
                         "budget checks into failures")
    group.addoption("--nsbox-usage-warn-only", action="store_true", default=None,
                    help="tests beyond a threshold or over budget are reported, the run "
                         "does not fail for them")
    group.addoption("--nsbox-usage-report", metavar="PATH.html", default=None,
                    help="write a self-contained HTML page of the boxed tests' usage "
                         "(against the baseline when one is given)")
    parser.addini("nsbox_usage_fail", default=None,
                  help="thresholds for --nsbox-usage-compare, e.g. 'memory:+20%,cpu:+100%'")
    parser.addini("nsbox_usage_warn_only", type="bool", default=False,
                  help="usage regressions and budgets only warn, as --nsbox-usage-warn-only")


_FLAGS = ("nsbox_usage_save", "nsbox_usage_compare", "nsbox_usage_fail", "nsbox_usage_report")


def configure(config: pytest.Config) -> None:
    """Register the usage hooks only when a flag asks for them (called from pytest_configure)."""
    manager = config.pluginmanager
    if manager.hasplugin("html") and getattr(config.option, "htmlpath", None):
        from .plugin import HtmlColumns

        if not manager.has_plugin(HTML_COLUMNS):
            manager.register(HtmlColumns(), HTML_COLUMNS)
    if getattr(config.option, "nsbox_usage", 0) and not hasattr(config, "workerinput"):
        from .plugin import TopUsage

        if not manager.has_plugin(TOP):
            manager.register(TopUsage(config), TOP)
    if not any(getattr(config.option, name, None) for name in _FLAGS):
        return
    from .plugin import BoxSide, UsagePlugin

    if not manager.has_plugin(BOX_SIDE):
        manager.register(BoxSide(limits=True), BOX_SIDE)
    if not hasattr(config, "workerinput") and not manager.has_plugin(CONTROLLER):
        manager.register(UsagePlugin(config), CONTROLLER)  # xdist: the controller writes


def watch_budgets(config: pytest.Config, items: list[pytest.Item]) -> None:
    """After collection: where a boxed test has a budget, check it (called by the plugin)."""
    manager = config.pluginmanager
    if manager.has_plugin(BOX_SIDE):
        return
    from ..state import options_key

    for item in items:
        options = item.stash.get(options_key, None)
        if options is not None and (options.memory_budget is not None
                                    or options.cpu_budget is not None):
            from .plugin import BoxSide

            manager.register(BoxSide(limits=False), BOX_SIDE)
            return
