"""A box is gone before anything after it can look: the next test, a fixture's teardown.

Each inner session alternates a boxed test that leaves daemons behind with an unboxed
test that looks for them (the shape of examples/test_leaks.py, repeated: before the
box's end was waited for, a daemon was still alive when the next test started in about
1 run of 5 with ten daemons).
"""

from __future__ import annotations

import socket

import pytest
from helpers import processes_with, token

ROUNDS = 25

LEAKS = """
import os, sys, time, pytest

TAG = {tag!r}

def daemon(program, argv):
    child = os.fork()
    if child == 0:
        try:
            os.setsid()
            if os.fork() == 0:
                devnull = os.open(os.devnull, os.O_RDWR)
                for fd in (0, 1, 2):
                    os.dup2(devnull, fd)
                os.execvp(program, argv)
        finally:
            os._exit(0)
    os.waitpid(child, 0)

def ours():
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{{entry}}/cmdline", "rb") as f:
                    if TAG.encode() in f.read():
                        found.append(int(entry))
            except OSError:
                pass
    return found
"""

DAEMONS = LEAKS + """
@pytest.mark.nsbox
@pytest.mark.parametrize("round", range({rounds}))
class TestRound:
    def test_leave_daemons(self, round):
        for _ in range(10):
            daemon("sleep", [TAG, "1000"])
        deadline = time.monotonic() + 5
        while len(ours()) < 10 and time.monotonic() < deadline:
            time.sleep(0.002)
        assert len(ours()) == 10

    @pytest.mark.nsbox(enabled=False)
    def test_none_left(self, round):
        assert ours() == []
"""

PORT = LEAKS + """
import socket

PORT = {port}
LISTEN = ("import socket, time; s = socket.socket(); s.bind(('127.0.0.1', %d)); "
          "s.listen(); time.sleep(1000)" % PORT)

@pytest.mark.nsbox(net="host")
@pytest.mark.parametrize("round", range({rounds}))
class TestRound:
    def test_leave_a_listener(self, round):
        daemon(sys.executable, [sys.executable, "-c", LISTEN, TAG])
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", PORT), timeout=1).close()
                return
            except OSError:
                time.sleep(0.005)
        raise AssertionError("the daemon never listened")

    @pytest.mark.nsbox(enabled=False)
    def test_port_free(self, round):
        s = socket.socket()
        try:
            s.bind(("127.0.0.1", PORT))  # no SO_REUSEADDR: refused while anyone listens
        finally:
            s.close()
"""


def test_a_boxs_daemons_are_gone_when_the_next_test_starts(pytester: pytest.Pytester,
                                                             run_inner) -> None:
    tag = token()
    pytester.makepyfile(test_daemons=DAEMONS.format(tag=tag, rounds=ROUNDS))
    result = run_inner("-q")
    assert processes_with(tag) == []
    result.assert_outcomes(passed=2 * ROUNDS)


def test_a_host_network_boxs_port_is_free_when_the_next_test_starts(
        pytester: pytest.Pytester, run_inner) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    tag = token()
    pytester.makepyfile(test_port=PORT.format(tag=tag, port=port, rounds=ROUNDS))
    result = run_inner("-q")
    assert processes_with(tag) == []
    result.assert_outcomes(passed=2 * ROUNDS)
