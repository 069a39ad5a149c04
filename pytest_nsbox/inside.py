"""The box side: its init (pid 1) sets the namespaces up and reaps; its test process runs.

Nothing here returns: each function ends its process with os._exit, so no inherited
atexit handler, finalizer or buffered output of the pytest process runs a second time.
"""

from __future__ import annotations

import gc
import os
import signal
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, NoReturn

from . import namespaces as ns
from .channel import encode_frame, write_frame
from .options import BoxOptions

#: Signal the parent sends (relayed by the init) to make the test dump its stack.
DUMP_SIGNAL = signal.SIGRTMIN + 6
STATUS_MARK = b"\0NSBOX-STATUS "
CGROUP_ROOT = "/sys/fs/cgroup"


@dataclass
class Plan:
    """Everything the box's processes need, fixed in the parent before the clone."""

    options: BoxOptions
    target: Callable[[Callable[[Any], None]], None]
    result_fd: int
    diag_fd: int
    parent_fds: tuple[int, ...]  # the parent's ends of the pipes, closed in the box
    keep_paths: tuple[str, ...]  # reachable even under a tmpfs
    writable_paths: tuple[str, ...]  # reachable and writable even under readonly
    frame_limit: int
    uid: int
    gid: int
    cgroup: Any = None
    join_fds: tuple[int, ...] = ()
    relay_fd: int | None = None  # the box's end of the forward socketpair


def namespace_flags(options: BoxOptions) -> int:
    flags = ns.CLONE_NEWPID | ns.CLONE_NEWNS | ns.CLONE_NEWUTS | ns.CLONE_NEWIPC
    if options.user != "host":
        flags |= ns.CLONE_NEWUSER
    if options.net != "host":
        flags |= ns.CLONE_NEWNET
    return flags


def send_unavailable(plan: Plan, step: str, err: int, message: str | None = None) -> NoReturn:
    from .fixes import explain_setup_failure

    text = message or explain_setup_failure(step, err)
    write_frame(plan.result_fd, encode_frame(("unavailable", text)))
    os._exit(0)


def init_main(plan: Plan) -> NoReturn:
    """Pid 1 of the box: join the cgroup, build the namespaces, run and reap the test."""
    # The box's garbage collector never walks (and so copies) the pages of what it
    # inherited. Frozen here, not in the parent: a parent that froze and unfroze around
    # every box moved its young objects to the oldest generation each test, so its cyclic
    # garbage waited for a full collection (950 of 950 cycles after 1000 boxed tests).
    gc.freeze()
    try:
        for fd in plan.parent_fds:
            os.close(fd)
        ns.set_parent_death_signal(signal.SIGKILL)
        os.setsid()
        for fd in plan.join_fds:
            os.write(fd, b"0")
            os.close(fd)
        # The test process is forked first and waits for the word to go: its own start
        # (page faults of a fresh fork) overlaps the namespace set-up on the other core.
        go_read, go_write = os.pipe()
        saved = _ignore_python_handlers()
        child = os.fork()
        if child == 0:
            os.close(go_write)
            if os.read(go_read, 1) != b"1":
                os._exit(0)  # the set-up failed; the init reports it
            os.close(go_read)
            test_main(plan, saved)
        os.close(go_read)
        signal.signal(DUMP_SIGNAL, lambda *_: _relay(child))
        try:
            prepare(plan)
            prepare_net(plan)
        except ns.SetupFailed as exc:
            send_unavailable(plan, exc.step, exc.errno or 0, getattr(exc, "message", None))
        os.write(go_write, b"1")
        os.close(go_write)
        status = _reap_until_done(child)
        _end_everything()
        os.write(plan.diag_fd, STATUS_MARK + str(status).encode() + b"\n")
    except BaseException:
        _print_exception(plan.diag_fd)
        os._exit(120)
    os._exit(0)


def _apply_rlimits(rlimits: Iterable[tuple[int, int]]) -> None:
    """Best-effort mode: rlimits where the cgroup could not hold a limit (said in the report)."""
    import resource

    for kind, value in rlimits:
        resource.setrlimit(kind, (value, value))


def _end_everything() -> None:
    """Kill and reap whatever the test left running (daemons, orphans) before reporting,
    so that when the parent hears the status, nothing of the test runs any more."""
    try:
        os.kill(-1, signal.SIGKILL)
    except OSError:
        return  # nothing else is left
    while True:
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            return


def _reap_until_done(child: int) -> int:
    """Reap orphans until the test process ends; its wait status.

    A test process that stopped itself while nothing else in the box could continue it
    would stop the box for ever: it is killed, and its stopped status reported.
    """
    while True:
        pid, status = os.waitpid(-1, os.WUNTRACED)
        if pid != child:
            continue
        if not os.WIFSTOPPED(status):
            return status
        if not any(p.isdigit() and int(p) not in (1, child) for p in os.listdir("/proc")):
            os.kill(child, signal.SIGKILL)
            os.waitpid(child, 0)
            return status


