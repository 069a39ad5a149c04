"""The usage report: one self-contained HTML page (inline CSS, JS and SVG, no network).

A table of the boxed tests that sorts by any column (click its header), and a bar chart
of each test's memory peak and CPU seconds with the baseline's marked, over-threshold
tests in red. It is plain HTML so that it opens from a CI artifact in any browser.
"""

from __future__ import annotations

import html
from collections.abc import Callable
from typing import Any

from .compare import FIGURES, Comparison, Threshold
from .record import Row

#: most tests the chart draws (the largest by memory peak); the table has them all
CHART_LIMIT = 300

_CSS = """
body{font:14px/1.4 system-ui,-apple-system,"Segoe UI",sans-serif;margin:24px;color:#1d2330;
background:#fff}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px}
.meta{color:#5a6270;margin:0 0 12px}
.cards{display:flex;gap:12px;flex-wrap:wrap;margin:12px 0}
.card{border:1px solid #d8dce3;border-radius:6px;padding:8px 14px;min-width:110px}
.card b{display:block;font-size:20px}.card.bad b{color:#c62828}
table.usage{border-collapse:collapse;width:100%;font-size:13px}
table.usage th,table.usage td{border-bottom:1px solid #e3e6eb;padding:4px 6px;text-align:right;
white-space:nowrap;vertical-align:top}
table.usage th{white-space:normal;vertical-align:bottom}
table.usage th:first-child,table.usage td:first-child{text-align:left;white-space:normal;
overflow-wrap:normal;word-break:normal;min-width:14em;max-width:30em}
table.usage td.limits,table.usage td.flags{white-space:normal;min-width:7em;text-align:left}
.scroll{overflow-x:auto}
svg#chart{max-width:100%;height:auto}
table.usage th{background:#f3f5f8;cursor:pointer;user-select:none;position:sticky;top:0}
table.usage th[aria-sort=ascending]::after{content:" \\25B2"}
table.usage th[aria-sort=descending]::after{content:" \\25BC"}
tr.over td{background:#fdecea}
.badge{display:inline-block;border-radius:3px;padding:0 5px;margin:0 2px;font-size:11px;
color:#fff;background:#6b7280}
.badge.regressed,.badge.oom,.badge.budget{background:#c62828}.badge.new{background:#2e7d32}
.badge.improved{background:#1565c0}.badge.timeout{background:#8e24aa}
.up{color:#c62828}.down{color:#1565c0}
svg text{font:11px system-ui,sans-serif;fill:#1d2330}
svg .mem{fill:#4c78a8}svg .cpu{fill:#f58518}svg rect.over{fill:#c62828}
svg .base{stroke:#111;stroke-width:2}
.legend span{display:inline-block;width:12px;height:12px;margin:0 4px 0 12px;
vertical-align:middle}
"""

_JS = """
(function(){
  document.querySelectorAll('table.usage').forEach(function(table){
    var heads = table.tHead.rows[0].cells;
    Array.prototype.forEach.call(heads, function(th, index){
      th.addEventListener('click', function(){
        var body = table.tBodies[0];
        var rows = Array.prototype.slice.call(body.rows);
        var numeric = th.getAttribute('data-type') === 'number';
        var dir = th.getAttribute('aria-sort') === 'ascending' ? -1 : 1;
        Array.prototype.forEach.call(heads, function(o){ o.removeAttribute('aria-sort'); });
        th.setAttribute('aria-sort', dir === 1 ? 'ascending' : 'descending');
        function key(row){
          var text = row.cells[index].getAttribute('data-sort');
          if (!numeric) { return text || ''; }
          return text === '' || text === null ? -Infinity : parseFloat(text);
        }
        rows.sort(function(a, b){
          var x = key(a), y = key(b);
          return (x < y ? -1 : x > y ? 1 : 0) * dir;
        });
        rows.forEach(function(row){ body.appendChild(row); });
      });
    });
  });
})();
"""


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _number(value: float | None) -> str:
    return "" if value is None else repr(float(value))


def _size(value: float | None) -> str:
    return "" if value is None else FIGURES["memory"].show(value)


