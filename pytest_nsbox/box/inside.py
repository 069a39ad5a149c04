"""The box side: the test process joins its box, runs the target and ships its frames.

It is pytest's one fork for the box (`spawn.start`). Nothing here returns: each function
ends its process with os._exit, so no inherited atexit handler, finalizer or buffered
output of the pytest process runs a second time.
"""

from __future__ import annotations

import gc
import os
import signal
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, NoReturn

from . import context  # imported here, in the parent: an import in a box costs it memory
from . import namespaces as ns
from .channel import encode_frame, write_frame
from .options import BoxOptions

#: Signal the parent sends to make the test dump its stack.
DUMP_SIGNAL = signal.SIGRTMIN + 6
#: The first thing a clone_vm test process writes on the diagnostics pipe: its own pid
#: as the parent sees it (it cannot see it from inside its pid namespace).
PID_MARK = b"\0NSBOX-PID "
#: Modules whose per-process state a box's test process starts afresh (when imported):
#: each has a `forget_inherited()`.
_PER_PROCESS = ("pytest_nsbox.resources.cgroups.session", "pytest_nsbox.resources.devices")
#: What those forgot, kept referenced: freeing pytest's maker, boxes and cgroup session in
#: the test process (a still-running `subprocess.Popen` warns as it goes) wrote to dozens
#: of pages it shares with pytest, copying each, for nothing, since the process ends with
#: os._exit. Measured: 0.52 -> 0.20 ms of every test's start.
_inherited: list[object] = []


@dataclass
class Plan:
    """Everything the test process needs, fixed in the parent before the fork."""

    options: BoxOptions
    target: Callable[[Callable[[Any], None]], None]
    result_fd: int
    diag_fd: int
    parent_fds: tuple[int, ...]  # the parent's fds the box must not keep
    frame_limit: int
    init_pidfd: int  # the box's init, made ahead: its namespaces are joined
    join_flags: int  # which of them (all but the pid namespace)
    cwd: str
    init_result_fd: int = -1  # the init's copy of the result pipe, for Sender._reopen
    cgroup: Any = None
    join_fds: tuple[int, ...] = ()
    clone_vm: bool = False  # join the pid namespace too, and go on as a clone_vm child


def send_unavailable(plan: Plan, step: str, err: int, message: str | None = None) -> NoReturn:
    from .fixes import explain_setup_failure

    text = message or explain_setup_failure(step, err)
    write_frame(plan.result_fd, encode_frame(("unavailable", text)))
    os._exit(0)


def test_process_main(plan: Plan) -> NoReturn:
    """The forked child: join the box's cgroup and namespaces, then run the test.

    Its garbage collector never walks (and so copies) the pages it inherited: frozen
    here, not in the parent (a parent that froze and unfroze around every box moved its
    young objects to the oldest generation each test, so its cyclic garbage waited for
    a full collection).
    """
    gc.freeze()
    try:
        for fd in plan.parent_fds:
            os.close(fd)
        ns.set_parent_death_signal(signal.SIGKILL)
        os.setsid()  # a group of its own: signals to its group never reach pytest
        for fd in plan.join_fds:
            os.write(fd, b"0")
            os.close(fd)
        try:
            flags = plan.join_flags | (ns.CLONE_NEWPID if plan.clone_vm else 0)
            ns.setns(plan.init_pidfd, flags, "setns into the box")
        except ns.SetupFailed as exc:
            send_unavailable(plan, exc.step, exc.errno or 0)
        os.close(plan.init_pidfd)
        try:
            os.chdir(plan.cwd)  # entering a mount namespace moved it to the box's /
        except OSError:
            pass
        if plan.clone_vm:
            try:
                ns.clone_vm(lambda host_pid: _started(plan, host_pid))
            except ns.SetupFailed as exc:
                send_unavailable(plan, exc.step, exc.errno or 0)
        test_main(plan)
    except BaseException:
        _print_exception(plan.diag_fd)
        os._exit(120)


def _started(plan: Plan, host_pid: int) -> NoReturn:
    """The clone_vm child: say who it is, then run the test."""
    try:
        os.write(plan.diag_fd, PID_MARK + str(host_pid).encode() + b"\n")
    except OSError:
        os._exit(120)
    test_main(plan)


def _apply_rlimits(rlimits: Iterable[tuple[int, int]]) -> None:
    """Best-effort mode: rlimits where the cgroup could not hold a limit (said in the report)."""
    import resource

    for kind, value in rlimits:
        resource.setrlimit(kind, (value, value))


def test_main(plan: Plan) -> NoReturn:
    """The test process, in its box: run the target and ship what it sends."""
    import faulthandler

    code = 0
    try:
        if rlimits := getattr(plan.cgroup, "rlimits", ()):
            _apply_rlimits(rlimits)
        faulthandler.enable(file=plan.diag_fd, all_threads=True)
        if plan.options.timeout:  # only a timeout asks for the stack dump
            faulthandler.register(DUMP_SIGNAL, file=plan.diag_fd, all_threads=True)
        context._current = context.BoxContext(plan.options, plan.cgroup)
        for name in _PER_PROCESS:  # per-process state of the outer process
            if (module := sys.modules.get(name)) is not None:
                _inherited.append(module.forget_inherited())
        from . import spawn  # the one that started this box (pytester may have imported
        # another since: it takes what its in-process runs imported out of sys.modules)

        _inherited.append(spawn.forget_inherited())
        coverage = _restart_coverage()
        try:
            plan.target(Sender(plan.result_fd, plan.frame_limit, plan.init_result_fd))
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

    def __init__(self, fd: int, limit: int, init_fd: int = -1) -> None:
        self.fd = fd
        self.limit = limit
        self._init_fd = init_fd  # the init keeps its copy of the pipe open all along
        self._pipe = _identity(fd)

    def __call__(self, obj: Any) -> None:
        frame = encode_frame(obj, self.limit)
        if _identity(self.fd) != self._pipe:
            self._reopen()
        write_frame(self.fd, frame)

    def _reopen(self) -> None:
        """The test closed (or reused) our pipe's fd: open the init's copy of it again."""
        try:
            fd = os.open(f"/proc/1/fd/{self._init_fd}", os.O_WRONLY | os.O_CLOEXEC)
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
