"""The box's mounts: private propagation, /proc, tmpfs, overlays, binds, read-only.

Everything here runs in the box's first process (its pid 1), in its mount namespace.
"""

from __future__ import annotations

import ctypes
import errno
import os

from .libc import SetupFailed, check, libc

MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18

_SYS_MOUNT_SETATTR = 442  # the same on every architecture (new syscall table)
AT_RECURSIVE = 0x8000
MOUNT_ATTR_RDONLY = 0x1

_mount = libc.mount
_mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong,
                   ctypes.c_char_p]
_syscall = libc.syscall
_syscall.restype = ctypes.c_long


def _mount_call(source: str | None, target: str, fstype: str | None, flags: int,
                data: str | None, step: str) -> None:
    result = _mount(
        source.encode() if source else None,
        target.encode(),
        fstype.encode() if fstype else None,
        flags,
        data.encode() if data else None,
    )
    check(result, f"{step} ({target})")


def is_under(path: str, top: str) -> bool:
    """Whether `path` is `top` or below it (both absolute and normalized)."""
    return path == top or path.startswith(top.rstrip("/") + "/")


def make_mounts_private() -> None:
    """Stop mount events propagating to the host: every box mount stays in the box."""
    _mount_call(None, "/", None, MS_REC | MS_PRIVATE, None, "make / private")


def mount_proc() -> None:
    _mount_call("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, None, "mount /proc")


def mount_tmpfs(path: str, mode: str = "1777", size: int | None = None) -> None:
    data = f"mode={mode}" if size is None else f"mode={mode},size={size}"
    _mount_call("tmpfs", path, "tmpfs", MS_NOSUID | MS_NODEV, data, "mount tmpfs")


def mount_overlay(lower_fd: int, path: str, layers: str | None = None) -> None:
    """Cover `path` with an overlay: the directory open as `lower_fd` (the host's, opened
    before anything hid it) below, a layer of the box's own above. The box sees the
    host's files and writes only its own layer: in `layers` (a directory of the box's on
    disk, which gets the overlay's upper and work directories), else in `path` itself, a
    fresh tmpfs.

    Unprivileged overlay mounts (Linux 5.11+) need ``userxattr``; where that is refused
    (no user namespace), it is tried without. A layer on disk is ``volatile`` (Linux
    5.10+): without it, the overlay's unmount when the box ends syncs the whole file
    system under the layer (`ovl_sync_fs`), and a box's end, which the next test waits
    for, took 5-10 ms more; what a box wrote is thrown away, it needs no sync.
    """
    lower = os.fstat(lower_fd)
    if layers is None:
        upper, work = f"{path.rstrip('/')}/.nsbox-upper", f"{path.rstrip('/')}/.nsbox-work"
    else:
        upper, work = f"{layers}/upper", f"{layers}/work"
    os.mkdir(upper)
    os.chmod(upper, lower.st_mode & 0o7777)  # the overlay's top directory is the upper one
    try:
        os.chown(upper, lower.st_uid, lower.st_gid)  # root's /tmp stays root's, where mapped
    except OSError:
        pass  # an owner the box's user namespace does not map
    os.mkdir(work, 0o700)
    data = f"lowerdir=/proc/self/fd/{lower_fd},upperdir={upper},workdir={work}"
    tries = [",userxattr", ""] if layers is None else [
        ",userxattr,volatile", ",userxattr", ",volatile", ""]
    try:
        for index, extra in enumerate(tries):
            try:
                _mount_call("overlay", path, "overlay", MS_NOSUID | MS_NODEV, data + extra,
                            "mount overlay")
                break
            except SetupFailed as exc:
                if exc.errno != errno.EINVAL or index == len(tries) - 1:
                    raise
    except SetupFailed:
        for leftover in (work, upper):  # the overlay's attempts leave work/ directories
            try:
                remove_tree(leftover)
            except OSError:
                pass  # the box's storage is removed after the box anyway
        raise


def remove_tree(path: str) -> None:
    """Remove `path` and everything below it, whatever the modes (an overlay's work
    directory is left with mode 000), without following symlinks; no error if absent."""
    try:
        entries = list(os.scandir(path))
    except FileNotFoundError:
        return
    except NotADirectoryError:
        os.unlink(path)
        return
    except PermissionError:
        os.chmod(path, 0o700)
        entries = list(os.scandir(path))
    for entry in entries:
        try:
            if entry.is_dir(follow_symlinks=False):
                remove_tree(entry.path)
            else:
                os.unlink(entry.path)
        except FileNotFoundError:
            continue
    try:
        os.rmdir(path)
    except FileNotFoundError:
        pass


def mount_devpts(path: str) -> None:
    """A pts instance of the box's own: its ptys are not the host's."""
    _mount_call("devpts", path, "devpts", MS_NOSUID | MS_NOEXEC,
                "newinstance,ptmxmode=0666,mode=0620", "mount devpts")


def bind_file(fd: int, path: str) -> None:
    """Bind the file open as `fd` (a device node of the host) onto a new file at `path`."""
    os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
    _mount_call(f"/proc/self/fd/{fd}", path, None, MS_BIND, None, f"bind device {path}")


def bind_onto(fd: int, path: str) -> None:
    """Bind the file open as `fd` (a socket, or any non-directory) onto `path`, made as
    an empty file first where the box has nothing there."""
    if not os.path.lexists(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o600))
    _mount_call(f"/proc/self/fd/{fd}", path, None, MS_BIND, None, f"bind {path}")


def bind_back(fd: int, path: str) -> None:
    """Bind the directory open as `fd` onto `path` again (it was covered by a tmpfs)."""
    os.makedirs(path, exist_ok=True)
    _mount_call(f"/proc/self/fd/{fd}", path, None, MS_BIND, None, "bind a kept path")


class _MountAttr(ctypes.Structure):
    _fields_ = [
        ("attr_set", ctypes.c_uint64),
        ("attr_clr", ctypes.c_uint64),
        ("propagation", ctypes.c_uint64),
        ("userns_fd", ctypes.c_uint64),
    ]


def _set_readonly(path: str, readonly: bool, recursive: bool, step: str) -> None:
    attr = _MountAttr(MOUNT_ATTR_RDONLY if readonly else 0, 0 if readonly else MOUNT_ATTR_RDONLY)
    result = _syscall(
        ctypes.c_long(_SYS_MOUNT_SETATTR), ctypes.c_int(-100), path.encode(),
        ctypes.c_uint(AT_RECURSIVE if recursive else 0), ctypes.byref(attr),
        ctypes.c_size_t(ctypes.sizeof(attr)),
    )
    check(result, step)


def make_readonly(path: str = "/") -> None:
    """Every mount at and below `path` read-only, in one call (mount_setattr, Linux 5.12)."""
    _set_readonly(path, True, True, "make the file system read-only (mount_setattr)")


def bind_readonly(fd: int, path: str) -> None:
    """Bind the directory open as `fd` onto `path`, read-only (that one mount)."""
    os.makedirs(path, exist_ok=True)
    _mount_call(f"/proc/self/fd/{fd}", path, None, MS_BIND, None, "bind read-only")
    _set_readonly(path, True, False, f"make {path} read-only (mount_setattr)")


def make_writable(fd: int, path: str) -> None:
    """Bind `path` (open as `fd`) onto itself and make that one mount writable again."""
    _mount_call(f"/proc/self/fd/{fd}", path, None, MS_BIND, None, "bind a writable path")
    _set_readonly(path, False, False, f"make {path} writable (mount_setattr)")
