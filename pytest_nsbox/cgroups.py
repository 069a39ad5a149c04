"""Cgroups for boxes: one session cgroup per process, one cgroup per box below it.

Layout (v2; on v1 the same under each hierarchy used)::

    <the cgroup pytest runs in>/nsbox-<pid>-<random>/box-<n>

Two backends share one object, `BoxCgroup`: v1 (a directory per hierarchy: memory,
cpuacct, pids, and cpu/cpuset when asked) and v2 (one directory). Every box gets a
cgroup when cgroups are writable, because `ru_maxrss` of a fork is wrong and the cgroup
is what measures a box. Files are written with os.open/os.write: every test pays for
this, so it stays a handful of syscalls.

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
import stat
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .box import Usage
    from .options import BoxOptions

__all__ = [
    "BEST_EFFORT",
    "BoxCgroup",
    "CgroupUnavailable",
    "box_cgroup",
    "detect",
    "session_cleanup",
]

#: When True, a limit cgroups cannot enforce becomes an rlimit noted in the report
#: instead of CgroupUnavailable (the plugin wires this to an ini option).
BEST_EFFORT = False

ROOT = "/sys/fs/cgroup"
SESSION_PREFIX = "nsbox-"
LEAF_PREFIX = "nsbox-leaf-"
#: The child of a limited box cgroup that the box's processes live in and may write.
DELEGATED = "delegated"
#: Under the v1 devices hierarchy: one cgroup per set of allowed devices, which every box
#: with that set joins (its rules are written once per session).
DEVICES_PREFIX = "devices-"
DELEGATE_FIX = "systemd-run --user --scope -p Delegate=yes pytest ..."
_V2_FIX = (f"run pytest in a cgroup delegated to you: `{DELEGATE_FIX}` (or run pytest as root)")
_V1_FIX = ("run pytest as root, or in a cgroup your user owns: `sudo cgcreate -a $USER -t $USER "
           "-g memory,cpu,cpuacct,cpuset,pids:$USER` then `cgexec -g "
           "memory,cpu,cpuacct,cpuset,pids:$USER pytest ...`")
_BEST_EFFORT_HINT = " (or allow best-effort rlimits: ini option nsbox_best_effort = true)"

_LIMIT_CONTROLLER = {"memory": "memory", "cpu": "cpu", "cpuset": "cpuset", "pids": "pids"}
_V1_ACCOUNTING = ("memory", "cpuacct", "pids")
_V2_ACCOUNTING = ("memory", "pids")
_CPU_PERIOD = 100_000
_W = os.O_WRONLY | os.O_CLOEXEC
_R = os.O_RDONLY | os.O_CLOEXEC
_REMOVE_PATIENCE = 2.0  # most seconds remove() waits for a cgroup to empty
_FREEZE_PATIENCE = 1.0  # most seconds freeze() waits for every task to freeze


class CgroupUnavailable(Exception):
    """A limit was asked that this machine cannot enforce; the message names the fix."""

    #: what was asked that cannot be held ("cpu=0.5", ...) and why, for a caller's message
    unheld: tuple[str, ...] = ()
    reasons: str = ""


# --- small file helpers (no Python file objects: every box pays for these) -----------

def _write(path: str, data: bytes) -> None:
    fd = os.open(path, _W)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def _read(path: str) -> bytes:
    fd = os.open(path, _R)
    try:
        return os.read(fd, 65536)
    finally:
        os.close(fd)


def _read_int(path: str) -> int | None:
    try:
        return int(_read(path))
    except (OSError, ValueError):
        return None


def _keyed(path: str) -> dict[str, int]:
    """A flat keyed file (cpu.stat, memory.events, memory.oom_control) as a dict."""
    try:
        text = _read(path)
    except OSError:
        return {}
    out = {}
    for line in text.split(b"\n"):
        key, _, value = line.partition(b" ")
        if value.isdigit():
            out[key.decode()] = int(value)
    return out


def _pids(procs: str) -> list[int]:
    try:
        return [int(p) for p in _read_all(procs).split()]
    except OSError:
        return []


def _read_all(path: str) -> bytes:
    fd = os.open(path, _R)
    try:
        chunks = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


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


def describe(pid: int, width: int = 80) -> tuple[int, str] | None:
    """(pid inside the box's pid namespace, command line) of host pid `pid`; None if gone.

    The innermost NSpid is the pid the box sees; pid 1 is the box's init (a clone of
    pytest, so its command line would say pytest) and is named "init".
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


