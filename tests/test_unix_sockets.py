"""A Unix socket the session listens on under the box's private /tmp is connectable there.

A class fixture's server (slapd in python-ldap's suite) listens on a socket in a
directory under /tmp. The box sees the socket file through its overlay, but connect()
through an overlay's inode is refused (ECONNREFUSED): the box's init binds the socket
file itself at its path.
"""

from __future__ import annotations

import pytest

SERVERS = """
import os, socket, subprocess, sys, tempfile, threading, time
import pytest

def serve(listener):
    while True:
        try:
            connection, _ = listener.accept()
        except OSError:
            return
        with connection:
            connection.sendall(b"pong " + connection.recv(64))

@pytest.fixture(scope="class")
def thread_server():
    directory = tempfile.mkdtemp(prefix="slapd-", dir="/tmp")
    path = os.path.join(directory, "ldapi")
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(path)
    listener.listen()
    threading.Thread(target=serve, args=(listener,), daemon=True).start()
    yield path
    listener.close()

CHILD = '''
import socket, sys
listener = socket.socket(socket.AF_UNIX)
listener.bind(sys.argv[1])
listener.listen()
print("ready", flush=True)
while True:
    connection, _ = listener.accept()
    connection.sendall(b"pong " + connection.recv(64))
    connection.close()
'''

@pytest.fixture(scope="session")
def child_server():
    directory = tempfile.mkdtemp(prefix="server-", dir="/tmp")
    path = os.path.join(directory, "socket")
    child = subprocess.Popen([sys.executable, "-c", CHILD, path], stdout=subprocess.PIPE)
    assert child.stdout.readline() == b"ready\\n"
    yield path
    child.kill()
    child.wait()

def ask(path):
    with socket.socket(socket.AF_UNIX) as client:
        client.connect(path)
        client.sendall(b"ping")
        return client.recv(64)
"""


@pytest.mark.parametrize("mode", ["overlay", "empty"])
def test_a_session_servers_unix_socket_under_tmp_is_connectable_in_the_box(
        run_inner, pytester: pytest.Pytester, mode: str) -> None:
    pytester.makeconftest(SERVERS)
    pytester.makepyfile(test_sockets=f"""
        import os
        import pytest
        from conftest import ask

        pytestmark = pytest.mark.nsbox(tmpfs_mode={mode!r})

        class TestSlapdLike:
            def test_thread_server(self, thread_server):
                assert ask(thread_server) == b"pong ping"

            def test_child_server(self, child_server):
                assert ask(child_server) == b"pong ping"

            def test_the_box_tmp_is_still_its_own(self, thread_server):
                open("/tmp/mine", "w").close()
                assert os.path.exists(thread_server)
    """)
    result = run_inner("-q", "--nsbox")
    result.assert_outcomes(passed=3)
    assert not (pytester.path / "mine").exists()


def test_another_processs_socket_is_reachable_only_with_the_hosts_network(
        run_inner, pytester: pytest.Pytester) -> None:
    """An isolated box reaches the session's own servers only: a socket of another
    process (here: this outer pytest, made before the inner session) shows through the
    overlay and stays refused; with net='host' the box reaches it as the host does."""
    import os
    import socket
    import tempfile

    directory = tempfile.mkdtemp(prefix="foreign-", dir="/tmp")
    path = os.path.join(directory, "socket")
    with socket.socket(socket.AF_UNIX) as foreign:
        foreign.bind(path)
        foreign.listen()
        pytester.makepyfile(test_foreign=f"""
            import socket
            import pytest

            @pytest.mark.nsbox
            def test_refused_when_isolated():
                with socket.socket(socket.AF_UNIX) as client:
                    # refused through the overlay; absent where /tmp is empty (pytest
                    # in a box: its base temp is bound under /tmp, no overlay there)
                    with pytest.raises((ConnectionRefusedError, FileNotFoundError)):
                        client.connect({path!r})

            @pytest.mark.nsbox(net="host")
            def test_reached_on_the_hosts_network():
                with socket.socket(socket.AF_UNIX) as client:
                    client.connect({path!r})
        """)
        result = run_inner("-q")
    result.assert_outcomes(passed=2)


def test_a_server_started_again_at_the_same_path_is_the_one_the_box_reaches(
        run_inner, pytester: pytest.Pytester) -> None:
    """The box made ahead for the next test while the last server listened is not used
    once another server listens at the same path (a class fixture per class)."""
    import uuid

    path = f"/tmp/nsbox-{uuid.uuid4().hex[:8]}/app.sock"
    pytester.makepyfile(test_again=f"""
        import os, socket, threading
        import pytest

        PATH = {path!r}
        pytestmark = pytest.mark.nsbox

        def serve(name):
            os.makedirs(os.path.dirname(PATH), exist_ok=True)
            listener = socket.socket(socket.AF_UNIX)
            listener.bind(PATH)
            listener.listen()
            def loop():
                while True:
                    try:
                        connection, _ = listener.accept()
                    except OSError:
                        return
                    connection.sendall(name.encode())
                    connection.close()
            threading.Thread(target=loop, daemon=True).start()
            return listener

        def ask():
            with socket.socket(socket.AF_UNIX) as client:
                client.connect(PATH)
                return client.recv(10).decode()

        class TestX:
            @pytest.fixture(scope="class", autouse=True)
            def server(self):
                listener = serve("X")
                yield
                listener.close()
                os.unlink(PATH)

            def test_x1(self):
                assert ask() == "X"

            def test_x2(self):
                assert ask() == "X"

        class TestY:
            @pytest.fixture(scope="class", autouse=True)
            def server(self):
                listener = serve("Y")
                yield
                listener.close()
                os.unlink(PATH)

            def test_y1(self):
                assert ask() == "Y"
    """)
    result = run_inner("-q")
    result.assert_outcomes(passed=3)
