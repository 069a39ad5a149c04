"""The part of a limited box cgroup that the box itself may write (`delegated/`)."""

from __future__ import annotations

import os

from .files import _read, _write

#: The child of a limited box cgroup that the box's processes live in and may write.
DELEGATED = "delegated"


def _delegate(path: str, v2: bool, controllers: list[str]) -> str:
    """Make `path/DELEGATED`, the part of a limited box cgroup the box may write.

    The limits sit on `path`, which the box sees read-only; the box's processes live in
    the child, which it sees writable, so a box inside it can make cgroups of its own (the
    way systemd delegates a subtree) and every limit below still holds under the outer one.
    """
    child = f"{path}/{DELEGATED}"
    if v2:
        available = _read(f"{path}/cgroup.controllers").split()
        if available:
            _write(f"{path}/cgroup.subtree_control", b" ".join(b"+" + c for c in available))
    os.mkdir(child)
    if not v2 and "cpuset" in controllers:  # an empty v1 cpuset cannot take tasks
        for name in ("cpuset.cpus", "cpuset.mems"):
            _write(f"{child}/{name}", _read(f"{path}/{name}").strip() or b"\n")
    return child