def _relay(pid: int) -> None:
    try:
        os.kill(pid, DUMP_SIGNAL)
    except OSError:
        pass


def _ignore_python_handlers() -> dict[int, Any]:
    """The init ignores signals pytest handles in Python (SIGINT...); the test restores them."""
    saved: dict[int, Any] = {}
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGALRM, signal.SIGUSR1,
                   signal.SIGUSR2, signal.SIGQUIT):
        handler = signal.getsignal(signum)
        if callable(handler):
            saved[signum] = handler
            signal.signal(signum, signal.SIG_IGN)
    return saved


def prepare(plan: Plan) -> None:
    """Id maps, private mounts, /proc, tmpfs, read-only root, hostname, loopback."""
    options = plan.options
    if options.user != "host":
        inside = 0 if options.user == "root" else plan.uid
        inside_gid = 0 if options.user == "root" else plan.gid
        ns.write_id_maps(inside, plan.uid, inside_gid, plan.gid)
    ns.make_mounts_private()
    kept = _open_dirs(_outermost(p for p in plan.keep_paths + plan.writable_paths
                                 if any(_under(p, t) for t in options.tmpfs)))
    writable = _open_dirs(plan.writable_paths) if options.readonly else []
    devices = _open_devices(options.devices) if options.devices != ("host",) else None
    views = getattr(plan.cgroup, "views", ())
    cgroup_dirs = _open_dirs(path for path, _ in views)
    writable_views = {path for path, writable in views if writable}
    if options.readonly:
        ns.make_readonly("/")
    ns.mount_proc()
    mounted: list[str] = []
    for path in sorted(options.tmpfs):  # outer first: an inner path is made in its tmpfs
        if any(_under(path, top) for top in mounted):
            os.makedirs(path, exist_ok=True)
        elif not os.path.isdir(path):
            raise ns.SetupFailed(f"mount tmpfs: no directory {path}", 2)
        ns.mount_tmpfs(path)
        mounted.append(path)
    if devices is not None:
        _minimal_dev(devices)
    elif os.path.isdir("/dev/shm"):
        ns.mount_tmpfs("/dev/shm")  # POSIX shared memory belongs to the box's IPC
    _hide_cgroups(cgroup_dirs, writable_views)
    for fd, path in kept:
        ns.bind_back(fd, path)
    for fd, path in writable:
        ns.make_writable(fd, path)
    for fd, _ in kept + writable:
        os.close(fd)
    ns.set_hostname(options.hostname)
    if options.net == "isolated":
        ns.bring_loopback_up()


