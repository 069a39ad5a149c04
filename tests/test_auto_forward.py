"""auto_forward: the servers of the session reach an isolated box, nothing else of the host.

Real kernels, real boxes: the listeners are found by the NETLINK_SOCK_DIAG dump and the
fds of /proc; inner pytest sessions (subprocesses, so their boxes fork from them) start
session servers as threads of pytest and as a `python -m http.server` child, and their
boxed tests fetch from them. A stranger (a listener of a process outside pytest's tree,
detached by a double fork) must stay unreachable.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator

import pytest

from pytest_nsbox import Box
from pytest_nsbox.resources.net import listeners
from pytest_nsbox.resources.net.listeners import AutoForward, Listener, box_forwards

FREEBIND = getattr(socket, "IP_FREEBIND", 15)  # Python 3.12 names it
NOWHERE = "198.51.100.7"  # TEST-NET-2: no interface here has it, the box neither
RunInner = Callable[..., pytest.RunResult]

STRANGER = r"""
import os, socket, sys
read_end, write_end = os.pipe()
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        server = socket.create_server(("127.0.0.1", 0))
        os.write(write_end, f"{os.getpid()} {server.getsockname()[1]}".encode())
        os.close(write_end)
        while True:
            conn, _ = server.accept()
            conn.sendall(b"stranger")
            conn.close()
    os._exit(0)
os.close(write_end)
sys.stdout.write(os.read(read_end, 100).decode())
"""


@pytest.fixture
def stranger() -> Iterator[int]:
    """A listener on 127.0.0.1 of a process that is not pytest's descendant; its port."""
    out = subprocess.run([sys.executable, "-c", STRANGER], capture_output=True, text=True,
                         check=True, timeout=60).stdout
    pid, port = map(int, out.split())
    try:
        assert pid not in listeners.descendants(os.getpid())
        yield port
    finally:
        os.kill(pid, signal.SIGKILL)


def _talk(port: int, host: str = "127.0.0.1") -> bytes:
    with socket.create_connection((host, port), timeout=10) as conn:
        chunks = []
        while data := conn.recv(1 << 16):
            chunks.append(data)
    return b"".join(chunks)


# -- finding the listeners ------------------------------------------------------------------


def test_the_dump_finds_a_listener_with_the_inode_of_its_fd() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server, \
            socket.create_server(("::1", 0), family=socket.AF_INET6) as server6:
        found = listeners.listening()
        for sock, family, address in ((server, socket.AF_INET, "127.0.0.1"),
                                      (server6, socket.AF_INET6, "::1")):
            inode = os.fstat(sock.fileno()).st_ino
            port = sock.getsockname()[1]
            assert Listener(family, address, port, inode) in found


