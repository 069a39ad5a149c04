"""Facts read from files (/proc, /sys, /lib/modules, mountinfo): no child, no probe.

The probes say whether a step works; these say why it may not (a sysctl, a seccomp
filter, a missing kernel module) and what the machine is. Only file reads, so the
plugin's header can afford them on every session.
"""

from __future__ import annotations

import os
import platform
import sys
from typing import Any

LINUX = sys.platform.startswith("linux")


def read(path: str) -> str | None:
    """The stripped text of `path`, or None when it cannot be read."""
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def userns_sysctls() -> dict[str, str | None]:
    return {
        "user.max_user_namespaces": read("/proc/sys/user/max_user_namespaces"),
        "kernel.unprivileged_userns_clone": read("/proc/sys/kernel/unprivileged_userns_clone"),
        "kernel.apparmor_restrict_unprivileged_userns":
            read("/proc/sys/kernel/apparmor_restrict_unprivileged_userns"),
    }


def container() -> str | None:
    if os.path.exists("/.dockerenv"):
        return "docker"
    if os.path.exists("/run/.containerenv"):
        return "podman"
    return os.environ.get("container") or None  # noqa: SIM112 (systemd spells it so)


def _seccomp_filtered() -> bool:
    status = read("/proc/self/status") or ""
    return any(line.split() == ["Seccomp:", "2"] for line in status.splitlines())


def userns_cause(step: str) -> str:
    """Which sysctl or sandbox most likely refused the user namespace, from file reads."""
    s = userns_sysctls()
    if s["user.max_user_namespaces"] == "0":
        return "user.max_user_namespaces is 0"
    if s["kernel.unprivileged_userns_clone"] == "0" and os.geteuid() != 0:
        return "kernel.unprivileged_userns_clone is 0"
    if s["kernel.apparmor_restrict_unprivileged_userns"] == "1" and "map" in step:
        return "Ubuntu's AppArmor restriction (kernel.apparmor_restrict_unprivileged_userns=1)"
    if _seccomp_filtered():
        where = f" ({container()})" if container() else ""
        return f"a seccomp filter refuses namespace flags{where}"
    return ""


def kernel_module(name: str) -> str:
    """'loaded', 'on disk', 'absent' or 'absent, no module loading' for kernel module `name`."""
    if os.path.exists(f"/sys/module/{name}"):
        return "loaded"
    base = f"/lib/modules/{platform.release()}"
    for index in ("modules.builtin", "modules.dep"):
        text = read(f"{base}/{index}") or ""
        if f"/{name}.ko" in text:
            return "built in" if index == "modules.builtin" else "on disk"
    if not os.path.exists("/proc/modules"):
        return "absent, no module loading"
    return "absent"


def machine() -> dict[str, Any]:
    """The report's first line: system, release, arch, uid, Python, container."""
    uid = os.geteuid() if hasattr(os, "geteuid") else None
    return {"system": platform.system(), "release": platform.release(),
            "arch": platform.machine(), "uid": uid, "python": platform.python_version(),
            "container": container() if LINUX else None}


# --- /proc/self/mountinfo -------------------------------------------------------------------

def is_overlay(path: str) -> bool:
    """Whether the topmost mount at `path` is an overlay (as a box's /tmp over the host's)."""
    kind = ""
    with open("/proc/self/mountinfo") as file:
        for line in file:
            fields = line.split()
            if fields[4] == path and "-" in fields:
                kind = fields[fields.index("-") + 1]
    return kind == "overlay"


def mounts_below(path: str) -> list[str]:
    """Mount points strictly below `path` in this mount namespace."""
    prefix = path.rstrip("/") + "/"
    try:
        with open("/proc/self/mountinfo") as file:
            return [fields[4] for fields in (line.split() for line in file)
                    if fields[4].startswith(prefix)]
    except OSError:
        return []


def fs_type(path: str) -> str:
    """The file system type of the mount that holds `path`."""
    best, kind = "", "unknown"
    real = os.path.realpath(path)
    try:
        with open("/proc/self/mountinfo") as mounts:
            for line in mounts:
                fields = line.split()
                point = fields[4]
                if (real == point or real.startswith(point.rstrip("/") + "/")) and \
                        len(point) >= len(best):
                    best, kind = point, fields[fields.index("-") + 1]
    except (OSError, ValueError, IndexError):
        pass
    return kind
