"""The parent side of a box: start it, drain its pipes, enforce its timeout, reap it."""

from __future__ import annotations

import contextlib
import os
import select
import signal
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any, Protocol

from . import namespaces as ns
from . import spawn, stuck
from .channel import ChannelError, FrameDecoder, check_shape
from .errors import BoxUnavailable
from .init import join_flags
from .inside import DUMP_SIGNAL, PID_MARK, Plan, test_process_main
from .namespaces.join import pidfd_kill, pidfd_open
from .options import BoxOptions
from .outcome import Outcome, Usage

_READ_SIZE = 1 << 20
_DIAG_KEEP = 1 << 20
_DUMP_GRACE = 1.0  # most seconds to wait for the stack dump of a timed-out box
_DUMP_QUIET = 0.2  # the dump is complete once the pipe is quiet this long
_DRAIN_GRACE = 5.0  # most seconds to wait for the pipes to close after the box ended
_STOP_CHECK = 0.1  # how often a running test is checked for having stopped itself


def _preload() -> None:
    """Import in the parent what every box needs, so no box pays for the import."""
    import faulthandler  # noqa: F401
    import traceback  # noqa: F401

    import cloudpickle  # noqa: F401

    from . import fixes  # noqa: F401


class BoxSpec(Protocol):
    """What `run_box` reads of a `Box` (api.Box), so this module needs no import of it."""

    options: BoxOptions
    keep_paths: tuple[str, ...]
    writable_paths: tuple[str, ...]
    frame_limit: int


def run_box(box: BoxSpec, target: Callable[[Callable[[Any], None]], None],
            on_frozen: Callable[[list[int]], None] | None = None,
            next_box: BoxSpec | None = None, defer: bool = False,
            watch: AbstractContextManager[Any] | None = None) -> Outcome:
    """Run `target` in a box; `next_box` is made ahead for the next test, and with
    `defer` the box's clean-up waits for the next box (the plugin's way). `watch` is
    entered in this process from the box's fork to its end (not in the box)."""
    options = box.options
    if options.user == "host" and os.geteuid() != 0:
        raise BoxUnavailable("user='host' (no user namespace) needs pytest to run as root; "
                             "use user='self' or user='root' instead")
    _preload()
    if options.netem:
        from pyroute2 import IPRoute  # noqa: F401 - once here, not in every box (~200 ms)
    listed: dict[str, Any] = {}  # the session's listeners, listed once for both boxes
    made = spawn.take(box, _auto_forwards(options, listed), _unix_sockets(box, listed))
    cgroup = made.cgroup
    reply = made.reply
    assert reply is not None
    plan = Plan(options, target, made.result_w, made.diag_w,
                (made.result_r, made.diag_r, *reply.fds[1:], *spawn.inherited_fds()),
                box.frame_limit, made.init_pidfd, join_flags(options), os.getcwd(),
                reply.result_fd, cgroup, cgroup.join_fds if cgroup is not None else ())
    relay = None
    if made.relay_end is not None:
        from ..resources.net.relay import Relay

        relay = Relay(options.forward, made.auto)
    started = time.monotonic()
    try:
        try:
            top, clone_vm = spawn.start(made, plan, test_process_main)
        finally:
            for fd in (made.result_w, made.diag_w):
                os.close(fd)
            if cgroup is not None:
                cgroup.close_join_fds()
        relay_end = made.relay_end
        if relay is not None and relay_end is not None:
            reply.fds = reply.fds[:1]  # the relay owns it now
            relay.attach(relay_end)  # its thread starts when the box connects, if ever
        if next_box is not None:  # after the fork (asked before it: 1.1 ms a test slower)
            # (from this box's listing: a box made ahead is a guess the next test checks)
            spawn.prefetch(next_box, _auto_forwards(next_box.options, listed),
                           _unix_sockets(next_box, listed))
        spawn.tidy()  # the cgroups of the last boxes, while this one runs
        try:
            with watch or contextlib.nullcontext():
                outcome = _supervise(top, clone_vm, made.result_r, made.diag_r,
                                     options.timeout, box.frame_limit, cgroup, on_frozen,
                                     relay, made.init_pidfd, reply.pid)
        finally:
            os.close(made.result_r)
            os.close(made.diag_r)
        outcome.usage.wall_seconds = time.monotonic() - started
        outcome.storage = made.storage
        if cgroup is not None:
            _account(outcome, cgroup)
    finally:
        if relay is not None:
            relay.stop()
            _warn_forward(relay.problems)
        spawn.end(made, defer)
    return outcome


