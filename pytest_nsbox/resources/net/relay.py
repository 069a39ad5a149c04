"""Forward host services into an isolated box, rootless: `forward={5432: "127.0.0.1:5432"}`.

A veth into the host's network namespace needs root; this does not. The box's init
binds each forwarded port on the box's loopback (a socket belongs to the namespace it
was made in) and passes the listening sockets to the parent over a Unix socketpair
(SCM_RIGHTS). Until the box's first connection nothing runs: the supervisor polls the
relay's one epoll fd beside the box's pipes and calls `ready()`. Then a daemon thread
accepts, connects to the host's target (a socket made here is in the host's network
namespace wherever it is used) and copies the connection's first bytes in the kernel
(`relay_box.Pump`: splice through a pipe each way). As soon as bytes went through and
none wait, it hands both sockets to the box's init over the same socketpair, and the
init copies the rest, in a process of its own: a round trip then never waits for this
process or its GIL, and the connection's set-up does not wait for a second process.
Where the box's end does not copy (`make_listeners` without `serve`, as a test may call
it, or when the hand-over cannot be sent), the thread copies to the end, until
`Relay.stop()`. The same path relays the session's own listeners (`auto_forward`,
found by `listeners`): each at its own address and port in the box, to the same port on
the host.

The box's end (`make_listeners`, run in every forwarding box's init) is `relay_box`, so
that the box maker, of which each init is a copy, imports none of this module.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import select
import socket
import threading
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ...box.options import Target, parse_forward
from .relay_box import _MAX_FDS, Pump, _reset, _where, make_listeners

if TYPE_CHECKING:
    from .listeners import AutoForward

__all__ = ["Relay", "make_listeners"]

_ESTABLISHED = b"\x01"  # TCP_INFO's first byte, tcpi_state: TCP_ESTABLISHED


class Relay:
    """Parent side: accept on the box's listeners, connect to the targets, copy the first
    bytes and hand each connection to the box's init (or copy it all, in a thread)."""

    started = 0  # relays that started their thread in this process, so tests can see none did
    hand_over = True  # False: this process copies every byte (benchmarks compare the two)

    def __init__(self, forward: Mapping[int, Any] | None,
                 auto: Sequence[AutoForward] = ()) -> None:
        self.targets: dict[int, Target] = parse_forward(forward) or {}
        self.auto = tuple(auto)  # the session's own listeners (auto_forward)
        self.connections = 0  # accepted so far, for tests and reports
        self.errors: list[str] = []  # targets that refused or failed, in words
        self.problems: list[str] = []  # auto_forward ports not relayed, and why
        self.ports: list[int] = []  # box ports whose listeners arrived
        self.handover = False  # the box's init copies: it said so with its listeners
        self.handed = 0  # connections handed to the box's init
        self._pump: Pump | None = None  # the epoll of everything below, and local flows
        self._thread: threading.Thread | None = None
        self._channel: socket.socket | None = None
        self._listeners: dict[int, tuple[socket.socket, tuple[str, int]]] = {}
        self._connecting: dict[int, tuple[socket.socket, socket.socket, tuple[str, int],
                                          str]] = {}
        self._addresses: dict[tuple[str, int], tuple[Any, ...]] = {}
        self._wake_r, self._wake_w = -1, -1
        self._stopping = False
        self._want_thread = False

    def attach(self, sock: socket.socket | int) -> None:
        """Take the parent's end of the box's socketpair; serve nothing yet.

        Most boxes never connect to what they are given (a session's server that their
        test does not use): the supervisor polls `waiting_fds()` beside the box's pipes
        and calls `ready()`, and no thread runs.
        """
        channel = sock if isinstance(sock, socket.socket) else socket.socket(fileno=sock)
        channel.setblocking(False)
        self._channel = channel
        self._pump = Pump(self._hand)
        self._pump.watch(channel.fileno())

    def waiting_fds(self) -> list[int]:
        """The fd to poll while no thread serves: the relay's epoll (the channel, the
        box's listeners, connects under way)."""
        if self._pump is None or self._thread is not None:
            return []
        return [self._pump.fileno()]

    def ready(self) -> bool:
        """Handle what arrived, without blocking; True once a thread serves (from then on,
        it serves every fd)."""
        assert self._pump is not None
        if self._thread is not None:
            return True
        for fd, events in self._pump.poll(0):
            self._handle(fd, events)
        if self._want_thread:
            self._start_thread()
            return True
        return False

    def start(self, sock: socket.socket | int) -> None:
        """Serve in a daemon thread at once; `sock` is the parent's end of the socketpair."""
        self.attach(sock)
        self._start_thread()

    def _start_thread(self) -> None:
        assert self._pump is not None
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC)
        self._pump.watch(self._wake_r)
        self._thread = threading.Thread(target=self._serve, name="nsbox-relay", daemon=True)
        self._thread.start()
        Relay.started += 1

    def stop(self) -> None:
        """Close every listener, connection and fd, and join the thread if one runs."""
        if self._pump is None:
            return
        if self._thread is None:
            if self._channel is not None and self._channel.fileno() >= 0:
                self.ready()  # the listeners' report, if it came: its problems are said
            if self._thread is None:
                self._close_all()
                return
        self._stopping = True
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")
        self._thread.join()
        _wait_gone(self._thread)
        self._thread = None

    # -- events ---------------------------------------------------------------------------

    def _serve(self) -> None:
        pump = self._pump
        assert pump is not None
        try:
            while not self._stopping:
                for fd, events in pump.poll():
                    if fd != self._wake_r:
                        self._handle(fd, events)
        finally:
            self._close_all()

    def _close_all(self) -> None:
        assert self._pump is not None
        for outer, inner, _, _ in self._connecting.values():
            outer.close()
            inner.close()
        self._connecting.clear()
        for listener, _ in self._listeners.values():
            listener.close()
        self._listeners.clear()
        if self._channel is not None:
            self._channel.close()
        self._pump.close()
        for fd in (self._wake_r, self._wake_w):
            if fd >= 0:
                os.close(fd)
        self._wake_r = self._wake_w = -1
        self._pump = None

    def _handle(self, fd: int, events: int) -> None:
        try:
            if self._channel is not None and fd == self._channel.fileno():
                self._receive(self._channel)
            elif fd in self._listeners:
                self._accept(*self._listeners[fd])
            elif fd in self._connecting:
                self._connected(fd)
        except OSError as exc:
            self.errors.append(f"relay: {exc}")

    def _receive(self, channel: socket.socket) -> None:
        """The box's listening sockets arrive (or the box ended without sending any)."""
        assert self._pump is not None
        self._pump.unwatch(channel.fileno())
        try:
            message, fds, _, _ = socket.recv_fds(channel, 1 << 16, _MAX_FDS)
        except OSError as exc:  # no listeners came
            self.errors.append(f"channel: {exc}")
            return
        sent = json.loads(message) if message else {}
        self.handover = bool(sent.get("handover")) and self.hand_over
        keys = [tuple(key) for key in sent.get("keys", ())]
        self.problems += [f"auto_forward {text}" for text in sent.get("refused", ())]
        for fd in fds:
            os.set_inheritable(fd, False)  # recvmsg hands them over inheritable
        for key, fd in zip(keys, fds, strict=False):
            listener = socket.socket(fileno=fd)
            listener.setblocking(False)
            self._listeners[fd] = (listener, key)
            self.ports.append(key[1] if key[0] == "forward" else self.auto[key[1]].port)
            self._pump.watch(fd)
        for fd in fds[len(keys):]:
            os.close(fd)

    def _accept(self, listener: socket.socket, key: tuple[str, int]) -> None:
        if self._thread is None:
            self._want_thread = True  # the thread accepts (this is the supervisor's)
            return
        try:
            inner, _ = listener.accept()  # one an event: epoll says again if more wait
        except BlockingIOError:
            return
        self.connections += 1
        self._connect(inner, key)

    def _connect(self, inner: socket.socket, key: tuple[str, int]) -> None:
        """Connect to `key`'s target for `inner`; hand the pair over once connected."""
        inner.setblocking(False)
        if key[0] == "forward":
            host, target_port = self.targets[key[1]]
            where = f"forward {key[1]} -> {_where(host, target_port)}"
        else:
            entry = self.auto[key[1]]
            host, target_port = entry.target, entry.port
            where = (f"auto_forward {_where(entry.address, entry.port)} -> the host's "
                     f"{_where(host, target_port)}")
        try:
            found = self._addresses.get((host, target_port))
            if found is None:  # once a box: a name resolves the same for one test
                found = socket.getaddrinfo(host, target_port, type=socket.SOCK_STREAM)[0]
                self._addresses[host, target_port] = found
            family, kind, proto, _, address = found
            outer = socket.socket(family, kind | socket.SOCK_NONBLOCK, proto)
        except OSError as exc:
            self._error(key, f"{where}: {exc}")
            _reset(inner)
            return
        # what arrives goes on at once, as the client sent it (the box's end has it from
        # its listener); set before the connect, after which the server wakes and wants
        # this process's GIL: the fewer calls between the connect and the epoll, the better
        outer.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        code = outer.connect_ex(address)
        if code == errno.EINPROGRESS:  # on loopback it is done already, or refused
            code = outer.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if not code and outer.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1) != \
                    _ESTABLISHED:  # still under way (another host): wait for it
                assert self._pump is not None
                self._connecting[outer.fileno()] = (outer, inner, key, where)
                self._pump.watch(outer.fileno(), select.EPOLLOUT)
                return
        self._finish(code, inner, outer, key, where)

    def _connected(self, fd: int) -> None:
        """A connect under way ended: hand the pair over, or say why not."""
        assert self._pump is not None
        outer, inner, key, where = self._connecting.pop(fd)
        self._pump.unwatch(fd)
        self._finish(outer.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR), inner, outer, key,
                     where)

    def _finish(self, code: int, inner: socket.socket, outer: socket.socket,
                key: tuple[str, int], where: str) -> None:
        """The connect to the target ended with `code`: copy, or reset the box's side."""
        if code:
            self._error(key, f"{where}: {os.strerror(code)}")
            _reset(inner)
            outer.close()
            return
        self._established(inner, outer)

    def _established(self, inner: socket.socket, outer: socket.socket) -> None:
        """Both ends connected: copy here until the first bytes went through."""
        assert self._pump is not None
        self._pump.add(inner, outer)

    def _hand(self, inner: socket.socket, outer: socket.socket, ended: int) -> bool:
        """Give a connection to the box's init (`Pump`'s `hand`); False if it cannot."""
        if not self.handover or self._channel is None:
            return False
        try:
            socket.send_fds(self._channel, [bytes([ord("0") + ended])],
                            [inner.fileno(), outer.fileno()])
        except OSError:  # the channel is full or the init is gone: copy here
            return False
        self.handed += 1
        return True

    def _error(self, key: tuple[str, int], text: str) -> None:
        """A failed connection; an automatic one is also a problem the parent warns about."""
        self.errors.append(text)
        if key[0] == "auto" and text not in self.problems:
            self.problems.append(text)


def _wait_gone(thread: threading.Thread) -> None:
    """Wait until the kernel has ended `thread`, not just until join() returns.

    A Python thread frees its thread state after join() can return and after it let go of
    the GIL; with tracemalloc tracing (a session fixture may start it), that free takes
    tracemalloc's lock. pytest forks the next box right after this: a fork inside that
    window left the lock held in the box's test process, which hung on its first
    allocation (redis-py's suite: 2-3 boxes in 770; tests/test_net.py checks the wait).
    """
    task = f"/proc/self/task/{thread.native_id}"
    deadline = time.monotonic() + 1.0
    while os.path.exists(task) and time.monotonic() < deadline:
        time.sleep(0.0001)