def _seconds(value: float | None) -> str:
    return "" if value is None else f"{value:.3f}"


def _delta(now: float | None, base: float | None, beyond: str = "") -> tuple[str, str, str]:
    """(sort value, text, css class) of a change from `base` to `now`; painted only when
    `beyond` says it crossed its threshold ("up" or "down"): a change within the noise
    floor (2 ms to 5 ms of CPU is +150%) is shown, not painted as a regression."""
    if now is None or base is None or base <= 0:
        return "", "", ""
    percent = (now - base) / base * 100
    text = f"{percent:+.0f}%" if round(percent) else "0%"
    return repr(percent), text, beyond


def _breakable(text: str) -> str:
    """`text` escaped, with line-break chances after / :: _ . [ - only: a long test name
    wraps between its words, not inside one."""
    import re

    return "<wbr>".join(_e(part) for part in re.split(r"(?<=/)|(?<=::)|(?<=[_.\[\-])", text))


def _limits(row: Row) -> str:
    parts = []
    for name, value in row.limits.items():
        if name == "memory" and isinstance(value, int | float):
            value = _size(value)
        elif name == "io" and isinstance(value, dict):
            value = " ".join(f"{key}={part}" for key, part in value.items() if key != "path")
        parts.append(f"{name}={value}")
    for name, value in row.budgets.items():
        if name == "memory" and isinstance(value, int | float):
            value = _size(value)
        parts.append(f"{name}_budget={value}")
    return ", ".join(parts)


