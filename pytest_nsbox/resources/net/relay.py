"""Forward host services into an isolated box, rootless: `forward={5432: "127.0.0.1:5432"}`.

A veth into the host's network namespace needs root; this does not. The box's init
binds each forwarded port on the box's loopback (a socket belongs to the namespace it
was made in) and passes the listening sockets to the parent over a Unix socketpair
(SCM_RIGHTS). The parent accepts on them, connects to the host target and copies bytes
both ways, in one daemon thread driven by a selector, until `Relay.stop()`. The same
path relays the session's own listeners (`auto_forward`, found by `listeners`): each
at its own address and port in the box, to the same port on the host.

The box's end (`make_listeners`, run in every forwarding box's init) is `relay_box`, so
that the box maker, of which each init is a copy, imports none of this module.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import selectors
import socket
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ...box.options import Target, parse_forward
from .relay_box import _MAX_FDS, _where, make_listeners

if TYPE_CHECKING:
    from .listeners import AutoForward

__all__ = ["Relay", "make_listeners"]

_CHUNK = 1 << 16
_HIGH_WATER = 1 << 20  # stop reading a side while this much waits for the other


@dataclass(eq=False)
class _Flow:
    """One forwarded connection: the box's side, the host's side, a buffer each way."""

    inner: socket.socket
    outer: socket.socket
    target: str
    connecting: bool = True
    to_outer: bytearray = field(default_factory=bytearray)
    to_inner: bytearray = field(default_factory=bytearray)
    inner_eof: bool = False
    outer_eof: bool = False
    outer_shut: bool = False
    inner_shut: bool = False
    auto: bool = False  # relays an auto_forward listener


class Relay:
    """Parent side: accept on the box's listeners, connect to the targets, copy both ways."""

    started = 0  # relays started in this process, so tests can see none was

    def __init__(self, forward: Mapping[int, Any] | None,
                 auto: Sequence[AutoForward] = ()) -> None:
        self.targets: dict[int, Target] = parse_forward(forward) or {}
        self.auto = tuple(auto)  # the session's own listeners (auto_forward)
        self.connections = 0  # accepted so far, for tests and reports
        self.errors: list[str] = []  # targets that refused or failed, in words
        self.problems: list[str] = []  # auto_forward ports not relayed, and why
        self.ports: list[int] = []  # box ports whose listeners arrived
        self._selector: selectors.BaseSelector | None = None
        self._thread: threading.Thread | None = None
        self._owned: list[socket.socket] = []  # channel and listeners, closed at the end
        self._flows: set[_Flow] = set()
        self._wake_r, self._wake_w = -1, -1
        self._stopping = False

    def attach(self, sock: socket.socket | int) -> None:
        """Take the parent's end of the box's socketpair; serve nothing yet.

        Most boxes never connect to what they are given (a session's server that their
        test does not use): until one does, the supervisor polls `waiting_fds()` beside
        the box's pipes and calls `ready()`, and no thread runs.
        """
        channel = sock if isinstance(sock, socket.socket) else socket.socket(fileno=sock)
        channel.setblocking(False)
        self._owned.append(channel)
        self._wake_r, self._wake_w = os.pipe()
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._wake_r, selectors.EVENT_READ, ("wake", None))
        self._selector.register(channel, selectors.EVENT_READ, ("channel", None))

    def waiting_fds(self) -> list[int]:
        """The fds to watch until the relay serves: the channel, then the box's listeners."""
        if self._selector is None or self._thread is not None:
            return []
        return [key.fd for key in self._selector.get_map().values() if key.fd != self._wake_r]

    def ready(self) -> bool:
        """Handle what arrived, without blocking; True once a connection started the thread
        (which serves every fd from then on)."""
        assert self._selector is not None
        if self._thread is not None:
            return True
        for key, _ in self._selector.select(0):
            kind = key.data[0]
            if kind == "channel":
                try:
                    self._receive(key.fileobj)  # type: ignore[arg-type]
                except OSError as exc:  # no listeners came: stop watching the channel
                    self.errors.append(f"channel: {exc}")
                    with contextlib.suppress(KeyError, ValueError):
                        self._selector.unregister(key.fileobj)
            elif kind == "listener":
                self._start_thread()
                return True
        return False

    def start(self, sock: socket.socket | int) -> None:
        """Serve in a daemon thread at once; `sock` is the parent's end of the socketpair."""
        self.attach(sock)
        self._start_thread()

    def _start_thread(self) -> None:
        self._thread = threading.Thread(target=self._serve, name="nsbox-relay", daemon=True)
        self._thread.start()
        Relay.started += 1

    def stop(self) -> None:
        """Close every listener, connection and fd, and join the thread."""
        if self._selector is None:
            return
        if self._thread is None:
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
        os.close(self._wake_w)
        self._selector = None

    # -- the relay thread ---------------------------------------------------------------

    def _serve(self) -> None:
        selector = self._selector
        assert selector is not None
        try:
            while not self._stopping:
                for key, events in selector.select():
                    kind, data = key.data
                    try:
                        self._handle(kind, data, key.fileobj, events)
                    except OSError as exc:
                        if isinstance(data, _Flow):
                            self._close_flow(data)
                        else:
                            self.errors.append(f"{kind}: {exc}")
        finally:
            self._close_all(wake_w=False)

    def _close_all(self, wake_w: bool = True) -> None:
        assert self._selector is not None
        for flow in list(self._flows):
            self._close_flow(flow)
        for sock in self._owned:
            sock.close()
        self._selector.close()
        os.close(self._wake_r)
        if wake_w:
            os.close(self._wake_w)
            self._selector = None

    def _handle(self, kind: str, data: Any, fileobj: Any, events: int) -> None:
        if kind == "channel":
            self._receive(fileobj)
        elif kind == "listener":
            self._accept(fileobj, data)
        elif kind in ("inner", "outer"):
            self._pump(data, kind, events)

    def _receive(self, channel: socket.socket) -> None:
        """The box's listening sockets arrive (or the box ended without sending any)."""
        assert self._selector is not None
        message, fds, _, _ = socket.recv_fds(channel, 1 << 16, _MAX_FDS)
        self._selector.unregister(channel)
        sent = json.loads(message) if message else {}
        keys = [tuple(key) for key in sent.get("keys", ())]
        self.problems += [f"auto_forward {text}" for text in sent.get("refused", ())]
        for fd in fds:
            os.set_inheritable(fd, False)  # recvmsg hands them over inheritable
        for key, fd in zip(keys, fds, strict=False):
            listener = socket.socket(fileno=fd)
            listener.setblocking(False)
            self._owned.append(listener)
            self.ports.append(key[1] if key[0] == "forward" else self.auto[key[1]].port)
            self._selector.register(listener, selectors.EVENT_READ, ("listener", key))
        for fd in fds[len(keys):]:
            os.close(fd)

    def _accept(self, listener: socket.socket, key: tuple[str, int]) -> None:
        try:
            inner, _ = listener.accept()
        except BlockingIOError:
            return
        inner.setblocking(False)
        self.connections += 1
        if key[0] == "forward":
            host, target_port = self.targets[key[1]]
            where = f"forward {key[1]} -> {_where(host, target_port)}"
        else:
            entry = self.auto[key[1]]
            host, target_port = entry.target, entry.port
            where = (f"auto_forward {_where(entry.address, entry.port)} -> the host's "
                     f"{_where(host, target_port)}")
        try:
            family, kind, proto, _, address = socket.getaddrinfo(
                host, target_port, type=socket.SOCK_STREAM)[0]
            outer = socket.socket(family, kind, proto)
        except OSError as exc:
            self._error(key, f"{where}: {exc}")
            _reset(inner)
            return
        outer.setblocking(False)
        code = outer.connect_ex(address)
        if code not in (0, errno.EINPROGRESS):
            self._error(key, f"{where}: {os.strerror(code)}")
            _reset(inner)
            outer.close()
            return
        flow = _Flow(inner, outer, where, connecting=code != 0, auto=key[0] == "auto")
        self._flows.add(flow)
        self._interest(flow)

    def _error(self, key: tuple[str, int], text: str) -> None:
        """A failed connection; an automatic one is also a problem the parent warns about."""
        self.errors.append(text)
        if key[0] == "auto" and text not in self.problems:
            self.problems.append(text)

    def _pump(self, flow: _Flow, side: str, events: int) -> None:
        if side == "outer" and flow.connecting:
            code = flow.outer.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if code:
                self._error(("auto" if flow.auto else "forward", 0),
                            f"{flow.target}: {os.strerror(code)}")
                self._close_flow(flow, reset=True)
                return
            flow.connecting = False
        sock = flow.inner if side == "inner" else flow.outer
        inbox = flow.to_outer if side == "inner" else flow.to_inner
        outbox = flow.to_inner if side == "inner" else flow.to_outer
        if events & selectors.EVENT_READ:
            with contextlib.suppress(BlockingIOError):
                data = sock.recv(_CHUNK)
                if data:
                    inbox += data
                elif side == "inner":
                    flow.inner_eof = True
                else:
                    flow.outer_eof = True
        if events & selectors.EVENT_WRITE and outbox and not flow.connecting:
            with contextlib.suppress(BlockingIOError):
                del outbox[:sock.send(outbox)]
        self._half_close(flow)
        if flow.inner_shut and flow.outer_shut:
            self._close_flow(flow)
        else:
            self._interest(flow)

    def _half_close(self, flow: _Flow) -> None:
        """Pass an EOF on once everything before it went through."""
        if flow.inner_eof and not flow.to_outer and not flow.outer_shut and not flow.connecting:
            flow.outer_shut = True
            flow.outer.shutdown(socket.SHUT_WR)
        if flow.outer_eof and not flow.to_inner and not flow.inner_shut:
            flow.inner_shut = True
            flow.inner.shutdown(socket.SHUT_WR)

    def _interest(self, flow: _Flow) -> None:
        """Watch each side for what it can do now: read while there is room, write backlog."""
        for sock, side, eof, inbox, outbox in (
            (flow.inner, "inner", flow.inner_eof, flow.to_outer, flow.to_inner),
            (flow.outer, "outer", flow.outer_eof, flow.to_inner, flow.to_outer),
        ):
            events = 0
            if side == "outer" and flow.connecting:
                events = selectors.EVENT_WRITE
            else:
                if not eof and len(inbox) < _HIGH_WATER:
                    events |= selectors.EVENT_READ
                if outbox:
                    events |= selectors.EVENT_WRITE
            self._watch(sock, events, (side, flow))

    def _watch(self, sock: socket.socket, events: int, data: Any) -> None:
        assert self._selector is not None
        try:
            key = self._selector.get_key(sock)
        except KeyError:
            if events:
                self._selector.register(sock, events, data)
            return
        if not events:
            self._selector.unregister(sock)
        elif key.events != events:
            self._selector.modify(sock, events, data)

    def _close_flow(self, flow: _Flow, reset: bool = False) -> None:
        assert self._selector is not None
        self._flows.discard(flow)
        for sock in (flow.inner, flow.outer):
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(sock)
        if reset:
            _reset(flow.inner)
        flow.inner.close()
        flow.outer.close()


def _reset(sock: socket.socket) -> None:
    """Close with RST, so the box's client sees ECONNRESET as it would a refused service."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    sock.close()


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
