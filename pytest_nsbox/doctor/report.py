"""The doctor's report: one line a check, and the verdict the exit status carries.

Kept apart from the probes so the header and the JSON output share one definition of a
line and of how statuses rank.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

PASS, DEGRADED, FAIL = "PASS", "DEGRADED", "FAIL"
RANK = {PASS: 0, DEGRADED: 1, FAIL: 2}


@dataclass
class Check:
    """One line of the report."""

    name: str
    status: str
    detail: str
    fix: str = ""
    method: str = ""


@dataclass
class Report:
    """All the lines and the machine they describe; the worst line is the verdict."""

    checks: list[Check]
    machine: dict[str, Any]

    @property
    def exit_status(self) -> int:
        return max((RANK[c.status] for c in self.checks), default=0)

    @property
    def verdict(self) -> str:
        return {0: PASS, 1: DEGRADED, 2: FAIL}[self.exit_status]

    def as_dict(self) -> dict[str, Any]:
        return {"verdict": self.verdict, "exit_status": self.exit_status,
                "machine": self.machine, "checks": [asdict(c) for c in self.checks]}

    def render(self, verbose: bool = False) -> str:
        m = self.machine
        lines = [f"pytest-nsbox doctor: {m['system']} {m['release']} {m['arch']}, "
                 f"uid {m['uid']}, Python {m['python']}"]
        width = max((len(c.name) for c in self.checks), default=0)
        for c in self.checks:
            lines.append(f"{c.status:<9} {c.name:<{width}}  {c.detail}")
            if c.fix and c.status != PASS:
                lines.append(f"{'':<9} {'':<{width}}  fix: {c.fix}")
            if verbose and c.method:
                lines.append(f"{'':<9} {'':<{width}}  how: {c.method}")
        meaning = {PASS: "boxes get everything they can ask for",
                   DEGRADED: "boxes run; the DEGRADED lines name what they cannot have",
                   FAIL: "boxes cannot run here until the FAIL lines are fixed"}
        lines.append(f"verdict: {self.verdict} (exit {self.exit_status}): {meaning[self.verdict]}")
        return "\n".join(lines)
