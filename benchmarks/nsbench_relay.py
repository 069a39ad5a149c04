#!/usr/bin/env python3
"""What a connection through the relay costs against a direct loopback one.

    python benchmarks/nsbench_relay.py [--rounds 10] [--connections 60] [--trips 60]
                                       [--bulk-mb 10] [--bulks 2]

A server thread in this process (a session fixture's server: one thread, a selector,
as an asyncio server serves) listens on 127.0.0.1; each round runs one box whose test
connects to it through the relay (`net="isolated"`, auto_forward) and one that connects
directly (`net="host"`), in turn, the order swapped each round. In each box:

* set-up: `connect()` and the server's first byte (a greeting sent on accept) back;
* round trip: 1 KiB sent and echoed back, on an open connection;
* bulk: `--bulk-mb` MB sent by the server, read to its close (connect included).

Both clients are box test processes, forked the same way: only the path differs. The
figures are medians of every sample of every round (the first of each box left out:
it pays the relay's first connection, imports and cold caches), and ratios
relayed/direct of those medians.
"""

from __future__ import annotations

import argparse
import json
import selectors
import socket
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pytest_nsbox import Box
from pytest_nsbox.resources.net.relay import Relay

GREETING = b"+"
KIB = 1024


class Server:
    """Two ports in one thread: `echo` greets, then echoes; `source` sends `size` bytes
    and closes."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.echo = socket.create_server(("127.0.0.1", 0), backlog=512)
        self.source = socket.create_server(("127.0.0.1", 0), backlog=512)
        self.ports = (self.echo.getsockname()[1], self.source.getsockname()[1])
        self.payload = memoryview(bytes(size))
        self.selector = selectors.DefaultSelector()
        for listener in (self.echo, self.source):
            listener.setblocking(False)
            self.selector.register(listener, selectors.EVENT_READ, listener)
        threading.Thread(target=self._serve, name="nsbench-relay-server", daemon=True).start()

    def _serve(self) -> None:
        sending: dict[socket.socket, int] = {}
        while True:
            for key, _ in self.selector.select():
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                if key.data is self.echo or key.data is self.source:
                    try:
                        conn, _ = sock.accept()
                    except BlockingIOError:
                        continue
                    conn.setblocking(False)
                    if key.data is self.echo:
                        conn.send(GREETING)
                        self.selector.register(conn, selectors.EVENT_READ, "echo")
                    else:
                        sending[conn] = 0
                        self.selector.register(conn, selectors.EVENT_WRITE, "source")
                elif key.data == "echo":
                    try:
                        data = sock.recv(1 << 16)
                    except (BlockingIOError, ConnectionError):
                        data = b""
                    if data:
                        sock.sendall(data)  # small: the buffer has room
                    else:
                        self.selector.unregister(sock)
                        sock.close()
                else:
                    done = sending[sock]
                    try:
                        done += sock.send(self.payload[done:done + (1 << 20)])
                    except BlockingIOError:
                        continue
                    except OSError:
                        done = self.size
                    sending[sock] = done
                    if done >= self.size:
                        del sending[sock]
                        self.selector.unregister(sock)
                        sock.close()


def _connect(port: int) -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.connect(("127.0.0.1", port))
    return sock


def _recv_exactly(sock: socket.socket, count: int) -> None:
    while count:
        data = sock.recv(count)
        if not data:
            raise ConnectionError("closed early")
        count -= len(data)


def client(ports: tuple[int, int], connections: int, trips: int, bulks: int, size: int,
           ) -> dict[str, list[int]]:
    """In the box: ns per connection set-up, per 1 KiB round trip, per bulk transfer."""
    clock = time.perf_counter_ns
    echo, source = ports
    setup, trip, bulk = [], [], []
    for _ in range(connections + 1):
        start = clock()
        sock = _connect(echo)
        _recv_exactly(sock, len(GREETING))
        setup.append(clock() - start)
        sock.close()
    message = bytes(KIB)
    with _connect(echo) as sock:
        _recv_exactly(sock, len(GREETING))
        for _ in range(trips + 1):
            start = clock()
            sock.sendall(message)
            _recv_exactly(sock, KIB)
            trip.append(clock() - start)
    buffer = bytearray(1 << 20)
    for _ in range(bulks + 1):
        start = clock()
        with _connect(source) as sock:
            got = 0
            while count := sock.recv_into(buffer):
                got += count
        bulk.append(clock() - start)
        assert got == size, f"{got} bytes of {size}"
    return {"setup": setup[1:], "trip": trip[1:], "bulk": bulk[1:]}


def measure(rounds: int, connections: int, trips: int, bulks: int, size: int,
            kept: bool = False) -> dict[str, dict[str, list[int]]]:
    """Samples of each path; with `kept`, also "kept": relayed, but pytest's relay thread
    copies every byte (`Relay.hand_over = False`), to compare the two designs."""
    server = Server(size)
    boxes = [("relayed", Box(net="isolated")), ("direct", Box(net="host"))]
    if kept:
        boxes.append(("kept", Box(net="isolated")))
    samples: dict[str, dict[str, list[int]]] = {
        name: {"setup": [], "trip": [], "bulk": []} for name, _ in boxes}
    for _ in range(rounds):
        boxes.reverse()
        for name, box in boxes:
            Relay.hand_over = name != "kept"
            got = box.run(client, server.ports, connections, trips, bulks, size)
            for kind, values in got.items():
                samples[name][kind] += values
    return samples


def summary(samples: dict[str, dict[str, list[int]]]) -> dict[str, dict[str, float]]:
    """Median µs of each kind for each path, and the ratios to direct."""
    table: dict[str, dict[str, float]] = {}
    for kind in ("setup", "trip", "bulk"):
        direct = statistics.median(samples["direct"][kind]) / 1000
        table[kind] = {"direct_us": direct}
        for name in samples.keys() - {"direct"}:
            value = statistics.median(samples[name][kind]) / 1000
            table[kind][f"{name}_us"] = value
            table[kind]["ratio" if name == "relayed" else f"{name}_ratio"] = value / direct
    return table


NAMES = {"setup": "set-up (connect + first byte)", "trip": "1 KiB round trip",
         "bulk": "bulk (connect + read to close)"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=60)
    parser.add_argument("--trips", type=int, default=60)
    parser.add_argument("--bulks", type=int, default=2)
    parser.add_argument("--bulk-mb", type=float, default=10)
    parser.add_argument("--kept", action="store_true",
                        help="also relayed with every byte copied by pytest's relay thread")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    args = parser.parse_args()
    size = int(args.bulk_mb * 1_000_000)
    samples = measure(args.rounds, args.connections, args.trips, args.bulks, size, args.kept)
    table = summary(samples)
    if args.json:
        print(json.dumps(table))
        return
    count = {kind: len(samples["direct"][kind]) for kind in table}
    print(f"medians, µs ({args.rounds} rounds, interleaved; bulk {size / 1e6:g} MB)")
    kept = " " * 17 if not args.kept else f"{'kept':>10} {'ratio':>6}"
    print(f"{'':<32} {'relayed':>10} {'direct':>10} {'ratio':>6} {kept} {'n':>5}")
    for kind, row in table.items():
        kept = " " * 17 if not args.kept else \
            f"{row['kept_us']:>10.1f} {row['kept_ratio']:>6.2f}"
        print(f"{NAMES[kind]:<32} {row['relayed_us']:>10.1f} {row['direct_us']:>10.1f} "
              f"{row['ratio']:>6.2f} {kept} {count[kind]:>5}")


if __name__ == "__main__":
    main()
