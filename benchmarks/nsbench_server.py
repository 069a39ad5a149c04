"""A session that runs a server, as real suites do: loaded with ``-p nsbench_server``.

At configure time the pytest process starts a threaded TCP server on 127.0.0.1 (a
session fixture's server, as pytest-httpbin's or uvicorn's in httpx's suite), so every
isolated box gets it relayed (auto_forward). It answers nothing: the benchmark measures
what a box pays for the relay, not traffic.
"""

from __future__ import annotations

import socket
import threading

import pytest


def pytest_configure(config: pytest.Config) -> None:
    server = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        while True:
            connection, _ = server.accept()
            connection.close()

    threading.Thread(target=serve, name="nsbench-server", daemon=True).start()
    config.add_cleanup(server.close)