def _auto_forwards(options: BoxOptions, listed: dict[str, Any]) -> tuple[Any, ...]:
    """The session's own listeners an isolated box gets (`auto_forward`); () when none.
    `listed` keeps the listing for the next box's.

    Finding them must never fail the box: an error is a warning, and no port is relayed.
    """
    global _listing_failed
    if options.net != "isolated" or not options.auto_forward or _listing_failed:
        return ()
    from ..resources.net.listeners import box_forwards, session_listeners

    try:
        if "tcp" not in listed:
            listed["tcp"] = session_listeners()
        return box_forwards(listed["tcp"], options.forward or ())
    except Exception as exc:  # said once: where sock_diag is missing it stays missing
        _listing_failed = True
        _warn_forward([f"auto_forward: the session's listening ports could not be listed "
                       f"({type(exc).__name__}: {exc}); from now on no port is relayed "
                       "into a box automatically in this session (explicit forward still "
                       "works)"])
        return ()


_listing_failed = False


def _unix_sockets(box: BoxSpec, listed: dict[str, Any]) -> tuple[tuple[str, int], ...]:
    """(path, inode) of the Unix sockets the session listens on under the box's private
    paths (with net='host', those of any process): each is bound into the box at its path (through
    the overlay, connect() is refused)."""
    tmpfs = box.options.tmpfs
    if not tmpfs:
        return ()
    from ..resources.net.listeners import session_unix_sockets

    anyone = box.options.net == "host"
    key = "unix, anyone" if anyone else "unix"
    if key not in listed:
        listed[key] = session_unix_sockets(anyone=anyone)
    found = listed[key]
    if not found:
        return ()
    shown = box.keep_paths + box.writable_paths + spawn.process_paths()  # bound back whole
    return tuple((path, inode) for path, inode in found
                 if any(ns.is_under(path, top) for top in tmpfs)
                 and not any(ns.is_under(path, top) for top in shown))


def _warn_forward(problems: list[str]) -> None:
    """Say which automatic port the box did not get, and why (a warning on the test)."""
    if not problems:
        return
    import warnings

    from .errors import ForwardWarning

    for text in problems:
        try:
            warnings.warn(ForwardWarning(f"nsbox: {text}"), stacklevel=3)
        except Warning:
            pass  # warnings are errors (-W error): still no reason to fail the box


def _account(outcome: Outcome, cgroup: Any) -> None:
    """Usage and OOM kills from the cgroup's counters (the wait4 figures are kept as fallback)."""
    measured = cgroup.usage()
    usage = outcome.usage
    measured.wall_seconds = usage.wall_seconds
    if not measured.cpu_seconds:
        measured.cpu_seconds = usage.cpu_seconds
    if getattr(cgroup, "best_effort", None):
        measured.extra["best_effort"] = cgroup.best_effort
    outcome.usage = measured
    outcome.oom_killed = cgroup.oom_killed()


