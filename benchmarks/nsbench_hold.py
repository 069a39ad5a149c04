"""Make the pytest process big: with NSBENCH_HOLD_MB=300 it allocates and touches 300 MB.

Loaded with ``-p nsbench_hold`` in every benchmark run; it does nothing unless the
environment variable is set. The memory is allocated at configure time, before any
test forks, and every page is written so that it is really resident (a fork must then
copy the page tables of all of it).
"""

from __future__ import annotations

import os

_held: list[bytearray] = []


def pytest_configure(config: object) -> None:
    megabytes = int(os.environ.get("NSBENCH_HOLD_MB", "0") or 0)
    if megabytes <= 0 or _held:
        return
    block = bytearray(megabytes << 20)
    block[::4096] = b"\x01" * len(range(0, len(block), 4096))  # touch every page
    _held.append(block)
