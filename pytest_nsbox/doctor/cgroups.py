"""The cgroup lines of the report (what limits and figures a box can have here) and the
header's one-phrase summary of them.

The layout comes from resources.cgroups.detect() (file reads); only "can pytest make a
box cgroup here" is probed, in a child that makes one and removes it again.
"""

from __future__ import annotations

import contextlib
import os
from functools import partial
from typing import Any, NamedTuple

from .facts import container, read
from .report import DEGRADED, PASS, Check
from .runner import Result, run_probe

V1_NEEDED = ("memory", "cpu", "cpuacct", "pids", "cpuset")
V2_NEEDED = ("memory", "cpu", "pids", "cpuset")
_HOW = "file: cgroups.detect() (/proc/self/mountinfo, /proc/self/cgroup, cgroup files)"
_DOCKER_CGROUP_FIX = ("in Docker, give the container its own writable cgroup: `--cgroupns=private` "
                      "and a read-write /sys/fs/cgroup (`--privileged`, or rootless Docker/Podman "
                      "with a delegated cgroup)")


class _Layout(NamedTuple):
    """What detect() found, in the terms the lines need."""

    facts: dict[str, Any]
    v2: bool
    have: set[str]  # the controllers present (v2: available to pytest's cgroup)
    where: str  # the directories a box's cgroups would be made under
    fix: str  # how to get a writable cgroup here


def _probe_write(dirs: list[str], limit_files: dict[str, str]) -> Result:
    """mkdir a cgroup under each of `dirs`, write a limit where named and present, rmdir it."""
    failed: dict[str, str] = {}
    for parent in dirs:
        path = f"{parent}/nsbox-doctor-{os.getpid()}"
        try:
            os.mkdir(path)
        except OSError as exc:
            failed[parent] = f"mkdir: {os.strerror(exc.errno or 0)}"
            continue
        try:
            # v2: memory.max shows only once the parent enables memory for its children
            # (the session does that, moving pytest to a leaf); the doctor changes nothing.
            if parent in limit_files and os.path.exists(f"{path}/{limit_files[parent]}"):
                with open(f"{path}/{limit_files[parent]}", "w") as f:
                    f.write("1073741824")
        except OSError as exc:
            failed[parent] = f"write {limit_files[parent]}: {os.strerror(exc.errno or 0)}"
        finally:
            with contextlib.suppress(OSError):
                os.rmdir(path)
    return {"ok": not failed, "failed": failed}


def _controllers(layout: _Layout) -> Check:
    needed = V2_NEEDED if layout.v2 else V1_NEEDED
    missing = [c for c in needed if c not in layout.have]
    listed = " ".join(c for c in needed if c in layout.have) or "none"
    if not missing:
        return Check("cgroup controllers", PASS, listed, method=_HOW)
    cfix = ("delegate them: `sudo systemctl edit user@.service` with `[Service]` "
            "`Delegate=cpu cpuset io memory pids`, or enable them in the parent's "
            "cgroup.subtree_control" if layout.v2 else
            "mount the missing v1 hierarchies (or boot with cgroup v2)")
    return Check("cgroup controllers", DEGRADED,
                 f"{listed}; missing {' '.join(missing)} (those limits fail)", cfix, _HOW)


def _writable(layout: _Layout, timeout: float) -> tuple[Check, bool]:
    """Whether a box cgroup can be made (and limited) under every directory it needs."""
    facts, where = layout.facts, layout.where
    if layout.v2:
        dirs = [where] if where else []
        limits = {where: "memory.max"} if "memory" in layout.have else {}
    else:
        v1 = {c: d for c, d in facts.get("v1", {}).items() if c in V1_NEEDED}
        dirs = sorted({d["path"] for d in v1.values()})
        limits = {v1["memory"]["path"]: "memory.limit_in_bytes"} if "memory" in v1 else {}
    result = run_probe(partial(_probe_write, dirs, limits), timeout)
    how = f"probe: mkdir a cgroup under {where or 'nothing'}, write a memory limit, rmdir"
    if result["ok"] and dirs:
        return Check("cgroup writable", PASS, f"a box cgroup can be made under {where}",
                     method=how), True
    by_error: dict[str, list[str]] = {}
    for path, error in result.get("failed", {}).items():
        by_error.setdefault(error, []).append(path)
    why = "; ".join(f"{e} under {', '.join(ps)}" for e, ps in by_error.items()) or (
        result.get("step") or "no cgroup directory")
    return Check("cgroup writable", DEGRADED,
                 f"not writable ({why}): boxes run without limits or memory peak",
                 layout.fix, how), False


