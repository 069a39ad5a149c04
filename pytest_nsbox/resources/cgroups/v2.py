"""The cgroup v2 backend: one directory per box, controllers enabled from the session."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from ...box.outcome import Usage
from .blockio import _io_bytes_v2
from .files import _keyed, _read_int, _write
from .limits import _CPU_PERIOD, _quota, _write_cpuset
from .session import _has, _Session

if TYPE_CHECKING:
    from ...box.options import BoxOptions

_V2_ACCOUNTING = ("memory", "pids")


def parents(session: _Session, asked: dict[str, str]
           ) -> tuple[dict[str, str], dict[str, str]]:
    if session.base is None:
        return {}, {c: "this machine has no usable cgroup hierarchy" for c in asked}
    need = list(dict.fromkeys((*_V2_ACCOUNTING, *asked)))
    problems = session.v2_enable(need)
    session_path = session.dirs.get(session.base)
    if session_path is None:
        return {}, {c: why for c, why in problems.items() if c in asked}
    return {"": session_path}, {c: why for c, why in problems.items() if c in asked}


def write_limits(session: _Session, path: str, parent: str, want: set[str],
                 options: BoxOptions) -> None:
    """Write the limits in `want` into the box directory `path`."""
    if "memory" in want and options.memory is not None:
        _write(f"{path}/memory.max", str(options.memory).encode())
        if _has(session, parent, "memory.swap.max"):
            _write(f"{path}/memory.swap.max", b"0")
    if "cpu" in want and options.cpu is not None:
        _write(f"{path}/cpu.max", f"{_quota(options.cpu)} {_CPU_PERIOD}".encode())
    if "cpu" in want and options.cpu_weight is not None:
        _write(f"{path}/cpu.weight", str(options.cpu_weight).encode())
    if "cpuset" in want and options.cpuset is not None:
        _write_cpuset(path, parent, options.cpuset)
    if "pids" in want and options.pids is not None:
        _write(f"{path}/pids.max", str(options.pids).encode())


def usage(d: str) -> Usage:
    """Memory, CPU and tasks of the box cgroup `d` (and everything below it)."""
    usage = Usage()
    usage.memory_peak = _read_int(f"{d}/memory.peak")
    usage.memory_current = _read_int(f"{d}/memory.current")
    stat = _keyed(f"{d}/cpu.stat")
    usage.cpu_seconds = stat.get("usage_usec", 0) / 1e6
    if "throttled_usec" in stat:
        usage.cpu_throttled_seconds = stat["throttled_usec"] / 1e6
    usage.tasks = _read_int(f"{d}/pids.current")
    usage.tasks_peak = _read_int(f"{d}/pids.peak")
    if os.path.exists(f"{d}/io.stat"):
        usage.io_read_bytes, usage.io_write_bytes = _io_bytes_v2(f"{d}/io.stat")
    return usage


def oom_killed(d: str) -> bool:
    """Whether the OOM killer killed a process of the box cgroup `d`."""
    return _keyed(f"{d}/memory.events").get("oom_kill", 0) > 0