def test_only_listeners_of_pytest_and_its_children_count(stranger: int) -> None:
    child = subprocess.Popen([sys.executable, "-u", "-m", "http.server", "--bind", "127.0.0.1",
                              "0"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert child.stdout is not None
        child_port = int(child.stdout.readline().split(" port ")[1].split()[0])
        with socket.create_server(("127.0.0.1", 0)) as own:
            ports = {listener.port for listener in listeners.session_listeners()}
            assert own.getsockname()[1] in ports and child_port in ports
            assert stranger not in ports
            assert stranger in {listener.port for listener in listeners.listening()}
    finally:
        child.kill()
        child.wait()


def test_both_ways_of_finding_children_agree() -> None:
    """/proc/PID/task/TID/children, and /proc/*/stat for kernels without PROC_CHILDREN."""
    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"],
                             stdin=subprocess.PIPE)
    try:
        assert child.pid in listeners._children(os.getpid())
        assert child.pid in listeners._children_by_stat()[os.getpid()]
        assert child.pid in listeners.descendants(os.getpid())
    finally:
        child.communicate()


def test_an_unchanged_set_of_listeners_reuses_the_last_answer() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        first = listeners.session_listeners()
        assert listeners.session_listeners() is first  # the fds were not read again
        with socket.create_server(("127.0.0.1", 0)) as second:
            again = listeners.session_listeners()
            assert again is not first
            assert {server.getsockname()[1], second.getsockname()[1]} <= {
                listener.port for listener in again}


@pytest.mark.parametrize(("found", "explicit", "expected"), [
    ([Listener(2, "127.0.0.1", 80, 1)], (), [AutoForward("127.0.0.1", 80, "127.0.0.1", True)]),
    ([Listener(10, "::1", 81, 1)], (), [AutoForward("::1", 81, "::1", True)]),
    ([Listener(2, "0.0.0.0", 82, 1)], (), [AutoForward("127.0.0.1", 82, "127.0.0.1", True),
                                          AutoForward("::1", 82, "127.0.0.1", False)]),
    ([Listener(10, "::", 83, 1)], (), [AutoForward("127.0.0.1", 83, "::1", True),
                                      AutoForward("::1", 83, "::1", False)]),
    ([Listener(10, "::ffff:127.0.0.1", 84, 1)], (),
     [AutoForward("127.0.0.1", 84, "127.0.0.1", True)]),
    ([Listener(2, "0.0.0.0", 85, 1), Listener(10, "::1", 85, 2)], (),
     [AutoForward("::1", 85, "::1", True), AutoForward("127.0.0.1", 85, "127.0.0.1", True)]),
    ([Listener(2, "127.0.0.1", 86, 1), Listener(2, "127.0.0.1", 87, 2)], (86,),
     [AutoForward("127.0.0.1", 87, "127.0.0.1", True)]),
])
def test_what_the_box_listens_on(found: list[Listener], explicit: tuple[int, ...],
                                 expected: list[AutoForward]) -> None:
    assert list(box_forwards(found, explicit)) == expected


# -- boxes -----------------------------------------------------------------------------------


def test_a_box_reaches_the_session_server_and_not_a_stranger(stranger: int) -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]

        def inside() -> tuple[bytes, str]:
            with socket.create_connection(("127.0.0.1", port), timeout=10):
                pass  # the relay accepted: a host listener of this process's
            try:
                return _talk(stranger), ""
            except OSError as exc:
                return b"", type(exc).__name__

        assert Box().run(inside) == (b"", "ConnectionRefusedError")
        with pytest.raises(ConnectionRefusedError):
            Box(auto_forward=False).run(socket.create_connection, ("127.0.0.1", port), 10)


def test_proc_net_tcp_says_what_the_dump_says() -> None:
    """Where sock_diag is missing (the VM lane's kernel: no inet_diag module), the
    listeners come from /proc/net/tcp and tcp6: the same sockets, addresses and inodes.
    (Compared for this test's own sockets: the machine's other listeners come and go
    between the two reads.)"""
    servers = [socket.create_server(("127.0.0.1", 0)),
               socket.create_server(("::1", 0), family=socket.AF_INET6),
               socket.create_server(("", 0), family=socket.AF_INET6, dualstack_ipv6=True)]
    try:
        inodes = {os.fstat(s.fileno()).st_ino for s in servers}
        from_proc = {found for found in listeners._from_proc() if found.inode in inodes}
        assert {found.inode for found in from_proc} == inodes
        if not listeners._proc_only:
            assert from_proc == {found for found in listeners.listening()
                                 if found.inode in inodes}
    finally:
        for server in servers:
            server.close()


def test_a_box_reaches_the_session_server_through_proc(monkeypatch: pytest.MonkeyPatch) -> None:
    """/proc/net/tcp is read again only when pytest's tree holds other sockets: a server
    started after a box (a new socket) is seen by the next box."""
    monkeypatch.setattr(listeners, "_proc_only", True)
    assert Box().run(int) == 0  # an answer cached without this server
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        reached = Box().run(lambda: socket.create_connection(("127.0.0.1", port), 10).close())
        assert reached is None


