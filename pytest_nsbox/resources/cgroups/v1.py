"""The cgroup v1 backend: a directory per hierarchy (memory, cpuacct, pids; cpu, cpuset,
freezer, blkio when asked), its limit files and its counters."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ...box.outcome import Usage
from .blockio import _io_bytes_v1
from .files import _keyed, _read, _read_int, _write
from .limits import _CPU_PERIOD, _quota, _shares, _write_cpuset
from .session import _has, _Session

if TYPE_CHECKING:
    from ...box.options import BoxOptions

_V1_ACCOUNTING = ("memory", "cpuacct", "pids")


def parents(session: _Session, asked: dict[str, str], extra: tuple[str, ...] = ()
           ) -> tuple[dict[str, str], dict[str, str]]:
    """{controller: session dir} for the hierarchies a box uses, and {controller: why not}."""
    dirs: dict[str, str] = {}
    problems: dict[str, str] = {}
    for c in dict.fromkeys((*_V1_ACCOUNTING, *extra, *asked)):
        own = session.layout.v1.get(c)
        if own is None:
            if c in asked:
                problems[c] = f"no cgroup v1 hierarchy has the {c} controller mounted"
            continue
        path = session.session_dir(own)
        if path is None:
            if c in asked:
                problems[c] = session.failed[own]
            continue
        dirs[c] = path
    return dirs, problems


def write_limits(session: _Session, path: str, parent: str, want: set[str],
                 options: BoxOptions) -> None:
    """Write the limits in `want` (this hierarchy's) into the box directory `path`."""
    if "memory" in want and options.memory is not None:
        limit = str(options.memory).encode()
        _write(f"{path}/memory.limit_in_bytes", limit)
        if _has(session, parent, "memory.memsw.limit_in_bytes"):
            _write(f"{path}/memory.memsw.limit_in_bytes", limit)
    if "cpu" in want and options.cpu is not None:
        _write(f"{path}/cpu.cfs_period_us", str(_CPU_PERIOD).encode())
        _write(f"{path}/cpu.cfs_quota_us", str(_quota(options.cpu)).encode())
    if "cpu" in want and options.cpu_weight is not None:
        _write(f"{path}/cpu.shares", str(_shares(options.cpu_weight)).encode())
    if "cpuset" in want and options.cpuset is not None:
        _write_cpuset(path, parent, options.cpuset)
        _write(f"{path}/cpuset.mems", _read(f"{parent}/cpuset.mems").strip() or b"\n")
    if "pids" in want and options.pids is not None:
        _write(f"{path}/pids.max", str(options.pids).encode())


def usage(dirs: dict[str, str]) -> Usage:
    """Memory, CPU and tasks from each hierarchy's counters (`dirs`: controller -> dir)."""
    usage = Usage()
    if (d := dirs.get("memory")) is not None:
        usage.memory_peak = _read_int(f"{d}/memory.max_usage_in_bytes")
        usage.memory_current = _read_int(f"{d}/memory.usage_in_bytes")
    if (d := dirs.get("cpuacct")) is not None:
        usage.cpu_seconds = (_read_int(f"{d}/cpuacct.usage") or 0) / 1e9
    if (d := dirs.get("pids")) is not None:
        usage.tasks = _read_int(f"{d}/pids.current")
        usage.tasks_peak = _read_int(f"{d}/pids.peak")  # Linux 6.13+ on v1 too
    if (d := dirs.get("cpu")) is not None:
        stat = _keyed(f"{d}/cpu.stat")
        if "throttled_time" in stat:
            usage.cpu_throttled_seconds = stat["throttled_time"] / 1e9
    if (d := dirs.get("blkio")) is not None:
        usage.io_read_bytes, usage.io_write_bytes = _io_bytes_v1(
            f"{d}/blkio.throttle.io_service_bytes")
    return usage


def oom_killed(memory_dir: str, joined: tuple[str, ...]) -> bool:
    """Whether the OOM killer killed a process below `memory_dir`.

    v1 counts a kill where the victim was (not in its ancestors): the delegated child too.
    """
    return any(_keyed(f"{top}/memory.oom_control").get("oom_kill", 0) > 0
               for top in (memory_dir, *(j for j in joined if j.startswith(memory_dir + "/"))))
