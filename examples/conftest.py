"""Session fixtures of the example suite.

Fixtures of session scope are set up once, in the pytest process; every box sees them as
they were when it forked. Two of them are used here: a port the host holds for the whole
session, and a tag that names the daemon the leak example starts.
"""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator

import pytest


@pytest.fixture(scope="session")
def host_port() -> Iterator[int]:
    """A TCP port that the pytest process itself listens on for the whole session."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        yield server.getsockname()[1]


@pytest.fixture(scope="session")
def daemon_tag() -> str:
    """A name no other process on this machine has, given to the leaked daemon's argv[0]."""
    return f"nsbox-example-daemon-{uuid.uuid4().hex[:12]}"
