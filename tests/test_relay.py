"""The relay's data path: what a box's client sends through it arrives intact, in order,
with its ends (half-close, the server closing first, a refused target), for many
connections at once; both when the box's init copies (the hand-over) and when pytest's
relay thread copies every byte (`Relay.hand_over = False`).

Real boxes (`net="isolated"`), a server thread in this process found by auto_forward, as
a session fixture's server is.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from pytest_nsbox import Box
from pytest_nsbox.resources.net import relay

MB = 1 << 20


@contextlib.contextmanager
def server(handle: Callable[[socket.socket], None]) -> Iterator[int]:
    """A threaded server on 127.0.0.1 calling `handle` for each connection; its port."""
    listener = socket.create_server(("127.0.0.1", 0), backlog=256)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return

            def run(conn: socket.socket = conn) -> None:
                with conn, contextlib.suppress(OSError):
                    handle(conn)

            threading.Thread(target=run, daemon=True).start()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        listener.close()


def echo(conn: socket.socket) -> None:
    while data := conn.recv(1 << 16):
        conn.sendall(data)


def digest_then_reply(conn: socket.socket) -> None:
    """Read to the client's end of input (its SHUT_WR), then reply with what it got."""
    hashed, count = hashlib.sha256(), 0
    while data := conn.recv(1 << 16):
        hashed.update(data)
        count += len(data)
    conn.sendall(f"{count} {hashed.hexdigest()}".encode())


@pytest.fixture(params=[True, False], ids=["init-copies", "pytest-copies"])
def hand_over(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[
        list[relay.Relay]]:
    """Both paths; the relays of the boxes run, to see which path each took."""
    monkeypatch.setattr(relay.Relay, "hand_over", request.param)
    seen: list[relay.Relay] = []
    stop = relay.Relay.stop

    def keep(self: relay.Relay) -> None:
        seen.append(self)
        stop(self)

    monkeypatch.setattr(relay.Relay, "stop", keep)
    yield seen
    for handle in seen:
        assert handle.errors == [] and handle.problems == []
        if request.param:
            assert handle.handed == handle.connections > 0, "the init copied none"
        else:
            assert handle.handed == 0


def _recv_all(sock: socket.socket) -> bytes:
    chunks = []
    while data := sock.recv(1 << 16):
        chunks.append(data)
    return b"".join(chunks)


def _echo_both_ways(port: int, payload: bytes) -> str:
    """In the box: send `payload` while reading the echo (both ways at once); its digest."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        def send() -> None:
            sock.sendall(payload)
            sock.shutdown(socket.SHUT_WR)

        sender = threading.Thread(target=send)
        sender.start()
        got = _recv_all(sock)
        sender.join()
    return f"{len(got)} {hashlib.sha256(got).hexdigest()}"


def test_ten_megabytes_go_through_intact_both_ways(hand_over: list[relay.Relay]) -> None:
    payload = os.urandom(10 * MB)
    with server(echo) as port:
        got = Box().run(_echo_both_ways, port, payload)
    assert got == f"{len(payload)} {hashlib.sha256(payload).hexdigest()}"
    assert len(hand_over) == 1


def _half_close(port: int, payload: bytes) -> tuple[str, bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)  # the server answers only once it sees this
        reply = sock.recv(1000)
        return reply.decode(), sock.recv(1000)  # then the server's end: b""


def test_half_close_reaches_the_server_and_the_reply_comes_back(
        hand_over: list[relay.Relay]) -> None:
    payload = os.urandom(3 * MB + 5)
    with server(digest_then_reply) as port:
        reply, after = Box().run(_half_close, port, payload)
    assert reply == f"{len(payload)} {hashlib.sha256(payload).hexdigest()}"
    assert after == b""


def _many(port: int, count: int) -> list[bytes]:
    conns = [socket.create_connection(("127.0.0.1", port), timeout=30) for _ in range(count)]
    for index, conn in enumerate(conns):  # all open at once, then each talks
        conn.sendall(b"%d;" % index * 100)
    replies = []
    for index, conn in enumerate(conns):
        want, got = len(b"%d;" % index * 100), b""
        while len(got) < want:
            got += conn.recv(want - len(got))
        replies.append(got)
        conn.close()
    return replies


def test_many_connections_at_once(hand_over: list[relay.Relay]) -> None:
    with server(echo) as port:
        replies = Box().run(_many, port, 120)
    assert replies == [b"%d;" % index * 100 for index in range(120)]
    assert hand_over[0].connections == 120


def _greeted(port: int) -> tuple[bytes, bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        greeting = b""
        while data := sock.recv(100):  # to the server's close
            greeting += data
        sock.sendall(b"late")  # after the server closed: no hang, maybe a reset later
        return greeting, b"eof"


def test_the_server_closing_first_ends_the_box_side(hand_over: list[relay.Relay]) -> None:
    def greet_and_close(conn: socket.socket) -> None:
        conn.sendall(b"220 hello")

    with server(greet_and_close) as port:
        assert Box().run(_greeted, port) == (b"220 hello", b"eof")


def _refused(port: int) -> str:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            return repr(sock.recv(10))
    except OSError as exc:
        return type(exc).__name__


def test_a_refused_target_resets_the_box_side(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[Any] = []
    stop = relay.Relay.stop

    def keep(self: relay.Relay) -> None:
        seen.append(self)
        stop(self)

    monkeypatch.setattr(relay.Relay, "stop", keep)
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))  # bound, not listening: connect is refused
        port = closed.getsockname()[1]
        got = Box(forward={5432: port}).run(_refused, 5432)
    assert got in ("ConnectionResetError", "b''")  # as a refused service would
    assert seen[0].connections == 1
    assert any("Connection refused" in error for error in seen[0].errors)


def test_a_box_that_never_connects_starts_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    before = relay.Relay.started
    with server(echo):
        assert Box().run(int) == 0
    assert relay.Relay.started == before
