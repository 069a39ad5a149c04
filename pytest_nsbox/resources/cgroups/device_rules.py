"""The devices a box's cgroup allows: a shared v1 devices-<n> cgroup, or a v2 eBPF filter."""

from __future__ import annotations

import contextlib
import os
from typing import Any

from .files import _write
from .session import _Session
from .tree import _remove_tree

#: Under the v1 devices hierarchy: one cgroup per set of allowed devices, which every box
#: with that set joins (its rules are written once per session).
DEVICES_PREFIX = "devices-"


def _v1_devices_parent(session: _Session, extra: tuple[str, ...]) -> str | None:
    """The devices-<n> cgroup whose rules allow the standard devices and `extra`.

    Made once per session and set of devices, and joined by every box with that set: it
    only holds rules, so a cgroup per box would cost a mkdir and rmdir for nothing. None
    where there is no writable devices hierarchy of its own (not an error: the box's own
    /dev and, in a user namespace, the refused mknod still hold).
    """
    made = session.device_parents.get(extra)
    if made is not None or extra in session.device_parents:
        return made
    from ..devices import v1_rules

    rules = v1_rules(_device_rules(extra))  # a device missing now is an error each time
    session.device_parents[extra] = None
    own = session.layout.v1.get("devices")
    if own is None or any(d == own for c, d in session.layout.v1.items() if c != "devices"):
        return None  # absent, or mounted with other controllers (one cgroup per hierarchy)
    top = session.session_dir(own)
    if top is None:
        return None
    path = f"{top}/{DEVICES_PREFIX}{len(session.device_parents)}"
    try:
        os.mkdir(path)
        _write(f"{path}/devices.deny", b"a")
        for line in rules:
            _write(f"{path}/devices.allow", line)
    except OSError as exc:
        # EPERM: no CAP_SYS_ADMIN on the host (a box inside a box inherits its outer rules)
        session.failed[f"devices {extra}"] = os.strerror(exc.errno or 0)
        with contextlib.suppress(OSError):
            _remove_tree(path)
        return None
    session.device_parents[extra] = path
    return path


def _device_rules(extra: tuple[str, ...]) -> Any:
    """The devices a box may use; a path that is not a device is the user's error."""
    from ..devices import box_device_rules

    try:
        return box_device_rules(extra)
    except ValueError as exc:
        from ...box.errors import BoxUnavailable

        raise BoxUnavailable(f"devices: {exc}") from None


def _attach_device_filter(session: _Session, path: str, rules: Any) -> None:
    """v2: the eBPF device filter on the box's cgroup, where this process may load one."""
    from ..devices import attach_filter

    try:
        attach_filter(path, rules)
    except OSError as exc:  # no CAP_SYS_ADMIN (a user, or a box inside a box): noted once
        session.failed["devfilter"] = f"cannot load or attach an eBPF device filter: {exc}"
