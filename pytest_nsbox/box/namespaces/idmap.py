"""The user namespace's id maps, written from inside it."""

from __future__ import annotations

import errno
import os

from .libc import SetupFailed


def _write(path: str, text: str, step: str) -> None:
    try:
        fd = os.open(path, os.O_WRONLY)
        try:
            os.write(fd, text.encode())
        finally:
            os.close(fd)
    except OSError as exc:
        raise SetupFailed(step, exc.errno or errno.EIO) from None


def write_id_maps(inside_uid: int, outside_uid: int, inside_gid: int, outside_gid: int) -> None:
    """Map one uid and one gid of the new user namespace, from inside it.

    A process may map only its own ids into a namespace it created, and only after it
    denies setgroups; writing the map is the real probe (unshare can succeed where the
    map is refused, as under Ubuntu's AppArmor restriction).
    """
    _write("/proc/self/uid_map", f"{inside_uid} {outside_uid} 1", "write uid_map")
    _write("/proc/self/setgroups", "deny", "write setgroups")
    _write("/proc/self/gid_map", f"{inside_gid} {outside_gid} 1", "write gid_map")
