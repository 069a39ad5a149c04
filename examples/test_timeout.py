"""A timeout kills everything in the box and reports where the test was stuck."""

from __future__ import annotations

import socket

import pytest


def read_reply(conn: socket.socket) -> bytes:
    return conn.recv(64)  # the peer never answers: this blocks for ever


@pytest.mark.nsbox(timeout=2)
def test_waiting_for_a_reply_that_never_comes() -> None:
    """Meant to fail: after 2 s the box is killed.

    The report reads "[nsbox] box timed out after 2 s and was killed; it was stuck at:"
    followed by the test's stack, which ends in read_reply().
    """
    client, _server = socket.socketpair()
    client.sendall(b"ping")
    assert read_reply(client) == b"pong"
