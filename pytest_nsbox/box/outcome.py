"""What a box used (`Usage`) and how it ended (`Outcome`), as the parent saw it."""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass, field
from typing import Any

from .errors import BoxError, BoxKilled, BoxTimeout, BoxUnavailable, MemoryLimitExceeded
from .options import BoxOptions

__all__ = ["Outcome", "Usage"]


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
    #: when the box was frozen but the test process (its stack says where it was), pid 1
    #: (the init) first
    processes: list[tuple[int, str]] = field(default_factory=list)
    #: after a timeout: seconds the freeze took (None: the box was not frozen)
    freeze_seconds: float | None = None
    #: after a timeout: why the box could not be frozen, or what a frozen-box hook raised
    freeze_note: str = ""
    #: the box's directory on disk for its private paths, None where they were RAM
    #: (removed after the box, unless kept: `spawn.keep_files`)
    storage: str | None = None

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
