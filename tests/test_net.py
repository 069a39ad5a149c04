"""Networks for flaky-network tests: modes, forwarding, link faults, topologies.

Real traffic on real namespaces, only on loopback and between the namespaces these tests
create. 192.0.2.1 (TEST-NET-1) is used only as a destination that must be unreachable:
an isolated box has no route, so no packet can leave it.
"""

from __future__ import annotations

import contextlib
import errno
import inspect
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from pytest_nsbox import Box, BoxUnavailable, OptionError
from pytest_nsbox.box import namespaces as ns
from pytest_nsbox.box import options
from pytest_nsbox.resources.net import netem as net
from pytest_nsbox.resources.net import relay
from pytest_nsbox.resources.net.topology import Network

UNREACHABLE = "192.0.2.1"  # TEST-NET-1: only ever a destination that must fail at once


def needs(condition: bool, reason: str) -> None:
    if not condition:
        pytest.skip(reason)


def _wired(name: str) -> bool:
    """True once the lead wired `name` into the box's init (init.py)."""
    from pytest_nsbox.box import init

    return name in inspect.getsource(init)


def _has_netem() -> bool:
    def probe() -> bool:
        try:
            net.apply_netem({"delay": "1ms"})
        except net.QdiscUnavailable:
            return False
        return True

    return bool(in_netns(probe))


def in_netns(fn: Callable[..., Any], *args: Any, setup: Callable[[], None] | None = None) -> Any:
    """Run `fn` in a forked child in fresh user + net namespaces with lo up (the box's net)."""
    import cloudpickle

    read_fd, write_fd = os.pipe()
    uid, gid = os.geteuid(), os.getegid()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.close(read_fd)
            ns.unshare(ns.CLONE_NEWUSER | ns.CLONE_NEWNET)
            ns.write_id_maps(uid, uid, gid, gid)
            ns.bring_loopback_up()
            try:
                if setup is not None:
                    setup()
                result: tuple[str, Any] = ("ok", fn(*args))
            except BaseException as exc:
                result = ("raise", exc)
            data = cloudpickle.dumps(result)
            while data:
                data = data[os.write(write_fd, data):]
        finally:
            os._exit(0)
    os.close(write_fd)
    chunks = []
    while chunk := os.read(read_fd, 1 << 20):
        chunks.append(chunk)
    os.close(read_fd)
    os.waitpid(pid, 0)
    import pickle

    kind, value = pickle.loads(b"".join(chunks))
    if kind == "raise":
        raise value
    return value


def measure_tcp_rate(nbytes: int, host: str = "127.0.0.1") -> float:
    """Bits per second of one TCP transfer of `nbytes` over `host`, timed at the receiver."""
    server = socket.create_server((host, 0))
    port = server.getsockname()[1]
    result: dict[str, float] = {}

    def receive() -> None:
        conn, _ = server.accept()
        got, first = 0, 0.0
        while data := conn.recv(1 << 20):
            if not got:
                first = time.perf_counter()
            got += len(data)
        result["rate"] = got * 8 / (time.perf_counter() - first)
        conn.close()

    thread = threading.Thread(target=receive)
    thread.start()
    with socket.create_connection((host, port)) as client:
        client.sendall(b"\0" * nbytes)
    thread.join()
    server.close()
    return result["rate"]


# -- units ------------------------------------------------------------------------------


def test_units_follow_tc() -> None:
    assert net.parse_rate("8mbit") == 1_000_000
    assert net.parse_rate("1mbps") == 1_000_000  # tc: bps means bytes per second
    assert net.parse_rate("500kbit") == 62_500
    assert net.parse_time("1.5ms") == 1500
    assert net.parse_time("2s") == 2_000_000
    assert net.parse_percent("0.5%") == 0.5


def test_rate_alone_plans_tbf_and_faults_plan_netem() -> None:
    (tbf,) = net.plan_qdiscs({"rate": "8mbit"}, mtu=65536)
    assert tbf.kind == "tbf" and tbf.kwargs["burst"] > 65536  # holds one lo packet
    netem, child = net.plan_qdiscs({"delay": "50ms", "jitter": "5ms", "loss": "1%",
                                    "rate": "1mbit"})
    assert netem.kind == "netem" and netem.parent is None
    assert netem.kwargs["delay"] == 50_000 and netem.kwargs["loss"] == 1.0
    assert child.kind == "tbf" and child.parent == 0x10001 and child.kwargs["rate"] == 125_000


