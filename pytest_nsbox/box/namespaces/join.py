"""Entering a box made ahead: pidfds, setns, and the one clone that needs no copy.

A box's namespaces are made ahead by its init (pid 1, a child of the box maker); the
test process is forked from pytest and joins them with one ``setns(pidfd, ...)``. A
process is born into a pid namespace only through its parent's pid-for-children, so:

- where pytest may set its own pid-for-children (CAP_SYS_ADMIN in its user namespace:
  root, or a pytest inside a box), it does so around the fork (`enter_pid_namespace`)
  and the forked child is the test, born in the box;
- elsewhere (a non-root pytest) the forked child joins the box's user namespace and
  its pid namespace for children in one setns, and goes on as a `clone_vm` child: one
  that shares its memory (no second copy of pytest), is born in the box's pid
  namespace and has pytest as its parent.
"""

from __future__ import annotations

import ctypes
import os
import signal

from .clone import CLONE_NEWPID
from .libc import MACHINE, SetupFailed, check, libc

TYPE_CHECKING = False  # no typing in the box maker (see maker_process)
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import NoReturn

_SYS_PIDFD_OPEN = 434  # the same on every architecture (new syscall table)
_SYS_PIDFD_SEND_SIGNAL = 424
_SYS_GETTID = {"x86_64": 186, "aarch64": 178}
_SYS_SET_TID_ADDRESS = {"x86_64": 218, "aarch64": 96}

CLONE_VM = 0x100
CLONE_VFORK = 0x4000
CLONE_PARENT = 0x8000
CLONE_PARENT_SETTID = 0x100000
CLONE_CHILD_SETTID = 0x1000000

_setns = libc.setns
_setns.argtypes = [ctypes.c_int, ctypes.c_int]
_syscall = libc.syscall
_syscall.restype = ctypes.c_long


def pidfd_open(pid: int) -> int:
    return check(int(_syscall(ctypes.c_long(_SYS_PIDFD_OPEN), ctypes.c_int(pid),
                              ctypes.c_uint(0))), "pidfd_open")


def pidfd_kill(pidfd: int, signum: int = signal.SIGKILL) -> bool:
    """Send `signum` to the process behind `pidfd`; False when it is gone already."""
    result = _syscall(ctypes.c_long(_SYS_PIDFD_SEND_SIGNAL), ctypes.c_int(pidfd),
                      ctypes.c_int(int(signum)), None, ctypes.c_uint(0))
    return bool(result == 0)


def setns(fd: int, flags: int, step: str = "setns") -> None:
    check(_setns(fd, flags), step)


def may_set_pid_namespace() -> bool:
    """True when this process may set its pid-for-children to a box's and back: it holds
    CAP_SYS_ADMIN in its own user namespace and over its own pid namespace (root; not a
    pytest inside a box, whose pid namespace belongs to the box's outer user namespace).
    Probed by setting it to where it is."""
    try:
        fd = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        return bool(_setns(fd, CLONE_NEWPID) == 0)
    finally:
        os.close(fd)


class PidNamespace:
    """Set this thread's pid-for-children to a box's pid namespace, and back."""

    def __init__(self) -> None:
        self._own = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)

    def enter(self, pidfd: int) -> None:
        setns(pidfd, CLONE_NEWPID, "setns(CLONE_NEWPID) into the box")

    def leave(self) -> None:
        setns(self._own, CLONE_NEWPID, "setns(CLONE_NEWPID) back")


# -- the clone that shares memory -------------------------------------------------------

_ENTRY = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p)
_clone = libc.clone
_clone.restype = ctypes.c_int
_clone.argtypes = [_ENTRY, ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p,
                   ctypes.c_void_p, ctypes.c_void_p]
_pthread_self = libc.pthread_self
_pthread_self.restype = ctypes.c_void_p
_mmap = libc.mmap
_mmap.restype = ctypes.c_void_p
_mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                  ctypes.c_long]
_mprotect = libc.mprotect
_mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
_PROT_RW, _MAP_FLAGS = 3, 0x02 | 0x20 | 0x4000 | 0x20000  # PRIVATE|ANON|NORESERVE|STACK
_PAGE = os.sysconf("SC_PAGE_SIZE")


def _forget_clear_tid() -> None:
    """Let this process die without zeroing the thread id the clone child shares.

    glibc forks with CLONE_CHILD_CLEARTID at its cached thread id, so this process's exit
    writes 0 there: in memory the clone child shares, while it runs. With its cached id 0
    the child's glibc takes every rwlock it write-locks for its own (EDEADLK), so
    `setlocale()` unlocks a lock it never held and leaves it write-locked: the next
    `strerror()` there, or in a child it forks, waits for ever (a hang in the user lane).
    """
    number = _SYS_SET_TID_ADDRESS.get(MACHINE)
    if number is None:
        raise SetupFailed("clone_vm: set_tid_address", 38)
    _syscall(ctypes.c_long(number), None)


def _tid_slot() -> int:
    """The address of glibc's cached thread id of the calling thread (in struct pthread).

    `raise()` (so `abort()`) signals the tid glibc cached; a raw clone does not update
    it, so the clone child asks the kernel to write its own id there (CLONE_CHILD_SETTID).
    Found by value: the one int near the thread pointer equal to gettid().
    """
    number = _SYS_GETTID.get(MACHINE)
    if number is None:
        raise SetupFailed("clone_vm: gettid", 38)
    me = int(_syscall(ctypes.c_long(number)))
    base = int(_pthread_self())
    for offset in (0x2d0, *range(0, 0x1000, 4)):
        if ctypes.c_int.from_address(base + offset).value == me:
            return int(base + offset)
    raise SetupFailed("clone_vm: glibc's thread id", 2)


def _stack_size() -> int:
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_STACK)
    return soft if 0 < soft < (256 << 20) else 64 << 20


def clone_vm(entry: Callable[[int], NoReturn]) -> NoReturn:
    """Go on as a child that shares this process's memory: `entry(host_pid)` runs there.

    The child is born in this process's pid-for-children namespace with this process's
    parent as its parent (CLONE_PARENT), on a stack of its own; this process sleeps
    until the parent kills it (CLONE_VFORK: it never runs again, so the memory is the
    child's alone). `host_pid` is the child's pid as the parent sees it, which the child
    cannot see from inside its pid namespace.
    """
    size = _stack_size()
    stack = _mmap(None, size, _PROT_RW, _MAP_FLAGS, -1, 0)
    if not stack or stack == ctypes.c_void_p(-1).value:
        raise SetupFailed("clone_vm: mmap a stack", ctypes.get_errno())
    _mprotect(stack, _PAGE, 0)  # a guard page: an overflow faults as on the main stack
    host_pid = ctypes.c_int(0)

    def run(_arg: object) -> int:
        entry(host_pid.value)  # never returns

    callback = _ENTRY(run)
    _forget_clear_tid()
    flags = (CLONE_VM | CLONE_VFORK | CLONE_PARENT | CLONE_PARENT_SETTID | CLONE_CHILD_SETTID
             | signal.SIGCHLD)
    top = (stack + size - 64) & ~0xF
    result = _clone(callback, top, flags, None, ctypes.addressof(host_pid), None, _tid_slot())
    raise SetupFailed("clone_vm", ctypes.get_errno() if result < 0 else 0)
