"""The box's end of a relay (`relay`): its listening sockets, and the copying.

Binds the forwarded ports (and the session's own listeners, `auto_forward`) on the box's
loopback and passes the sockets to pytest over a Unix socketpair (SCM_RIGHTS). pytest
accepts on them and connects to the host's target; in a box, it hands each connected
pair (the box's socket and the host's) back over the same socketpair, and the box's init
copies between them with `Pump`: in the kernel (splice through a pipe each way), in a
process of its own, so no byte goes through pytest or waits for its GIL.

It runs in the box maker's copies, so it imports only the standard library's small
modules and the namespaces; `auto` entries arrive as the maker decoded them (attributes
`address`, `port`, `required`), not as `listeners.AutoForward`.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import select
import signal
import socket

from ...box import namespaces as ns

TYPE_CHECKING = False  # no typing in the box maker
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence
    from typing import Any, NoReturn

_MAX_FDS = 253  # SCM_MAX_FD: most fds one message can pass


def _where(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _listen(family: int, address: str, port: int) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # accepted ones inherit it
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((address, port))
        sock.listen(128)
    except BaseException:
        sock.close()
        raise
    return sock


def make_listeners(forward: Mapping[int, Any], sock: socket.socket | int,
                   auto: Sequence[Any] = (), serve: bool = False) -> socket.socket | None:
    """Box side (its init, before the test forks): listen on the box's loopback, send the fds.

    Binds 127.0.0.1:port (and [::1]:port where the box has IPv6) for every forwarded
    port, then each `auto` entry (the session's own listeners, `auto_forward`), sends
    the listening sockets over `sock` and closes this side's copies and `sock`: from
    then on the parent alone holds them. A connect in the test succeeds at once (the
    kernel queues it) even before the parent's relay accepts it. An explicit port that
    cannot be bound fails the box; an automatic one is named, with why, in the message
    (the parent warns), and the box goes on without it.

    With `serve`, the message says so and `sock` is kept and returned, non-blocking:
    the caller (the init) then runs `serve`, which copies the connections pytest hands
    back; without it, pytest copies them itself, in a thread.
    """
    channel = sock if isinstance(sock, socket.socket) else socket.socket(fileno=sock)
    listeners: list[socket.socket] = []
    keys: list[tuple[str, int]] = []  # ("forward", port) or ("auto", index into `auto`)
    refused: list[str] = []
    try:
        for port in forward:
            try:
                listeners.append(_listen(socket.AF_INET, "127.0.0.1", port))
            except OSError as exc:
                raise ns.SetupFailed(f"forward: listen on 127.0.0.1:{port}",
                                     exc.errno or errno.EIO) from None
            keys.append(("forward", port))
            if socket.has_ipv6:
                with contextlib.suppress(OSError):
                    listeners.append(_listen(socket.AF_INET6, "::1", port))
                    keys.append(("forward", port))
        for index, entry in enumerate(auto):
            if len(listeners) >= _MAX_FDS:
                refused.append(f"{_where(entry.address, entry.port)}: more than {_MAX_FDS} "
                               "listeners to pass in one message")
                continue
            family = socket.AF_INET6 if ":" in entry.address else socket.AF_INET
            try:
                listeners.append(_listen(family, entry.address, entry.port))
            except OSError as exc:
                if entry.required:
                    name = errno.errorcode.get(exc.errno or 0, "")
                    refused.append(f"{_where(entry.address, entry.port)}: not relayed, the "
                                   f"box could not listen there: {exc.strerror or exc} ({name})")
                continue
            keys.append(("auto", index))
        try:
            message = {"keys": keys, "refused": refused, "handover": serve}
            socket.send_fds(channel, [json.dumps(message).encode()],
                            [s.fileno() for s in listeners])
        except OSError as exc:
            raise ns.SetupFailed("forward: send the listening sockets", exc.errno or 0) from None
    except BaseException:
        channel.close()
        raise
    finally:
        for listener in listeners:
            listener.close()
    if not serve:
        channel.close()
        return None
    channel.setblocking(False)
    return channel



# -- copying --------------------------------------------------------------------------------

_SPLICE = os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK
_PIPE = 1 << 16  # a pipe's default capacity: what one splice moves at most
_IN, _OUT = select.EPOLLIN, select.EPOLLOUT
_SPARE = 32  # empty pipes kept for the next flows (a pipe and its close: 3 syscalls)
_ROUNDS = 8  # most pipefuls one way copies per event, so that one flow cannot starve the rest


class _Way:
    """One direction of a flow: what `src` sends waits in a pipe until `dst` takes it."""

    __slots__ = ("done", "dst", "pending", "pipe_r", "pipe_w", "src")

    def __init__(self, src: socket.socket, dst: socket.socket, pipe: tuple[int, int]) -> None:
        self.src, self.dst = src, dst
        self.pipe_r, self.pipe_w = pipe
        self.pending = 0  # bytes in the pipe
        self.done = False  # `src` ended and `dst` was shut for writing


class _Flow:
    """One relayed connection: the box's socket, the host's, a way each direction."""

    __slots__ = ("masks", "moved", "socks", "ways")

    def __init__(self, inner: socket.socket, outer: socket.socket,
                 pipes: tuple[tuple[int, int], tuple[int, int]]) -> None:
        self.socks = (inner, outer)
        self.ways = (_Way(inner, outer, pipes[0]), _Way(outer, inner, pipes[1]))
        self.masks = [0, 0]  # what epoll watches on each socket now
        self.moved = False  # bytes went through


class Pump:
    """Copies both ways between pairs of connected sockets, in the kernel, on one epoll.

    A way reads only when its pipe is empty (so EAGAIN on a read means nothing to read),
    writes what it read at once, and waits for the writer's room only when it must; an
    end of input is passed on with `shutdown(SHUT_WR)` (half-close), and the flow closes
    when both ways ended or either side fails. Other fds can share the epoll (`watch`):
    `poll` handles the flows' events and returns theirs. With `hand`, a flow is given
    away (its sockets and which ways ended) as soon as bytes went through and none wait
    in its pipes: pytest's relay copies a connection's first bytes, the box's init the rest.
    """

    def __init__(self, hand: Callable[[socket.socket, socket.socket, int], bool] | None = None,
                 ) -> None:
        self.hand = hand
        self.epoll = select.epoll()
        self.flows: dict[int, tuple[_Flow, int]] = {}  # socket fd -> (flow, its index)
        self.count = 0  # flows added
        self._gone: set[int] = set()  # fds of flows closed while handling this poll's events
        self._spare: list[tuple[int, int]] = []  # empty pipes of closed flows, to reuse

    def fileno(self) -> int:
        return self.epoll.fileno()

    def watch(self, fd: int, mask: int = _IN) -> None:
        self.epoll.register(fd, mask)

    def unwatch(self, fd: int) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.epoll.unregister(fd)

    def add(self, inner: socket.socket, outer: socket.socket, ended: int = 0) -> None:
        """Copy between `inner` (the box's) and `outer` (the host's) from now on; both
        are non-blocking, and closed with the flow. `ended`: bit 0, the box's side
        already ended (outer was shut for writing); bit 1, the host's side."""
        self.count += 1
        try:
            flow = _Flow(inner, outer, (self._pipe(), self._pipe()))
        except OSError:  # no pipe (fd limit): the box's client sees a reset
            _reset(inner)
            outer.close()
            return
        flow.ways[0].done, flow.ways[1].done = bool(ended & 1), bool(ended & 2)
        for index, sock in enumerate(flow.socks):
            self.flows[sock.fileno()] = (flow, index)
        try:
            self._interest(flow)  # what is there already, epoll says at once
        except OSError:
            self._close(flow)

    def _pipe(self) -> tuple[int, int]:
        if self._spare:
            return self._spare.pop()
        return os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    def poll(self, timeout: float | None = None) -> list[tuple[int, int]]:
        """Wait for events; copy for the flows; return the events of the other fds."""
        others = []
        self._gone.clear()
        for fd, events in self.epoll.poll(-1 if timeout is None else timeout):
            entry = self.flows.get(fd)
            if entry is None:
                if fd not in self._gone:
                    others.append((fd, events))
                continue
            flow, index = entry
            try:
                if events & (_IN | select.EPOLLHUP | select.EPOLLERR):
                    self._read(flow, flow.ways[index])
                if events & (_OUT | select.EPOLLHUP | select.EPOLLERR):
                    self._write(flow.ways[1 - index])
                if (self.hand is not None and flow.moved and not flow.ways[0].pending
                        and not flow.ways[1].pending and self._give(flow)):
                    continue
                self._interest(flow)
            except OSError:
                self._close(flow)
        return others

    def _give(self, flow: _Flow) -> bool:
        """Hand `flow` to `hand`; False (and it stays here) when it would not take it."""
        assert self.hand is not None
        ended = flow.ways[0].done | flow.ways[1].done << 1
        if ended == 3:
            return False  # over: closed here
        if not self.hand(*flow.socks, ended):
            self.hand = None  # the init is gone or full: copy every flow here from now on
            return False
        self._close(flow)
        return True

    def _read(self, flow: _Flow, way: _Way) -> None:
        for _ in range(_ROUNDS):
            if way.done or way.pending:
                return
            try:
                count = os.splice(way.src.fileno(), way.pipe_w, _PIPE, flags=_SPLICE)
            except BlockingIOError:
                return
            if not count:  # the end of its input: pass it on
                way.done = True
                way.dst.shutdown(socket.SHUT_WR)
                return
            way.pending = count
            flow.moved = True
            self._write(way)
            if count < _PIPE // 2:
                return  # a short read emptied the socket, most likely: wait for more

    def _write(self, way: _Way) -> None:
        while way.pending:
            try:
                count = os.splice(way.pipe_r, way.dst.fileno(), way.pending, flags=_SPLICE)
            except BlockingIOError:
                return
            if not count:
                raise OSError(errno.EPIPE, "the pipe gave nothing")
            way.pending -= count

    def _interest(self, flow: _Flow) -> None:
        """Watch each socket for what its ways can do now; close a flow that is over."""
        ways = flow.ways
        if ways[0].done and ways[1].done:
            self._close(flow)
            return
        for index, sock in enumerate(flow.socks):
            reading, writing = ways[index], ways[1 - index]
            mask = 0 if reading.done or reading.pending else _IN
            if writing.pending:
                mask |= _OUT
            if mask != flow.masks[index]:
                fd = sock.fileno()
                if not mask:  # not even for errors: they come through the other side
                    self.epoll.unregister(fd)
                elif not flow.masks[index]:
                    self.epoll.register(fd, mask)
                else:
                    self.epoll.modify(fd, mask)
                flow.masks[index] = mask

    def _close(self, flow: _Flow) -> None:
        for sock in flow.socks:
            fd = sock.fileno()
            if fd >= 0:
                self.flows.pop(fd, None)
                self.unwatch(fd)
                self._gone.add(fd)
            sock.close()
        for way in flow.ways:
            if way.pending or len(self._spare) >= _SPARE:
                os.close(way.pipe_r)
                os.close(way.pipe_w)
            else:
                self._spare.append((way.pipe_r, way.pipe_w))

    def close(self) -> None:
        """Close every flow, the spare pipes and the epoll."""
        for flow in {flow for flow, _ in self.flows.values()}:
            self._close(flow)
        for pipe in self._spare:
            os.close(pipe[0])
            os.close(pipe[1])
        self._spare.clear()
        self.epoll.close()


def _reset(sock: socket.socket) -> None:
    """Close with RST, so the box's client sees ECONNRESET as it would a refused service."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    sock.close()


def serve(channel: socket.socket, keep: int) -> NoReturn:
    """The init's loop in a forwarding box: copy the connections pytest hands over until
    pytest kills this process (with the box), instead of only waiting for orphans.

    Each message on `channel` is one byte (which ways ended, `Pump.add`) with two fds:
    the box's accepted socket and pytest's connected one (made in the host's network
    namespace, which no process in the box can make). SIGCHLD stays ignored, as the
    maker set it: the kernel reaps the orphans. An error here must never end the init
    (that would kill the test): the loop drops the flow, or at worst stops copying and
    only waits.
    """
    for fd in os.listdir("/proc/self/fd"):
        if int(fd) not in (0, 1, 2, keep, channel.fileno()):
            with contextlib.suppress(OSError):
                os.close(int(fd))
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    pump = Pump()
    pump.watch(channel.fileno())
    try:
        while True:
            if pump.poll() and not _take(pump, channel):
                pump.unwatch(channel.fileno())  # pytest is done with this box
    except BaseException:
        pass
    while True:
        signal.pause()


def _take(pump: Pump, channel: socket.socket) -> bool:
    """Add the pairs waiting on the channel; False once pytest closed its end."""
    while True:
        try:
            message, fds, _, _ = socket.recv_fds(channel, 1, 2)
        except BlockingIOError:
            return True
        except OSError:
            return False
        if len(fds) == 2 and message:
            inner, outer = (socket.socket(socket.AF_INET, socket.SOCK_STREAM, 0, fd)
                            for fd in fds)  # family only names it: the fds are what count
            pump.add(inner, outer, message[0] & 3)
        else:
            for fd in fds:
                os.close(fd)
        if not message:
            return False
