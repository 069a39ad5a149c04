"""Thresholds per figure and the comparison of a session's rows with a baseline.

A figure is beyond its threshold when it grew by more than the threshold's percentage
*and* by more than its absolute amount (each figure has a default amount, a noise floor,
so a test going from 2 ms to 5 ms of CPU is not a regression). The defaults suit a noisy
CI runner: a box's memory peak is steady from run to run, its CPU and wall times are not.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field

from ...box.options import OptionError, parse_size
from ...box.units import format_size
from .record import Row

MiB = 1 << 20


def _seconds(text: str) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?|\.\d+)(ms|s)?", text)
    if match is None:
        raise ValueError(text)
    value = float(match.group(1))
    return value / 1000 if match.group(2) == "ms" else value


def _count(text: str) -> float:
    if not text.isdigit():
        raise ValueError(text)
    return float(text)


def _size(text: str) -> float:
    try:
        return float(parse_size(text))
    except OptionError:
        raise ValueError(text) from None


@dataclass(frozen=True)
class Figure:
    """One measured figure of a row, with how to spell and read its amounts."""

    name: str
    key: str  # the Row attribute
    title: str
    amount_example: str
    parse_amount: Callable[[str], float]
    show: Callable[[float], str]
    floor: float  # the default absolute amount a change must exceed


def _show_seconds(value: float) -> str:
    return f"{value:.3f} s"


def _show_size(value: float) -> str:
    return format_size(int(value)) if value >= 1 else "0 B"


def _show_count(value: float) -> str:
    return f"{value:g}"


FIGURES: dict[str, Figure] = {figure.name: figure for figure in (
    Figure("memory", "memory_peak", "memory peak", "8M", _size, _show_size, 1 * MiB),
    Figure("cpu", "cpu_seconds", "CPU", "0.5s", _seconds, _show_seconds, 0.25),
    Figure("wall", "wall_seconds", "wall", "1s", _seconds, _show_seconds, 1.0),
    Figure("tasks", "tasks_peak", "tasks peak", "2", _count, _show_count, 1),
    Figure("io_read", "io_read_bytes", "io read", "16M", _size, _show_size, 1 * MiB),
    Figure("io_write", "io_write_bytes", "io written", "16M", _size, _show_size, 1 * MiB),
)}

DEFAULT_RULES = "memory:+20%,cpu:+100%,wall:+200%,tasks:+50%,io_read:off,io_write:off"


@dataclass(frozen=True)
class Threshold:
    """Growth beyond `percent` (None: any) and beyond `amount` counts as a regression."""

    figure: Figure
    percent: float | None
    amount: float

    def beyond(self, base: float, now: float) -> bool:
        delta = now - base
        if delta <= self.amount:
            return False
        return self.percent is None or base <= 0 or delta / base * 100 > self.percent

    def describe(self) -> str:
        parts = []
        if self.percent is not None:
            parts.append(f"+{self.percent:g}%")
        if self.amount != self.figure.floor or self.percent is None:
            parts.append(f"+{self.figure.show(self.amount)}")
        return " and ".join(parts)


def _accepted() -> str:
    return ("comma-separated FIGURE:RULE, FIGURE one of " + ", ".join(FIGURES) + "; RULE "
            "+N% (e.g. memory:+20%), +AMOUNT (memory:+8M, cpu:+0.5s, tasks:+2), both "
            "(memory:+20%+8M) or off")


class RulesError(ValueError):
    """Threshold rules that cannot be read; the message says what is accepted."""


def parse_rules(text: str | None, base: dict[str, Threshold | None] | None = None,
                ) -> dict[str, Threshold | None]:
    """Thresholds by figure name from ``memory:+20%,cpu:off``; figures not named keep `base`."""
    thresholds = dict(base) if base is not None else {}
    for raw in (text or "").split(","):
        item = raw.strip()
        if not item:
            continue
        name, colon, rule = item.partition(":")
        name, rule = name.strip(), rule.strip().replace(" ", "")
        figure = FIGURES.get(name)
        if figure is None:
            raise RulesError(f"unknown figure {name!r} in {item!r}; accepted: {_accepted()}")
        if not colon or not rule:
            raise RulesError(f"{item!r} has no rule; accepted: {_accepted()}")
        if rule == "off":
            thresholds[name] = None
            continue
        if not rule.startswith("+"):
            raise RulesError(f"{item!r}: a rule is a growth and starts with '+'; "
                             f"accepted: {_accepted()}")
        percent: float | None = None
        amount: float | None = None
        for term in rule[1:].split("+"):
            if percent is None and re.fullmatch(r"\d+(\.\d+)?%", term):
                percent = float(term[:-1])
                continue
            if amount is None and term and not term.endswith("%"):
                try:
                    amount = figure.parse_amount(term)
                    continue
                except ValueError:
                    pass
            raise RulesError(f"{item!r}: {term!r} is not a percentage or an amount of "
                             f"{figure.title} (e.g. +{figure.amount_example}); accepted: "
                             f"{_accepted()}")
        if amount is None:
            amount = figure.floor
        thresholds[name] = Threshold(figure, percent, amount)
    return thresholds


def default_thresholds() -> dict[str, Threshold | None]:
    return parse_rules(DEFAULT_RULES)


@dataclass(frozen=True)
class Change:
    """One figure of one test beyond its threshold (up: a regression; else improved)."""

    nodeid: str
    figure: Figure
    base: float
    now: float
    threshold: Threshold
    up: bool

    @property
    def percent(self) -> float | None:
        return None if self.base <= 0 else (self.now - self.base) / self.base * 100

    def words(self) -> str:
        change = f"{self.percent:+.0f}%" if self.percent is not None else "new usage"
        return (f"{self.figure.title} {self.figure.show(self.now)}, {change} from "
                f"{self.figure.show(self.base)} (threshold {self.threshold.describe()})")


@dataclass
class Comparison:
    """What changed between a baseline and this session."""

    changes: list[Change] = field(default_factory=list)
    new: list[str] = field(default_factory=list)
    vanished: list[str] = field(default_factory=list)
    #: baseline tests this run did not select (a shard, -k, -m, other paths): not compared
    unselected: list[str] = field(default_factory=list)
    over_budget: list[tuple[str, str]] = field(default_factory=list)

    @property
    def regressions(self) -> list[Change]:
        return [change for change in self.changes if change.up]

    def regressed(self, nodeid: str) -> bool:
        return any(change.nodeid == nodeid for change in self.regressions)


def compare(baseline: dict[str, Row] | None, rows: dict[str, Row],
            thresholds: dict[str, Threshold | None],
            unselected: Collection[str] = ()) -> Comparison:
    """Changes of each test present in both, beyond its figure's threshold either way.

    `unselected`: baseline tests this run did not select; they are not "vanished" (a shard
    compared with a full baseline would list every other shard's test)."""
    result = Comparison()
    for nodeid, row in rows.items():
        for reason in row.over_budget:
            result.over_budget.append((nodeid, reason))
    if baseline is None:
        return result
    for nodeid, row in rows.items():
        old = baseline.get(nodeid)
        if old is None:
            result.new.append(nodeid)
            continue
        for threshold in thresholds.values():
            if threshold is None:
                continue
            base, now = old.figure(threshold.figure.key), row.figure(threshold.figure.key)
            if base is None or now is None:
                continue
            if threshold.beyond(base, now):
                result.changes.append(Change(nodeid, threshold.figure, base, now, threshold, True))
            elif now > 0 and threshold.beyond(now, base):
                result.changes.append(Change(nodeid, threshold.figure, base, now, threshold,
                                             False))
    skipped = set(unselected)
    for nodeid in baseline:
        if nodeid not in rows:
            (result.unselected if nodeid in skipped else result.vanished).append(nodeid)
    return result


def render_table(comparison: Comparison, baseline: dict[str, Row] | None,
                 rows: dict[str, Row]) -> list[str]:
    """Plain-text lines: the changes, new and vanished tests, and the suite's totals."""
    from .baseline import totals

    lines: list[str] = []
    if comparison.changes:
        table: list[tuple[str, ...]] = [
            ("", "figure", "baseline", "now", "change", "threshold", "test")]
        for change in comparison.changes:
            percent = f"{change.percent:+.0f}%" if change.percent is not None else "new"
            table.append(("REGRESSED" if change.up else "improved", change.figure.name,
                          change.figure.show(change.base), change.figure.show(change.now),
                          percent, change.threshold.describe(), change.nodeid))
        lines += _columns(table)
    elif baseline is not None:
        lines.append("no test changed beyond its thresholds")
    for nodeid, reason in comparison.over_budget:
        lines.append(f"OVER BUDGET {nodeid}: {reason}")
    for nodeid in comparison.new:
        row = rows[nodeid]
        lines.append(f"new: {nodeid} ({_brief(row)})")
    for nodeid in comparison.vanished:
        lines.append(f"vanished (not run in this session): {nodeid}")
    if comparison.unselected:
        count = len(comparison.unselected)
        lines.append(f"not compared: {count} test{'s' * (count != 1)} of the baseline this run "
                     "did not select (deselected, another shard's, or outside its paths)")
    if baseline is not None:
        both = [nodeid for nodeid in rows if nodeid in baseline]
        old = totals(baseline[nodeid] for nodeid in both)
        now = totals(rows[nodeid] for nodeid in both)
        old["tests"] = len(baseline) - len(comparison.unselected)  # this run's part of it
        now["tests"] = len(rows)
        totals_table: list[tuple[str, ...]] = [
            (f"totals (figures: the {len(both)} tests in both)", "baseline", "now", "change")]
        for key, title, show in (
                ("tests", "boxed tests", _show_count),
                ("memory_peak_sum", "memory peaks, summed", _show_size),
                ("memory_peak_max", "largest memory peak", _show_size),
                ("cpu_seconds", "CPU seconds", _show_seconds),
                ("wall_seconds", "wall seconds", _show_seconds)):
            a, b = float(old[key]), float(now[key])
            growth = f"{(b - a) / a * 100:+.0f}%" if a else ""
            totals_table.append((title, show(a), show(b), growth))
        lines += _columns(totals_table)
    return lines


def _brief(row: Row) -> str:
    parts = []
    if row.memory_peak is not None:
        parts.append(f"memory peak {_show_size(row.memory_peak)}")
    if row.cpu_seconds is not None:
        parts.append(f"CPU {_show_seconds(row.cpu_seconds)}")
    return ", ".join(parts) or "no figures"


def _columns(table: Iterable[tuple[str, ...]]) -> list[str]:
    table = list(table)
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    return ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
            .rstrip() for row in table]
