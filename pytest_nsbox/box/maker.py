"""The box maker, pytest's side: a small process that makes boxes ahead of the tests.

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
  the relay socketpair when the box forwards ports;
- or pytest sends ``{"remove": path}``: a finished box's files, which the maker removes,
  with no answer.

The maker dies with pytest (parent-death signal), and each init with the maker, so no
box outlives a SIGKILL of pytest. The process itself is `maker_process`, which imports
none of this module: each init is a copy of it, and every module it holds is memory a
box's clone copies the page tables of.
"""

from __future__ import annotations

import os
import pickle
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
    storage: str | None = None  # the box's directory on disk for its private paths
    unix_sockets: tuple[str, ...] = ()  # the session's, under its private paths: bound in


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
    plain["auto_forward"] = tuple(entry._asdict() for entry in request.auto_forward)
    return pickle.dumps(plain)


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
                "from pytest_nsbox.box.maker_process import main; main(int(sys.argv[1]))")
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

    def discard(self, path: str) -> None:
        """Have the maker remove a finished box's files (`path`, its storage on disk), when
        it is idle: unlinks on disk cost pytest 1-2 ms a box here (ext4 with discard).
        No reply."""
        socket.send_fds(self.channel, [pickle.dumps({"remove": path})], [])

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
