"""The TCP ports the pytest process and its descendants listen on, for `auto_forward`.

A session fixture's server (a thread of pytest, or a subprocess such as
`python -m http.server`) listens on the host's network; an isolated box has a loopback
of its own, so without a relay the test gets "connection refused".

Finding them costs one NETLINK_SOCK_DIAG dump per address family (TCP, state LISTEN),
written here from the kernel's inet_diag ABI with `socket` and `struct` (pyroute2's
import alone costs ~200 ms), which lists every listener of this network namespace with
its socket inode. The inodes are then matched against the socket fds of this process
and its descendants (`/proc/PID/task/TID/children`), so a listener of an unrelated
process is never relayed. The fd scan is skipped while the dump shows the same
listening inodes as for the last box: the answer cannot have changed.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
import sys
from collections.abc import Collection, Iterable, Iterator
from typing import NamedTuple

__all__ = ["AutoForward", "Listener", "box_forwards", "listening", "session_listeners",
           "session_unix_sockets"]

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLM_F_REQUEST = 0x1
NLM_F_DUMP = 0x300  # NLM_F_ROOT | NLM_F_MATCH
NLMSG_ERROR = 2
NLMSG_DONE = 3
TCP_LISTEN = 10

_NLMSGHDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
# inet_diag_req_v2: family, protocol, ext, pad, states, then a zeroed inet_diag_sockid (48)
_REQ_V2 = struct.Struct("=BBBBI48x")
# inet_diag_msg: family, state, timer, retrans, sockid (sport, dport: big endian; src,
# dst: 16 bytes each; if; cookie), expires, rqueue, wqueue, uid, inode
_DIAG_MSG = struct.Struct("=BBBB2s2s16s16sI8sIIIII")


class Listener(NamedTuple):
    """One listening TCP socket of this network namespace."""

    family: int
    address: str
    port: int
    inode: int


class AutoForward(NamedTuple):
    """One listener the box makes: where it listens, and the host address it relays to."""

    address: str  # in the box, e.g. '127.0.0.1' or '::1'
    port: int
    target: str  # on the host, same port
    required: bool  # False: the second loopback of a wildcard listener (best effort)


def _replies(sock: socket.socket, request: bytes, seq: int) -> Iterator[tuple[bytes, int, int]]:
    """Send a sock_diag dump `request`; yield (data, start, end) of each reply's body up to
    NLMSG_DONE (an error reply raises OSError)."""
    sock.send(_NLMSGHDR.pack(_NLMSGHDR.size + len(request), SOCK_DIAG_BY_FAMILY,
                             NLM_F_REQUEST | NLM_F_DUMP, seq, 0) + request)
    while True:
        data = sock.recv(1 << 16)
        if not data:
            raise OSError("sock_diag: the dump ended without NLMSG_DONE")
        offset = 0
        while offset + _NLMSGHDR.size <= len(data):
            length, kind, _, reply_seq, _ = _NLMSGHDR.unpack_from(data, offset)
            if length < _NLMSGHDR.size:
                raise OSError("sock_diag: a malformed netlink message")
            body, end = offset + _NLMSGHDR.size, offset + length
            offset += (length + 3) & ~3
            if reply_seq != seq:
                continue
            if kind == NLMSG_DONE:
                return
            if kind == NLMSG_ERROR:
                code = -struct.unpack_from("=i", data, body)[0]
                if code:
                    raise OSError(code, f"sock_diag: {os.strerror(code)}")
                continue
            if kind == SOCK_DIAG_BY_FAMILY:
                yield data, body, end


def _dump(sock: socket.socket, family: int, seq: int) -> list[Listener]:
    request = _REQ_V2.pack(family, socket.IPPROTO_TCP, 0, 0, 1 << TCP_LISTEN)
    address_size = 4 if family == socket.AF_INET else 16
    found: list[Listener] = []
    for data, body, end in _replies(sock, request, seq):
        if end - body >= _DIAG_MSG.size:
            fields = _DIAG_MSG.unpack_from(data, body)
            found.append(Listener(fields[0], socket.inet_ntop(fields[0], fields[6][:address_size]),
                                  int.from_bytes(fields[4], "big"), fields[-1]))
    return found


_proc_only = False  # sock_diag is missing here (no inet_diag/tcp_diag): read /proc instead


def listening() -> list[Listener]:
    """Every TCP listener (IPv4 and IPv6) of this network namespace, from the kernel.

    A kernel without the inet_diag modules (or that cannot load them, as in a VM with no
    modules) answers the dump with ENOENT: then /proc/net/tcp and tcp6 say the same.
    """
    global _proc_only
    if not _proc_only:
        try:
            with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC,
                               NETLINK_SOCK_DIAG) as sock:
                found = _dump(sock, socket.AF_INET, 1)
                if socket.has_ipv6:
                    found += _dump(sock, socket.AF_INET6, 2)
            return found
        except OSError as exc:
            if exc.errno not in (errno.ENOENT, errno.EPROTONOSUPPORT, errno.EAFNOSUPPORT,
                                 errno.EPERM, errno.EACCES, errno.EOPNOTSUPP):
                raise
            _proc_only = True
    return _from_proc()


def _from_proc() -> list[Listener]:
    """The listeners as /proc/net/tcp and tcp6 list them (state 0A: LISTEN)."""
    found: list[Listener] = []
    for family, path in ((socket.AF_INET, "/proc/net/tcp"), (socket.AF_INET6, "/proc/net/tcp6")):
        try:
            with open(path) as file:
                lines = file.read().splitlines()[1:]
        except FileNotFoundError:
            continue  # no IPv6 here
        for line in lines:
            fields = line.split()
            if len(fields) < 10 or fields[3] != "0A":
                continue
            address, port = fields[1].split(":")
            # each 32-bit word of the address is printed in the host's byte order
            raw = b"".join(int(address[i:i + 8], 16).to_bytes(4, sys.byteorder)
                           for i in range(0, len(address), 8))
            found.append(Listener(family, socket.inet_ntop(family, raw), int(port, 16),
                                  int(fields[9])))
    return found


def _children(pid: int) -> list[int]:
    """Children of every thread of `pid` (a child belongs to the thread that forked it)."""
    found: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children", "rb") as file:
                found.extend(int(child) for child in file.read().split())
        except OSError:
            continue
    return found


def _children_by_stat() -> dict[int, list[int]]:
    """Every process's children from /proc/PID/stat (a kernel without PROC_CHILDREN)."""
    tree: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as file:
                stat = file.read()
        except OSError:
            continue
        parent = int(stat[stat.rindex(b")") + 2:].split(None, 2)[1])
        tree.setdefault(parent, []).append(int(name))
    return tree