# --- layout detection ------------------------------------------------------------------

@dataclass
class _Layout:
    version: str  # "v1", "v2", "hybrid" or "none"
    unified: str | None = None  # this process's cgroup directory on the v2 hierarchy
    v1: dict[str, str] = field(default_factory=dict)  # controller -> this process's v1 dir


def _layout() -> _Layout:
    mounts: list[tuple[str, str, str, set[str]]] = []  # (fstype, mount root, mountpoint, opts)
    with open("/proc/self/mountinfo", "rb") as f:
        for line in f.read().decode().splitlines():
            left, _, right = line.partition(" - ")
            fields, rfields = left.split(), right.split()
            # a mount whose root lies outside this cgroup namespace ("/..") is not ours
            # (pytest in a container's cgroup namespace)
            if (len(rfields) >= 3 and rfields[0] in ("cgroup", "cgroup2")
                    and not fields[3].startswith("/..")):
                mounts.append((rfields[0], fields[3], fields[4], set(rfields[2].split(","))))
    with open("/proc/self/cgroup", "rb") as f:
        own = [line.split(":", 2) for line in f.read().decode().splitlines() if line]
    layout = _Layout("none")
    v1_paths = {c: path for _, ctrls, path in own if ctrls for c in ctrls.split(",")}
    unified_path = next((path for _, ctrls, path in own if not ctrls), None)
    for fstype, mroot, point, opts in mounts:
        if fstype == "cgroup2" and unified_path is not None and layout.unified is None:
            layout.unified = _join(point, mroot, unified_path)
        elif fstype == "cgroup":
            for c in opts & set(v1_paths):
                layout.v1.setdefault(c, _join(point, mroot, v1_paths[c]))
    if layout.v1:
        layout.version = "hybrid" if layout.unified else "v1"
    elif layout.unified:
        layout.version = "v2"
    return layout


def _join(point: str, mroot: str, path: str) -> str:
    if mroot != "/" and (path == mroot or path.startswith(mroot + "/")):
        path = path[len(mroot):]
    return point + path.rstrip("/") if path != "/" else point


# --- the session: one per process ----------------------------------------------------

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


def forget_inherited() -> None:
    """In a box: start a session of its own. The pid alone cannot tell, since a box inside a
    box has the same pid 2 as its outer box's test process, whose session it inherited."""
    global _session
    _session = None


def _register_exit() -> None:
    global _exit_registered
    if not _exit_registered:
        atexit.register(session_cleanup)
        _exit_registered = True


