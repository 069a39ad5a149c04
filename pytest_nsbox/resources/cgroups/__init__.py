"""Cgroups for boxes: one session cgroup per process, one cgroup per box below it.

Layout (v2; on v1 the same under each hierarchy used)::

    <the cgroup pytest runs in>/nsbox-<pid>-<random>/box-<n>

Every box gets a cgroup when cgroups are writable, because `ru_maxrss` of a fork is
wrong and the cgroup is what measures a box. This package's own module is the facade
the rest of nsbox uses: `box_cgroup` (a box's cgroup, with its limits), `describe`,
`detect` (for the doctor), `session_cleanup`, `CgroupUnavailable`, `BEST_EFFORT`. The
parts, one concern each:

- `files`: the os.open/os.write helpers every box pays for;
- `layout`: where this process's cgroups are (v1, v2, hybrid, none);
- `session`: this process's session cgroup(s), the v2 leaf move, cleanup;
- `v1`, `v2`: the two backends (a directory per hierarchy, or one), their limit files
  and counters;
- `limits`: what a box asks, `CgroupUnavailable`, the best-effort rlimits;
- `delegation`: the `delegated/` child a limited box may write;
- `blockio`: io limits on the block device behind a path;
- `device_rules`: the v1 devices cgroup, or the v2 eBPF device filter;
- `tree`: a cgroup tree's processes, killing them, removing it;
- `boxcgroup`: `BoxCgroup`, one box's cgroup(s): usage, freeze, kill, remove.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from . import v1 as cgroup_v1
from . import v2 as cgroup_v2
from .blockio import _io_devices, _write_io, block_device
from .boxcgroup import BoxCgroup
from .delegation import DELEGATED, _delegate
from .device_rules import _attach_device_filter, _device_rules, _v1_devices_parent
from .files import _W, _read
from .layout import ROOT, _layout
from .limits import CgroupUnavailable, _asked, _best_effort
from .session import LEAF_PREFIX, _get_session, _Session, forget_inherited, session_cleanup
from .tree import describe

if TYPE_CHECKING:
    from ...box.options import BoxOptions

__all__ = [
    "BEST_EFFORT",
    "DELEGATED",
    "ROOT",
    "BoxCgroup",
    "CgroupUnavailable",
    "block_device",
    "box_cgroup",
    "describe",
    "detect",
    "forget_inherited",
    "session_cleanup",
    "user_fix",
]

#: When True, a limit cgroups cannot enforce becomes an rlimit noted in the report
#: instead of CgroupUnavailable (the plugin wires this to an ini option).
BEST_EFFORT = False

_BEST_EFFORT_HINT = " (or allow best-effort rlimits: ini option nsbox_best_effort = true)"


def box_cgroup(options: BoxOptions, name: str | None = None) -> BoxCgroup | None:
    """A fresh cgroup for one box under this process's session cgroup, with its limits.

    None when no limit is asked and cgroups are not usable here (accounting falls back to
    wait4); CgroupUnavailable naming the fix when a limit cannot be enforced, unless
    BEST_EFFORT is on.
    """
    session = _get_session()
    v2 = session.v2
    asked = _asked(options, v2)
    devices = _io_devices(options.io) if options.io is not None else ()
    devices_dir = None  # v1: the shared devices cgroup the box joins
    if v2:
        dirs, problems = cgroup_v2.parents(session, asked)
    else:
        # a box with a timeout is frozen before it is killed: it needs the v1 freezer
        extra = ("freezer",) if options.timeout is not None else ()
        dirs, problems = cgroup_v1.parents(session, asked, extra)
        if dirs and options.devices != ("host",):
            devices_dir = _v1_devices_parent(session, options.devices)
    rlimits: tuple[tuple[int, int], ...] = ()
    note = None
    if problems:
        if not BEST_EFFORT:
            error = CgroupUnavailable(_explain(session, problems, asked))
            error.unheld = tuple(asked[c] for c in problems if c in asked)
            error.reasons = "; ".join(dict.fromkeys(problems.values()))
            raise error
        rlimits, note = _best_effort(options, problems)
        for c in problems:
            asked.pop(c, None)
    if not dirs:
        return BoxCgroup({}, v2, rlimits=rlimits, best_effort=note) if note else None
    session.counter += 1
    leaf = f"box-{session.counter}"
    if name:
        safe = "".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in name)[:48]
        leaf += "-" + safe
    filter_rules = (_device_rules(options.devices) if v2 and options.devices != ("host",)
                    and "devfilter" not in session.failed else None)
    made: dict[str, str] = {}
    views: list[tuple[str, bool]] = []
    fds: list[int] = []
    try:
        by_parent: dict[str, list[str]] = {}
        for controller, parent in dirs.items():
            by_parent.setdefault(parent, []).append(controller)
        for parent, controllers in by_parent.items():
            path = f"{parent}/{leaf}"
            os.mkdir(path)
            for c in controllers:
                made[c] = path
            if filter_rules is not None:
                _attach_device_filter(session, path, filter_rules)
            shown = _limit_and_delegate(session, path, parent, controllers, options, asked,
                                        devices)
            views.extend(shown)
            fds.append(os.open(f"{shown[-1][0]}/cgroup.procs", _W))  # the innermost
        if devices_dir is not None:
            fds.append(os.open(f"{devices_dir}/cgroup.procs", _W))
    except (OSError, CgroupUnavailable) as exc:  # a limit refused half-way: undo it all
        for fd in fds:
            os.close(fd)
        BoxCgroup(made, v2).remove()
        if isinstance(exc, CgroupUnavailable):
            raise
        raise CgroupUnavailable(
            f"cannot set up the box's cgroup under {next(iter(dirs.values()))}: "
            f"{exc.filename or ''}: {os.strerror(exc.errno or 0)}") from None
    return BoxCgroup(made, v2, tuple(fds), rlimits, note, tuple(views))


def _limit_and_delegate(session: _Session, path: str, parent: str, controllers: list[str],
                        options: BoxOptions, asked: dict[str, str], io_devices: tuple[str, ...]
                        ) -> list[tuple[str, bool]]:
    """Write the limits into the box directory `path`; what the box is shown of it,
    (directory, writable), the last being where its processes go."""
    v2 = session.v2
    limited = _write_limits(session, path, parent, controllers, options, asked)
    if io_devices and ("io" in asked if v2 else "blkio" in controllers):
        _write_io(path, v2, io_devices, options.io or {}, parent)
        if not v2:  # v1 blk-throttle is not hierarchical: the box stays where its limit is
            return [(path, False)]
        limited = True
    if not limited:
        return [(path, True)]  # nothing to lift: the box may write its own cgroup
    return [(path, False), (_delegate(path, v2, controllers), True)]


def _write_limits(session: _Session, path: str, parent: str, controllers: list[str],
                  options: BoxOptions, asked: dict[str, str]) -> bool:
    """Write the limits asked that belong in `path`; whether there were any."""
    if session.v2:
        want = set(asked)
        cgroup_v2.write_limits(session, path, parent, want, options)
    else:
        want = set(asked) & set(controllers)  # v1: this hierarchy's only
        cgroup_v1.write_limits(session, path, parent, want, options)
    return bool(want - {"io", "blkio"})


def _explain(session: _Session, problems: dict[str, str], asked: dict[str, str]) -> str:
    what = ", ".join(asked[c] for c in problems)
    why = "; ".join(dict.fromkeys(problems.values()))
    if session.layout.version == "none":
        fix = "mount cgroup2: `mount -t cgroup2 none /sys/fs/cgroup` (as root)"
    else:
        fix = user_fix()
    return f"the box asks {what}, which cgroups here cannot enforce: {why}. Fix: {fix}" + (
        _BEST_EFFORT_HINT)


def user_fix() -> str:
    """The fix for cgroups this process cannot write: the same one wherever it is printed
    (this error, the doctor, the README), on v1 and v2, with or without systemd."""
    from .userfix import fix

    return f"{fix()} (or run pytest as root)"


# --- facts for the doctor ----------------------------------------------------------------

def detect() -> dict[str, Any]:
    """What cgroups this process can use, without creating anything."""
    layout = _layout()
    facts: dict[str, Any] = {"version": layout.version, "root": ROOT}
    if layout.v1:
        facts["v1"] = {
            c: {"path": d, "writable": os.access(d, os.W_OK)} for c, d in sorted(layout.v1.items())
        }
        mem = layout.v1.get("memory")
        memsw = f"{mem}/memory.memsw.limit_in_bytes"
        facts["swap_accounting"] = bool(mem and os.path.exists(memsw))
        facts["memory_peak"] = bool(mem and os.path.exists(f"{mem}/memory.max_usage_in_bytes"))
        facts["cgroup_kill"] = False
    if layout.version == "v2" and layout.unified:
        own = layout.unified
        leaf = os.path.basename(own).startswith(LEAF_PREFIX)
        base = os.path.dirname(own) if leaf else own

        def words(name: str) -> list[str]:
            try:
                return _read(f"{base}/{name}").decode().split()
            except OSError:
                return []

        writable = os.access(base, os.W_OK) and os.access(f"{base}/cgroup.procs", os.W_OK)
        facts.update({
            "path": base,
            "controllers_available": words("cgroup.controllers"),
            "controllers_enabled": words("cgroup.subtree_control"),
            "writable": writable,
            "delegated": writable and os.access(f"{base}/cgroup.subtree_control", os.W_OK),
            "cgroup_kill": os.path.exists(f"{base}/cgroup.kill"),
            "memory_peak": os.path.exists(f"{base}/memory.peak"),
            "swap_accounting": os.path.exists(f"{base}/memory.swap.max"),
        })
    elif layout.unified:
        facts["unified"] = layout.unified
    facts["best_effort"] = BEST_EFFORT
    return facts
