"""What the pytest process prints and logs while a box runs, for that test's report.

Unboxed, a session fixture's server (a thread of pytest) prints and logs into the
captured output of the test it serves, which is often the most useful part of a failed
network test's report. Boxed, the test runs in another process, and pytest's own
capture is suspended while the box runs: the server's lines went to the terminal, or
nowhere. Here they are captured as pytest would (its own `MultiCapture` and
`LogCaptureHandler`, by the session's capture method and log level), from the fork of
the box to its end, and attached to the test's report in sections of their own:
"Captured stdout call (pytest process)", "... stderr ...", "Captured log call (pytest
process)". Records logged there are not in the box's ``caplog`` (a difference that
remains: docs/troubleshooting.md).

The capture is made once a session; a box pays two dup2 per stream on and off, two
reads, and the log handler's attach and detach.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import pytest

__all__ = ["SessionOutput"]

SUFFIX = "(pytest process)"


class SessionOutput:
    """The pytest process's output and log records while boxes run, one box at a time."""

    def __init__(self, config: pytest.Config) -> None:
        from _pytest.capture import FDCapture, MultiCapture, SysCapture

        method = config.getoption("capture", "fd")
        out: Any
        err: Any
        if method == "fd":
            out, err = FDCapture(1), FDCapture(2)
        elif method in ("sys", "tee-sys"):
            tee = method == "tee-sys"
            out, err = SysCapture(1, tee=tee), SysCapture(2, tee=tee)
        else:
            out = err = None
        self.capture: Any = MultiCapture(in_=None, out=out, err=err) if out else None
        if self.capture is not None:
            self.capture.start_capturing()
            self.capture.suspend_capturing()
            config.add_cleanup(self.capture.stop_capturing)
        logging_plugin = config.pluginmanager.get_plugin("logging-plugin")
        self.formatter = getattr(logging_plugin, "formatter", None)
        self.log_level: int | None = getattr(logging_plugin, "log_level", None)
        #: what the last box's run left: (stdout, stderr, log text)
        self.last = ("", "", "")

    @contextlib.contextmanager
    def watching(self) -> Iterator[None]:
        """Capture the pytest process's output and logging while the box runs."""
        from _pytest.logging import LogCaptureHandler, catching_logs

        handler = LogCaptureHandler()
        if self.formatter is not None:
            handler.setFormatter(self.formatter)
        if self.capture is not None:
            self.capture.resume_capturing()
        try:
            with catching_logs(handler, level=self.log_level):
                yield
        finally:
            out = err = ""
            if self.capture is not None:
                self.capture.suspend_capturing()
                out, err = self.capture.readouterr()
            self.last = (out, err, handler.stream.getvalue().strip())

    def attach(self, report: pytest.TestReport) -> None:
        """Put what the last box's run captured into `report`, in sections of its own."""
        out, err, log = self.last
        self.last = ("", "", "")
        for key, text in (("stdout", out), ("stderr", err), ("log", log)):
            if text:
                report.sections.append((f"Captured {key} {report.when} {SUFFIX}", text))