def _cpu_weight(layout: _Layout, writable: bool) -> Check:
    """Whether a box may have a cpu_weight: the cpu controller, in cgroups pytest may write."""
    name, file = "cpu weight", "cpu.weight" if layout.v2 else "cpu.shares"
    if "cpu" not in layout.have:
        return Check(name, DEGRADED, "no cpu controller: a box with cpu_weight fails with "
                     "BoxUnavailable", "the cgroup controllers fix above", _HOW)
    cpu_writable = (layout.facts.get("delegated") if layout.v2
                    else layout.facts.get("v1", {}).get("cpu", {}).get("writable"))
    if not (writable and cpu_writable):
        return Check(name, DEGRADED, "the cpu controller is not writable here: a box with "
                     "cpu_weight fails with BoxUnavailable", layout.fix, _HOW)
    return Check(name, PASS, f"cpu_weight is written as {file} of each box that asks it",
                 method=_HOW)


def _delegation(layout: _Layout) -> list[Check]:
    """v2 only: whether pytest's cgroup is delegated to this user."""
    from ..resources import cgroups

    if not layout.v2:
        return []
    if layout.facts.get("delegated"):
        return [Check("cgroup delegation", PASS, f"{layout.where} is delegated to uid "
                      f"{os.geteuid()} (cgroup.subtree_control writable)", method=_HOW)]
    return [Check("cgroup delegation", DEGRADED,
                  f"{layout.where} is not delegated to uid {os.geteuid()}",
                  cgroups.user_fix(), _HOW)]


def _kill(layout: _Layout) -> Check:
    if layout.facts.get("cgroup_kill"):
        return Check("cgroup.kill", PASS, "a box is killed in one write", method=_HOW)
    return Check("cgroup.kill", DEGRADED,
                 "absent" + (" (cgroup v1)" if not layout.v2 else "")
                 + ": boxes are killed by rounds of kill(2), racing forks",
                 "cgroup v2 on Linux 5.14+ (boot with "
                 "`systemd.unified_cgroup_hierarchy=1`)", _HOW)


def _memory_peak(layout: _Layout) -> Check:
    peak_file = "memory.peak" if layout.v2 else "memory.max_usage_in_bytes"
    if layout.facts.get("memory_peak"):
        return Check("memory peak", PASS, f"{peak_file} present", method=_HOW)
    return Check("memory peak", DEGRADED, f"{peak_file} absent: no nsbox_memory_peak",
                 "Linux 5.19+ for memory.peak on cgroup v2", _HOW)


def _devices(layout: _Layout) -> Check:
    """Whether the kernel refuses devices a box was not given (not only its /dev)."""
    if layout.v2:
        from ..resources.devices import filter_available

        how = "probe: load a BPF_PROG_TYPE_CGROUP_DEVICE program"
        if filter_available():
            return Check("device control", PASS, "an eBPF device filter is attached to each "
                         "box's cgroup", method=how)
    else:
        how = "file: /proc/self/mountinfo (a devices hierarchy of its own), its access"
        v1 = layout.facts.get("v1", {})
        devices = v1.get("devices")
        shared = devices and any(c != "devices" and d["path"] == devices["path"]
                                 for c, d in v1.items())  # mounted with other controllers
        if devices and devices["writable"] and not shared:
            return Check("device control", PASS, "each box joins a v1 devices cgroup that "
                         "allows only its devices", method=how)
    if os.geteuid() != 0:
        return Check("device control", PASS, "a box's user namespace refuses mknod and its "
                     "/dev holds only its devices (the kernel's device control needs root, "
                     "as do user='host' boxes)", method=how)
    return Check("device control", DEGRADED, "no devices cgroup or eBPF device filter: a "
                 "user='host' box could mknod a device", "mount the v1 devices controller, "
                 "or a kernel with CONFIG_CGROUP_BPF (cgroup v2)", how)


