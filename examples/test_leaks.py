"""Everything a box starts dies with it, daemons included.

The first test is boxed and starts a `sleep 1000` daemon (double fork and setsid, the way
a real daemon leaves its parent) and returns without stopping it. The second test runs
unboxed, in the pytest process, after it and looks for that daemon among the host's
processes: it is gone, because the box's pid namespace ended with the box.
"""

from __future__ import annotations

import os
import signal
import time

import pytest

from pytest_nsbox import current_box


def processes_named(tag: str) -> list[int]:
    """Pids, as this process sees them, whose argv[0] is `tag`."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv0 = f.read().split(b"\0", 1)[0]
        except OSError:
            continue  # the process ended while we looked
        if argv0 == tag.encode():
            found.append(int(entry))
    return found


def start_daemon(tag: str) -> None:
    """Start `sleep 1000` detached from this process, with `tag` as its argv[0]."""
    child = os.fork()
    if child == 0:
        try:
            os.setsid()
            if os.fork() == 0:
                devnull = os.open(os.devnull, os.O_RDWR)
                for fd in (0, 1, 2):
                    os.dup2(devnull, fd)
                os.execvp("sleep", [tag, "1000"])
        finally:
            os._exit(0)
    os.waitpid(child, 0)


@pytest.mark.nsbox
def test_leaves_a_daemon_behind(daemon_tag: str) -> None:
    """Passes: starts the daemon, sees it running in the box, and leaves it there."""
    if current_box() is None:
        pytest.skip("not in a box: the daemon would outlive the test on the host")
    start_daemon(daemon_tag)
    deadline = time.monotonic() + 5
    while not (pids := processes_named(daemon_tag)) and time.monotonic() < deadline:
        time.sleep(0.01)  # until the daemon has exec'd sleep
    print(f"daemon {daemon_tag} runs in the box as pid {pids}")
    assert pids


@pytest.mark.nsbox(enabled=False)
def test_no_daemon_is_left_on_the_host(daemon_tag: str) -> None:
    """Passes: runs in the pytest process and finds no process named `daemon_tag`."""
    left = processes_named(daemon_tag)
    for pid in left:
        os.kill(pid, signal.SIGKILL)  # clean up, should the box ever fail to
    print(f"processes named {daemon_tag} on the host: {left}")
    assert left == []
