"""The ``pytest-nsbox`` command line: what a shell pipeline sees."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


@pytest.mark.parametrize("args", [["doctor", "--json"], ["--help"]])
def test_a_reader_that_goes_away_ends_the_command_quietly(args: list[str]) -> None:
    """``pytest-nsbox doctor --json | head``: no BrokenPipeError traceback."""
    read, write = os.pipe()
    os.close(read)  # the reader is gone before the first write: EPIPE, every time
    try:
        done = subprocess.run([sys.executable, "-m", "pytest_nsbox", *args], stdout=write,
                              stderr=subprocess.PIPE, text=True, timeout=60)
    finally:
        os.close(write)
    assert "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr, done.stderr
    assert done.stderr == ""
    assert done.returncode == 141  # as a shell reports a writer ended by SIGPIPE