def descendants(root: int) -> list[int]:
    """`root` and every process below it."""
    pids = [root]
    by_stat = None
    if not os.path.exists(f"/proc/{root}/task/{root}/children"):
        by_stat = _children_by_stat()
    index = 0
    while index < len(pids):
        pid = pids[index]
        index += 1
        pids.extend(by_stat.get(pid, ()) if by_stat is not None else _children(pid))
    return pids


def owned_sockets(pids: Iterable[int], wanted: Collection[int]) -> set[int]:
    """The inodes of `wanted` that one of `pids` holds as an fd."""
    return _socket_inodes(pids) & set(wanted)


_last: tuple[int, frozenset[int], tuple[Listener, ...]] = (0, frozenset(), ())


def session_listeners() -> tuple[Listener, ...]:
    """The listeners of this process and its descendants, now.

    The same listening inodes as last time (in this process) give the last answer
    without reading any fd.
    """
    global _last
    pid = os.getpid()
    if _proc_only:
        return _tree_listeners(pid)
    every = listening()
    if not every:
        return ()
    key = frozenset(listener.inode for listener in every)
    if _last[0] == pid and _last[1] == key:
        return _last[2]
    owned = owned_sockets(descendants(pid), key)
    answer = tuple(listener for listener in every if listener.inode in owned)
    _last = (pid, key, answer)
    return answer


_last_tree: tuple[int, frozenset[int], tuple[Listener, ...]] = (0, frozenset(), ())


def _tree_listeners(pid: int) -> tuple[Listener, ...]:
    """`session_listeners` where only /proc/net/tcp tells: the kernel walks its whole
    socket hash table for that file (2.5 ms here, with 24 GiB), so it is read only when
    the socket fds of pytest's process tree changed since the last box."""
    global _last_tree
    mine = frozenset(_socket_inodes(descendants(pid)))
    if _last_tree[0] == pid and _last_tree[1] == mine:
        return _last_tree[2]
    answer = tuple(listener for listener in _from_proc() if listener.inode in mine)
    _last_tree = (pid, mine, answer)
    return answer


def _socket_inodes(pids: Iterable[int]) -> set[int]:
    """The inodes of every socket one of `pids` holds as an fd."""
    found: set[int] = set()
    for pid in pids:
        directory = f"/proc/{pid}/fd"
        try:
            fds = os.listdir(directory)
        except OSError:
            continue
        for fd in fds:
            try:
                link = os.readlink(f"{directory}/{fd}")
            except OSError:
                continue
            if link.startswith("socket:["):
                found.add(int(link[8:-1]))
    return found


