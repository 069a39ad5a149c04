"""Shared helpers for the project's tests."""

from __future__ import annotations

import os

import pytest

# The box machinery imported once, here: pytester's in-process runs take the modules they
# imported first out of sys.modules again, and a module imported twice is two modules
# with two states (two box makers; the leak checks would look at the wrong one).
import pytest_nsbox.box.supervise  # noqa: F401

STRICT = os.environ.get("NSBOX_STRICT") == "1"


def needs(condition: bool, reason: str) -> None:
    """Skip naming what this machine lacks; in strict CI a skip here is a failure."""
    if not condition:
        if STRICT and not reason.startswith("lacks:"):
            pytest.fail(f"strict mode: {reason}")
        pytest.skip(reason)


@pytest.fixture
def run_inner(pytester: pytest.Pytester):
    """Run an inner pytest session in a subprocess (boxes fork from it, not from us)."""

    def run(*args: str) -> pytest.RunResult:
        return pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:rerunfailures",
                                             "-p", "no:randomly", *args)

    return run


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):
    """Strict mode (CI): a skip must say what this machine lacks ("lacks: ..."); any other
    skip hides something this machine supports, and fails."""
    report = yield
    if STRICT and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        if "lacks:" not in reason:
            report.outcome = "failed"
            report.longrepr = f"strict mode: skipped without naming what is lacking: {reason}"
    return report
