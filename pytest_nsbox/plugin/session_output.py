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
from typing import Any

import pytest

from .pytest_internals import logging_settings, output_and_logs_captured, session_capture

__all__ = ["SessionOutput"]

SUFFIX = "(pytest process)"


class SessionOutput:
    """The pytest process's output and log records while boxes run, one box at a time."""

    def __init__(self, config: pytest.Config) -> None:
        #: stdout and stderr by the session's capture method, suspended between boxes
        self.capture: Any = session_capture(config)
        self.formatter, self.log_level = logging_settings(config)
        #: what the last box's run left: (stdout, stderr, log text)
        self.last = ("", "", "")

    def watching(self) -> contextlib.AbstractContextManager[None]:
        """Capture the pytest process's output and logging while the box runs."""
        return output_and_logs_captured(self.capture, self.formatter, self.log_level,
                                        self._ended)

    def _ended(self, out: str, err: str, log: str) -> None:
        self.last = (out, err, log)

    def attach(self, report: pytest.TestReport) -> None:
        """Put what the last box's run captured into `report`, in sections of its own."""
        out, err, log = self.last
        self.last = ("", "", "")
        for key, text in (("stdout", out), ("stderr", err), ("log", log)):
            if text:
                report.sections.append((f"Captured {key} {report.when} {SUFFIX}", text))
