"""Each box has a network of its own: only loopback, nothing outside, every port free."""

from __future__ import annotations

import errno
import socket
import threading

import pytest

pytestmark = pytest.mark.nsbox(net="isolated")


def test_only_loopback_is_there() -> None:
    """Passes: the box's network namespace has one interface, lo, and it is up."""
    names = [name for _, name in socket.if_nameindex()]
    print("interfaces in the box:", names)
    assert names == ["lo"]


def test_a_server_on_loopback_answers() -> None:
    """Passes: a server bound to a port in the box answers a client in the box."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 8080))
        server.listen()

        def echo_once() -> None:
            conn, _ = server.accept()
            with conn:
                conn.sendall(conn.recv(64))

        thread = threading.Thread(target=echo_once)
        thread.start()
        with socket.create_connection(("127.0.0.1", 8080), timeout=5) as client:
            client.sendall(b"ping")
            assert client.recv(64) == b"ping"
        thread.join()


def test_nothing_outside_is_reachable() -> None:
    """Passes: no route leaves the box, so connections and name lookups fail at once."""
    with pytest.raises(OSError) as connect:
        socket.create_connection(("1.1.1.1", 53), timeout=5)
    print("connect to 1.1.1.1:53 ->", connect.value)
    assert connect.value.errno == errno.ENETUNREACH
    with pytest.raises(socket.gaierror) as lookup:
        socket.getaddrinfo("pypi.org", 443)
    print("look up pypi.org ->", lookup.value)


def test_reaching_the_session_server(host_port: int) -> None:
    """Passes: the pytest process listens on `host_port` all session long (see
    conftest.py); the box has a network of its own, yet the session's server is
    reachable in it at the same address and port (auto_forward), as unboxed."""
    with socket.create_connection(("127.0.0.1", host_port), timeout=5):
        print(f"connected to the session's server on 127.0.0.1:{host_port}")


@pytest.mark.nsbox(auto_forward=False)
@pytest.mark.parametrize("run", [1, 2])
def test_binding_the_port_the_host_holds(host_port: int, run: int) -> None:
    """Passes, twice: with auto_forward=False the session's server is not relayed, and
    each box binds that same port in its own network namespace. Under pytest-xdist,
    boxes running at the same time can bind the same port as well."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", host_port))
        server.listen()
        print(f"run {run}: bound 127.0.0.1:{host_port}, which the host also holds")
