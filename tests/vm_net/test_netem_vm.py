"""VM lane: netem faults measured against what was asked (needs sch_netem; run.sh boots it).

Skipped where the kernel has no sch_netem (this is checked, not assumed); run by
tests/vm_net/run.sh in the vmlab VM as root and as an unprivileged user.
"""

from __future__ import annotations

import socket
import statistics
import time
from typing import Any

import pytest
from test_net import _has_netem, in_netns

from pytest_nsbox import Box
from pytest_nsbox.resources.net import netem as net

pytestmark = [pytest.mark.vm]
PACKETS = 2000


@pytest.fixture(autouse=True, scope="module")
def _netem_here() -> None:
    if not _has_netem():
        pytest.skip("lacks: sch_netem (run tests/vm_net/run.sh)")


def udp_round_trips(count: int, host: str = "127.0.0.1", port: int = 0) -> list[float]:
    """Round-trip times of `count` UDP pings to an echo on `host` in this process."""
    echo = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    echo.bind((host, port))
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.settimeout(5)
    times = []
    for i in range(count):
        started = time.perf_counter()
        client.sendto(str(i).encode(), echo.getsockname())
        data, peer = echo.recvfrom(64)
        echo.sendto(data, peer)
        client.recvfrom(64)
        times.append(time.perf_counter() - started)
    return times


def udp_loss(count: int, send_to: tuple[str, int] | None = None,
             receiver: socket.socket | None = None) -> float:
    """Fraction of `count` datagrams lost on the way, paced so no buffer overflows."""
    sink = receiver or socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    if receiver is None:
        sink.bind(("127.0.0.1", 0))
    sink.settimeout(0.2)
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    got = 0
    for start in range(0, count, 50):
        for i in range(start, min(start + 50, count)):
            sender.sendto(b"%d" % i, send_to or sink.getsockname())
        if receiver is None:
            got += _drain(sink)
    return 1 - got / count if receiver is None else -1.0


def _drain(sink: socket.socket) -> int:
    got = 0
    while True:
        try:
            sink.recvfrom(64)
        except TimeoutError:
            return got
        got += 1


def test_delay_on_the_box_loopback() -> None:
    times = in_netns(udp_round_trips, 40, setup=lambda: net.apply_netem({"delay": "50ms"}))
    one_way = statistics.median(times) / 2  # a loopback round trip crosses lo twice
    print(f"loopback delay asked 50 ms, measured {one_way * 1000:.1f} ms one way")
    assert 0.04 <= one_way <= 0.06


def test_loss_on_the_box_loopback() -> None:
    loss = in_netns(udp_loss, PACKETS, setup=lambda: net.apply_netem({"loss": "10%"}))
    print(f"loopback loss asked 10%, measured {loss * 100:.2f}% over {PACKETS} datagrams")
    assert 0.07 <= loss <= 0.13  # 10% +- 3 points: > 4 standard deviations at 2000


def test_delay_and_rate_together() -> None:
    from test_net import measure_tcp_rate

    rate = in_netns(measure_tcp_rate, 1 << 20,
                    setup=lambda: net.apply_netem({"delay": "5ms", "rate": "8mbit"}))
    print(f"netem rate asked 8 Mbit/s with 5 ms delay, measured {rate / 1e6:.2f} Mbit/s")
    assert 0.8 * 8e6 <= rate <= 1.2 * 8e6


def test_delay_on_a_topology_link(nsbox_network: Any) -> None:
    network = nsbox_network("a", "b", faults={"a": {"delay": "30ms"}})
    network.host("b").spawn(_echo_forever, 7000)
    times = network.host("a").run(_pings, "b", 7000, 40)
    one_way = statistics.median(times) / 2  # a's link delays each direction once
    print(f"link delay asked 30 ms, measured {one_way * 1000:.1f} ms one way")
    assert 0.024 <= one_way <= 0.036


def test_loss_on_a_topology_link(nsbox_network: Any) -> None:
    network = nsbox_network("a", "b", faults={"a": {"loss": "5%"}})
    counter = network.host("b").spawn(_count_datagrams, 7001, PACKETS)
    network.host("a").run(_send_paced, "b", 7001, PACKETS)
    got = counter.result(30)
    loss = 1 - got / PACKETS
    print(f"link loss asked 5%, measured {loss * 100:.2f}% over {PACKETS} datagrams")
    assert 0.025 <= loss <= 0.075


def test_box_option_applies_netem() -> None:
    from test_net import _wired

    if not _wired("apply_netem"):
        pytest.skip("netem.apply_netem is not wired into box/inside.py yet")
    times = Box(netem={"delay": "20ms"}).run(udp_round_trips, 20)
    assert 0.016 <= statistics.median(times) / 2 <= 0.024


def _echo_forever(port: int) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("0.0.0.0", port))
    while True:
        data, peer = sock.recvfrom(64)
        sock.sendto(data, peer)


def _pings(name: str, port: int, count: int) -> list[float]:
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.settimeout(2)
    address = (socket.gethostbyname(name), port)
    times = []
    while len(times) < count:
        started = time.perf_counter()
        client.sendto(b"p", address)
        try:
            client.recvfrom(64)
        except TimeoutError:
            continue  # the echo was not up yet
        times.append(time.perf_counter() - started)
    return times


def _count_datagrams(port: int, expected: int) -> int:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    sock.bind(("0.0.0.0", port))
    sock.settimeout(3)
    got = 0
    while got < expected:
        try:
            data, peer = sock.recvfrom(64)
        except TimeoutError:
            break
        if data == b"ready?":  # the sender's handshake, not counted
            sock.sendto(b"ready", peer)
            continue
        got += 1
    return got


def _send_paced(name: str, port: int, count: int) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    address = (socket.gethostbyname(name), port)
    sock.settimeout(0.05)
    while True:  # until the counter is bound (a fixed sleep lost 87% in a slow VM run)
        sock.sendto(b"ready?", address)
        try:
            if sock.recvfrom(64)[0] == b"ready":
                break
        except TimeoutError:
            continue
    for i in range(count):
        sock.sendto(b"%d" % i, address)
        if i % 50 == 49:
            time.sleep(0.005)
