"""What a box asks of cgroups, the error when they cannot hold it, and the rlimit fallback."""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING

from ...box.units import format_size
from .files import _read, _write

if TYPE_CHECKING:
    from ...box.options import BoxOptions

_LIMIT_CONTROLLER = {"memory": "memory", "cpu": "cpu", "cpu_weight": "cpu", "cpuset": "cpuset",
                     "pids": "pids"}
_CPU_PERIOD = 100_000


class CgroupUnavailable(Exception):
    """A limit was asked that this machine cannot enforce; the message names the fix."""

    #: what was asked that cannot be held ("cpu=0.5", ...) and why, for a caller's message
    unheld: tuple[str, ...] = ()
    reasons: str = ""


def _asked(options: BoxOptions, v2: bool) -> dict[str, str]:
    """{controller: what was asked} for the limits in `options`."""
    asked: dict[str, str] = {}
    for option, controller in _LIMIT_CONTROLLER.items():
        value = getattr(options, option)
        if value is not None:
            shown = format_size(value) if option == "memory" else repr(value)
            # cpu and cpu_weight share the cpu controller: both are named when both asked
            asked[controller] = ", ".join(filter(None, (asked.get(controller),
                                                        f"{option}={shown}")))
    if options.io is not None:
        shown = ", ".join(f"{k}={v!r}" for k, v in options.io.items() if v is not None)
        asked["io" if v2 else "blkio"] = f"io={{{shown}}}"
    return asked


def _quota(cpu: float) -> int:
    """cpu (cores) as microseconds of CPU time per `_CPU_PERIOD`."""
    return max(1000, round(cpu * _CPU_PERIOD))


def _shares(weight: int) -> int:
    """A v2 cpu.weight (1-10000, default 100) as v1 cpu.shares (default 1024, at least 2)."""
    return max(2, round(weight * 1024 / 100))


def _write_cpuset(path: str, parent: str, cpuset: str) -> None:
    """cpuset.cpus of the box; CgroupUnavailable naming the CPUs allowed when refused."""
    try:
        _write(f"{path}/cpuset.cpus", cpuset.encode())
    except OSError as exc:
        if exc.errno in (errno.EINVAL, errno.ERANGE):  # ERANGE: past the last CPU
            allowed = _read(f"{parent}/cpuset.cpus").decode().strip()
            raise CgroupUnavailable(f"cpuset={cpuset!r} is not among the CPUs "
                                    f"this process may use ({allowed})") from None
        raise


def _best_effort(options: BoxOptions, problems: dict[str, str]
                 ) -> tuple[tuple[tuple[int, int], ...], str]:
    """rlimits standing in for the limits cgroups cannot enforce, and a note saying so."""
    import resource

    rlimits = []
    notes = []
    if "memory" in problems and options.memory is not None:
        # the box is a fork of this process: its address space starts at this process's
        rlimits.append((resource.RLIMIT_AS, options.memory + _vm_size()))
        notes.append("memory as RLIMIT_AS (address space per process, above pytest's own)")
    if "pids" in problems and options.pids is not None:
        rlimits.append((resource.RLIMIT_NPROC, options.pids))
        notes.append("pids as RLIMIT_NPROC (per user)")
    if "cpu" in problems:
        notes.extend(f"{name} not enforced" for name in ("cpu", "cpu_weight")
                     if getattr(options, name) is not None)
    if "cpuset" in problems:
        notes.append("cpuset not enforced")
    if "io" in problems or "blkio" in problems:
        notes.append("io not enforced")
    return tuple(rlimits), "best-effort limits: " + "; ".join(notes)


def _vm_size() -> int:
    try:
        for line in _read("/proc/self/status").split(b"\n"):
            if line.startswith(b"VmSize:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0