def _swap(layout: _Layout) -> Check:
    swap_file = "memory.swap.max" if layout.v2 else "memory.memsw.limit_in_bytes"
    if layout.facts.get("swap_accounting"):
        return Check("swap accounting", PASS, f"{swap_file} present: a memory limit "
                     "counts swap too", method=_HOW)
    if len((read("/proc/swaps") or "").splitlines()) <= 1:
        return Check("swap accounting", PASS, f"{swap_file} absent, but this machine "
                     "has no swap, so memory limits hold", method=_HOW + ", /proc/swaps")
    return Check("swap accounting", DEGRADED, f"{swap_file} absent: a box may swap "
                 "past its memory limit", "boot with `swapaccount=1` (cgroup v1) or "
                 "a kernel with CONFIG_MEMCG_SWAP", _HOW + ", /proc/swaps")


def cgroup_checks(timeout: float) -> list[Check]:
    """The cgroup lines: version, controllers, writable, cpu weight, delegation, kill,
    memory peak, device control, swap accounting."""
    from ..resources import cgroups

    try:
        facts = cgroups.detect()
    except OSError as exc:
        return [Check("cgroups", DEGRADED, f"cannot read the cgroup layout: {exc}",
                      "mount cgroup2 on /sys/fs/cgroup", "file: /proc/self/mountinfo")]
    version = facts["version"]
    if version == "none":
        return [Check("cgroup version", DEGRADED, "no cgroup hierarchy is mounted: no limits, "
                      "no memory peak", "mount cgroup2: `mount -t cgroup2 none /sys/fs/cgroup` "
                      "(as root)", _HOW)]
    v2 = version == "v2"
    label = {"v1": "v1", "hybrid": "v1 (hybrid: controllers on v1, cgroup2 unused)",
             "v2": "v2 (unified)"}[version]
    fix = cgroups.user_fix()
    if container():
        fix += f"; {_DOCKER_CGROUP_FIX}"
    if v2:
        have = set(facts.get("controllers_available", []))
        where = facts.get("path", "")
    else:
        have = set(facts.get("v1", {}))
        where = ", ".join(sorted({d["path"] for c, d in facts.get("v1", {}).items()
                                  if c in V1_NEEDED}))
    layout = _Layout(facts, v2, have, where, fix)
    writable, can_write = _writable(layout, timeout)
    return [Check("cgroup version", PASS, label, method=_HOW), _controllers(layout), writable,
            _cpu_weight(layout, can_write), *_delegation(layout), _kill(layout),
            _memory_peak(layout), _devices(layout), _swap(layout)]


def summary() -> str:
    """The header's phrase: the cgroup version, its controllers, whether limits hold."""
    from ..resources import cgroups

    try:
        facts = cgroups.detect()
    except OSError:
        return "cgroups unreadable"
    version = facts["version"]
    if version == "none":
        return "no cgroups (no limits)"
    if version == "v2":
        have = [c for c in V2_NEEDED if c in facts.get("controllers_available", [])]
        state = "delegated (limits available)" if facts.get("delegated") else (
            "writable" if facts.get("writable") else "not writable (no limits)")
        return f"cgroup v2 ({' '.join(have)}) {state}"
    # only the hierarchies boxes use: devices, blkio or a named one (name=systemd) left
    # root's do not take limits away (found under cgroup-setup's cgroups: limits held
    # while this said "not writable")
    v1 = {c: d for c, d in facts.get("v1", {}).items() if c in V1_NEEDED}
    have = [c for c in ("memory", "cpu", "pids", "cpuset") if c in v1]
    writable = v1 and all(d["writable"] for d in v1.values())
    return f"cgroup v1 ({' '.join(have)}) " + ("writable (limits available)" if writable
                                                else "not writable (no limits)")
