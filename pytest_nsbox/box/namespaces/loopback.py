"""The box's loopback, brought up in its network namespace."""

from __future__ import annotations

import errno
import fcntl
import socket
import struct

from .libc import SetupFailed

SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1


def bring_loopback_up() -> None:
    """`ip link set lo up` in 0.1 ms: one ioctl, no netlink library."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack("16sH14x", b"lo", 0)
        try:
            flags = struct.unpack("16sH14x", fcntl.ioctl(sock, SIOCGIFFLAGS, request))[1]
            fcntl.ioctl(sock, SIOCSIFFLAGS, struct.pack("16sH14x", b"lo", flags | IFF_UP))
        except OSError as exc:
            raise SetupFailed("bring lo up", exc.errno or errno.EPERM) from None
