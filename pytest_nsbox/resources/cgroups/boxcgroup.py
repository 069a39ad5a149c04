"""`BoxCgroup`: one box's cgroup(s), what it used, and freezing, killing, removing it."""

from __future__ import annotations

import contextlib
import os
import time

from ...box.outcome import Usage
from . import v1 as cgroup_v1
from . import v2 as cgroup_v2
from .delegation import DELEGATED
from .files import _read, _write
from .tree import _kill_all, _remove_tree, _tree_pids

__all__ = ["BoxCgroup"]

_FREEZE_PATIENCE = 1.0  # most seconds freeze() waits for every task to freeze


class BoxCgroup:
    """The cgroup (v2) or cgroups (v1, one per hierarchy) of one box."""

    def __init__(self, dirs: dict[str, str], v2: bool, join_fds: tuple[int, ...] = (),
                 rlimits: tuple[tuple[int, int], ...] = (), best_effort: str | None = None,
                 views: tuple[tuple[str, bool], ...] = ()) -> None:
        #: controller -> directory ("" -> the one v2 directory)
        self.dirs = dirs
        self.v2 = v2
        self.join_fds = join_fds
        #: (resource, value) pairs the box applies with setrlimit (best-effort mode)
        self.rlimits = rlimits
        #: what was not enforced through cgroups, for the report (best-effort mode)
        self.best_effort = best_effort
        #: (directory, writable) the box is shown under /sys/fs/cgroup, outer first
        self.views = views
        #: the delegated children its processes joined (below `paths`)
        self.joined = tuple(path for path, writable in views
                            if writable and path.endswith("/" + DELEGATED))
        self._removed = False
        self._frozen = False

    @property
    def paths(self) -> tuple[str, ...]:
        """Every directory of this box, once each."""
        return tuple(dict.fromkeys(self.dirs.values()))

    def _dir(self, controller: str) -> str | None:
        return self.dirs.get("") if self.v2 else self.dirs.get(controller)

    def close_join_fds(self) -> None:
        fds, self.join_fds = self.join_fds, ()
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)

    def usage(self) -> Usage:
        """Memory, CPU and tasks of the whole box so far, from the kernel's counters."""
        if self.v2:
            d = self.dirs.get("")
            return cgroup_v2.usage(d) if d is not None else Usage()
        return cgroup_v1.usage(self.dirs)

    def oom_killed(self) -> bool:
        """Whether the kernel's OOM killer killed a process of this box (not failcnt)."""
        d = self._dir("memory")
        if d is None:
            return False
        return cgroup_v2.oom_killed(d) if self.v2 else cgroup_v1.oom_killed(d, self.joined)

    def freeze(self, patience: float = _FREEZE_PATIENCE) -> str:
        """Freeze every process of the box; "" once frozen, else why it is not (yet).

        v2 writes cgroup.freeze and waits for `frozen 1` in cgroup.events; v1 writes FROZEN
        to freezer.state (the box has a freezer cgroup when it has a timeout) and waits
        for the state to leave FREEZING. A task in uninterruptible sleep (a throttled
        write, NFS) cannot freeze: after `patience` seconds the box is left half frozen.
        """
        if self.v2:
            d = self.dirs.get("")
            if d is None:
                return "the box has no cgroup to freeze"
            control, data, state, done = f"{d}/cgroup.freeze", b"1", f"{d}/cgroup.events", None
        else:
            d = self.dirs.get("freezer")
            if d is None:  # a user's cgroups without the freezer, or none at all
                return ("listed while they ran: no cgroup freezer could pause the box first "
                        "(the v1 freezer hierarchy is not mounted or not writable by this user)"
                        if self.dirs else "the box ran without a cgroup (best-effort limits): "
                        "what else ran in it is not listed")
            control, data, state, done = f"{d}/freezer.state", b"FROZEN", f"{d}/freezer.state", \
                b"FROZEN"
        try:
            _write(control, data)
        except OSError as exc:
            return f"cannot freeze the box: {os.strerror(exc.errno or 0)}"
        self._frozen = True
        until = time.monotonic() + patience
        delay = 0.0001
        while True:
            try:
                text = _read(state)
            except OSError as exc:
                return f"cannot read {os.path.basename(state)}: {os.strerror(exc.errno or 0)}"
            if (text.strip() == done) if done else (b"frozen 1" in text.split(b"\n")):
                return ""
            if time.monotonic() >= until:
                return f"not every process froze within {patience:g} s (one may be in D state)"
            time.sleep(delay)
            delay = min(delay * 2, 0.01)

    def thaw(self) -> None:
        """Undo `freeze` (a no-op for a box that is not frozen)."""
        if not self._frozen:
            return
        d = self.dirs.get("" if self.v2 else "freezer")
        if d is not None:
            with contextlib.suppress(OSError):
                _write(f"{d}/cgroup.freeze" if self.v2 else f"{d}/freezer.state",
                       b"0" if self.v2 else b"THAWED")
        self._frozen = False

    def _rmdir_known(self) -> bool:
        """rmdir the delegated children, then the box's directories; False at the first
        that will not go (the caller then searches and kills the rest)."""
        for d in (*self.joined[::-1], *self.paths):
            try:
                os.rmdir(d)
            except FileNotFoundError:
                continue
            except OSError:
                return False
        return True

    def pids(self) -> list[int]:
        """Host pids of the processes (not threads) in the box and the boxes inside it."""
        d = self.dirs.get("") if self.v2 else next(
            (self.dirs[c] for c in ("freezer", "pids", "memory") if c in self.dirs), None)
        if d is None and self.paths:
            d = self.paths[0]
        return _tree_pids(d) if d is not None else []

    def kill(self) -> None:
        """SIGKILL every process of the box: cgroup.kill where present, else one by one.

        A frozen box is killed, then thawed: v1 frozen tasks do not die of SIGKILL until
        they thaw, and when they thaw with SIGKILL pending they die without running again.
        """
        if self._frozen:
            for d in self.paths:
                for pid in _tree_pids(d):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, 9)
            self.thaw()
        for d in self.paths + self.joined:
            _kill_all(d)

    def remove(self) -> None:
        """Kill, then remove the box's directories (idempotent).

        The known directories go first with one rmdir each: after a box's init is gone
        they are empty. Only where that fails (processes still there, a cgroup a test made
        below its own) is the tree searched and killed. Measured
        (`benchmarks/nsbench_cpu.py`): 0.3-0.5 ms less of pytest's CPU a library box,
        whose `run` waits for this; in a pytest session, where it runs beside the next
        test, no change beyond the noise.
        """
        self.close_join_fds()
        if self._removed:
            return
        if self._rmdir_known():
            self._removed = True
            return
        self.kill()
        for d in self.paths:
            _remove_tree(d)  # a box inside this box may have left its own session below
        self._removed = True