# --- the box cgroup ------------------------------------------------------------------

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
        from .box import Usage

        usage = Usage()
        if self.v2:
            d = self.dirs.get("")
            if d is None:
                return usage
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
        if (d := self.dirs.get("memory")) is not None:
            usage.memory_peak = _read_int(f"{d}/memory.max_usage_in_bytes")
            usage.memory_current = _read_int(f"{d}/memory.usage_in_bytes")
        if (d := self.dirs.get("cpuacct")) is not None:
            usage.cpu_seconds = (_read_int(f"{d}/cpuacct.usage") or 0) / 1e9
        if (d := self.dirs.get("pids")) is not None:
            usage.tasks = _read_int(f"{d}/pids.current")
        if (d := self.dirs.get("cpu")) is not None:
            stat = _keyed(f"{d}/cpu.stat")
            if "throttled_time" in stat:
                usage.cpu_throttled_seconds = stat["throttled_time"] / 1e9
        if (d := self.dirs.get("blkio")) is not None:
            usage.io_read_bytes, usage.io_write_bytes = _io_bytes_v1(
                f"{d}/blkio.throttle.io_service_bytes")
        return usage

    def oom_killed(self) -> bool:
        """Whether the kernel's OOM killer killed a process of this box (not failcnt)."""
        d = self._dir("memory")
        if d is None:
            return False
        if self.v2:
            return _keyed(f"{d}/memory.events").get("oom_kill", 0) > 0
        # v1 counts a kill where the victim was (not in its ancestors): the delegated child too
        return any(_keyed(f"{top}/memory.oom_control").get("oom_kill", 0) > 0
                   for top in (d, *(j for j in self.joined if j.startswith(d + "/"))))

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
            if d is None:
                return "the box is not in a v1 freezer cgroup"
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
        """Kill, then remove the box's directories (idempotent)."""
        self.close_join_fds()
        if self._removed:
            return
        self.kill()
        for d in self.paths:
            _remove_tree(d)  # a box inside this box may have left its own session below
        self._removed = True


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


# --- creating a box's cgroup -----------------------------------------------------------

def _asked(options: BoxOptions, v2: bool) -> dict[str, str]:
    """{controller: what was asked} for the limits in `options`."""
    from .options import format_size

    asked = {}
    for option, controller in _LIMIT_CONTROLLER.items():
        value = getattr(options, option)
        if value is not None:
            shown = format_size(value) if option == "memory" else repr(value)
            asked[controller] = f"{option}={shown}"
    if options.io is not None:
        shown = ", ".join(f"{k}={v!r}" for k, v in options.io.items() if v is not None)
        asked["io" if v2 else "blkio"] = f"io={{{shown}}}"
    return asked


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
        dirs, problems = _v2_parents(session, asked)
    else:
        # a box with a timeout is frozen before it is killed: it needs the v1 freezer
        extra = ("freezer",) if options.timeout is not None else ()
        dirs, problems = _v1_parents(session, asked, extra)
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


