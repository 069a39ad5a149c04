"""nsbox's lightest boxes: no tmpfs at all (the CLI and ini cannot say an empty tmpfs list).

Loaded with ``-p nsbench_light`` together with ``--nsbox --nsbox-net=host
--nsbox-user=host``: it adds ``@pytest.mark.nsbox(tmpfs=())`` to every collected test
before nsbox reads the markers. What stays is what nsbox always does: pid, mount, uts
and ipc namespaces, a fresh /proc, a private /dev/shm, the hostname.
"""

from __future__ import annotations

import pytest


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    mark = pytest.mark.nsbox(tmpfs=())
    for item in items:
        item.add_marker(mark)
