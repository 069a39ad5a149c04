"""What this machine gives boxes, found by really trying it, and how to fix what it lacks.

Every kernel feature is probed in a forked child with a timeout, doing what a box does
(file reads alone lie: Ubuntu allows `unshare(CLONE_NEWUSER)` and then refuses the
uid_map; Docker's masked /proc refuses a fresh /proc mount). Each line is PASS, DEGRADED
(boxes run, one feature is missing) or FAIL (boxes cannot run); the exit status is the
worst line's rank. Netlink links and qdiscs are made with a hand-built rtnetlink request,
so the doctor needs neither pyroute2 nor cloudpickle.

`header_line()` and `boxing_available()` are cheap: they reuse a cache of the probes,
keyed by kernel, uid, boot and the user-namespace sysctls, and import nothing Linux-only
at module level, so this package imports on macOS and Windows too.

One module a concern: `runner` (a probe in a child), `probes` and `netlink` (what the
child tries), `facts` (file reads), `kernel`, `cgroups` and `storage` (the report's
lines), `report` (a line, the verdict), `cache`, `header` (what the plugin asks each
session) and `cli` (the whole run and its entry points).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

# what the plugin asks each session, so imported at once; the rest when first used
from .header import boxing_available, header_line
from .report import DEGRADED, FAIL, PASS, Check, Report

if TYPE_CHECKING:
    from .cli import main, run_doctor, run_from_pytest
    from .runner import run_probe

__all__ = [
    "DEGRADED",
    "FAIL",
    "PASS",
    "Check",
    "Report",
    "boxing_available",
    "header_line",
    "main",
    "run_doctor",
    "run_from_pytest",
    "run_probe",
]

# name here: (module, its name there). The underscored names, RANK and PROBE_TIMEOUT are
# not the API, but the tests reach them as `doctor.NAME` from when the doctor was one module.
_LAZY = {
    "main": ("cli", "main"),
    "run_doctor": ("cli", "run_doctor"),
    "run_from_pytest": ("cli", "run_from_pytest"),
    "run_probe": ("runner", "run_probe"),
    "PROBE_TIMEOUT": ("runner", "PROBE_TIMEOUT"),
    "RANK": ("report", "RANK"),
    "_box_result": ("header", "box_result"),
    "_cgroup_checks": ("cgroups", "cgroup_checks"),
    "_fs_type": ("facts", "fs_type"),
    "_mounts_below": ("facts", "mounts_below"),
    "_storage_check": ("storage", "storage_check"),
}


def __getattr__(name: str) -> Any:
    """The doctor's run and the tests' names, imported on first use: the plugin's header
    path (header_line, boxing_available) then loads neither the probes nor the CLI."""
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    module, attribute = _LAZY[name]
    value = getattr(importlib.import_module(f".{module}", __name__), attribute)
    globals()[name] = value
    return value
