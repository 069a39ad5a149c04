"""Shared helpers for the project's tests."""

from __future__ import annotations

import os

import pytest

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
