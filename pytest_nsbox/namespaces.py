"""Linux namespaces through ctypes: clone, uid/gid maps, mounts, hostname, loopback.

Everything here runs in the box's first process (its pid 1) except `clone_box`, which
runs in the parent. Failures raise `SetupFailed` with the errno and the step, which the
box turns into `BoxUnavailable` with the fix.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import platform
import socket
import struct

__all__ = [
    "CLONE_NEWCGROUP",
    "CLONE_NEWIPC",
    "CLONE_NEWNET",
    "CLONE_NEWNS",
    "CLONE_NEWPID",
    "CLONE_NEWUSER",
    "CLONE_NEWUTS",
    "SetupFailed",
    "bind_back",
    "bind_file",
    "bind_readonly",
    "bring_loopback_up",
    "clone_box",
    "make_mounts_private",
    "make_readonly",
    "make_writable",
    "mount_devpts",
    "mount_proc",
    "mount_tmpfs",
    "set_parent_death_signal",
    "write_id_maps",
]

CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18

_SYS_CLONE = {"x86_64": 56, "aarch64": 220, "ppc64le": 120, "s390x": 120, "riscv64": 220}
_SYS_MOUNT_SETATTR = 442  # the same on every architecture (new syscall table)
AT_RECURSIVE = 0x8000
MOUNT_ATTR_RDONLY = 0x1

PR_SET_PDEATHSIG = 1
SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1


class SetupFailed(OSError):
    """A namespace step failed; `step` says which, for the message and the fix."""

    def __init__(self, step: str, err: int) -> None:
        super().__init__(err, f"{step}: {os.strerror(err)}")
        self.step = step


_libc = ctypes.CDLL(None, use_errno=True)
# PyDLL keeps the GIL held across the call: the clone child must come back holding it.
_pylibc = ctypes.PyDLL(None, use_errno=True)
_raw_syscall = _pylibc.syscall
_raw_syscall.restype = ctypes.c_long
_mount = _libc.mount
_mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong,
                   ctypes.c_char_p]
_prctl = _libc.prctl
_prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long

_before_fork = ctypes.pythonapi.PyOS_BeforeFork
_after_fork_parent = ctypes.pythonapi.PyOS_AfterFork_Parent
_after_fork_child = ctypes.pythonapi.PyOS_AfterFork_Child


def _check(result: int, step: str) -> int:
    if result < 0:
        raise SetupFailed(step, ctypes.get_errno())
    return result


# x86_64 syscalls a thread may sleep in without holding a libc lock (malloc, stdio): the
# blocking reads, waits and polls of an idle Python thread (execnet's under xdist), and
# futex, where a Python thread waits for the GIL that the cloning thread holds.
_QUIET_SYSCALLS = frozenset({0, 7, 23, 35, 43, 45, 47, 61, 202, 230, 232, 270, 271, 281, 288,
                             441})


def single_threaded() -> bool:
    """True when a raw clone() is safe: one thread, or the others asleep in a quiet syscall.

    A raw clone skips glibc's fork handlers, so a lock another thread holds at that moment
    stays locked in the child; a thread that sleeps in read() or waits for the GIL (which
    the caller holds) holds none.
    """
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        return False
    if len(tasks) == 1:
        return True
    if platform.machine() != "x86_64":
        return False
    me = str(threading_ident())
    for task in tasks:
        if task == me:
            continue
        try:
            with open(f"/proc/self/task/{task}/syscall", "rb") as file:
                number = file.read().split(b" ", 1)[0]
        except OSError:
            return False
        if not number.isdigit() or int(number) not in _QUIET_SYSCALLS:
            return False
    return True


def fork_quietly() -> int:
    """os.fork() without Python 3.12's warning about threads: the child only clones (or
    probes) and never takes a lock another thread may hold; a warning would be charged to
    the user's test."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*use of fork\\(\\) may lead to deadlocks",
                                category=DeprecationWarning)
        return os.fork()


def threading_ident() -> int:
    """The kernel's id of the calling thread."""
    import threading

    return threading.get_native_id()


def clone_box(flags: int) -> int:
    """clone() with namespace `flags`, like os.fork(): 0 in the child, its pid in the parent.

    A raw clone skips glibc's fork handlers, which only matters with other threads; the
    caller checks `single_threaded()` and uses os.fork() plus unshare() otherwise.
    """
    number = _SYS_CLONE.get(platform.machine())
    if number is None:
        raise SetupFailed("clone", errno.ENOSYS)
    _before_fork()
    pid = _raw_syscall(ctypes.c_long(number), ctypes.c_ulong(flags | 17), None, None, None, None)
    if pid == 0:
        _after_fork_child()
        return 0
    err = ctypes.get_errno()
    _after_fork_parent()
    if pid < 0:
        raise SetupFailed("clone", err)
    return int(pid)


def unshare(flags: int) -> None:
    _check(_libc.unshare(ctypes.c_int(flags)), "unshare")


def set_parent_death_signal(signum: int) -> None:
    _check(_prctl(PR_SET_PDEATHSIG, signum, 0, 0, 0), "prctl(PR_SET_PDEATHSIG)")


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


def _mount_call(source: str | None, target: str, fstype: str | None, flags: int,
                data: str | None, step: str) -> None:
    result = _mount(
        source.encode() if source else None,
        target.encode(),
        fstype.encode() if fstype else None,
        flags,
        data.encode() if data else None,
    )
    _check(result, f"{step} ({target})")


def make_mounts_private() -> None:
    """Stop mount events propagating to the host: every box mount stays in the box."""
    _mount_call(None, "/", None, MS_REC | MS_PRIVATE, None, "make / private")


def mount_proc() -> None:
    _mount_call("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, None, "mount /proc")


def mount_tmpfs(path: str, mode: str = "1777") -> None:
    _mount_call("tmpfs", path, "tmpfs", MS_NOSUID | MS_NODEV, f"mode={mode}", "mount tmpfs")


def mount_devpts(path: str) -> None:
    """A pts instance of the box's own: its ptys are not the host's."""
    _mount_call("devpts", path, "devpts", MS_NOSUID | MS_NOEXEC,
                "newinstance,ptmxmode=0666,mode=0620", "mount devpts")


def bind_file(fd: int, path: str) -> None:
    """Bind the file open as `fd` (a device node of the host) onto a new file at `path`."""
    os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
    _mount_call(f"/proc/self/fd/{fd}", path, None, MS_BIND, None, f"bind device {path}")


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
    _check(result, step)


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


def set_hostname(name: str) -> None:
    try:
        socket.sethostname(name)
    except OSError as exc:
        raise SetupFailed("sethostname", exc.errno or errno.EPERM) from None


def bring_loopback_up() -> None:
    """`ip link set lo up` in 0.1 ms: one ioctl, no netlink library."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack("16sH14x", b"lo", 0)
        try:
            flags = struct.unpack("16sH14x", fcntl.ioctl(sock, SIOCGIFFLAGS, request))[1]
            fcntl.ioctl(sock, SIOCSIFFLAGS, struct.pack("16sH14x", b"lo", flags | IFF_UP))
        except OSError as exc:
            raise SetupFailed("bring lo up", exc.errno or errno.EPERM) from None