def test_a_box_connecting_to_two_session_servers_at_once() -> None:
    """Both box listeners ready in one poll of the supervisor: the first starts the relay
    thread, which serves the second too (it was read as a pipe: OSError ENOTCONN, and the
    box was killed)."""
    with socket.create_server(("127.0.0.1", 0)) as one, \
            socket.create_server(("127.0.0.1", 0)) as two:
        ports = [one.getsockname()[1], two.getsockname()[1]]

        def both() -> int:  # connected at once, before the supervisor polls the listeners
            conns = [socket.create_connection(("127.0.0.1", port), 10) for port in ports]
            for conn in conns:
                conn.close()
            return len(conns)

        for _ in range(10):  # the box usually connects first; 10 make it certain
            assert Box().run(both) == 2


def test_a_port_the_box_cannot_listen_on_is_a_warning_not_a_failure() -> None:
    with socket.socket() as server:
        server.setsockopt(socket.IPPROTO_IP, FREEBIND, 1)  # an address no interface has
        server.bind((NOWHERE, 0))
        server.listen()
        port = server.getsockname()[1]
        with pytest.warns(Warning, match=rf"auto_forward {NOWHERE}:{port}: not relayed, the "
                          r"box could not listen there: .*\(EADDRNOTAVAIL\)") as caught:
            assert Box().run(lambda: "ran") == "ran"
        assert {type(w.message).__name__ for w in caught} == {"ForwardWarning"}


SERVERS = """
    import http.server
    import socket
    import subprocess
    import sys
    import threading

    import pytest


    class Named(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = self.server.name.encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass


    def serve(address, name):
        class Server(http.server.ThreadingHTTPServer):
            address_family = socket.AF_INET6 if ":" in address else socket.AF_INET

        server = Server((address, 0), Named)
        server.name = name
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return server


    @pytest.fixture(scope="session")
    def servers():
        made = {name: serve(address, name) for name, address in (
            ("v4", "127.0.0.1"), ("v6", "::1"), ("any", "0.0.0.0"), ("any6", "::"))}
        yield {name: server.server_address[1] for name, server in made.items()}
        for server in made.values():
            server.shutdown()
            server.server_close()


    @pytest.fixture(scope="session")
    def http_server_process(tmp_path_factory):
        root = tmp_path_factory.mktemp("www")
        (root / "hello.txt").write_text("from a subprocess")
        child = subprocess.Popen([sys.executable, "-u", "-m", "http.server", "--bind",
                                  "127.0.0.1", "--directory", str(root), "0"],
                                 stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        line = child.stdout.readline()  # printed once it listens
        yield int(line.split(" port ")[1].split()[0])
        child.kill()
        child.wait()
"""

FETCHES = """
    import urllib.request

    from pytest_nsbox import current_box


    def fetch(host, port, path="/"):
        assert current_box() is not None  # really in a box
        where = f"[{host}]" if ":" in host else host
        with urllib.request.urlopen(f"http://{where}:{port}{path}", timeout=10) as response:
            return response.read().decode()


    def test_loopback(servers):
        assert fetch("127.0.0.1", servers["v4"]) == "v4"


    def test_ipv6_loopback(servers):
        assert fetch("::1", servers["v6"]) == "v6"


    def test_any_address(servers):
        assert fetch("127.0.0.1", servers["any"]) == "any"
        assert fetch("::1", servers["any"]) == "any"


    def test_any_ipv6_address(servers):
        assert fetch("127.0.0.1", servers["any6"]) == "any6"
        assert fetch("::1", servers["any6"]) == "any6"


    def test_subprocess_server(http_server_process):
        assert fetch("127.0.0.1", http_server_process, "/hello.txt") == "from a subprocess"
"""


def test_session_servers_reach_boxed_tests(pytester: pytest.Pytester, run_inner: RunInner) -> None:
    pytester.makeconftest(textwrap.dedent(SERVERS))
    pytester.makepyfile(test_fetch=textwrap.dedent(FETCHES))
    run_inner("--nsbox").assert_outcomes(passed=5, warnings=0)


