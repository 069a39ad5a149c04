"""The saved usage file: schema 1, written atomically, read back with clear errors.

Schema 1 (docs/usage-regressions.md has the reference)::

    {"schema": 1, "kind": "pytest-nsbox-usage", "created": "2026-12-01T12:00:00+00:00",
     "machine": {...}, "python": "3.11.7", "pytest": "9.0.3", "pytest_nsbox": "0.1.0",
     "session": {"exitstatus": 0, "args": [...], "workers": 2},
     "totals": {"tests": 3, "memory_peak_sum": ..., "memory_peak_max": ...,
                "cpu_seconds": ..., "wall_seconds": ...},
     "tests": {"test_a.py::test_x": {"outcome": "passed", "memory_peak": 50331648, ...}}}

Readers take any file whose ``schema`` is 1 and ignore keys they do not know, so
fields can be added within schema 1; a change of meaning takes schema 2.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import sys
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from .record import FIGURE_PROPERTIES, Row

SCHEMA = 1
KIND = "pytest-nsbox-usage"


class BaselineError(ValueError):
    """A baseline that cannot be used: missing, not JSON, or not a usage file of schema 1."""


@dataclass
class Baseline:
    """A usage file as read: its rows by node id, and where it came from."""

    rows: dict[str, Row]
    meta: dict[str, Any] = field(default_factory=dict)
    path: str = ""
    #: each test's entry as saved, keys this version does not know included (merge keeps them)
    entries: dict[str, dict[str, Any]] = field(default_factory=dict)


def totals(rows: Iterable[Row]) -> dict[str, Any]:
    """Suite totals over `rows` (figures a test lacks count as nothing)."""
    rows = list(rows)
    peaks = [row.memory_peak for row in rows if row.memory_peak is not None]
    return {
        "tests": len(rows),
        "memory_peak_sum": sum(peaks),
        "memory_peak_max": max(peaks, default=0),
        "cpu_seconds": round(sum(row.cpu_seconds or 0.0 for row in rows), 6),
        "wall_seconds": round(sum(row.wall_seconds or 0.0 for row in rows), 6),
    }


def _cgroup_version() -> str:
    if os.path.exists("/sys/fs/cgroup/cgroup.controllers"):
        return "v2"
    return "v1" if os.path.isdir("/sys/fs/cgroup/memory") else "none"


def document(rows: dict[str, Row], session: dict[str, Any]) -> dict[str, Any]:
    """The JSON document of schema 1 for `rows`."""
    import pytest

    from ... import __version__

    return {
        "schema": SCHEMA,
        "kind": KIND,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {
            "hostname": platform.node(),
            "system": platform.system(),
            "kernel": platform.release(),
            "arch": platform.machine(),
            "cpus": os.cpu_count(),
            "cgroup": _cgroup_version(),
            "root": os.geteuid() == 0,
        },
        "python": platform.python_version(),
        "python_implementation": sys.implementation.name,
        "pytest": pytest.__version__,
        "pytest_nsbox": __version__,
        "session": session,
        "totals": totals(rows.values()),
        "tests": {nodeid: row.as_json() for nodeid, row in rows.items()},
    }


def write_atomically(path: str, text: str) -> None:
    """Write `text` to `path` through a temporary file and a rename: a reader, or a session
    that dies half-way, sees the old file or the new one, never a part."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, temporary = tempfile.mkstemp(prefix=".nsbox-usage-", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def save(path: str, rows: dict[str, Row], session: dict[str, Any]) -> None:
    write_atomically(path, json.dumps(document(rows, session), indent=1, sort_keys=False) + "\n")


_NUMBER_FIELDS = tuple(attribute for attribute, _ in FIGURE_PROPERTIES)


def load(path: str) -> Baseline:
    """Read a usage file; BaselineError says what is wrong with it."""
    try:
        with open(path, encoding="utf-8") as file:
            data = json.load(file)
    except FileNotFoundError:
        raise BaselineError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise BaselineError(f"{path}: cannot be read: {exc}") from None
    except json.JSONDecodeError as exc:
        raise BaselineError(f"{path}: not JSON ({exc})") from None
    if not isinstance(data, dict) or data.get("kind", KIND) != KIND or "schema" not in data:
        raise BaselineError(f"{path}: not a pytest-nsbox usage file (no \"schema\" key)")
    if data["schema"] != SCHEMA:
        raise BaselineError(f"{path}: schema {data['schema']!r}; this pytest-nsbox reads "
                            f"schema {SCHEMA}")
    tests = data.get("tests")
    if not isinstance(tests, dict):
        raise BaselineError(f"{path}: \"tests\" is not an object of node id -> usage")
    rows = {}
    for nodeid, entry in tests.items():
        if not isinstance(entry, dict):
            raise BaselineError(f"{path}: the entry of {nodeid!r} is not an object")
        row = Row(str(nodeid))
        for name in _NUMBER_FIELDS:
            value = entry.get(name)
            if value is not None and (isinstance(value, bool)
                                      or not isinstance(value, int | float)):
                raise BaselineError(f"{path}: {nodeid!r} has {name}={value!r}, not a number")
            setattr(row, name, value)
        row.outcome = str(entry.get("outcome", "passed"))
        row.oom = bool(entry.get("oom", False))
        row.timed_out = bool(entry.get("timed_out", False))
        for name in ("limits", "budgets"):
            if isinstance(entry.get(name), dict):
                setattr(row, name, entry[name])
        if isinstance(entry.get("over_budget"), list):
            row.over_budget = [str(reason) for reason in entry["over_budget"]]
        if isinstance(entry.get("runs"), int):
            row.runs = entry["runs"]
        if isinstance(entry.get("worker"), str):
            row.worker = entry["worker"]
        rows[row.nodeid] = row
    meta = {key: value for key, value in data.items() if key != "tests"}
    return Baseline(rows, meta, path, tests)
