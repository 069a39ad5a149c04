"""The box maker: a small process that makes boxes ahead of the tests that use them.

A box costs its test process one fork of pytest; everything else (namespaces, mounts,
the lock, the loopback, listeners) is made here, in a fresh Python of a few megabytes
started once per pytest process, while the previous test runs on the other core. A box
is an init process (`init.init_main`), pid 1 of its namespaces; the test process joins
them (`inside.enter`).

Protocol, over a SOCK_SEQPACKET socketpair (one message each way per box):

- pytest sends a `Request` (pickled as plain data) and, as SCM_RIGHTS, the write end of the box's
  result pipe (its init keeps a copy, for the test's `Sender` to open again) and the
  box's cgroup.procs files (its init joins its cgroup, as the test process will);
- the maker answers with a `Reply` (the same) and the init's pidfd, plus pytest's end of
  the relay socketpair when the box forwards ports.

The maker dies with pytest (parent-death signal), and each init with the maker, so no
box outlives a SIGKILL of pytest.
"""

from __future__ import annotations

import os
import pickle
import signal
import socket
import sys
from dataclasses import dataclass, field
from typing import Any

_MAX_MESSAGE = 1 << 20


@dataclass(frozen=True)
class Request:
    """What a box is made of; pickled to the maker."""

    options: Any  # BoxOptions
    keep_paths: tuple[str, ...]
    writable_paths: tuple[str, ...]
    uid: int
    gid: int
    views: tuple[tuple[str, bool], ...] = ()  # the cgroup directories it sees
    auto_forward: tuple[Any, ...] = ()  # listeners.AutoForward
    relay: bool = False  # forward or auto_forward: make the relay socketpair


@dataclass
class Reply:
    pid: int = 0  # the init's pid, as pytest sees it
    failed: tuple[str, int, str | None] | None = None  # (step, errno, message)
    error: str = ""  # the init's traceback, when it crashed
    result_fd: int = -1  # the init's copy of the result pipe (its fd number there)
    fds: list[int] = field(default_factory=list)  # received: [pidfd, relay end?]


def _fields(obj: Any) -> dict[str, Any]:
    import dataclasses

    return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}


# Messages carry plain data only, no class of this package pickled by reference: the
# classes can be two objects of one name in pytest (pytester's in-process runs take the
# modules they imported out of sys.modules again), and pickle refuses those.

def encode_request(request: Request) -> bytes:
    plain = _fields(request)
    plain["options"] = _fields(request.options)
    plain["auto_forward"] = tuple(tuple(entry) for entry in request.auto_forward)
    return pickle.dumps(plain)


def decode_request(data: bytes) -> Request:
    from ..resources.net.listeners import AutoForward
    from .options import BoxOptions

    plain = pickle.loads(data)
    plain["options"] = BoxOptions(**plain["options"])
    plain["auto_forward"] = tuple(AutoForward(*entry) for entry in plain["auto_forward"])
    return Request(**plain)


# -- the maker process --------------------------------------------------------------------


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
        request = decode_request(message)
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
        reply = Reply(pid=pid, result_fd=result_fd)
        out: list[int] = []
        if pid > 0:
            said = _read_all(ready_r)
            if said:
                try:
                    reply.failed = pickle.loads(said)
                except Exception:
                    reply.error = said.decode("utf-8", "replace")
            else:
                from .namespaces.join import pidfd_open

                out.append(pidfd_open(pid))
                if relay_mine is not None:
                    out.append(relay_mine.fileno())
        else:
            reply.failed = failure
        os.close(ready_r)
        try:
            socket.send_fds(channel, [pickle.dumps(_fields(reply))], out)
        except OSError:
            os._exit(0)
        if out:
            os.close(out[0])
        if relay_mine is not None:
            relay_mine.close()


def _import_for(request: Request) -> None:
    """Import here, once, what the box's init will need: each init is a fork of this
    process, and an import in an init (the relay's listeners: ~5 ms) is paid by every box."""
    if request.relay:
        from ..resources.net import relay  # noqa: F401
    if request.options.netem:
        from ..resources.net import netem  # noqa: F401
        try:  # ~200 ms: once per maker, not in each init
            import pyroute2
            import pyroute2.netlink.exceptions  # noqa: F401
        except ImportError:
            pass  # the init says what is missing


def _read_all(fd: int) -> bytes:
    data = b""
    while chunk := os.read(fd, 1 << 16):
        data += chunk
    return data


# -- pytest's side ------------------------------------------------------------------------


class Maker:
    """pytest's handle on its maker process, started at the first box."""

    def __init__(self) -> None:
        import subprocess

        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        package_root = os.path.dirname(os.path.dirname(os.path.dirname(
            os.path.abspath(__file__))))
        # -S -E: no site, no PYTHON* variables (no coverage start-up hook, no user
        # customization); pytest's own import path instead, for pyroute2 (netem)
        code = ("import sys; sys.path[:0] = [p for p in sys.argv[2:] if p]; "
                "from pytest_nsbox.box.maker import main; main(int(sys.argv[1]))")
        paths = [package_root, *[p for p in sys.path if p]]
        self.owner = os.getpid()
        self.channel = mine
        self.process = subprocess.Popen(
            [sys.executable, "-S", "-E", "-c", code, str(theirs.fileno()), *paths],
            pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL)
        theirs.close()
        self.pending = 0

    def send(self, request: Request, fds: list[int]) -> None:
        socket.send_fds(self.channel, [encode_request(request)], fds)
        self.pending += 1

    def receive(self) -> Reply:
        message, fds, _, _ = socket.recv_fds(self.channel, _MAX_MESSAGE, 2)
        self.pending -= 1
        if not message:
            raise OSError("the box maker ended")
        reply = Reply(**pickle.loads(message))
        for fd in fds:
            os.set_inheritable(fd, False)
        reply.fds = list(fds)
        return reply

    def close(self) -> None:
        self.channel.close()
        try:
            self.process.wait(timeout=5)
        except Exception:
            self.process.kill()
