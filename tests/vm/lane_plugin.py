"""pytest plugin for the VM lane: keep the `vm` tests and every test of test_cgroups.py.

Loaded with `-p lane_plugin` (tests/vm on PYTHONPATH); one pytest run instead of two,
because each interpreter start costs seconds in the emulated VM.
"""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    keep, drop = [], []
    for item in items:
        wanted = item.get_closest_marker("vm") is not None or item.path.name == "test_cgroups.py"
        (keep if wanted else drop).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep
