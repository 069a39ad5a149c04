"""The session: this process's own cgroup(s), one per hierarchy used, made lazily.

Layout (v2; on v1 the same under each hierarchy used)::

    <the cgroup pytest runs in>/nsbox-<pid>-<random>/box-<n>

cgroup v2 forbids processes in a cgroup that enables controllers for its children ("no
internal processes"). When pytest's own cgroup holds processes and a controller must be
enabled below it, every process there moves into a leaf `nsbox-leaf-<pid>` beside the
sessions; `session_cleanup` moves them back and removes the leaf once no session is left.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import os
from collections.abc import Iterable

from .files import _pids, _read, _write
from .layout import _layout
from .tree import _remove_tree, _rmdir

__all__ = ["forget_inherited", "session_cleanup"]

SESSION_PREFIX = "nsbox-"
LEAF_PREFIX = "nsbox-leaf-"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _session_pid(entry: str) -> int | None:
    """The pid in `nsbox-<pid>-<random>` (None for other names, leaves included)."""
    if not entry.startswith(SESSION_PREFIX) or entry.startswith(LEAF_PREFIX):
        return None
    pid = entry[len(SESSION_PREFIX):].split("-", 1)[0]
    return int(pid) if pid.isdigit() else None


class _Session:
    """This process's session cgroup(s), made lazily, one per hierarchy used."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.name = f"{SESSION_PREFIX}{self.pid}-{os.urandom(3).hex()}"
        self.layout = _layout()
        self.dirs: dict[str, str] = {}  # parent dir -> session dir
        self.failed: dict[str, str] = {}  # parent dir (or controller) -> why unusable
        self.enabled: set[str] = set()  # v2: controllers enabled in the session
        self.counter = 0
        self.v2 = self.layout.version == "v2"
        self.base: str | None = None
        if self.v2 and self.layout.unified:
            own = self.layout.unified
            leaf = os.path.basename(own).startswith(LEAF_PREFIX)
            self.base = os.path.dirname(own) if leaf else own
        self.memsw: dict[str, bool] = {}
        #: v1: set of extra devices -> the devices-<n> directory boxes are made under
        self.device_parents: dict[tuple[str, ...], str | None] = {}

    def session_dir(self, parent: str) -> str | None:
        """The session directory under `parent`, made on first use (None if not writable)."""
        made = self.dirs.get(parent)
        if made is not None or parent in self.failed:
            return made
        _remove_stale(parent)
        path = f"{parent}/{self.name}"
        try:
            os.mkdir(path)
        except OSError as exc:
            why = os.strerror(exc.errno or 0)
            self.failed[parent] = f"cannot create a cgroup in {parent}: {why}"
            return None
        self.dirs[parent] = path
        _register_exit()
        if not self.v2 and os.path.exists(f"{path}/cpuset.cpus"):
            for name in ("cpuset.cpus", "cpuset.mems"):  # empty in a new v1 cpuset cgroup
                _write(f"{path}/{name}", _read(f"{parent}/{name}").strip() or b"\n")
        return path

    def v2_enable(self, controllers: Iterable[str]) -> dict[str, str]:
        """Enable controllers for the boxes (base and session); return {ctrl: why not}."""
        problems: dict[str, str] = {}
        assert self.base is not None
        session = self.session_dir(self.base)
        if session is None:
            why = self.failed[self.base]
            return {c: why for c in controllers}
        want = [c for c in controllers if c not in self.enabled and c not in self.failed]
        if not want:
            return {c: self.failed[c] for c in controllers if c in self.failed}
        available = _read(f"{self.base}/cgroup.controllers").split()
        for c in want:
            if c.encode() not in available:
                self.failed[c] = (f"the {c} controller is not available in {self.base} "
                                  f"(it has: {b' '.join(available).decode() or 'none'})")
        want = [c for c in want if c not in self.failed]
        if want:
            try:
                _enable(self.base, want, may_move=True)
                _enable(session, want, may_move=False)
                self.enabled.update(want)
            except OSError as exc:
                for c in want:
                    self.failed[c] = (f"cannot enable the {c} controller under {self.base}: "
                                      f"{os.strerror(exc.errno or 0)}")
        problems.update({c: self.failed[c] for c in controllers if c in self.failed})
        return problems


