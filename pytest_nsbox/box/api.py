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
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from typing import Any

from .channel import DEFAULT_FRAME_LIMIT
from .errors import BoxExited
from .options import BoxOptions, parse_options
from .outcome import Outcome
from .remote import raise_frame, rebuild

__all__ = ["Box"]

Send = Callable[[Any], None]


class Box:
    """A reusable recipe for isolated runs: ``Box(memory="64M").run(fn, *args)``."""

    def __init__(self, options: BoxOptions | None = None, *, keep_paths: Iterable[str] = (),
                 writable_paths: Iterable[str] = (), frame_limit: int = DEFAULT_FRAME_LIMIT,
                 **values: Any) -> None:
        base = options or BoxOptions()
        self.options = parse_options(values, base=base) if values else base
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
                message = raise_frame(exc)
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
                raise rebuild(frame)
        error = outcome.error(self.options)
        if error is None:
            error = BoxExited(outcome.exit_code() or 0, outcome.stack.strip())
        raise error

    def execute(self, target: Callable[[Send], None],
                on_frozen: Callable[[list[int]], None] | None = None, *,
                next_box: Box | None = None, defer: bool = False,
                watch: AbstractContextManager[Any] | None = None) -> Outcome:
        """Run ``target(send)`` in a box; `send` ships one object to the parent as a frame.

        `on_frozen(pids)` is called when the box timed out, after its stack dump, while
        every process in it is frozen (host pids); the box is killed when it returns.
        `next_box` is made ahead, while this one runs, for the next call to use. With
        `defer`, the box's processes are gone when it returns but its cgroup and files are
        removed later (by the next box, or `pytest_nsbox.box.spawn.close()`). `watch`, a
        context manager, is entered here while the box runs (after its fork).
        """
        from . import supervise

        return supervise.run_box(self, target, on_frozen, next_box, defer, watch)
