"""Forward host services into an isolated box, rootless: `forward={5432: "127.0.0.1:5432"}`.

A veth into the host's network namespace needs root; this does not. The box's init
binds each forwarded port on the box's loopback (a socket belongs to the namespace it
was made in) and passes the listening sockets to the parent over a Unix socketpair
(SCM_RIGHTS). The parent accepts on them, connects to the host target and copies bytes
both ways, in one daemon thread driven by a selector, until `Relay.stop()`.

Nothing here imports more than the standard library: the option parser runs at
collection, `make_listeners` in every forwarding box's init.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import selectors
import socket
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from . import namespaces as ns

__all__ = ["Relay", "make_listeners", "parse_forward", "parse_forward_text"]

Target = tuple[str, int]
ACCEPTED = ("a dict {box_port: target}: box_port 1-65535 on the box's loopback, target "
            "'host:port', '[::1]:port', a port number (127.0.0.1) or a (host, port) pair; "
            "e.g. {5432: '127.0.0.1:5432'}")
_CHUNK = 1 << 16
_HIGH_WATER = 1 << 20  # stop reading a side while this much waits for the other


def _port(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    return value if isinstance(value, int) and 0 < value < 65536 else None


def _target(value: object) -> Target | None:
    port = _port(value)
    if port is not None:
        return ("127.0.0.1", port)
    if isinstance(value, tuple | list) and len(value) == 2 and isinstance(value[0], str):
        port = _port(value[1])
        return (value[0], port) if port is not None and value[0] else None
    if not isinstance(value, str):
        return None
    host, sep, port_text = value.strip().rpartition(":")
    port = _port(port_text)
    if not sep or port is None or not host:
        return None
    if host.startswith("["):
        if not host.endswith("]") or len(host) < 3:
            return None
        host = host[1:-1]
    elif ":" in host:
        return None  # an IPv6 address needs brackets: '[::1]:5432'
    return (host, port)


def parse_forward(value: object) -> dict[int, Target] | None:
    """Validate the `forward` option; raise OptionError naming what is accepted."""
    from .options import OptionError

    if value is None:
        return None
    if not isinstance(value, Mapping) or not value:
        raise OptionError("forward", value, ACCEPTED)
    parsed: dict[int, Target] = {}
    for key, raw in value.items():
        port, target = _port(key), _target(raw)
        if port is None or target is None:
            raise OptionError(f"forward[{key!r}]", raw, ACCEPTED)
        parsed[port] = target
    return parsed


def parse_forward_text(text: str) -> dict[str, str]:
    """The ini/CLI spelling: '5432=127.0.0.1:5432 8080=localhost:80' (or comma-separated)."""
    from .options import OptionError

    pairs = [p.split("=", 1) for p in text.replace(",", " ").split()]
    if not pairs or not all(len(p) == 2 for p in pairs):
        raise OptionError("forward", text, "BOX_PORT=HOST:PORT pairs such as "
                          "'5432=127.0.0.1:5432 8080=localhost:80'")
    return {k: v for k, v in pairs}


def _listen(family: int, address: str, port: int) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((address, port))
        sock.listen(128)
    except BaseException:
        sock.close()
        raise
    return sock


def make_listeners(forward: Mapping[int, Any], sock: socket.socket | int) -> None:
    """Box side (its init, before the test forks): listen on the box's loopback, send the fds.

    Binds 127.0.0.1:port (and [::1]:port where the box has IPv6) for every forwarded
    port, sends the listening sockets over `sock` and closes this side's copies and
    `sock`: from then on the parent alone holds them. A connect in the test succeeds at
    once (the kernel queues it) even before the parent's relay accepts it.
    """
    channel = sock if isinstance(sock, socket.socket) else socket.socket(fileno=sock)
    listeners: list[socket.socket] = []
    ports: list[int] = []
    try:
        for port in forward:
            try:
                listeners.append(_listen(socket.AF_INET, "127.0.0.1", port))
            except OSError as exc:
                raise ns.SetupFailed(f"forward: listen on 127.0.0.1:{port}",
                                     exc.errno or errno.EIO) from None
            ports.append(port)
            if socket.has_ipv6:
                with contextlib.suppress(OSError):
                    listeners.append(_listen(socket.AF_INET6, "::1", port))
                    ports.append(port)
        try:
            socket.send_fds(channel, [json.dumps(ports).encode()],
                            [s.fileno() for s in listeners])
        except OSError as exc:
            raise ns.SetupFailed("forward: send the listening sockets", exc.errno or 0) from None
    finally:
        for listener in listeners:
            listener.close()
        channel.close()


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


class Relay:
    """Parent side: accept on the box's listeners, connect to the targets, copy both ways."""

    def __init__(self, forward: Mapping[int, Any]) -> None:
        self.targets: dict[int, Target] = parse_forward(forward) or {}
        self.connections = 0  # accepted so far, for tests and reports
        self.errors: list[str] = []  # targets that refused or failed, in words
        self.ports: list[int] = []  # box ports whose listeners arrived
        self._selector: selectors.BaseSelector | None = None
        self._thread: threading.Thread | None = None
        self._owned: list[socket.socket] = []  # channel and listeners, closed at the end
        self._flows: set[_Flow] = set()
        self._wake_r, self._wake_w = -1, -1
        self._stopping = False

    def start(self, sock: socket.socket | int) -> None:
        """Serve in a daemon thread; `sock` is the parent's end of the box's socketpair."""
        channel = sock if isinstance(sock, socket.socket) else socket.socket(fileno=sock)
        channel.setblocking(False)
        self._owned.append(channel)
        self._wake_r, self._wake_w = os.pipe()
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._wake_r, selectors.EVENT_READ, ("wake", None))
        self._selector.register(channel, selectors.EVENT_READ, ("channel", None))
        self._thread = threading.Thread(target=self._serve, name="nsbox-relay", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Close every listener, connection and fd, and join the thread."""
        if self._thread is None:
            return
        self._stopping = True
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")
        self._thread.join()
        self._thread = None
        os.close(self._wake_w)

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
            for flow in list(self._flows):
                self._close_flow(flow)
            for sock in self._owned:
                sock.close()
            selector.close()
            os.close(self._wake_r)

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
        message, fds, _, _ = socket.recv_fds(channel, 4096, 64)
        self._selector.unregister(channel)
        ports = json.loads(message) if message else []
        for fd in fds:
            os.set_inheritable(fd, False)  # recvmsg hands them over inheritable
        for port, fd in zip(ports, fds, strict=False):
            listener = socket.socket(fileno=fd)
            listener.setblocking(False)
            self._owned.append(listener)
            self.ports.append(port)
            self._selector.register(listener, selectors.EVENT_READ, ("listener", port))
        for fd in fds[len(ports):]:
            os.close(fd)

    def _accept(self, listener: socket.socket, port: int) -> None:
        try:
            inner, _ = listener.accept()
        except BlockingIOError:
            return
        inner.setblocking(False)
        self.connections += 1
        host, target_port = self.targets[port]
        where = f"forward {port} -> {host}:{target_port}"
        try:
            family, kind, proto, _, address = socket.getaddrinfo(
                host, target_port, type=socket.SOCK_STREAM)[0]
            outer = socket.socket(family, kind, proto)
        except OSError as exc:
            self.errors.append(f"{where}: {exc}")
            _reset(inner)
            return
        outer.setblocking(False)
        code = outer.connect_ex(address)
        if code not in (0, errno.EINPROGRESS):
            self.errors.append(f"{where}: {os.strerror(code)}")
            _reset(inner)
            outer.close()
            return
        flow = _Flow(inner, outer, where, connecting=code != 0)
        self._flows.add(flow)
        self._interest(flow)

    def _pump(self, flow: _Flow, side: str, events: int) -> None:
        if side == "outer" and flow.connecting:
            code = flow.outer.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if code:
                self.errors.append(f"{flow.target}: {os.strerror(code)}")
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
