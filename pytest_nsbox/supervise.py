"""The parent side of a box: spawn it, drain its pipes, enforce its timeout, reap it."""

from __future__ import annotations

import contextlib
import gc
import os
import select
import signal
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NoReturn

from . import namespaces as ns
from .box import Outcome, Usage
from .channel import ChannelError, FrameDecoder, check_shape
from .errors import BoxUnavailable
from .inside import DUMP_SIGNAL, STATUS_MARK, Plan, init_main, namespace_flags, send_unavailable
from .options import BoxOptions

if TYPE_CHECKING:
    from .box import Box

_READ_SIZE = 1 << 20
_DIAG_KEEP = 1 << 20
_DUMP_GRACE = 1.0  # most seconds to wait for the stack dump of a timed-out box
_DUMP_QUIET = 0.2  # the dump is complete once the pipe is quiet this long
_DRAIN_GRACE = 5.0  # most seconds to wait for the pipes to close after the box ended


def _preload() -> None:
    """Import in the parent what every box needs, so no box pays for the import."""
    import faulthandler  # noqa: F401
    import traceback  # noqa: F401

    import cloudpickle  # noqa: F401

    from . import fixes  # noqa: F401


def run_box(box: Box, target: Callable[[Callable[[Any], None]], None],
            on_frozen: Callable[[list[int]], None] | None = None) -> Outcome:
    options = box.options
    if options.user == "host" and os.geteuid() != 0:
        raise BoxUnavailable("user='host' (no user namespace) needs pytest to run as root; "
                             "use user='self' or user='root' instead")
    _preload()
    if options.netem:
        from pyroute2 import IPRoute  # noqa: F401 - once here, not in every box (~200 ms)
    cgroup = _make_cgroup(options)
    result_r, result_w = os.pipe()
    diag_r, diag_w = os.pipe()
    plan = Plan(options, target, result_w, diag_w, (result_r, diag_r, *_inherited_fds()),
                box.keep_paths + process_paths(), box.writable_paths, box.frame_limit,
                os.geteuid(), os.getegid(), cgroup, cgroup.join_fds if cgroup is not None else ())
    relay = relay_end = box_end = None
    if options.forward:
        import socket

        from .relay import Relay

        relay_end, box_end = socket.socketpair()
        plan.relay_fd = box_end.fileno()
        plan.parent_fds += (relay_end.fileno(),)
        relay = Relay(options.forward)
    for stream in (sys.stdout, sys.stderr):  # else the box writes the parent's pending
        with contextlib.suppress(Exception):  # output a second time when it flushes its own
            stream.flush()
    started = time.monotonic()
    try:
        try:
            top = _spawn(namespace_flags(options), plan)
        except ns.SetupFailed as exc:
            from .fixes import explain_setup_failure

            os.close(result_r)
            os.close(diag_r)
            raise BoxUnavailable(explain_setup_failure(exc.step, exc.errno or 0)) from None
        finally:
            os.close(result_w)
            os.close(diag_w)
            if cgroup is not None:
                cgroup.close_join_fds()
            if box_end is not None:
                box_end.close()
        if relay is not None and relay_end is not None:
            relay.start(relay_end)  # after the clone: the parent was single-threaded for it
            relay_end = None
        try:
            outcome = _supervise(top, result_r, diag_r, options.timeout, box.frame_limit,
                                 cgroup, on_frozen)
        finally:
            os.close(result_r)
            os.close(diag_r)
        outcome.usage.wall_seconds = time.monotonic() - started
        if cgroup is not None:
            _account(outcome, cgroup)
    finally:
        if relay is not None:
            relay.stop()
        if relay_end is not None:
            relay_end.close()
        if cgroup is not None:
            cgroup.remove()
    return outcome


_process_paths: tuple[tuple[str, ...], tuple[str, ...]] = ((), ())


def _inherited_fds() -> tuple[int, ...]:
    """fds of the parent's that its boxes must not keep: the eBPF device programs (with
    one, and a cgroup directory it can open, a box could detach its own filter)."""
    devfilter = sys.modules.get(f"{__package__}.devfilter")
    return devfilter.program_fds() if devfilter is not None else ()