def test_net_options_that_mean_nothing_are_refused() -> None:
    from pytest_nsbox.box.options import parse_options

    for values in ({"net": "host", "netem": {"rate": "1mbit"}},
                   {"net": "none", "netem": {"delay": "5ms"}},
                   {"netem": {"reorder": "5%"}}):
        with pytest.raises(OptionError):
            options.check_net_options(parse_options(values))
    options.check_net_options(parse_options({"netem": {"delay": "5ms", "reorder": "5%"}}))


@pytest.mark.parametrize("value", [
    {5432: "127.0.0.1:5432"}, {"5432": 5432}, {80: ("localhost", 8080)}, {1: "[::1]:22"},
])
def test_forward_accepts(value: dict[Any, Any]) -> None:
    parsed = options.parse_forward(value)
    assert parsed is not None and all(isinstance(p, int) for p in parsed)


@pytest.mark.parametrize("value", [
    {}, [5432], {0: "127.0.0.1:5432"}, {5432: "127.0.0.1"}, {5432: "::1:5432"},
    {5432: "host:99999"}, {True: 5432}, {"x": "a:1"}, "5432",
])
def test_forward_refuses_and_names_what_is_accepted(value: Any) -> None:
    with pytest.raises(OptionError) as info:
        options.parse_forward(value)
    assert "forward" in str(info.value) and "box_port" in str(info.value)


# -- modes --------------------------------------------------------------------------------


def test_isolated_box_has_loopback_and_no_route_out() -> None:
    def probe() -> tuple[int, float, bytes]:
        with socket.create_server(("127.0.0.1", 0)) as server, \
                socket.create_connection(server.getsockname()) as client:
            conn, _ = server.accept()
            client.sendall(b"ping")
            echoed = conn.recv(4)
            conn.close()
        sock = socket.socket()
        sock.settimeout(5)
        started = time.perf_counter()
        try:
            sock.connect((UNREACHABLE, 80))
        except OSError as exc:
            return exc.errno or 0, time.perf_counter() - started, echoed
        finally:
            sock.close()
        return 0, time.perf_counter() - started, echoed

    code, seconds, echoed = Box(net="isolated").run(probe)
    assert echoed == b"ping"
    assert code == errno.ENETUNREACH, os.strerror(code)
    assert seconds < 0.1  # refused at once: no route, so no packet left the box


def test_none_box_has_not_even_loopback() -> None:
    def probe() -> tuple[list[str], int]:
        names = [name for _, name in socket.if_nameindex()]
        try:
            socket.create_connection(("127.0.0.1", 9), timeout=2).close()
        except OSError as exc:
            return names, exc.errno or 0
        return names, 0

    names, code = Box(net="none").run(probe)
    assert names == ["lo"]
    assert code == errno.ENETUNREACH, os.strerror(code)


PORT_CLASH = """
    import socket, time

    def hold(port):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))   # no SO_REUSEADDR: a second bind would fail
            sock.listen()
            time.sleep(1.5)                  # both tests hold the port at the same time

    def test_one():
        hold(5432)

    def test_two():
        hold(5432)
"""


def test_same_port_in_two_boxes_under_xdist(run_inner: Any, pytester: pytest.Pytester) -> None:
    needs(_module_available("xdist"), "lacks: pytest-xdist")
    pytester.makepyfile(test_clash=PORT_CLASH)
    boxed = run_inner("-n", "2", "--nsbox")
    boxed.assert_outcomes(passed=2)
    unboxed = run_inner("-n", "2")  # the control: without boxes the two tests clash
    unboxed.assert_outcomes(passed=1, failed=1)
    assert "Address already in use" in unboxed.stdout.str()