def _supervise(top: int, clone_vm: bool, result_r: int, diag_r: int,
               timeout: float | None, limit: int, cgroup: Any = None,
               on_frozen: Callable[[list[int]], None] | None = None,
               relay: Any = None, init_pidfd: int = -1, init_pid: int = 0) -> Outcome:
    """Read the box's frames and diagnostics until its test process ended and its pipes
    closed; time it out; see a test that stopped itself with nothing left to wake it.

    With `clone_vm`, `top` is the forked process that makes the test process: the test
    process's first words on the diagnostics pipe are its own pid, and `top` is killed.
    """
    decoder = FrameDecoder(limit)
    outcome = Outcome(frames=[])
    diag = bytearray()
    pidfd = pidfd_open(top)
    poller = select.poll()
    open_fds = {result_r, diag_r}
    for fd in (result_r, diag_r, pidfd):
        poller.register(fd, select.POLLIN)
    relay_fds = _watch_relay(poller, relay, set())
    now = time.monotonic()
    deadline = now + timeout if timeout else None
    drain_until: float | None = None
    dump_until: float | None = None
    last_diag = now
    next_stop_check = now + _STOP_CHECK
    status: int | None = None
    rusage: Any = None
    forked_pid = top if clone_vm else None
    kernel_view = ""

    def swap(test: int, test_pidfd: int) -> None:
        nonlocal top, pidfd
        top, pidfd = test, test_pidfd

    def receive(fd: int) -> bool:
        """Read what `fd` has and take it in; False at its end."""
        nonlocal diag, top, pidfd, forked_pid, last_diag
        data = os.read(fd, _READ_SIZE)
        if not data:
            return False
        if fd == diag_r:
            diag += data
            if forked_pid is not None and diag.startswith(PID_MARK) and b"\n" in diag:
                line, _, rest = bytes(diag).partition(b"\n")
                diag = bytearray(rest)
                _follow(poller, pidfd, forked_pid, int(line[len(PID_MARK):]), swap)
                forked_pid = None
            del diag[:-_DIAG_KEEP]
            last_diag = time.monotonic()
        elif outcome.channel_error is None:
            try:
                frames = decoder.feed(data)
                for index, frame in enumerate(frames):
                    try:
                        check_shape(frame)
                    except ChannelError as exc:
                        exc.frames = frames[:index]
                        raise
            except ChannelError as exc:
                outcome.frames += exc.frames
                outcome.channel_error = str(exc)
                _kill(top, cgroup, init_pidfd)
                return True
            outcome.frames += frames
        return True

    try:
        while open_fds or status is None:
            now = time.monotonic()
            wake = [t for t in (deadline, drain_until, dump_until) if t is not None]
            if status is None:
                wake.append(next_stop_check)
            if dump_until is not None and diag:
                wake.append(last_diag + _DUMP_QUIET)  # the dump is complete once quiet
            wait_ms = None if not wake else max(0, int((min(wake) - now) * 1000) + 1)
            events = poller.poll(wait_ms)
            now = time.monotonic()
            for fd, _ in events:
                if fd in relay_fds:
                    relay_fds = _watch_relay(poller, relay, relay_fds)
                    continue
                if fd == pidfd:
                    poller.unregister(pidfd)
                    _, code, rusage = os.wait4(top, 0)
                    if forked_pid is not None:  # it ended before the test process started
                        forked_pid = None
                    status = code if outcome.status is None else outcome.status
                    pidfd_kill(init_pidfd)  # what is left in the box ends with it
                    if outcome.timed_out:
                        drain_until = now + _DRAIN_GRACE
                    continue
                if fd not in open_fds:
                    continue  # a relay fd this poll reported too, after the relay started
                if not receive(fd):
                    poller.unregister(fd)
                    open_fds.discard(fd)
            if status is not None and not outcome.timed_out:
                # the test process ended: what it wrote is in the pipes now; what is left
                # in the box (killed with the init) may keep their write ends a while,
                # and nothing it writes is the test's
                for fd in list(open_fds):
                    os.set_blocking(fd, False)
                    try:
                        while receive(fd):
                            pass
                    except BlockingIOError:
                        pass
                    open_fds.discard(fd)
                break
            if status is None and now >= next_stop_check:
                next_stop_check = now + _STOP_CHECK
                if _stopped_for_ever(top, init_pid, cgroup):
                    outcome.status = _stopped_status(top)
                    _kill(top, cgroup, init_pidfd)
            if deadline is not None and now >= deadline and status is None:
                outcome.timed_out = True
                deadline = None
                last_diag = now
                dump_until = now + _DUMP_GRACE
                # shown if it never runs its dump handler
                kernel_view = stuck.kernel_view(top, getattr(cgroup, "paths", ()))
                _signal(top, DUMP_SIGNAL)
            if dump_until is not None and (now >= dump_until or (
                    len(diag) and now - last_diag >= _DUMP_QUIET)):
                dump_until = None
                outcome.stack = _with_view(diag, kernel_view)
                _freeze(outcome, cgroup, on_frozen, top)  # _kill kills, then thaws it
                _kill(top, cgroup, init_pidfd)
            if drain_until is not None and now >= drain_until:
                break  # the box is gone; something outside it holds a pipe open
        if outcome.channel_error is None:
            try:
                decoder.close()
            except ChannelError as exc:
                outcome.channel_error = str(exc)
    except BaseException:
        _kill(top, cgroup, init_pidfd)
        if status is None:
            os.waitpid(top, 0)
        if forked_pid is not None:  # interrupted before or while following
            _reap_in_box(init_pid, forked_pid)
        raise
    finally:
        os.close(pidfd)
    outcome.usage = Usage(cpu_seconds=rusage.ru_utime + rusage.ru_stime if rusage else 0.0)
    outcome.status = status
    if not outcome.timed_out:
        outcome.stack = diag.decode("utf-8", "replace")
    elif not outcome.stack:  # it ended (of the dump signal) before the dump was taken
        outcome.stack = _with_view(diag, kernel_view)
    return outcome


def _with_view(diag: bytearray, kernel_view: str) -> str:
    text = diag.decode("utf-8", "replace")
    return text if "most recent call first" in text else text + kernel_view


