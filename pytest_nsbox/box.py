"""Box: run a function in fresh namespaces and bring its outcome back (no pytest needed).

Process layout of one box::

    pytest (parent) --clone(all namespace flags)--> init (pid 1 of the box)
                                                     \\--fork--> test (pid 2)

The init sets the namespaces up, reaps orphans and, when the test process ends, reports
its wait status and exits: the kernel then kills everything else in the pid namespace.
The test runs as pid 2, not pid 1, so signals it sends itself act as they do unboxed.
When another thread of this process might hold a libc lock (it is not asleep in a quiet
syscall) a raw clone() is unsafe, so an os.fork() child makes the clone instead and
mirrors the init's end.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .channel import DEFAULT_FRAME_LIMIT
from .errors import (
    BoxError,
    BoxExited,
    BoxKilled,
    BoxTimeout,
    BoxUnavailable,
    MemoryLimitExceeded,
    RemoteError,
)
from .options import BoxOptions, parse_options

__all__ = ["Box", "BoxContext", "Outcome", "Usage", "current_box"]

Send = Callable[[Any], None]


@dataclass
class Usage:
    """What a box used: from its cgroup where it has one, else from wait4()."""

    wall_seconds: float = 0.0
    cpu_seconds: float = 0.0
    memory_peak: int | None = None
    memory_current: int | None = None
    tasks: int | None = None
    tasks_peak: int | None = None
    cpu_throttled_seconds: float | None = None
    io_read_bytes: int | None = None  # bytes the box read from block devices (cgroup io)
    io_write_bytes: int | None = None  # bytes the box wrote to block devices (cgroup io)
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Outcome:
    """How a box ended, before it is turned into a value or an exception."""

    frames: list[Any]
    status: int | None = None  # the test process's wait status, if the init reported it
    timed_out: bool = False
    oom_killed: bool = False
    stack: str = ""  # faulthandler text: a crash or the timeout dump
    channel_error: str | None = None
    usage: Usage = field(default_factory=Usage)
    #: after a timeout: (pid inside the box, command line) of each process still alive
    #: when the box was frozen, pid 1 (the init) first
    processes: list[tuple[int, str]] = field(default_factory=list)
    #: after a timeout: seconds the freeze took (None: the box was not frozen)
    freeze_seconds: float | None = None
    #: after a timeout: why the box could not be frozen, or what a frozen-box hook raised
    freeze_note: str = ""

    def error(self, options: BoxOptions) -> BoxError | None:
        """The BoxError for a box that did not end by itself, or None."""
        for frame in self.frames:
            if frame[0] == "unavailable":
                return BoxUnavailable(frame[1])
        if self.timed_out:
            return BoxTimeout(options.timeout or 0.0, self.stack.strip(), self.processes,
                              self.freeze_note)
        if self.channel_error:
            return BoxError(f"the box's result could not be read: {self.channel_error}")
        status = self.status
        if status is not None and os.WIFSTOPPED(status):
            return BoxKilled(os.WSTOPSIG(status), self.stack.strip(), stopped=True)
        if status is not None and not os.WIFSIGNALED(status):
            return None  # it ended by itself; an OOM kill of a child is the test's business
        if self.oom_killed and options.memory is not None:
            return MemoryLimitExceeded(options.memory, self.usage.memory_peak)
        return BoxKilled(os.WTERMSIG(status) if status is not None else signal.SIGKILL,
                         self.stack.strip())

    def exit_code(self) -> int | None:
        if self.status is not None and os.WIFEXITED(self.status):
            return os.WEXITSTATUS(self.status)
        return None


@dataclass(frozen=True)
class BoxContext:
    """What code inside a box can ask about the box it runs in."""

    options: BoxOptions
    cgroup: Any = None

    def usage(self) -> Usage:
        """Memory, CPU and tasks so far, from the box's cgroup (empty without one)."""
        if self.cgroup is None:
            return Usage()
        return self.cgroup.usage()  # type: ignore[no-any-return]


_current: BoxContext | None = None


def current_box() -> BoxContext | None:
    """The box this code runs in, or None outside any box."""
    return _current


class Box:
    """A reusable recipe for isolated runs: ``Box(memory="64M").run(fn, *args)``."""

    def __init__(self, options: BoxOptions | None = None, *, keep_paths: Iterable[str] = (),
                 writable_paths: Iterable[str] = (), frame_limit: int = DEFAULT_FRAME_LIMIT,
                 **values: Any) -> None:
        self.options = parse_options(values, base=options or BoxOptions())
        #: Paths that stay reachable (as they are) under a tmpfs path.
        self.keep_paths = tuple(os.path.realpath(p) for p in keep_paths)
        #: Paths that stay reachable and writable under a tmpfs or a read-only root.
        self.writable_paths = tuple(os.path.realpath(p) for p in writable_paths)
        self.frame_limit = frame_limit

    def run(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        """Call ``fn(*args, **kwargs)`` in a box; return its value or raise."""

        def target(send: Send) -> None:
            try:
                message = ("return", fn(*args, **kwargs))
            except BaseException as exc:
                message = _raised(exc)
            try:
                send(message)
            except Exception as exc:
                kind = "return value" if message[0] == "return" else "exception"
                send(("raise", None, type(exc).__name__,
                      f"the box's {kind} could not be sent: {exc}", message[-1] if
                      message[0] == "raise" else ""))

        outcome = self.execute(target)
        for frame in outcome.frames:
            if frame[0] == "return":
                return frame[1]
            if frame[0] == "raise":
                raise _rebuild(frame)
        error = outcome.error(self.options)
        if error is None:
            error = BoxExited(outcome.exit_code() or 0, outcome.stack.strip())
        raise error

    def execute(self, target: Callable[[Send], None],
                on_frozen: Callable[[list[int]], None] | None = None) -> Outcome:
        """Run ``target(send)`` in a box; `send` ships one object to the parent as a frame.

        `on_frozen(pids)` is called when the box timed out, after its stack dump, while
        every process in it is frozen (host pids); the box is killed when it returns.
        """
        from . import supervise

        return supervise.run_box(self, target, on_frozen)


def _raised(exc: BaseException) -> tuple[Any, ...]:
    import traceback

    try:
        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    except Exception:
        text = f"{type(exc).__qualname__} (its traceback could not be formatted)"
    try:
        message = str(exc)
    except Exception:
        message = "<exception str() failed>"
    try:
        import cloudpickle

        payload: bytes | None = cloudpickle.dumps(exc)
    except Exception:
        payload = None
    return ("raise", payload, type(exc).__qualname__, message, text)


class _RemoteTraceback(Exception):
    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return "\n\nbox-side traceback:\n" + self.text


def _rebuild(frame: Sequence[Any]) -> BaseException:
    import pickle

    _, payload, type_name, message, text = frame
    if payload is not None:
        try:
            exc = pickle.loads(payload)
        except Exception:
            exc = None
        if isinstance(exc, BaseException):
            exc.__cause__ = _RemoteTraceback(text)
            exc.box_traceback = text  # type: ignore[attr-defined]
            return exc
    return RemoteError(type_name, message, text)