def test_auto_forward_false_leaves_the_box_isolated(pytester: pytest.Pytester,
                                                    run_inner: RunInner) -> None:
    pytester.makeconftest(textwrap.dedent(SERVERS))
    pytester.makepyfile(test_fetch=textwrap.dedent(FETCHES))
    result = run_inner("--nsbox", "-o", "nsbox_auto_forward=false")
    result.assert_outcomes(failed=5)
    assert result.stdout.str().count("Connection refused") >= 5


def test_explicit_forward_works_and_wins_on_a_clash(pytester: pytest.Pytester, run_inner: RunInner,
                                                    stranger: int,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STRANGER_PORT", str(stranger))
    pytester.makepyfile(test_clash="""
        import os
        import socket
        import threading

        import pytest

        STRANGER = int(os.environ["STRANGER_PORT"])
        SESSION = socket.create_server(("127.0.0.1", 0))  # pytest listens on it
        PORT = SESSION.getsockname()[1]


        def answer():
            while True:
                conn, _ = SESSION.accept()
                conn.sendall(b"session")
                conn.close()


        threading.Thread(target=answer, daemon=True).start()


        def talk(port):
            with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
                return conn.recv(100)


        def test_auto():
            assert talk(PORT) == b"session"
            with pytest.raises(ConnectionRefusedError):
                talk(STRANGER)


        @pytest.mark.nsbox(forward={PORT: f"127.0.0.1:{STRANGER}"})
        def test_explicit_wins():
            assert talk(PORT) == b"stranger"


        @pytest.mark.nsbox(forward={STRANGER: STRANGER})
        def test_explicit_reaches_what_auto_does_not():
            assert talk(STRANGER) == b"stranger"
            assert talk(PORT) == b"session"
    """)
    run_inner("--nsbox").assert_outcomes(passed=3, warnings=0)


COUNT_RELAYS = """
    import os

    from pytest_nsbox.resources.net.relay import Relay


    def pytest_sessionfinish(session):
        with open(os.path.join(str(session.config.rootpath), "relays.txt"), "w") as file:
            file.write(str(Relay.started))
"""


@pytest.mark.parametrize("server", [False, True])
def test_no_relay_thread_unless_a_box_connects(pytester: pytest.Pytester, run_inner: RunInner,
                                           server: bool) -> None:
    pytester.makeconftest(textwrap.dedent(COUNT_RELAYS))
    pytester.makepyfile(test_plain=f"""
        import socket

        SERVER = socket.create_server(("127.0.0.1", 0)) if {server} else None


        def test_one():
            pass


        def test_two():
            if SERVER is not None:  # the only box that connects: the only relay thread
                socket.create_connection(SERVER.getsockname()).close()
    """)
    run_inner("--nsbox").assert_outcomes(passed=2)
    assert (pytester.path / "relays.txt").read_text() == ("1" if server else "0")


def test_an_unrelayable_port_is_named_in_the_test_report(pytester: pytest.Pytester,
                                                         run_inner: RunInner) -> None:
    pytester.makepyfile(test_nowhere=f"""
        import socket

        import pytest


        @pytest.fixture(scope="session")
        def server():
            with socket.socket() as sock:
                sock.setsockopt(socket.IPPROTO_IP, {FREEBIND}, 1)
                sock.bind(("{NOWHERE}", 0))
                sock.listen()
                yield sock.getsockname()[1]


        def test_runs(server):
            pass
    """)
    result = run_inner("--nsbox")
    result.assert_outcomes(passed=1, warnings=1)
    result.stdout.fnmatch_lines([
        "*test_nowhere.py::test_runs",
        f"*ForwardWarning: nsbox: auto_forward {NOWHERE}:*: not relayed, the box could not "
        "listen there: *(EADDRNOTAVAIL)",
    ])
    strict = run_inner("--nsbox", "-W", "error::pytest_nsbox.box.errors.ForwardWarning")
    strict.assert_outcomes(passed=1)  # warnings as errors still fail no box