def _follow(poller: Any, pidfd: int, forked: int, test: int,
            swap: Callable[[int, int], None]) -> None:
    """The clone_vm test process started: watch it instead of the forked process that
    made it. A Ctrl-C that reaches this thread waits until the swap is done (one half-way
    left the caller closing the old pidfd a second time: an INTERNALERROR instead of an
    interrupted session); one taken by another thread can land anywhere, so the order
    keeps the caller right at every step (at worst the old pidfd is not closed)."""
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        new = pidfd_open(test)
        poller.register(new, select.POLLIN)
        swap(test, new)  # from here the caller watches, kills and waits for the test process
        poller.unregister(pidfd)
        os.close(pidfd)
        _signal(forked, signal.SIGKILL)  # asleep until the test process ends: never wakes
        os.waitpid(forked, 0)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)


def _reap_in_box(init_pid: int, forked: int) -> None:
    """Interrupted around the start of a clone_vm test process: kill and reap the forked
    process and pytest's children in the box's pid namespace (the test process, whose
    pid the supervisor may not have read yet). A child left a zombie there keeps the
    box's init from ending, and the session's last tidy-up waited 10 s for it."""
    from ..resources.net.listeners import _children

    try:
        box_ns = os.readlink(f"/proc/{init_pid}/ns/pid")
    except OSError:
        box_ns = None
    mine = [forked]
    if box_ns is not None:
        for child in _children(os.getpid()):
            with contextlib.suppress(OSError):
                if child != forked and os.readlink(f"/proc/{child}/ns/pid") == box_ns:
                    mine.append(child)
    for pid in mine:
        _signal(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)


def _stopped_for_ever(top: int, init_pid: int, cgroup: Any) -> bool:
    """The test process stopped itself (SIGSTOP) and nothing else in the box could ever
    continue it: no other process is left in the box."""
    try:
        info = os.waitid(os.P_PID, top, os.WSTOPPED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return False
    if info is None or info.si_code != os.CLD_STOPPED:
        return False
    return not _others_in_box(top, init_pid, cgroup)


def _others_in_box(top: int, init_pid: int, cgroup: Any) -> bool:
    paths = getattr(cgroup, "paths", ())
    if paths:
        from ..resources.cgroups.tree import _tree_pids

        return any(pid not in (top, init_pid) for d in paths for pid in _tree_pids(d))
    try:  # the test's children, and the orphans its init inherited
        for pid, task in [(top, t) for t in os.listdir(f"/proc/{top}/task")] + [
                (init_pid, init_pid)]:
            with open(f"/proc/{pid}/task/{task}/children") as children:
                if children.read().strip():
                    return True
    except OSError:
        return True
    return False


def _stopped_status(top: int) -> int:
    """The wait status of a stopped process (WIFSTOPPED), with its stop signal."""
    try:
        info = os.waitid(os.P_PID, top, os.WSTOPPED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        info = None
    signum = info.si_status if info is not None else signal.SIGSTOP
    return (signum << 8) | 0x7F


def _watch_relay(poller: Any, relay: Any, watched: set[int]) -> set[int]:
    """Poll a forwarding box's relay fds here until a connection starts its thread: a box
    whose test never connects costs no thread."""
    if relay is None:
        return watched
    wanted = set() if watched and relay.ready() else set(relay.waiting_fds())
    for fd in watched - wanted:
        poller.unregister(fd)
    for fd in wanted - watched:
        poller.register(fd, select.POLLIN)
    return wanted


def _freeze(outcome: Outcome, cgroup: Any,
            on_frozen: Callable[[list[int]], None] | None, test_pid: int = 0) -> None:
    """Freeze a timed-out box (after its stack dump), list what is alive in it but the test
    process `test_pid` (its stack already says where it was), and let `on_frozen` look at
    all the frozen processes (host pids) before the box is killed."""
    if cgroup is None or not hasattr(cgroup, "freeze"):
        return
    from ..resources.cgroups import describe

    started = time.monotonic()
    problem = cgroup.freeze()
    if not problem:
        outcome.freeze_seconds = time.monotonic() - started
    outcome.freeze_note = problem
    pids = cgroup.pids()
    outcome.processes = sorted(d for d in map(describe, (p for p in pids if p != test_pid))
                               if d is not None)
    if on_frozen is not None:
        try:
            on_frozen(pids)
        except Exception as exc:
            note = f"a frozen-box hook raised {type(exc).__name__}: {exc}"
            outcome.freeze_note = f"{outcome.freeze_note}; {note}" if problem else note


def _signal(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


def _kill(pid: int, cgroup: Any = None, init_pidfd: int = -1) -> None:
    """Kill the box: its test process, its init (the pid namespace dies with it) and its
    whole cgroup."""
    _signal(pid, signal.SIGKILL)
    if init_pidfd >= 0:
        pidfd_kill(init_pidfd)
    if cgroup is not None:
        cgroup.kill()
