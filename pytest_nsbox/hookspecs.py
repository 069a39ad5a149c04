"""Hooks other plugins (and conftest.py files) implement to take part in boxing."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from .box import Outcome
    from .options import BoxOptions


@pytest.hookspec
def pytest_nsbox_options(item: pytest.Item, options: BoxOptions) -> dict[str, Any] | None:
    """Adjust a test's box before it starts: return changes, e.g. ``{"memory": "1G"}``.

    Called in the pytest process for every boxed run (each rerun too). The changes of all
    implementations are merged, validated like marker options, and applied.
    """


@pytest.hookspec
def pytest_nsbox_setup(item: pytest.Item) -> None:
    """Run code inside the box before the test's setup: its namespaces are in place.

    For example start a service in the box's network namespace. ``current_box()`` gives
    the box's options; an exception here is a setup error of the test.
    """


@pytest.hookspec
def pytest_nsbox_outcome(item: pytest.Item, outcome: Outcome) -> None:
    """Receive how a box ended, in the pytest process, before its reports are logged.

    ``outcome.usage`` has the box's memory peak, CPU and wall seconds; ``outcome.status``
    the test process's wait status; ``outcome.timed_out`` and ``outcome.oom_killed``
    say whether the box was stopped.
    """
