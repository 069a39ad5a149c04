"""The doctor as a whole: run every check, keep the results for the header, print them
(`pytest-nsbox doctor [--json] [-v]`, `pytest --nsbox-doctor`), exit by the worst line.
"""

from __future__ import annotations

import json
import platform
from dataclasses import asdict
from typing import TYPE_CHECKING

from .cache import save_cache
from .cgroups import cgroup_checks
from .facts import LINUX, machine
from .kernel import kernel_checks
from .report import FAIL, Check, Report
from .runner import PROBE_TIMEOUT
from .storage import storage_check

if TYPE_CHECKING:
    import pytest


def run_doctor(timeout: float = PROBE_TIMEOUT) -> Report:
    """Probe everything and return the report (and refresh the header's cache)."""
    if not LINUX:
        return Report([Check("platform", FAIL, f"boxes need Linux namespaces; this is "
                             f"{platform.system()}", "run the boxed tests on Linux (a VM or a "
                             "Linux CI runner)", "platform.system()")], machine())
    checks, box = kernel_checks(timeout)
    checks += cgroup_checks(timeout)
    checks.append(storage_check())
    report = Report(checks, machine())
    save_cache({"box": box, "checks": [asdict(c) for c in checks]})
    return report


def main(argv: list[str] | None = None) -> int:
    """`python -m pytest_nsbox doctor [--json] [-v]`: print the report, exit by the worst line."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m pytest_nsbox doctor",
                                     description="What this machine gives pytest-nsbox boxes, "
                                     "and how to fix what it lacks.")
    parser.add_argument("--json", action="store_true", help="print machine-readable results")
    parser.add_argument("-v", "--verbose", action="store_true", help="say how each line was found")
    parser.add_argument("--timeout", type=float, default=PROBE_TIMEOUT,
                        help="seconds each probe may take (default %(default)s)")
    args = parser.parse_args(argv)
    report = run_doctor(args.timeout)
    if args.json:
        print(json.dumps(report.as_dict(), indent=2))
    else:
        print(report.render(args.verbose))
    return report.exit_status


def run_from_pytest(config: pytest.Config) -> int:
    """`pytest --nsbox-doctor`: print the report (verbose with -v) and return the exit status."""
    report = run_doctor()
    print(report.render(config.option.verbose > 0), flush=True)
    return report.exit_status
