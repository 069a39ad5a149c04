"""Errors a box raises in the parent; all derive from `BoxError`."""

from __future__ import annotations

import signal
from collections.abc import Sequence
from typing import Any

from .units import format_size

__all__ = [
    "BoxError",
    "BoxExited",
    "BoxKilled",
    "BoxTimeout",
    "BoxUnavailable",
    "ForwardWarning",
    "MemoryLimitExceeded",
    "RemoteError",
    "signal_name",
]


def signal_name(signum: int) -> str:
    """'SIGSEGV' for 11; the number for one Python does not know."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


class BoxError(Exception):
    """A box did not return a value; the message says why, in words."""

    #: Text the box's last stderr or stack dump held, for the report.
    detail: str = ""

    def __reduce__(self) -> tuple[Any, ...]:
        # The subclasses take other arguments than their message: rebuilt without calling
        # __init__, so that an inner box's error can come back out of an outer box.
        return _restore, (type(self), self.args, self.__dict__)


def _restore(cls: type[BoxError], args: tuple[Any, ...], state: dict[str, Any]) -> BoxError:
    error = cls.__new__(cls)
    Exception.__init__(error, *args)
    error.__dict__.update(state)
    return error


class BoxUnavailable(BoxError):
    """This machine cannot give the isolation asked for; the message names the fix."""


_INTERNAL = ("/_pytest/", "/pluggy/", "/pytest_nsbox/")


def trim_stack(text: str) -> str:
    """A faulthandler dump cut to the test's own frames (pytest's runner frames dropped)."""
    blocks = []
    for block in text.strip().split("\n\n"):
        lines = block.splitlines()
        kept = lines[:1]
        for line in lines[1:]:
            if any(marker in line for marker in _INTERNAL):
                break
            kept.append(line)
        blocks.append("\n".join(kept if len(kept) > 1 else lines))
    return "\n\n".join(blocks)


class BoxTimeout(BoxError):
    """The box ran past its wall-clock timeout; every process in it was killed."""

    #: most processes the message lists (all of them stay in `processes`)
    SHOWN = 25

    def __init__(self, timeout: float, stack: str = "",
                 processes: Sequence[tuple[int, str]] = (), note: str = "") -> None:
        self.timeout = timeout
        self.stack = stack
        #: (pid inside the box, command line) of what was alive when the box was frozen
        self.processes = list(processes)
        self.note = note
        alive = ""
        if processes:
            shown = ", ".join(f"{pid} {cmd}" for pid, cmd in self.processes[:self.SHOWN])
            more = len(self.processes) - self.SHOWN
            alive = f"; processes still in the box: {shown}" + (
                f" and {more} more" if more > 0 else "")
        if note:
            alive += f" ({note})"
        where = f"; it was stuck at:\n{trim_stack(stack)}" if stack else ""
        super().__init__(f"box timed out after {timeout:g} s and was killed{alive}{where}")


class MemoryLimitExceeded(BoxError):
    """The kernel killed the box for going over its memory limit."""

    def __init__(self, limit: int, peak: int | None) -> None:
        self.limit = limit
        self.peak = peak
        #: killed below its own limit: a cgroup around the box (an outer box's) ran out
        self.enclosing = peak is not None and peak < limit * 0.9
        if peak is not None and self.enclosing:
            super().__init__(
                f"was killed by the kernel's OOM killer at {format_size(peak)}, below its own "
                f"memory limit of {format_size(limit)}: a cgroup around it (an outer box's "
                "limit, or pytest's own cgroup) or the machine ran out of memory")
            return
        peak_text = f" (peak {format_size(peak)})" if peak is not None else ""
        super().__init__(f"exceeded its memory limit of {format_size(limit)}{peak_text}")


class BoxKilled(BoxError):
    """The box's test process died of a signal."""

    def __init__(self, signum: int, detail: str = "", stopped: bool = False) -> None:
        self.signal = signum
        self.detail = trim_stack(detail) if "most recent call first" in detail else detail
        self.stopped = stopped
        super().__init__(
            f"box's test process stopped itself with {signal_name(signum)} and nothing in the "
            "box could continue it, so it was killed" if stopped
            else f"box was killed by {signal_name(signum)}")


class BoxExited(BoxError):
    """The box's test process exited before it sent its result."""

    def __init__(self, exitcode: int, detail: str = "") -> None:
        self.exitcode = exitcode
        self.detail = detail
        super().__init__(f"box exited with code {exitcode} before sending a result")


class RemoteError(BoxError):
    """An exception in the box that could not come back as itself (it did not unpickle)."""

    def __init__(self, type_name: str, message: str, traceback: str) -> None:
        self.type_name = type_name
        self.traceback = traceback
        super().__init__(f"{type_name}: {message}\n\nbox-side traceback:\n{traceback}")


class ForwardWarning(UserWarning):
    """A port of the session's (`auto_forward`) that the box did not get, and why.

    A warning, not an error: the box runs on without it, as the test would have
    without nsbox's help.
    """

