"""What a session fixture's server prints and logs while a boxed test runs is in that
test's report, in sections of its own, as it is in the test's output unboxed."""

from __future__ import annotations

import pytest

SERVER = """
import logging, socket, sys, threading
import pytest

log = logging.getLogger("server")

def serve(listener):
    while True:
        try:
            connection, _ = listener.accept()
        except OSError:
            return
        with connection:
            request = connection.recv(64).decode()
            print(f"server got {request}")
            sys.stdout.flush()
            print(f"server complains about {request}", file=sys.stderr)
            log.warning("server warns about %s", request)
            connection.sendall(b"done")

@pytest.fixture(scope="session")
def server():
    listener = socket.create_server(("127.0.0.1", 0))
    threading.Thread(target=serve, args=(listener,), daemon=True).start()
    yield listener.getsockname()[1]
    listener.close()

def ask(port, text):
    with socket.create_connection(("127.0.0.1", port)) as client:
        client.sendall(text.encode())
        return client.recv(64)
"""

TESTS = """
import pytest
from conftest import ask

pytestmark = pytest.mark.nsbox

def test_fails_after_asking(server):
    assert ask(server, "first") == b"done"
    print("the test's own line")
    assert False

def test_passes_quietly(server):
    pass

def test_fails_without_asking(server):
    assert False
"""


def test_a_session_servers_lines_are_in_the_failing_boxed_tests_report(
        run_inner, pytester: pytest.Pytester) -> None:
    pytester.makeconftest(SERVER)
    pytester.makepyfile(test_served=TESTS)
    result = run_inner("-q", "-p", "no:randomly")
    result.assert_outcomes(passed=1, failed=2)
    text = result.stdout.str()
    first = text[text.index("test_fails_after_asking ___"):
                 text.index("test_fails_without_asking ___")]
    assert "Captured stdout call (pytest process)" in first
    assert "server got first" in first
    assert "Captured stderr call (pytest process)" in first
    assert "server complains about first" in first
    assert "Captured log call (pytest process)" in first
    assert "server warns about first" in first
    assert "the test's own line" in first.split("Captured stdout call ---")[1]
    second = text[text.index("test_fails_without_asking ___"):]
    assert "(pytest process)" not in second  # the session wrote nothing meanwhile
    assert "server got" not in second  # and nothing of the earlier box


def test_no_capture_leaves_the_servers_lines_live(run_inner,
                                                   pytester: pytest.Pytester) -> None:
    pytester.makeconftest(SERVER)
    pytester.makepyfile(test_served=TESTS)
    result = run_inner("-q", "-s", "-p", "no:randomly", "-k", "asking and not without")
    result.assert_outcomes(failed=1)
    text = result.stdout.str()
    assert "server got first" in text
    assert "Captured stdout call (pytest process)" not in text
    assert "Captured log call (pytest process)" in text  # logging is captured under -s too