def render(rows: dict[str, Row], baseline: dict[str, Row] | None, comparison: Comparison | None,
           thresholds: dict[str, Threshold | None], meta: dict[str, Any]) -> str:
    """The whole page as one string."""
    comparison = comparison or Comparison()
    regressed: dict[str, list[str]] = {}
    improved: dict[str, list[str]] = {}
    for change in comparison.changes:
        (regressed if change.up else improved).setdefault(change.nodeid, []).append(
            change.figure.name)
    budget = {nodeid for nodeid, _ in comparison.over_budget}

    def painted(nodeid: str, figure: str) -> str:
        return ("up" if figure in regressed.get(nodeid, ()) else
                "down" if figure in improved.get(nodeid, ()) else "")

    ordered = sorted(rows.values(), key=lambda row: -(row.memory_peak or 0))
    old = baseline or {}

    def flags(row: Row) -> str:
        badges = [f'<span class="badge regressed">{_e(name)} regressed</span>'
                  for name in regressed.get(row.nodeid, [])]
        badges += [f'<span class="badge improved">{_e(name)} improved</span>'
                   for name in improved.get(row.nodeid, [])]
        if row.nodeid in budget:
            badges.append(f'<span class="badge budget" title="{_e("; ".join(row.over_budget))}">'
                          "over budget</span>")
        if row.oom:
            badges.append('<span class="badge oom">OOM</span>')
        if row.timed_out:
            badges.append('<span class="badge timeout">timeout</span>')
        if baseline is not None and row.nodeid not in old:
            badges.append('<span class="badge new">new</span>')
        return "".join(badges)

    columns: list[tuple[str, str, Callable[[Row], tuple[str, str, str]]]] = [
        ("Test", "text", lambda r: (r.nodeid, _breakable(r.nodeid), "")),
        ("Outcome", "text", lambda r: (r.outcome, _e(r.outcome), "")),
        ("Flags", "text", lambda r: (str(len(regressed.get(r.nodeid, [])) * 10
                                         + (r.nodeid in budget)), flags(r), "flags")),
        ("Memory peak", "number", lambda r: (_number(r.memory_peak), _size(r.memory_peak), "")),
    ]
    if baseline is not None:
        columns += [
            ("Baseline memory", "number", lambda r: (
                _number(old[r.nodeid].memory_peak if r.nodeid in old else None),
                _size(old[r.nodeid].memory_peak if r.nodeid in old else None), "")),
            ("Memory change", "number", lambda r: _delta(
                r.memory_peak, old[r.nodeid].memory_peak if r.nodeid in old else None,
                painted(r.nodeid, "memory"))),
        ]
    columns.append(("CPU s", "number", lambda r: (_number(r.cpu_seconds),
                                                  _seconds(r.cpu_seconds), "")))
    if baseline is not None:
        columns.append(("CPU change", "number", lambda r: _delta(
            r.cpu_seconds, old[r.nodeid].cpu_seconds if r.nodeid in old else None,
            painted(r.nodeid, "cpu"))))
    columns += [
        ("Wall s", "number", lambda r: (_number(r.wall_seconds), _seconds(r.wall_seconds), "")),
        ("Tasks peak", "number", lambda r: (_number(r.tasks_peak),
                                            "" if r.tasks_peak is None else str(r.tasks_peak),
                                            "")),
        ("IO read", "number", lambda r: (_number(r.io_read_bytes), _size(r.io_read_bytes), "")),
        ("IO written", "number", lambda r: (_number(r.io_write_bytes),
                                            _size(r.io_write_bytes), "")),
        ("Limits", "text", lambda r: (_limits(r), _e(_limits(r)), "limits")),
    ]
    optional = {"Tasks peak", "IO read", "IO written", "Limits"}  # hidden when all empty
    columns = [column for column in columns if column[0] not in optional
               or any(column[2](row)[0] for row in ordered)]
    head = "".join(f'<th data-type="{kind}">{_e(title)}</th>' for title, kind, _ in columns)
    body = []
    for row in ordered:
        over = row.nodeid in regressed or row.nodeid in budget
        cells = []
        for _, _, cell in columns:
            sort, text, css = cell(row)
            cls = f' class="{css}"' if css else ""
            cells.append(f'<td data-sort="{_e(sort)}"{cls}>{text}</td>')
        body.append(f'<tr{" class=over" if over else ""} data-test="{_e(row.nodeid)}">'
                    + "".join(cells) + "</tr>")
    cards = [("boxed tests", len(rows), False),
             ("memory peaks, summed", _size(sum(r.memory_peak or 0 for r in rows.values())),
              False),
             ("CPU seconds", f"{sum(r.cpu_seconds or 0 for r in rows.values()):.2f}", False),
             ("over threshold", len(regressed), bool(regressed)),
             ("over budget", len(budget), bool(budget))]
    if baseline is not None:
        cards += [("new", len(comparison.new), False), ("vanished", len(comparison.vanished),
                                                         False)]
        if comparison.unselected:
            cards.append(("not selected in this run", len(comparison.unselected), False))
    card_html = "".join(f'<div class="card{" bad" if bad else ""}"><b>{_e(value)}</b>'
                        f"{_e(title)}</div>" for title, value, bad in cards)
    rules = ", ".join(f"{name} {threshold.describe()}" for name, threshold in
                      thresholds.items() if threshold is not None)
    subtitle = [f"{len(rows)} boxed tests", f"created {meta.get('created', '')}",
                f"Python {meta.get('python', '')}, pytest {meta.get('pytest', '')}, "
                f"pytest-nsbox {meta.get('pytest_nsbox', '')}"]
    if baseline is not None:
        subtitle.append(f"against {meta.get('baseline', 'the baseline')} "
                        f"({len(baseline)} tests"
                        + (f", {len(comparison.unselected)} of them not selected in this run"
                           if comparison.unselected else "") + f"); thresholds: {rules}")
    vanished = ""
    if comparison.vanished:
        vanished = ("<h2>Vanished (in the baseline, not run this time)</h2><ul>"
                    + "".join(f"<li>{_e(n)}</li>" for n in comparison.vanished) + "</ul>")
    marked: dict[str, set[str]] = {nodeid: set(names) for nodeid, names in regressed.items()}
    for row in rows.values():
        for reason in row.over_budget:
            marked.setdefault(row.nodeid, set()).add("cpu" if reason.startswith("CPU")
                                                     else "memory")
    chart = _chart(ordered[:CHART_LIMIT], old, marked)
    more = (f"<p class=meta>The {CHART_LIMIT} largest of {len(ordered)} tests by memory "
            "peak.</p>" if len(ordered) > CHART_LIMIT else "")
    return (
        "<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8>"
        "<meta name=viewport content='width=device-width, initial-scale=1'>"
        f"<title>pytest-nsbox usage</title><style>{_CSS}</style></head><body>"
        f"<h1>pytest-nsbox usage</h1><p class=meta>{_e(' · '.join(subtitle))}</p>"
        f"<div class=cards>{card_html}</div>"
        "<h2>Memory peak and CPU per test</h2><p class='meta legend'>"
        "<span style='background:#4c78a8'></span>memory peak"
        "<span style='background:#f58518'></span>CPU seconds"
        "<span style='background:#c62828'></span>over a threshold or budget"
        "<span style='background:#111;height:3px'></span>baseline</p>"
        f"{chart}{more}"
        "<h2>Boxed tests</h2><p class=meta>Click a column header to sort.</p>"
        f"<div class=scroll><table class=usage id=tests><thead><tr>{head}</tr></thead>"
        f"<tbody>{''.join(body)}</tbody></table></div>{vanished}"
        f"<script>{_JS}</script></body></html>\n"
    )


