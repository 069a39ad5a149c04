"""Hooks other plugins (and conftest.py files) implement to take part in boxing."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from ..box.options import BoxOptions
    from ..box.outcome import Outcome


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


@pytest.hookspec
def pytest_nsbox_frozen(item: pytest.Item, pids: list[int]) -> None:
    """Look at a timed-out box while it is frozen, just before it is killed.

    Called in the pytest process after the box's stack dump, with every process of the
    box frozen (cgroup v2 ``cgroup.freeze``, v1 freezer): ``pids`` are their host pids,
    so ``/proc/<pid>/stack``, ``/proc/<pid>/status`` or a py-spy dump read them as they
    were. Do not resume them; the box is killed when every implementation returns. An
    exception here is noted in the timeout message, and the box is killed all the same.
    """