_DEVICES = ("/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom", "/dev/tty")
_DEV_LINKS = (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
              ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2"), ("ptmx", "pts/ptmx"))


def _open_devices(extra: tuple[str, ...]) -> list[tuple[int, str]]:
    """O_PATH handles of the host's device nodes the box gets, before /dev is covered."""
    opened = []
    for path in _DEVICES + extra:
        try:
            opened.append((os.open(path, os.O_PATH), path))
        except OSError as exc:
            if path in extra:
                raise ns.SetupFailed(f"open device {path}", exc.errno or 2) from None
    return opened


def _minimal_dev(devices: list[tuple[int, str]]) -> None:
    """A /dev of the box's own: the standard nodes, its own pts and shm, nothing else."""
    ns.mount_tmpfs("/dev", "755")  # not sticky: O_CREAT on its nodes must work
    for fd, path in devices:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        ns.bind_file(fd, path)
        os.close(fd)
    for name in ("pts", "shm"):
        os.mkdir(f"/dev/{name}", 0o1777 if name == "shm" else 0o755)
    ns.mount_devpts("/dev/pts")
    ns.mount_tmpfs("/dev/shm")
    for name, target in _DEV_LINKS:
        os.symlink(target, f"/dev/{name}")


def prepare_net(plan: Plan) -> None:
    """Link faults on the box's loopback, then the forwarded ports' listeners."""
    if plan.options.netem:
        from .net import apply_netem

        apply_netem(plan.options)
    if plan.relay_fd is not None:
        from .relay import make_listeners

        make_listeners(plan.options.forward or {}, plan.relay_fd)


def _hide_cgroups(own: list[tuple[int, str]], writable: set[str]) -> None:
    """The box sees only its own cgroup directories: where limits sit, read-only; the
    subtree delegated to it, writable (a box inside it makes its cgroups there).

    Its uid may be the files' owner (root mapped to root), so without this it could move
    itself out of its cgroup or raise its own limits.
    """
    if not os.path.isdir(CGROUP_ROOT):
        return
    ns.mount_tmpfs(CGROUP_ROOT, "755")
    for fd, path in own:  # outer first: a delegated child is bound inside its parent
        if path in writable:
            os.makedirs(path, exist_ok=True)
            ns.make_writable(fd, path)  # the bind would copy a read-only root's flag
        else:
            ns.bind_readonly(fd, path)
        os.close(fd)


def _open_dirs(paths: Iterable[str]) -> list[tuple[int, str]]:
    """O_PATH handles of directories, taken before a mount hides them."""
    opened = []
    for path in dict.fromkeys(paths):
        try:
            opened.append((os.open(path, os.O_PATH | os.O_DIRECTORY), path))
        except OSError:
            continue
    return opened


def _outermost(paths: Iterable[str]) -> list[str]:
    """The paths not inside another of them: binding those brings the rest along."""
    unique = sorted(set(paths))
    return [p for p in unique if not any(q != p and _under(p, q) for q in unique)]


def _under(path: str, top: str) -> bool:
    return path == top or path.startswith(top.rstrip("/") + "/")


def test_main(plan: Plan, saved_handlers: dict[int, Any]) -> NoReturn:
    """Pid 2 of the box: run the target and ship what it sends."""
    import faulthandler

    from . import box

    code = 0
    try:
        for signum, handler in saved_handlers.items():
            signal.signal(signum, handler)
        if rlimits := getattr(plan.cgroup, "rlimits", ()):
            _apply_rlimits(rlimits)
        faulthandler.enable(file=plan.diag_fd, all_threads=True)
        if plan.options.timeout:  # only a timeout asks for the stack dump
            faulthandler.register(DUMP_SIGNAL, file=plan.diag_fd, all_threads=True)
        box._current = box.BoxContext(plan.options, plan.cgroup)
        for name in ("cgroups", "devfilter"):  # per-process state of the outer process
            if (module := sys.modules.get(f"{__package__}.{name}")) is not None:
                module.forget_inherited()
        coverage = _restart_coverage()
        try:
            plan.target(Sender(plan.result_fd, plan.frame_limit))
        finally:
            if coverage is not None:
                _save_coverage(coverage)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:
        _print_exception(plan.diag_fd)
        code = 1
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
    os._exit(code)


def _restart_coverage() -> Any:
    """Measure the box in a coverage collector of its own (coverage.py, pytest-cov).

    The parent's collector was copied by the fork, but its data would be lost at
    os._exit; a fresh one saves to its own data file beside the parent's, which
    pytest-cov combines at the end of the session.
    """
    coverage = sys.modules.get("coverage")
    parent = coverage.Coverage.current() if coverage is not None else None
    if parent is None:
        return None
    try:
        from coverage.control import CONFIG_DATA_PREFIX

        parent._auto_save = False
        parent.stop()
        child = coverage.Coverage(  # type: ignore[union-attr]
            config_file=CONFIG_DATA_PREFIX + parent.config.serialize(),
            data_file=os.path.abspath(parent.config.data_file), data_suffix=True)
        child._warn_no_data = False
        child.start()
        return child
    except Exception:
        return None


def _save_coverage(coverage: Any) -> None:
    try:
        coverage.stop()
        coverage.save()
    except Exception:
        pass


class Sender:
    """The `send` a box target gets: one object, one frame; `fd` is the raw pipe."""

    def __init__(self, fd: int, limit: int) -> None:
        self.fd = fd
        self.limit = limit
        self._first_fd = fd  # the init keeps this fd of the pipe open all along
        self._pipe = _identity(fd)

    def __call__(self, obj: Any) -> None:
        frame = encode_frame(obj, self.limit)
        if _identity(self.fd) != self._pipe:
            self._reopen()
        write_frame(self.fd, frame)

    def _reopen(self) -> None:
        """The test closed (or reused) our pipe's fd: open the init's copy of it again."""
        try:
            fd = os.open(f"/proc/1/fd/{self._first_fd}", os.O_WRONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise OSError(exc.errno, "the test closed the box's result pipe and it could not "
                          "be opened again") from None
        if _identity(fd) != self._pipe:
            os.close(fd)
            raise OSError("the box's result pipe could not be found again")
        self.fd = fd


def _identity(fd: int) -> tuple[int, int] | None:
    try:
        stat = os.fstat(fd)
    except OSError:
        return None
    return stat.st_dev, stat.st_ino


def _print_exception(fd: int) -> None:
    import traceback

    try:
        os.write(fd, traceback.format_exc().encode("utf-8", "replace"))
    except OSError:
        pass
