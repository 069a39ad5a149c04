"""The box's end of a relay (`relay`): its listening sockets, made in its init.

Binds the forwarded ports (and the session's own listeners, `auto_forward`) on the box's
loopback and passes the sockets to pytest over a Unix socketpair (SCM_RIGHTS). It runs
in the box maker's copies, so it imports only the standard library's small modules and
the namespaces; `auto` entries arrive as the maker decoded them (attributes `address`,
`port`, `required`), not as `listeners.AutoForward`.
"""

from __future__ import annotations

import contextlib
import errno
import json
import socket

from ...box import namespaces as ns

TYPE_CHECKING = False  # no typing in the box maker
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from typing import Any

_MAX_FDS = 253  # SCM_MAX_FD: most fds one message can pass


def _where(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


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


def make_listeners(forward: Mapping[int, Any], sock: socket.socket | int,
                   auto: Sequence[Any] = ()) -> None:
    """Box side (its init, before the test forks): listen on the box's loopback, send the fds.

    Binds 127.0.0.1:port (and [::1]:port where the box has IPv6) for every forwarded
    port, then each `auto` entry (the session's own listeners, `auto_forward`), sends
    the listening sockets over `sock` and closes this side's copies and `sock`: from
    then on the parent alone holds them. A connect in the test succeeds at once (the
    kernel queues it) even before the parent's relay accepts it. An explicit port that
    cannot be bound fails the box; an automatic one is named, with why, in the message
    (the parent warns), and the box goes on without it.
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
            message = {"keys": keys, "refused": refused}
            socket.send_fds(channel, [json.dumps(message).encode()],
                            [s.fileno() for s in listeners])
        except OSError as exc:
            raise ns.SetupFailed("forward: send the listening sockets", exc.errno or 0) from None
    finally:
        for listener in listeners:
            listener.close()
        channel.close()
