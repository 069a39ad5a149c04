"""The usage report's page as HTML (the browser test looks at it rendered): what is painted
as a regression, which columns are shown, where a test name may wrap."""

from __future__ import annotations

import re

from pytest_nsbox.plugin.usage.compare import compare, default_thresholds
from pytest_nsbox.plugin.usage.html import render
from pytest_nsbox.plugin.usage.record import Row

MiB = 1 << 20


def page(base: dict[str, Row] | None, rows: dict[str, Row]) -> str:
    thresholds = default_thresholds()
    return render(rows, base, compare(base, rows, thresholds), thresholds, {})


def cell(text: str, nodeid: str, column: str) -> str:
    head = re.search(r"<thead><tr>(.*?)</tr>", text).group(1)  # type: ignore[union-attr]
    titles = re.findall(r"<th[^>]*>(.*?)</th>", head)
    row = re.search(rf'<tr[^>]*data-test="{re.escape(nodeid)}">(.*?)</tr>', text)
    assert row is not None
    return re.findall(r"<td[^>]*>.*?</td>", row.group(1))[titles.index(column)]


def test_a_change_within_the_noise_floor_is_not_painted() -> None:
    """CPU 2 ms -> 5 ms is +150% but below the 0.25 s floor: shown, not red."""
    base = {"t::a": Row("t::a", memory_peak=40 * MiB, cpu_seconds=0.002),
            "t::b": Row("t::b", memory_peak=40 * MiB, cpu_seconds=1.0)}
    rows = {"t::a": Row("t::a", memory_peak=60 * MiB, cpu_seconds=0.005),
            "t::b": Row("t::b", memory_peak=40 * MiB, cpu_seconds=0.4)}
    text = page(base, rows)
    quiet = cell(text, "t::a", "CPU change")
    assert "+150%" in quiet and 'class="up"' not in quiet, quiet
    assert 'class="up"' in cell(text, "t::a", "Memory change")  # +50%: beyond +20%
    assert 'class="down"' in cell(text, "t::b", "CPU change")  # -60%, 0.6 s: improved
    assert 'class="up"' not in cell(text, "t::b", "Memory change")


def test_empty_io_and_task_columns_are_hidden() -> None:
    without = page(None, {"t::a": Row("t::a", memory_peak=MiB, cpu_seconds=0.1)})
    assert "IO read" not in without and "IO written" not in without
    assert "Tasks peak" not in without and ">Limits<" not in without
    with_io = page(None, {"t::a": Row("t::a", memory_peak=MiB, io_write_bytes=4096),
                          "t::b": Row("t::b", memory_peak=MiB)})
    assert ">IO written</th>" in with_io and "IO read" not in with_io


def test_a_test_name_may_wrap_only_between_its_words() -> None:
    nodeid = "tests/net/test_proxy.py::test_reach_internet[socks5h-x]"
    name = cell(page(None, {nodeid: Row(nodeid)}), nodeid, "Test")
    assert name == ('<td data-sort="tests/net/test_proxy.py::test_reach_internet[socks5h-x]">'
                    "tests/<wbr>net/<wbr>test_<wbr>proxy.<wbr>py::<wbr>test_<wbr>reach_<wbr>"
                    "internet[<wbr>socks5h-<wbr>x]</td>")