def _module_available(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


# -- link faults on a box's loopback --------------------------------------------------------


def test_rate_limit_is_measured_on_loopback() -> None:
    asked = 8_000_000
    rate = in_netns(measure_tcp_rate, 2 << 20, setup=lambda: net.apply_netem({"rate": "8mbit"}))
    assert 0.8 * asked <= rate <= 1.2 * asked, f"{rate / 1e6:.2f} Mbit/s for 8 Mbit/s asked"


def test_missing_netem_names_the_qdisc_and_the_fix() -> None:
    needs(not _has_netem(), "lacks: a kernel without sch_netem (this one has it)")

    def apply() -> str:
        try:
            net.apply_netem({"delay": "10ms"})
        except net.QdiscUnavailable as exc:
            assert isinstance(exc, ns.SetupFailed)
            return str(exc)
        return ""

    message = in_netns(apply)
    assert "no sch_netem" in message and "modprobe sch_netem" in message


def test_box_applies_rate_from_its_options() -> None:
    needs(_wired("apply_netem"), "netem.apply_netem is not wired into box/init.py yet")
    rate = Box(netem={"rate": "8mbit"}).run(measure_tcp_rate, 2 << 20)
    assert 0.8 * 8e6 <= rate <= 1.2 * 8e6


def test_box_without_netem_says_which_qdisc_is_missing() -> None:
    needs(_wired("apply_netem"), "netem.apply_netem is not wired into box/init.py yet")
    needs(not _has_netem(), "lacks: a kernel without sch_netem")
    with pytest.raises(BoxUnavailable, match="sch_netem"):
        Box(netem={"delay": "10ms"}).run(lambda: None)


# -- forwarding --------------------------------------------------------------------------------


@contextlib.contextmanager
def upper_echo_server() -> Any:
    """A host service on 127.0.0.1 (the host's loopback): answers in upper case."""
    server = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                return
            threading.Thread(target=_echo, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        stop.set()
        server.close()
        thread.join(5)


def _echo(conn: socket.socket) -> None:
    with conn:
        while data := conn.recv(1 << 16):
            conn.sendall(data.upper())


def _talk(port: int, payload: bytes, host: str = "127.0.0.1") -> bytes:
    with socket.create_connection((host, port), timeout=10) as conn:
        conn.sendall(payload)
        conn.shutdown(socket.SHUT_WR)
        chunks = []
        while data := conn.recv(1 << 16):
            chunks.append(data)
    return b"".join(chunks)


def _open_fds() -> set[str]:
    fds = set()
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            fds.add(f"{fd}:{os.readlink(f'/proc/self/fd/{fd}')}")
    return fds


def test_forward_relays_a_host_service_into_the_box() -> None:
    payload = os.urandom(1 << 20)
    with upper_echo_server() as port:
        forward = options.parse_forward({5432: port, 6000: "127.0.0.1:1"})  # 1: nobody listens
        assert forward is not None
        fds_before, threads_before = _open_fds(), threading.active_count()
        parent_end, box_end = socket.socketpair()
        handle = relay.Relay(forward)

        def inside() -> tuple[bool, bytes, bytes, str]:
            big = _talk(5432, payload)
            hello = _talk(5432, b"hello", host="localhost")
            try:
                refused = _talk(6000, b"x").decode()
            except OSError as exc:
                refused = type(exc).__name__
            return big == payload.upper(), hello, b"", refused

        def setup() -> None:
            parent_end.close()
            relay.make_listeners(forward, box_end)

        handle.start(parent_end)  # it waits for the box's listeners in its own thread
        try:
            ok, hello, _, refused = in_netns(inside, setup=setup)
        finally:
            box_end.close()
            handle.stop()
        assert ok and hello == b"HELLO"
        assert refused in ("", "ConnectionResetError")  # reset, as a refused service would
        assert handle.connections == 3 and any("Connection refused" in e for e in handle.errors)
        assert _open_fds() == fds_before and threading.active_count() == threads_before


def test_box_forward_option() -> None:
    needs(_wired("make_listeners"), "relay is not wired into the box yet")
    with upper_echo_server() as port:
        assert Box(forward={5432: port}).run(_talk, 5432, b"db") == b"DB"


# -- topologies --------------------------------------------------------------------------------


def _info() -> dict[str, Any]:
    return {"hostname": socket.gethostname(), "b": socket.gethostbyname("b"),
            "interfaces": sorted(name for _, name in socket.if_nameindex())}


def _serve_once(port: int) -> str:
    with socket.create_server(("0.0.0.0", port)) as server:
        conn, (peer, _) = server.accept()
        with conn:
            conn.sendall(f"hello {peer}".encode())
    return peer


def _fetch(name: str, port: int, timeout: float = 3.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((name, port), timeout=timeout) as conn:
                return conn.recv(100).decode()
        except ConnectionRefusedError:  # the server is not listening yet
            if time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def _reaches(name: str, port: int, timeout: float) -> bool:
    try:
        _fetch(name, port, timeout)
    except OSError:
        return False
    return True


def _namespaces_alive() -> set[int]:
    """Inodes of the net and user namespaces any process we can see is in or holds open."""
    alive = set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        for kind in ("net", "user"):
            with contextlib.suppress(OSError):
                alive.add(os.stat(f"/proc/{pid}/ns/{kind}").st_ino)
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    link = os.readlink(f"/proc/{pid}/fd/{fd}")
                    if link.startswith(("net:[", "user:[")):
                        alive.add(int(link.split("[")[1].rstrip("]")))
    return alive


def test_three_hosts_talk_by_name(nsbox_network: Any) -> None:
    started = time.perf_counter()
    network = nsbox_network("a", "b", "c")
    elapsed = time.perf_counter() - started
    print(f"3-host topology built in {elapsed * 1000:.0f} ms")  # a figure, not an assertion
    info = network.host("a").run(_info)
    assert info == {"hostname": "a", "b": network.address("b"), "interfaces": ["eth0", "lo"]}
    server = network.host("b").spawn(_serve_once, 8000)
    assert network.host("c").run(_fetch, "b", 8000) == f"hello {network.address('c')}"
    assert server.result(5) == network.address("c")


def test_partition_and_heal(nsbox_network: Any) -> None:
    network = nsbox_network("a", "b", "c")
    server = network.host("b").spawn(_serve_once, 8000)
    network.partition(["a"], ["b", "c"])
    assert not network.host("a").run(_reaches, "b", 8000, 0.5)  # silently dropped: a timeout
    network.heal()
    assert network.host("a").run(_fetch, "b", 8000) == f"hello {network.address('a')}"
    server.result(5)


def test_pulled_cable_and_plugged_back(nsbox_network: Any) -> None:
    network = nsbox_network("a", "b")
    server = network.host("b").spawn(_serve_once, 8000)
    network.link("b").down()
    assert not network.host("a").run(_reaches, "b", 8000, 0.5)
    network.link("b").up()
    assert network.host("a").run(_fetch, "b", 8000, 5.0).startswith("hello")
    server.result(5)


def test_link_rate_is_measured_between_hosts(nsbox_network: Any) -> None:
    network = nsbox_network("a", "b", faults={"a": {"rate": "8mbit"}})
    network.host("b").spawn(_sink, 9000)
    rate = network.host("a").run(_rate_to, "b")
    assert 0.8 * 8e6 <= rate <= 1.2 * 8e6, f"{rate / 1e6:.2f} Mbit/s for 8 Mbit/s asked"
    network.link("a").faults(None)
    assert network.host("a").run(_rate_to, "b") > 5 * 8e6  # cleared


def _rate_to(name: str, nbytes: int = 1 << 20) -> float:
    """Bits per second from here to the sink on `name`:9000, until the sink has it all."""
    deadline = time.monotonic() + 10
    while True:  # the sink was just spawned: it may not listen yet
        try:
            conn = socket.create_connection((name, 9000), timeout=10)
            break
        except ConnectionRefusedError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.01)
    with conn:
        started = time.perf_counter()
        conn.sendall(b"\0" * nbytes)
        conn.shutdown(socket.SHUT_WR)
        conn.recv(1)  # the sink answers once it has read everything
        return nbytes * 8 / (time.perf_counter() - started)


def _sink(port: int) -> None:
    with socket.create_server(("0.0.0.0", port)) as server:
        while True:
            conn, _ = server.accept()
            with conn:
                while conn.recv(1 << 20):
                    pass
                conn.sendall(b"k")


def test_netem_on_a_link_needs_sch_netem(nsbox_network: Any) -> None:
    needs(not _has_netem(), "lacks: a kernel without sch_netem")
    network = nsbox_network("a", "b")
    with pytest.raises(BoxUnavailable, match="no sch_netem"):
        network.link("a").faults(delay="10ms")


def test_everything_is_gone_after_close() -> None:
    interfaces_before = socket.if_nameindex()
    fds_before = _open_fds()
    with Network(["a", "b", "c"], faults={"a": {"rate": "1mbit"}}) as network:
        ids = network.namespace_ids()
        assert len(ids) == 5  # user + switch + 3 hosts
        network.host("a").spawn(time.sleep, 60)  # still running at the end
        network.host("b").popen(["sleep", "60"])
        assert ids <= _namespaces_alive()
    deadline = time.monotonic() + 5
    while ids & _namespaces_alive() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not ids & _namespaces_alive()
    assert socket.if_nameindex() == interfaces_before  # nothing was ever made out here
    assert _open_fds() == fds_before
    assert _children() == []


def _children() -> list[str]:
    """pytest's children, but for its box maker (one a session, not a box's)."""
    from pytest_nsbox.box import spawn

    maker = spawn._maker
    found = []
    for tid in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{tid}/children") as file:
            found += file.read().split()
    return [pid for pid in found if maker is None or int(pid) != maker.process.pid]


CLEANUP_SUITE = """
    import os, time
    import pytest

    def record(network):
        ids = " ".join(str(i) for i in network.namespace_ids())
        with open(os.environ["NSBOX_IDS"], "a") as out:
            out.write(ids + "\\n")

    def test_fails(nsbox_network):
        network = nsbox_network("a", "b")
        record(network)
        network.host("a").spawn(time.sleep, 60)
        assert False, "on purpose"

    @pytest.mark.nsbox(timeout=3)
    def test_times_out_in_a_box(nsbox_network):
        network = nsbox_network("a", "b")
        record(network)
        network.host("b").spawn(time.sleep, 60)
        time.sleep(60)
"""


def test_nothing_left_when_the_test_fails_or_times_out(run_inner: Any,
                                                       pytester: pytest.Pytester) -> None:
    ids_file = pytester.path / "ids.txt"
    pytester.makepyfile(test_cleanup=CLEANUP_SUITE)
    os.environ["NSBOX_IDS"] = str(ids_file)
    try:
        result = run_inner()
    finally:
        del os.environ["NSBOX_IDS"]
    result.assert_outcomes(failed=2)
    assert "timed out" in result.stdout.str()
    lines = ids_file.read_text().splitlines()
    # two networks: user, switch and 2 hosts each (inode numbers of a freed namespace are
    # reused, so the second network may repeat the first one's)
    assert [len(line.split()) for line in lines] == [4, 4]
    ids = {int(i) for i in " ".join(lines).split()}
    deadline = time.monotonic() + 5
    while ids & _namespaces_alive() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not ids & _namespaces_alive()


@pytest.mark.nsbox(enabled=False)  # examines the host itself: unboxed under --nsbox
def test_topology_works_rootless() -> None:
    """As an unprivileged uid (no capabilities): every namespace under the hub's user ns."""
    needs(os.geteuid() == 0, "lacks: root, to drop to an unprivileged uid (already rootless)")
    import ctypes
    import encodings.idna  # noqa: F401 - socket encodes host names with it, lazily

    import pyroute2.netlink.exceptions  # noqa: F401 - imported now: nobody cannot read them later

    import pytest_nsbox.box.channel
    import pytest_nsbox.box.fixes  # noqa: F401

    def drop_and_build() -> tuple[int, str, str]:
        os.setgroups([])
        os.setresgid(65534, 65534, 65534)
        os.setresuid(65534, 65534, 65534)
        ctypes.CDLL(None).prctl(4, 1, 0, 0, 0)  # PR_SET_DUMPABLE, reset by the uid change
        with Network(["a", "b"], faults={"a": {"rate": "100mbit"}}) as network:
            server = network.host("b").spawn(_serve_once, 80)  # port 80: root in the user ns
            reply = network.host("a").run(_fetch, "b", 80)
            server.result(5)
            return os.geteuid(), reply, network.address("a")

    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover
        try:
            euid, reply, address = drop_and_build()
            os.write(write_fd, f"{euid} {reply == 'hello ' + address}".encode())
        except BaseException as exc:
            os.write(write_fd, repr(exc).encode())
        os._exit(0)
    os.close(write_fd)
    text = os.read(read_fd, 4096).decode()
    os.close(read_fd)
    os.waitpid(pid, 0)
    assert text == "65534 True"


def test_the_relay_thread_has_ended_when_stop_returns() -> None:
    """Not only joined: ended in the kernel. A thread frees its state after join() can
    return, under tracemalloc's lock when tracing; pytest forks the next box right after
    stop(), and a fork inside that window hung the box's test process on its first
    allocation (redis-py's suite, which traces from a session fixture: 2-3 boxes of 770)."""
    lingered = 0
    cpus = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(cpus)})  # the thread shares our CPU: it often waits to end
    try:
        for _ in range(50):
            lingered += _relay_thread_lingers()
    finally:
        os.sched_setaffinity(0, cpus)
    assert lingered == 0


def _relay_thread_lingers() -> bool:
    """Start and stop a relay; whether its thread's task is still there after stop()."""
    parent_end, box_end = socket.socketpair()
    handle = relay.Relay(options.parse_forward({5432: 1}) or ())
    handle.start(parent_end)
    box_end.close()
    assert handle._thread is not None
    tid = handle._thread.native_id
    handle.stop()
    return os.path.exists(f"/proc/self/task/{tid}")