def process_paths() -> tuple[str, ...]:
    """Where this Python, its imports and its working directory live, so that a box whose
    tmpfs covers them (a checkout or a venv under /tmp) can still run and import."""
    global _process_paths
    key = (os.getcwd(), *sys.path)
    if _process_paths[0] != key:
        found = {os.getcwd(), sys.prefix, sys.exec_prefix, sys.base_prefix,
                 os.path.dirname(os.path.abspath(sys.executable))}
        found.update(os.path.abspath(p) for p in sys.path if p and os.path.isdir(p))
        _process_paths = (key, tuple(sorted(found)))
    return _process_paths[1]


def _make_cgroup(options: BoxOptions) -> Any:
    """The box's cgroup (limits and accounting), None where cgroups are not usable."""
    from .cgroups import CgroupUnavailable, box_cgroup

    try:
        return box_cgroup(options)
    except CgroupUnavailable as exc:
        from .box import current_box

        outer = current_box()
        if outer is not None and exc.unheld:  # else not about nesting (a tmpfs io path)
            raise BoxUnavailable(_nested_message(outer, exc)) from None
        raise BoxUnavailable(str(exc)) from None


def _nested_message(outer: Any, exc: Exception) -> str:
    """Why a box inside a box cannot have a limit, and what to change."""
    unheld = ", ".join(getattr(exc, "unheld", ())) or "its limits"
    if not getattr(outer.cgroup, "paths", ()):  # none, or best-effort rlimits only
        return (f"a box inside a box cannot have {unheld}: the outer box has no cgroup to "
                "give it (pytest's cgroups are not writable here; `pytest --nsbox-doctor` "
                "says why). Fix: leave the limit off the inner box, or run pytest where its "
                "boxes get cgroups.")
    if "io=" in unheld and not getattr(outer.cgroup, "v2", True):
        return (f"a box inside a box cannot have {unheld}: io limits do not nest on cgroup "
                "v1 (its blk-throttle does not apply a parent's limit to its children). Fix: "
                "put the io limit on the outer box, or run on cgroup v2.")
    return (f"a box inside a box cannot have {unheld}: a box gets cgroups of the kinds its "
            "outer box has (memory and pids always; cpu, cpuset and io where the outer box "
            "has a limit of that kind), and delegates those. Fix: give the outer box a limit "
            "of the same kind too (the inner one then holds below it), or leave it off the "
            f"inner box. (Here: {getattr(exc, 'reasons', '') or exc}.)")


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


def _spawn(flags: int, plan: Plan) -> int:
    """Start the box; return the pid the parent supervises (the init, or its forked parent)."""
    if ns.single_threaded():
        pid = ns.clone_box(flags)
        if pid == 0:
            init_main(plan)
        return pid
    pid = ns.fork_quietly()
    if pid == 0:
        _relay_main(flags, plan)
    return pid


def _relay_main(flags: int, plan: Plan) -> NoReturn:
    """Fallback for a threaded parent: a forked, single-threaded child makes the clone."""
    gc.freeze()  # see init_main
    try:
        ns.set_parent_death_signal(signal.SIGKILL)
        try:
            init = ns.clone_box(flags)
        except ns.SetupFailed as exc:
            send_unavailable(plan, exc.step, exc.errno or 0)
        if init == 0:
            init_main(plan)
        signal.signal(DUMP_SIGNAL, lambda *_: os.kill(init, DUMP_SIGNAL))
        _, status = os.waitpid(init, 0)
        os._exit(os.WEXITSTATUS(status) if os.WIFEXITED(status) else 121)
    except BaseException:
        os._exit(122)


