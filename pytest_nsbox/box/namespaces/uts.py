"""The box's own host name (its UTS namespace)."""

from __future__ import annotations

import errno
import socket

from .libc import SetupFailed


def set_hostname(name: str) -> None:
    try:
        socket.sethostname(name)
    except OSError as exc:
        raise SetupFailed("sethostname", exc.errno or errno.EPERM) from None
