"""The box maker process: it serves `maker.Request`s until pytest closes its socket.

Each box's init is a clone of this process, so what it imports is memory every box's
clone copies the page tables of and tears down again: only the standard library's
smallest modules, the namespaces and the init (no typing, dataclasses or the options'
parsers: a request arrives as plain data and is read as attributes). A relay's box end
or link faults import their modules here, once, when a request first needs them.
"""

from __future__ import annotations

import os
import pickle
import signal
import socket

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

_MAX_MESSAGE = 1 << 20


class Fields:
    """A request's (or its options') fields as attributes: what the init reads."""

    def __init__(self, fields: dict[str, Any]) -> None:
        self.__dict__.update(fields)

    if TYPE_CHECKING:
        def __getattr__(self, name: str) -> Any: ...


def decode_request(plain: dict[str, Any]) -> Fields:
    """A `maker.Request` as `maker.encode_request` sent it (its options, plain data),
    unpickled."""
    plain["options"] = Fields(plain["options"])
    plain["auto_forward"] = tuple(Fields(entry) for entry in plain["auto_forward"])
    return Fields(plain)


def main(channel_fd: int) -> None:
    """Serve requests on `channel_fd` until pytest closes it."""
    from . import namespaces as ns
    from .init import init_main, level_one_flags

    ns.set_parent_death_signal(signal.SIGKILL)
    if os.getppid() == 1:
        os._exit(0)  # pytest died before the signal was set
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # inits are reaped by the kernel
    channel = socket.socket(fileno=channel_fd)
    while True:
        try:
            message, fds, _, _ = socket.recv_fds(channel, _MAX_MESSAGE, 16)
        except OSError:
            os._exit(0)
        if not message:
            os._exit(0)
        plain = pickle.loads(message)
        if "remove" in plain:  # a finished box's files (`Maker.discard`)
            _remove(ns, plain["remove"])
            continue
        request = decode_request(plain)
        _import_for(request)
        result_fd, join_fds = fds[0], tuple(fds[1:])
        relay_mine = relay_box = None
        if request.relay:
            relay_mine, relay_box = socket.socketpair()
        ready_r, ready_w = os.pipe()
        try:
            pid = ns.clone_box(level_one_flags(request.options))
        except ns.SetupFailed as exc:
            pid, failure = -1, (exc.step, exc.errno or 0, None)
        if pid == 0:
            os.close(ready_r)
            channel.close()
            if relay_mine is not None:
                relay_mine.close()
            init_main(request, result_fd, relay_box.fileno() if relay_box else None, ready_w,
                      join_fds)
        os.close(ready_w)
        for fd in fds:
            os.close(fd)
        if relay_box is not None:
            relay_box.close()
        reply: dict[str, Any] = {"pid": pid, "result_fd": result_fd}  # a `maker.Reply`
        out: list[int] = []
        if pid > 0:
            said = _read_all(ready_r)
            if said:
                try:
                    reply["failed"] = pickle.loads(said)
                except Exception:
                    reply["error"] = said.decode("utf-8", "replace")
            else:
                out.append(ns.pidfd_open(pid))
                if relay_mine is not None:
                    out.append(relay_mine.fileno())
        else:
            reply["failed"] = failure
        os.close(ready_r)
        try:
            socket.send_fds(channel, [pickle.dumps(reply)], out)
        except OSError:
            os._exit(0)
        if out:
            os.close(out[0])
        if relay_mine is not None:
            relay_mine.close()


def _import_for(request: Fields) -> None:
    """Import here, once, what the box's init will need: each init is a fork of this
    process, and an import in an init (the relay's listeners: ~5 ms) is paid by every box."""
    if request.relay:
        from ..resources.net import relay_box  # noqa: F401
    if request.options.netem:
        from ..resources.net import netem  # noqa: F401
        try:  # ~200 ms: once per maker, not in each init
            import pyroute2
            import pyroute2.netlink.exceptions  # noqa: F401
        except ImportError:
            pass  # the init says what is missing


def _remove(ns: Any, path: str) -> None:
    try:
        ns.remove_tree(path)
    except OSError:
        pass  # the session's end removes what is left


def _read_all(fd: int) -> bytes:
    data = b""
    while chunk := os.read(fd, 1 << 16):
        data += chunk
    return data
