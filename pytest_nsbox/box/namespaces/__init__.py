"""Linux namespaces through ctypes: clone, uid/gid maps, mounts, hostname, loopback.

One module a concern: `libc` (the ctypes handle and `SetupFailed`), `clone` (new
processes in new namespaces), `idmap` (the user namespace's maps), `mounts`, `uts` (the
hostname) and `loopback`. This package re-exports their names, so callers write
``from pytest_nsbox.box import namespaces as ns`` and ``ns.clone_box(...)``.

Everything runs in the box's first process (its pid 1) except `clone_box`, which runs
in the parent. Failures raise `SetupFailed` with the errno and the step, which the box
turns into `BoxUnavailable` with the fix.
"""

from __future__ import annotations

from .clone import (
    CLONE_NEWCGROUP,
    CLONE_NEWIPC,
    CLONE_NEWNET,
    CLONE_NEWNS,
    CLONE_NEWPID,
    CLONE_NEWUSER,
    CLONE_NEWUTS,
    clone_box,
    fork_quietly,
    set_parent_death_signal,
    single_threaded,
    threading_ident,
    unshare,
)
from .idmap import write_id_maps
from .join import clone_vm, pidfd_kill, pidfd_open, setns
from .libc import SetupFailed
from .loopback import bring_loopback_up
from .mounts import (
    bind_back,
    bind_file,
    bind_onto,
    bind_readonly,
    is_under,
    make_mounts_private,
    make_readonly,
    make_writable,
    mount_devpts,
    mount_overlay,
    mount_proc,
    mount_tmpfs,
    remove_tree,
)
from .uts import set_hostname

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
    "bind_onto",
    "bind_readonly",
    "bring_loopback_up",
    "clone_box",
    "clone_vm",
    "fork_quietly",
    "is_under",
    "make_mounts_private",
    "make_readonly",
    "make_writable",
    "mount_devpts",
    "mount_overlay",
    "mount_proc",
    "mount_tmpfs",
    "pidfd_kill",
    "pidfd_open",
    "remove_tree",
    "set_hostname",
    "set_parent_death_signal",
    "setns",
    "single_threaded",
    "threading_ident",
    "unshare",
    "write_id_maps",
]
