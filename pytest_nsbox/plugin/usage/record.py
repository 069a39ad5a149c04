"""One row of usage per boxed test, built from its reports.

The box side (the process that runs the boxes: pytest, or an xdist worker) adds what a
report does not carry yet (the limits the box ran under, OOM, budgets) as user
properties of the teardown report; whoever records (pytest, or the xdist controller)
reads everything back from the reports alone, since under xdist it never sees an item.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from ...box.options import BoxOptions
from ...box.units import format_size

#: figures a row holds, as (row attribute, user property)
FIGURE_PROPERTIES: tuple[tuple[str, str], ...] = (
    ("memory_peak", "nsbox_memory_peak"),
    ("cpu_seconds", "nsbox_cpu_seconds"),
    ("wall_seconds", "nsbox_wall_seconds"),
    ("tasks_peak", "nsbox_tasks_peak"),
    ("io_read_bytes", "nsbox_io_read_bytes"),
    ("io_write_bytes", "nsbox_io_write_bytes"),
    ("cpu_throttled_seconds", "nsbox_cpu_throttled_seconds"),
)
LIMITS = ("memory", "cpu", "cpuset", "pids", "timeout", "io")
BUDGETS = ("memory", "cpu")


@dataclass
class Row:
    """What one boxed test used in its last run, and under which limits."""

    nodeid: str
    outcome: str = "passed"
    memory_peak: int | None = None
    cpu_seconds: float | None = None
    wall_seconds: float | None = None
    tasks_peak: int | None = None
    io_read_bytes: int | None = None
    io_write_bytes: int | None = None
    cpu_throttled_seconds: float | None = None
    oom: bool = False
    timed_out: bool = False
    limits: dict[str, Any] = field(default_factory=dict)
    budgets: dict[str, Any] = field(default_factory=dict)
    over_budget: list[str] = field(default_factory=list)
    runs: int = 1
    worker: str | None = None

    def figure(self, key: str) -> float | None:
        value = getattr(self, key)
        return None if value is None else float(value)

    def as_json(self) -> dict[str, Any]:
        data = {name: getattr(self, name) for name in self.__dataclass_fields__}
        del data["nodeid"]
        return data


def box_properties(options: BoxOptions | None, outcome: Any, limits: bool,
                   ) -> list[tuple[str, Any]]:
    """User properties the box side adds to a boxed test's teardown report."""
    pairs: list[tuple[str, Any]] = []
    if limits:
        if outcome.oom_killed:
            pairs.append(("nsbox_oom", True))
        if outcome.timed_out:
            pairs.append(("nsbox_timed_out", True))
        if options is not None:
            for name in LIMITS:
                value = getattr(options, name)
                if name == "io" and value is not None:
                    value = {key: part for key, part in value.items() if part is not None}
                if value is not None:
                    pairs.append((f"nsbox_limit_{name}", value))
    if options is not None:
        for name in BUDGETS:
            budget = getattr(options, f"{name}_budget")
            if budget is not None:
                pairs.append((f"nsbox_{name}_budget", budget))
        over = over_budget(options, outcome.usage)
        if over:
            pairs.append(("nsbox_over_budget", "; ".join(over)))
    return pairs


def over_budget(options: BoxOptions, usage: Any) -> list[str]:
    """Why a box used more than its budgets, in words (empty: within them)."""
    over = []
    memory = options.memory_budget
    if memory is not None and usage.memory_peak is not None and usage.memory_peak > memory:
        over.append(f"memory peak {format_size(usage.memory_peak)} is over its budget of "
                    f"{format_size(memory)}")
    cpu = options.cpu_budget
    if cpu is not None and usage.cpu_seconds > cpu:
        over.append(f"CPU {usage.cpu_seconds:.3f} s is over its budget of {cpu:g} s")
    return over


class Recorder:
    """Rows of the boxed tests from the reports as they are logged; a rerun replaces a row."""

    def __init__(self) -> None:
        self.rows: dict[str, Row] = {}
        self._outcomes: dict[str, str] = {}  # nodeid -> outcome of the run in progress
        self._runs: dict[str, int] = {}

    def add(self, report: pytest.TestReport) -> None:
        nodeid = report.nodeid
        if report.when == "setup":
            self._runs[nodeid] = self._runs.get(nodeid, 0) + 1
            self._outcomes[nodeid] = "passed"
        if report.when != "teardown":
            if report.outcome != "passed":  # failed, skipped, rerun; a failed setup: error
                failed_setup = report.when == "setup" and report.outcome == "failed"
                self._outcomes[nodeid] = "error" if failed_setup else report.outcome
            return
        outcome = self._outcomes.pop(nodeid, "passed")
        if report.outcome == "failed" and outcome == "passed":
            outcome = "error"
        properties = dict(report.user_properties)
        if "nsbox_wall_seconds" not in properties:
            return  # not boxed (or its box could not be made)
        if outcome == "rerun":
            outcome = "failed"  # a run that is rerun failed; the next run replaces it
        row = Row(nodeid, outcome, runs=self._runs.get(nodeid, 1))
        for attribute, name in FIGURE_PROPERTIES:
            setattr(row, attribute, properties.get(name))
        row.oom = bool(properties.get("nsbox_oom"))
        row.timed_out = bool(properties.get("nsbox_timed_out"))
        row.limits = {name: properties[f"nsbox_limit_{name}"] for name in LIMITS
                      if f"nsbox_limit_{name}" in properties}
        row.budgets = {name: properties[f"nsbox_{name}_budget"] for name in BUDGETS
                       if f"nsbox_{name}_budget" in properties}
        if properties.get("nsbox_over_budget"):
            row.over_budget = str(properties["nsbox_over_budget"]).split("; ")
        node = getattr(report, "node", None)  # xdist's controller sets the worker node
        gateway = getattr(node, "gateway", None)
        row.worker = getattr(gateway, "id", None)
        self.rows.pop(nodeid, None)
        self.rows[nodeid] = row  # in the order the tests (last) ran