def box_forwards(listeners: Iterable[Listener],
                 explicit: Collection[int] = ()) -> tuple[AutoForward, ...]:
    """What the box listens on for `listeners`, at the same address and port.

    127.0.0.1:P -> 127.0.0.1:P, [::1]:P -> [::1]:P; a wildcard (0.0.0.0:P, [::]:P) ->
    the box's 127.0.0.1:P and [::1]:P, relayed to the host's loopback of its family; an
    IPv4-mapped IPv6 address as its IPv4 one. A port in `explicit` (the user's `forward`)
    is left to it; a specific address wins over a wildcard at the same place.
    """
    specific: list[AutoForward] = []
    wildcard: list[AutoForward] = []
    for listener in listeners:
        port, address = listener.port, listener.address
        if port in explicit:
            continue
        if address.startswith("::ffff:") and "." in address:
            address = address[7:]
        if address in ("0.0.0.0", "::"):
            target = "127.0.0.1" if address == "0.0.0.0" else "::1"
            wildcard.append(AutoForward("127.0.0.1", port, target, True))
            wildcard.append(AutoForward("::1", port, target, False))
        else:
            specific.append(AutoForward(address, port, address, True))
    chosen: dict[tuple[str, int], AutoForward] = {}
    for entry in specific + wildcard:
        chosen.setdefault((entry.address, entry.port), entry)
    return tuple(chosen.values())


# -- Unix sockets -------------------------------------------------------------------------
# A session fixture's server may listen on a Unix socket under /tmp (slapd in
# python-ldap's suite). A box sees the socket file through its overlay, but connect()
# finds no socket behind an overlay's inode (ECONNREFUSED): the box's init binds the
# socket file itself there (`init.prepare`). Found as the TCP listeners are: one
# sock_diag dump (AF_UNIX, state LISTEN, with names and inodes), matched against the
# socket fds of pytest's process tree only when the dump's inodes changed.

_UNIX_REQ = struct.Struct("=BBHIII8x")  # family, protocol, pad, states, ino, show, cookie
_UNIX_MSG = struct.Struct("=BBBBI8x")  # family, type, state, pad, ino, cookie
_RTATTR = struct.Struct("=HH")
UDIAG_SHOW_NAME = 1
UDIAG_SHOW_VFS = 2
UNIX_DIAG_NAME = 0
UNIX_DIAG_VFS = 1


def _unix_dump(sock: socket.socket) -> list[tuple[int, str, int]]:
    """(socket inode, path, the path's inode) of every listening Unix socket bound to a
    path in this network namespace (abstract and unbound ones left out)."""
    request = _UNIX_REQ.pack(socket.AF_UNIX, 0, 0, 1 << TCP_LISTEN, 0,
                             UDIAG_SHOW_NAME | UDIAG_SHOW_VFS)
    found: list[tuple[int, str, int]] = []
    for data, body, end in _replies(sock, request, 3):
        if end - body < _UNIX_MSG.size:
            continue
        inode = _UNIX_MSG.unpack_from(data, body)[4]
        name, vfs_inode, at = "", 0, body + _UNIX_MSG.size
        while at + _RTATTR.size <= end:
            size, kind = _RTATTR.unpack_from(data, at)
            if size < _RTATTR.size:
                break
            value = data[at + _RTATTR.size:at + size]
            if kind == UNIX_DIAG_NAME and value[:1] != b"\0":  # not abstract
                name = value.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
            elif kind == UNIX_DIAG_VFS and len(value) >= 4:
                vfs_inode = struct.unpack_from("=I", value)[0]
            at += (size + 3) & ~3
        if name.startswith("/") and vfs_inode:
            found.append((inode, name, vfs_inode))
    return found


_last_unix: tuple[int, frozenset[int], bool, tuple[tuple[str, int], ...]] = (
    0, frozenset(), False, ())


def session_unix_sockets(anyone: bool = False) -> tuple[tuple[str, int], ...]:
    """(path, the socket file's inode) of the Unix sockets this process and its
    descendants (or, with `anyone`, any process) listen on, now (still at that path).
    () where sock_diag cannot tell. The inode tells a server started again at the same
    path from the one a box was made ahead for."""
    global _last_unix
    pid = os.getpid()
    try:
        with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC,
                           NETLINK_SOCK_DIAG) as sock:
            every = _unix_dump(sock)
    except OSError:
        return ()  # no unix_diag here: the box sees such sockets, and cannot connect
    key = frozenset(entry[0] for entry in every)
    if _last_unix[:3] == (pid, key, anyone):
        return _last_unix[3]
    owned = set(key) if anyone or not every else owned_sockets(descendants(pid), key)
    paths: list[tuple[str, int]] = []
    for inode, path, vfs_inode in every:
        if inode in owned:
            try:
                if os.stat(path).st_ino == vfs_inode:
                    paths.append((path, vfs_inode))
            except OSError:
                continue
    answer = tuple(sorted(paths))
    _last_unix = (pid, key, anyone, answer)
    return answer