def _chart(rows: list[Row], old: dict[str, Row], over: dict[str, set[str]]) -> str:
    """Horizontal bars, one row per test: memory peak on the left, CPU on the right."""
    label, panel, gap, height, top = 340, 300, 40, 20, 24
    width = label + 2 * panel + gap + 70
    total = top + height * len(rows) + 8

    def top_of(values: list[float]) -> float:
        return max([*values, 1e-9])

    memory_max = top_of([float(v) for r in rows for v in (
        r.memory_peak, old[r.nodeid].memory_peak if r.nodeid in old else None) if v])
    cpu_max = top_of([float(v) for r in rows for v in (
        r.cpu_seconds, old[r.nodeid].cpu_seconds if r.nodeid in old else None) if v])
    cpu_x = label + panel + gap
    parts = [f'<svg id=chart role=img width="{width}" height="{total}" '
             f'viewBox="0 0 {width} {total}">',
             f'<text x="{label}" y="14">memory peak (max {_e(_size(memory_max))})</text>',
             f'<text x="{cpu_x}" y="14">CPU seconds (max {cpu_max:.3f})</text>']
    for index, row in enumerate(rows):
        y = top + index * height
        name = row.nodeid if len(row.nodeid) <= 52 else "…" + row.nodeid[-51:]
        memory = (row.memory_peak or 0) / memory_max * panel
        cpu = (row.cpu_seconds or 0) / cpu_max * panel
        marks = over.get(row.nodeid, set())
        css = "bar over" if marks else "bar"
        memory_css = "mem over" if "memory" in marks else "mem"
        cpu_css = "cpu over" if "cpu" in marks else "cpu"
        tip = (f"{row.nodeid}: memory peak {_size(row.memory_peak)}, "
               f"CPU {_seconds(row.cpu_seconds)} s")
        parts.append(f'<g class="{css}" data-test="{_e(row.nodeid)}"><title>{_e(tip)}</title>'
                     f'<text x="{label - 8}" y="{y + 13}" text-anchor="end">{_e(name)}</text>'
                     f'<rect class="{memory_css}" x="{label}" y="{y + 3}" width="{memory:.1f}" '
                     f'height="{height - 6}"/>'
                     f'<rect class="{cpu_css}" x="{cpu_x}" y="{y + 3}" width="{cpu:.1f}" '
                     f'height="{height - 6}"/>')
        base = old.get(row.nodeid)
        if base is not None and base.memory_peak:
            x = label + base.memory_peak / memory_max * panel
            parts.append(f'<line class=base x1="{x:.1f}" x2="{x:.1f}" y1="{y + 1}" '
                         f'y2="{y + height - 1}"/>')
        if base is not None and base.cpu_seconds:
            x = cpu_x + base.cpu_seconds / cpu_max * panel
            parts.append(f'<line class=base x1="{x:.1f}" x2="{x:.1f}" y1="{y + 1}" '
                         f'y2="{y + height - 1}"/>')
        parts.append("</g>")
    parts.append("</svg>")
    return "".join(parts)