def _v1_parents(session: _Session, asked: dict[str, str], extra: tuple[str, ...] = ()
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
    from .devfilter import v1_rules

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
    from .devfilter import box_device_rules

    try:
        return box_device_rules(extra)
    except ValueError as exc:
        from .errors import BoxUnavailable

        raise BoxUnavailable(f"devices: {exc}") from None


def _attach_device_filter(session: _Session, path: str, rules: Any) -> None:
    """v2: the eBPF device filter on the box's cgroup, where this process may load one."""
    from .devfilter import attach_filter

    try:
        attach_filter(path, rules)
    except OSError as exc:  # no CAP_SYS_ADMIN (a user, or a box inside a box): noted once
        session.failed["devfilter"] = f"cannot load or attach an eBPF device filter: {exc}"


def _v2_parents(session: _Session, asked: dict[str, str]
                ) -> tuple[dict[str, str], dict[str, str]]:
    if session.base is None:
        return {}, {c: "this machine has no usable cgroup hierarchy" for c in asked}
    need = list(dict.fromkeys((*_V2_ACCOUNTING, *asked)))
    problems = session.v2_enable(need)
    session_path = session.dirs.get(session.base)
    if session_path is None:
        return {}, {c: why for c, why in problems.items() if c in asked}
    return {"": session_path}, {c: why for c, why in problems.items() if c in asked}


def _write_limits(session: _Session, path: str, parent: str, controllers: list[str],
                  options: BoxOptions, asked: dict[str, str]) -> bool:
    """Write the limits asked that belong in `path`; whether there were any."""
    v2 = session.v2
    want = set(asked) if v2 else set(asked) & set(controllers)  # v1: this hierarchy's only
    if "memory" in want and options.memory is not None:
        limit = str(options.memory).encode()
        if v2:
            _write(f"{path}/memory.max", limit)
            if _has(session, parent, "memory.swap.max"):
                _write(f"{path}/memory.swap.max", b"0")
        else:
            _write(f"{path}/memory.limit_in_bytes", limit)
            if _has(session, parent, "memory.memsw.limit_in_bytes"):
                _write(f"{path}/memory.memsw.limit_in_bytes", limit)
    if "cpu" in want and options.cpu is not None:
        quota = max(1000, round(options.cpu * _CPU_PERIOD))
        if v2:
            _write(f"{path}/cpu.max", f"{quota} {_CPU_PERIOD}".encode())
        else:
            _write(f"{path}/cpu.cfs_period_us", str(_CPU_PERIOD).encode())
            _write(f"{path}/cpu.cfs_quota_us", str(quota).encode())
    if "cpuset" in want and options.cpuset is not None:
        try:
            _write(f"{path}/cpuset.cpus", options.cpuset.encode())
        except OSError as exc:
            if exc.errno in (errno.EINVAL, errno.ERANGE):  # ERANGE: past the last CPU
                allowed = _read(f"{parent}/cpuset.cpus").decode().strip()
                raise CgroupUnavailable(f"cpuset={options.cpuset!r} is not among the CPUs "
                                        f"this process may use ({allowed})") from None
            raise
        if not v2:
            _write(f"{path}/cpuset.mems", _read(f"{parent}/cpuset.mems").strip() or b"\n")
    if "pids" in want and options.pids is not None:
        _write(f"{path}/pids.max", str(options.pids).encode())
    return bool(want - {"io", "blkio"})


# --- io: the block device behind a path ------------------------------------------------

_IO_V1_FILES = (("read_bps", "blkio.throttle.read_bps_device"),
                ("write_bps", "blkio.throttle.write_bps_device"),
                ("read_iops", "blkio.throttle.read_iops_device"),
                ("write_iops", "blkio.throttle.write_iops_device"))
_IO_V2_KEYS = (("read_bps", "rbps"), ("write_bps", "wbps"), ("read_iops", "riops"),
               ("write_iops", "wiops"))
_IO_FIX = ("give io a 'path' on a disk-backed file system (ext4, xfs, btrfs on a disk) or a "
           "block device such as '/dev/sda'")


def _io_devices(io: Any) -> tuple[str, ...]:
    """The "MAJ:MIN" of the whole disk behind io['path'] (default: the working directory)."""
    path = io.get("path") or os.getcwd()
    return (block_device(path),)


def block_device(path: str) -> str:
    """"MAJ:MIN" of the disk that holds `path` (a block device node: that device).

    Partitions map to their disk (the throttle works on whole disks); a file system whose
    st_dev is not a block device (btrfs subvolumes) maps to its mount's source device.
    CgroupUnavailable when nothing backs the path with a block device (tmpfs, overlay...).
    """
    try:
        st = os.stat(path)
    except OSError as exc:
        raise CgroupUnavailable(f"io: cannot find the device behind {path}: "
                                f"{os.strerror(exc.errno or 0)}") from None
    dev = st.st_rdev if stat.S_ISBLK(st.st_mode) else st.st_dev
    name = f"{os.major(dev)}:{os.minor(dev)}"
    if not os.path.exists(f"/sys/dev/block/{name}"):
        fstype, source = _mount_of(name)
        try:
            src = os.stat(source) if source.startswith("/dev/") else None
        except OSError:
            src = None
        if src is None or not stat.S_ISBLK(src.st_mode):
            raise CgroupUnavailable(
                f"io: {path} is on a file system of type {fstype or 'unknown'} (source "
                f"{source!r}), which has no block device to throttle; {_IO_FIX}")
        name = f"{os.major(src.st_rdev)}:{os.minor(src.st_rdev)}"
    sysdir = os.path.realpath(f"/sys/dev/block/{name}")
    if os.path.exists(f"{sysdir}/partition"):
        with contextlib.suppress(OSError):
            name = _read(f"{os.path.dirname(sysdir)}/dev").decode().strip()
    return name


def _mount_of(dev: str) -> tuple[str, str]:
    """(fstype, source) of the mount whose device number is `dev` ("", "") when none."""
    try:
        text = _read_all("/proc/self/mountinfo").decode("utf-8", "replace")
    except OSError:
        return "", ""
    for line in text.splitlines():
        left, _, right = line.partition(" - ")
        fields, rfields = left.split(), right.split()
        if len(fields) > 2 and fields[2] == dev and len(rfields) >= 2:
            return rfields[0], rfields[1]
    return "", ""


def _write_io(path: str, v2: bool, devices: tuple[str, ...], io: Any, parent: str) -> None:
    """Throttle the box on each device: v2 io.max, v1 blkio.throttle.*_device."""
    try:
        for dev in devices:
            if v2:
                limits = " ".join(f"{key}={io[name]}" for name, key in _IO_V2_KEYS
                                  if io.get(name) is not None)
                _write(f"{path}/io.max", f"{dev} {limits}".encode())
                continue
            for name, filename in _IO_V1_FILES:
                if io.get(name) is not None:
                    _write(f"{path}/{filename}", f"{dev} {io[name]}".encode())
    except OSError as exc:
        if exc.errno in (errno.EINVAL, errno.ENODEV, errno.EOPNOTSUPP, errno.ENOENT):
            raise CgroupUnavailable(
                f"io: the kernel refuses to throttle device {', '.join(devices)} in {parent} "
                f"({os.strerror(exc.errno or 0)}); {_IO_FIX}") from None
        raise


def _io_bytes_v1(path: str) -> tuple[int, int]:
    """(read, write) bytes from blkio.throttle.io_service_bytes, summed over devices."""
    read = write = 0
    try:
        text = _read_all(path)
    except OSError:
        return 0, 0
    for line in text.split(b"\n"):
        parts = line.split()
        if len(parts) == 3 and parts[2].isdigit():
            if parts[1] == b"Read":
                read += int(parts[2])
            elif parts[1] == b"Write":
                write += int(parts[2])
    return read, write


def _io_bytes_v2(path: str) -> tuple[int, int]:
    """(read, write) bytes from io.stat (rbytes, wbytes), summed over devices."""
    read = write = 0
    try:
        text = _read_all(path)
    except OSError:
        return 0, 0
    for line in text.split(b"\n"):
        for word in line.split()[1:]:
            key, _, value = word.partition(b"=")
            if key == b"rbytes" and value.isdigit():
                read += int(value)
            elif key == b"wbytes" and value.isdigit():
                write += int(value)
    return read, write


def _has(session: _Session, parent: str, name: str) -> bool:
    """Whether cgroups under `parent` have the file `name` (swap accounting), cached."""
    key = f"{parent}\0{name}"
    if key not in session.memsw:
        session.memsw[key] = os.path.exists(f"{parent}/{name}")
    return session.memsw[key]


def _explain(session: _Session, problems: dict[str, str], asked: dict[str, str]) -> str:
    what = ", ".join(asked[c] for c in problems)
    why = "; ".join(dict.fromkeys(problems.values()))
    if session.v2:
        fix = _V2_FIX
        if os.geteuid() != 0 and set(problems) & {"cpu", "cpuset"}:
            fix += (". For cpu/cpuset, delegate them too: `sudo systemctl edit user@.service` "
                    "with `[Service]` `Delegate=cpu cpuset io memory pids`")
    elif session.layout.version == "none":
        fix = "mount cgroup2: `mount -t cgroup2 none /sys/fs/cgroup` (as root)"
    else:
        fix = _V1_FIX
    return f"the box asks {what}, which cgroups here cannot enforce: {why}. Fix: {fix}" + (
        _BEST_EFFORT_HINT)


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
    for c in ("cpu", "cpuset"):
        if c in problems:
            notes.append(f"{c} not enforced")
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


# --- end of session --------------------------------------------------------------------

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
