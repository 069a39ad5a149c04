"""What to tell a user whose machine refused a box: the missing piece and how to fix it."""

from __future__ import annotations

import errno

__all__ = ["explain_setup_failure"]

USERNS_FIX = (
    "enable unprivileged user namespaces: `sysctl -w user.max_user_namespaces=15000`; "
    "on Debian before 11 `sysctl -w kernel.unprivileged_userns_clone=1`; on Ubuntu 23.10+ "
    "`sysctl -w kernel.apparmor_restrict_unprivileged_userns=0` (or an AppArmor profile "
    "allowing `userns` for python); in Docker run with `--security-opt seccomp=unconfined` "
    "(the default seccomp profile refuses namespace flags); or run pytest as root"
)
PROC_FIX = (
    "a fresh /proc cannot be mounted where parts of the host's /proc are masked (Docker, "
    "Podman): run the container with `--security-opt systempaths=unconfined` or `--privileged`"
)
MOUNT_FIX = (
    "mounts are refused in the box's mount namespace; in Docker, run with "
    "`--security-opt seccomp=unconfined --security-opt apparmor=unconfined`"
)


def explain_setup_failure(step: str, err: int) -> str:
    """One message: the step that failed, the kernel's reason, and the fix."""
    reason = f"{step} failed: {errno.errorcode.get(err, err)} ({_strerror(err)})"
    if step in ("clone", "unshare") and err in (errno.EPERM, errno.ENOSPC, errno.EINVAL,
                                                  errno.EUSERS):
        return f"cannot create the box's namespaces: {reason}. Fix: {USERNS_FIX}"
    if step.startswith(("write uid_map", "write gid_map", "write setgroups")):
        return (f"the kernel created a user namespace but refused its id map: {reason}. "
                f"Fix: {USERNS_FIX}")
    if step.startswith("mount tmpfs: no directory"):
        path = step.rsplit(" ", 1)[-1]
        return (f"the tmpfs path {path} does not exist here; create it, or leave it out of "
                "the box's tmpfs option")
    if step.startswith("open device"):
        return f"the box asks for a device this machine lacks: {reason}"
    if step.startswith("mount /proc"):
        return f"cannot mount the box's /proc: {reason}. Fix: {PROC_FIX}"
    if step.startswith(("mount", "make", "bind", "remount")):
        return f"cannot set up the box's mounts: {reason}. Fix: {MOUNT_FIX}"
    return f"cannot set up the box: {reason}"


def _strerror(err: int) -> str:
    import os

    return os.strerror(err)