def _enable(cgroup: str, controllers: list[str], may_move: bool) -> None:
    """Write +ctrl to subtree_control; when processes live there, move them to a leaf."""
    have = _read(f"{cgroup}/cgroup.subtree_control").decode().split()
    want = [c for c in controllers if c not in have]
    if not want:
        return
    data = " ".join("+" + c for c in want).encode()
    for attempt in range(5):
        try:
            _write(f"{cgroup}/cgroup.subtree_control", data)
            return
        except OSError as exc:
            if exc.errno != errno.EBUSY or not may_move or attempt == 4:
                raise
            _move_to_leaf(cgroup)


def _move_to_leaf(cgroup: str) -> None:
    """Move every process of `cgroup` into nsbox-leaf-<pid> ("no internal processes")."""
    leaf = f"{cgroup}/{LEAF_PREFIX}{os.getpid()}"
    with contextlib.suppress(FileExistsError):
        os.mkdir(leaf)
    for _ in range(20):
        pids = _pids(f"{cgroup}/cgroup.procs")
        if not pids:
            return
        for pid in pids:
            try:
                _write(f"{leaf}/cgroup.procs", str(pid).encode())
            except OSError as exc:
                if exc.errno != errno.ESRCH:
                    raise


_session: _Session | None = None
_exit_registered = False


def _get_session() -> _Session:
    global _session
    if _session is None or _session.pid != os.getpid():
        _session = _Session()  # a forked child never reuses its parent's session
    return _session


def forget_inherited() -> object:
    """In a box: start a session of its own. The pid alone cannot tell, since a box inside a
    box has the same pid 2 as its outer box's test process, whose session it inherited.
    Returns that one, for the caller to keep (see `inside._inherited`)."""
    global _session
    forgotten, _session = _session, None
    return forgotten


def _register_exit() -> None:
    global _exit_registered
    if not _exit_registered:
        atexit.register(session_cleanup)
        _exit_registered = True


def _remove_stale(parent: str) -> None:
    """Remove sessions left under `parent` by a pytest that died (its pid is gone)."""
    try:
        entries = os.listdir(parent)
    except OSError:
        return
    for entry in entries:
        pid = _session_pid(entry)
        if pid is not None and pid != os.getpid() and not _alive(pid):
            with contextlib.suppress(OSError):
                _remove_tree(f"{parent}/{entry}")


def _has(session: _Session, parent: str, name: str) -> bool:
    """Whether cgroups under `parent` have the file `name` (swap accounting), cached."""
    key = f"{parent}\0{name}"
    if key not in session.memsw:
        session.memsw[key] = os.path.exists(f"{parent}/{name}")
    return session.memsw[key]


def session_cleanup() -> None:
    """Remove this process's session cgroup(s) and undo a leaf move once nothing uses it."""
    global _session
    session = _session
    if session is None or session.pid != os.getpid():
        _restore_leaf()
        return
    for path in session.dirs.values():
        with contextlib.suppress(OSError):
            _remove_tree(path)
    session.dirs.clear()
    _session = None
    _restore_leaf()


def _restore_leaf() -> None:
    """Move processes back out of nsbox-leaf-* and remove it once no live session is left."""
    try:
        own = _layout().unified
    except OSError:
        return
    if own is None or not os.path.basename(own).startswith(LEAF_PREFIX):
        return
    base = os.path.dirname(own)
    try:
        entries = os.listdir(base)
        for entry in entries:
            pid = _session_pid(entry)
            if pid is not None and _alive(pid):
                return  # another process's session still needs the controllers
        for entry in entries:
            pid = _session_pid(entry)
            if pid is not None:
                _remove_tree(f"{base}/{entry}")
        enabled = _read(f"{base}/cgroup.subtree_control").split()
        if enabled:
            _write(f"{base}/cgroup.subtree_control", b" ".join(b"-" + c for c in enabled))
        for entry in entries:
            if entry.startswith(LEAF_PREFIX):
                leaf = f"{base}/{entry}"
                for _ in range(20):
                    pids = _pids(f"{leaf}/cgroup.procs")
                    if not pids:
                        break
                    for pid in pids:
                        with contextlib.suppress(ProcessLookupError):
                            _write(f"{base}/cgroup.procs", str(pid).encode())
                _rmdir(leaf)
    except OSError:
        return  # another process still needs it; the last one out restores
