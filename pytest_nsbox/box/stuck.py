"""What the kernel says a timed-out process is doing, when it gave no stack dump.

A test process that never ran its dump handler is stuck outside Python's reach: in the
kernel (a D state), or on a lock before it got going. Its threads' states, system calls
and kernel stacks (readable as root) say which, in the timeout's message.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

_FRAMES = 12  # most kernel stack frames shown per thread


def kernel_view(pid: int, box_cgroups: Sequence[str] = ()) -> str:
    """The test process's threads as the kernel sees them; with `box_cgroups` (the box's
    cgroup directories), whether it had entered them."""
    head = f"the test process (pid {pid} outside the box) gave no stack dump"
    try:
        tasks = sorted(os.listdir(f"/proc/{pid}/task"), key=int)
    except OSError:
        return f"{head} and is gone\n"
    lines = [f"{head}; the kernel's view of it:"]
    groups = _read(f"/proc/{pid}/cgroup")
    names = {"/" + os.path.basename(path.rstrip("/")) for path in box_cgroups}
    if names and groups and not any(line.endswith(tuple(names)) for line in groups.splitlines()):
        lines.append("  it had not entered its box (it is in none of the box's cgroups): it "
                     "waited right after pytest forked it, most likely on a lock another "
                     "thread of pytest held at the fork (one known case: a thread that "
                     "was ending while tracemalloc traced)")
    for task in tasks:
        base = f"/proc/{pid}/task/{task}"
        stat = _read(f"{base}/stat")
        state = (stat.rpartition(")")[2].split() or ["?"])[0]
        syscall = (_read(f"{base}/syscall").split() or ["?"])[0]
        signals = " ".join(line.replace("\t", "") for line in _read(f"{base}/status").splitlines()
                           if line.startswith(("SigBlk", "SigCgt")))
        lines.append(f"  thread {task}: state {state}, wchan {_read(f'{base}/wchan') or '?'}, "
                     f"system call {syscall}, {signals}")
        lines += [f"    {frame}" for frame in _read(f"{base}/stack").splitlines()[:_FRAMES]]
    return "\n".join(lines) + "\n"


def _read(path: str) -> str:
    try:
        with open(path) as file:
            return file.read().strip()
    except OSError:
        return ""