def _supervise(top: int, result_r: int, diag_r: int, timeout: float | None, limit: int,
               cgroup: Any = None,
               on_frozen: Callable[[list[int]], None] | None = None) -> Outcome:
    decoder = FrameDecoder(limit)
    outcome = Outcome(frames=[])
    diag = bytearray()
    pidfd = os.pidfd_open(top)
    poller = select.poll()
    open_fds = {result_r, diag_r}
    for fd in (result_r, diag_r, pidfd):
        poller.register(fd, select.POLLIN)
    now = time.monotonic()
    deadline = now + timeout if timeout else None
    drain_until: float | None = None
    dump_until: float | None = None
    last_diag = now
    exited = False
    try:
        while open_fds or not exited:
            now = time.monotonic()
            wake = [t for t in (deadline, drain_until, dump_until) if t is not None]
            if dump_until is not None and diag:
                wake.append(last_diag + _DUMP_QUIET)  # the dump is complete once quiet
            wait_ms = None if not wake else max(0, int((min(wake) - now) * 1000) + 1)
            events = poller.poll(wait_ms)
            now = time.monotonic()
            for fd, _ in events:
                if fd == pidfd:
                    exited = True
                    poller.unregister(pidfd)
                    drain_until = now + _DRAIN_GRACE
                    continue
                data = os.read(fd, _READ_SIZE)
                if not data:
                    poller.unregister(fd)
                    open_fds.discard(fd)
                elif fd == diag_r:
                    diag += data
                    del diag[:-_DIAG_KEEP]
                    last_diag = now
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
                        _kill(top, cgroup)
                        continue
                    outcome.frames += frames
            if deadline is not None and now >= deadline and not exited:
                outcome.timed_out = True
                deadline = None
                last_diag = now
                dump_until = now + _DUMP_GRACE
                _signal(top, DUMP_SIGNAL)
            if dump_until is not None and (now >= dump_until or (
                    len(diag) and now - last_diag >= _DUMP_QUIET)):
                dump_until = None
                outcome.stack = diag.decode("utf-8", "replace")
                _freeze(outcome, cgroup, on_frozen)  # _kill kills, then thaws, a frozen box
                _kill(top, cgroup)
            if drain_until is not None and now >= drain_until:
                break  # the box is gone; something outside it holds a pipe open
        if outcome.channel_error is None:
            try:
                decoder.close()
            except ChannelError as exc:
                outcome.channel_error = str(exc)
    except BaseException:
        _kill(top, cgroup)
        os.waitpid(top, 0)
        raise
    finally:
        os.close(pidfd)
    _, _, rusage = os.wait4(top, 0)
    outcome.usage = Usage(cpu_seconds=rusage.ru_utime + rusage.ru_stime)
    text, status = _parse_diag(bytes(diag))
    outcome.status = status
    if not outcome.timed_out:
        outcome.stack = text
    return outcome


def _freeze(outcome: Outcome, cgroup: Any,
            on_frozen: Callable[[list[int]], None] | None) -> None:
    """Freeze a timed-out box (after its stack dump), list what is alive in it, and let
    `on_frozen` look at the frozen processes (host pids) before the box is killed."""
    if cgroup is None or not hasattr(cgroup, "freeze"):
        return
    from .cgroups import describe

    started = time.monotonic()
    problem = cgroup.freeze()
    if not problem:
        outcome.freeze_seconds = time.monotonic() - started
    outcome.freeze_note = problem
    pids = cgroup.pids()
    outcome.processes = sorted(d for d in map(describe, pids) if d is not None)
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


def _kill(pid: int, cgroup: Any = None) -> None:
    """Kill the box: its init (the pid namespace dies with it) and its whole cgroup."""
    _signal(pid, signal.SIGKILL)
    if cgroup is not None:
        cgroup.kill()


def _parse_diag(data: bytes) -> tuple[str, int | None]:
    """Split the diagnostics pipe into crash/stack text and the init's status report."""
    status = None
    index = data.rfind(STATUS_MARK)
    if index >= 0:
        tail = data[index + len(STATUS_MARK):].split(b"\n", 1)[0]
        if tail.isdigit():
            status = int(tail)
            data = data[:index]
    return data.decode("utf-8", "replace"), status
