"""A cgroup directory tree: the processes in it, killing them all, removing it."""

from __future__ import annotations

import contextlib
import errno
import os
import time

from .files import _pids, _read_all, _write

_REMOVE_PATIENCE = 2.0  # most seconds remove() waits for a cgroup to empty


def describe(pid: int, width: int = 80) -> tuple[int, str] | None:
    """(pid inside the box's pid namespace, command line) of host pid `pid`; None if gone.

    The innermost NSpid is the pid the box sees; pid 1 is the box's init (a clone of
    the box maker, whose command line says python) and is named "init".
    """
    try:
        status = _read_all(f"/proc/{pid}/status")
        cmdline = _read_all(f"/proc/{pid}/cmdline")
    except OSError:
        return None
    inner = pid
    for line in status.split(b"\n"):
        if line.startswith(b"NSpid:"):
            inner = int(line.split()[-1])
            break
    if inner == 1:
        return 1, "init"
    words = cmdline.rstrip(b"\0").replace(b"\0", b" ").decode("utf-8", "replace")
    if not words:  # a zombie or a kernel-side task: its short name
        for line in status.split(b"\n"):
            if line.startswith(b"Name:"):
                words = "[" + line.split(None, 1)[-1].decode("utf-8", "replace") + "]"
                break
    if len(words) > width:
        words = words[:width - 1] + "\u2026"
    return inner, words


def _tree_pids(cgroup: str) -> list[int]:
    """The pids in `cgroup` and every cgroup below it (v1 cgroup.procs lists its own only)."""
    found = []
    for top, _, _ in os.walk(cgroup):
        with contextlib.suppress(OSError):
            found.extend(_pids(f"{top}/cgroup.procs"))
    return found


def _kill_all(cgroup: str) -> None:
    try:
        _write(f"{cgroup}/cgroup.kill", b"1")
        return
    except FileNotFoundError:
        pass
    except OSError:
        return  # gone already
    for rounds in range(1000):
        pids = _pids(f"{cgroup}/cgroup.procs")
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 9)
        if rounds > 3:
            time.sleep(0.001)  # forks racing the kill; let them show up


def _rmdir(path: str) -> None:
    """rmdir, retrying on EBUSY (dying tasks) with a short bounded backoff."""
    delay, waited = 0.0002, 0.0
    while True:
        try:
            os.rmdir(path)
            return
        except FileNotFoundError:
            return
        except OSError as exc:
            if exc.errno != errno.EBUSY or waited >= _REMOVE_PATIENCE:
                raise
        _kill_all(path)
        time.sleep(delay)
        waited += delay
        delay = min(delay * 2, 0.05)


def _remove_tree(path: str) -> None:
    """Kill everything in a cgroup tree and remove it, deepest first."""
    try:
        entries = [e for e in os.scandir(path) if e.is_dir(follow_symlinks=False)]
    except FileNotFoundError:
        return
    for entry in entries:
        _remove_tree(entry.path)
    _kill_all(path)
    _rmdir(path)
