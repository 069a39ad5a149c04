"""New processes in new namespaces: clone(), unshare() and the checks that make them safe.

`clone_box` runs in the parent; the rest in whichever process makes namespaces.
"""

from __future__ import annotations

import ctypes
import errno
import os

from .libc import MACHINE, SetupFailed, check, libc

CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

_SYS_CLONE = {"x86_64": 56, "aarch64": 220, "ppc64le": 120, "s390x": 120, "riscv64": 220}
PR_SET_PDEATHSIG = 1

# PyDLL keeps the GIL held across the call: the clone child must come back holding it.
_pylibc = ctypes.PyDLL(None, use_errno=True)
_raw_syscall = _pylibc.syscall
_raw_syscall.restype = ctypes.c_long
_prctl = libc.prctl
_prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]

_before_fork = ctypes.pythonapi.PyOS_BeforeFork
_after_fork_parent = ctypes.pythonapi.PyOS_AfterFork_Parent
_after_fork_child = ctypes.pythonapi.PyOS_AfterFork_Child


# x86_64 syscalls a thread may sleep in without holding a libc lock (malloc, stdio): the
# blocking reads, waits and polls of an idle Python thread (execnet's under xdist), and
# futex, where a Python thread waits for the GIL that the cloning thread holds.
_QUIET_SYSCALLS = frozenset({0, 7, 23, 35, 43, 45, 47, 61, 202, 230, 232, 270, 271, 281, 288,
                             441})


def single_threaded() -> bool:
    """True when a raw clone() is safe: one thread, or the others Python threads asleep in
    a quiet syscall.

    A raw clone skips glibc's fork handlers, so a lock another thread holds at that moment
    stays locked in the child; a thread that sleeps in read() or waits for the GIL (which
    the caller holds) holds none. A library's own threads (OpenBLAS's pool, which numpy
    starts on import) need those handlers: without them the next fork in the child waits
    for ever to join a thread the clone did not copy.
    """
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        return False
    if len(tasks) == 1:
        return True
    if MACHINE != "x86_64":
        return False
    me = str(threading_ident())
    python_threads = _python_thread_ids()
    for task in tasks:
        if task == me:
            continue
        if task not in python_threads:
            return False  # a library's own thread (OpenBLAS, OpenMP): its fork handlers
            # must run, or a fork in the clone joins a thread that is not there, for ever
        try:
            with open(f"/proc/self/task/{task}/syscall", "rb") as file:
                number = file.read().split(b" ", 1)[0]
        except OSError:
            return False
        if not number.isdigit() or int(number) not in _QUIET_SYSCALLS:
            return False
    return True


def _python_thread_ids() -> set[str]:
    """Kernel ids of the threads Python's threading module started or knows."""
    import threading

    return {str(thread.native_id) for thread in threading.enumerate()}


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
    number = _SYS_CLONE.get(MACHINE)
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
    check(libc.unshare(ctypes.c_int(flags)), "unshare")


def set_parent_death_signal(signum: int) -> None:
    check(_prctl(PR_SET_PDEATHSIG, signum, 0, 0, 0), "prctl(PR_SET_PDEATHSIG)")
