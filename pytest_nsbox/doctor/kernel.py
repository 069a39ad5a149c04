"""The namespace, mount and network lines of the report, and the default-box probe.

One table row a line: the probe, the status its failure costs, the words for success
and for how it was found, and, where the errno alone says too little, a function that
words the failure (a missing kernel module, an overlay refused over mounts below /tmp).
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from functools import partial
from typing import NamedTuple

from . import netlink, probes
from .facts import kernel_module, mounts_below, userns_cause
from .report import DEGRADED, FAIL, PASS, Check
from .runner import Result, failure, run_probe

_NAMESPACES = (("pid", "CLONE_NEWPID"), ("net", "CLONE_NEWNET"), ("mount", "CLONE_NEWNS"),
               ("uts", "CLONE_NEWUTS"), ("ipc", "CLONE_NEWIPC"), ("cgroup", "CLONE_NEWCGROUP"))

Explain = Callable[[Result, str, str], tuple[str, str]]  # (result, detail, fix) -> better ones


class _Row(NamedTuple):
    """One line: `probe(userns)` runs in a child; `{via}` in `good` and `how` says how its
    namespaces were made."""

    name: str
    probe: Callable[[bool], Result]
    bad: str
    good: str
    how: str
    explain: Explain | None = None


def _cgroup_namespace(result: Result, detail: str, fix: str) -> tuple[str, str]:
    return detail + " (boxes do not use a cgroup namespace yet)", fix


def _overlay(result: Result, detail: str, fix: str) -> tuple[str, str]:
    below = mounts_below("/tmp")
    over_mounts = bool(below) and result.get("errno") == errno.EINVAL
    if over_mounts:
        detail += (f" (the kernel refuses an overlay in a user namespace over a "
                   f"directory with mounts below it: {', '.join(below[:3])})")
    detail += ("; boxes get an empty tmpfs instead (as tmpfs_mode='empty'): files "
               "session fixtures write to /tmp are not seen in boxes")
    fix = ("Linux 5.11 or newer allows overlay mounts in a user namespace; meanwhile "
           "write session files under pytest's tmp_path_factory (kept in boxes) or "
           "pass the path to the box with keep_paths")
    if over_mounts:
        fix = (f"mount {below[0]} somewhere outside /tmp (or unmount it), or write "
               "session files under pytest's tmp_path_factory (kept in boxes)")
    return detail, fix


def _readonly(result: Result, detail: str, fix: str) -> tuple[str, str]:
    if result.get("errno") == errno.ENOSYS:
        return ("this kernel has no mount_setattr (Linux 5.12+): readonly=True boxes cannot "
                "run", "use Linux 5.12 or newer")
    return detail, fix


def _module_missing(kind: str, result: Result, detail: str, fix: str) -> tuple[str, str]:
    """A link or qdisc refused: worded by whether its kernel module is there or can be."""
    from ..resources.net.netem import NETEM_FIX

    module = f"sch_{kind}" if kind in ("netem", "tbf") else kind
    state = kernel_module(module)
    detail = (f"{result.get('step')}: {os.strerror(int(result.get('errno', 0)))}; "
              f"module {module}: {state}")
    if state == "absent, no module loading":
        detail += " (this kernel cannot load modules: modprobe cannot help here)"
    fix = NETEM_FIX if kind == "netem" else (
        f"modprobe {module} (as root), or use a kernel built with it")
    if state == "absent, no module loading":
        fix += (f"; modprobe needs module loading, which this kernel lacks: use a "
                f"kernel built with {module} in (=y)")
    elif state == "absent":
        fix += "; or install the kernel's extra modules (linux-modules-extra-$(uname -r))"
    return detail, fix


def _tc_row(kind: str, use: str) -> _Row:
    what = "link" if kind in netlink.LINK_KINDS else "qdisc on lo"
    return _Row(kind, partial(probes.tc, kind), DEGRADED,
                f"a {kind} {what} created in a fresh net namespace ({use})",
                f"probe: unshare(net) {{via}}, rtnetlink RTM_NEW"
                f"{'LINK' if what == 'link' else 'QDISC'} {kind}; on failure the module "
                "is looked up in /sys/module, /proc/modules, /lib/modules",
                partial(_module_missing, kind))


_ROWS = (
    *(_Row(f"{name} namespace", partial(probes.namespace, flag),
           DEGRADED if name == "cgroup" else FAIL, "created {via}",
           f"probe: unshare({flag}) {{via}}", _cgroup_namespace if name == "cgroup" else None)
      for name, flag in _NAMESPACES),
    _Row("/proc mount", probes.proc_mount, FAIL,
         "a fresh /proc mounted in a new pid+mount namespace",
         "probe: unshare(pid, mount) {via}, fork, mount proc on /proc, readlink /proc/self"),
    _Row("tmpfs mount", partial(probes.tmpfs_mount, readonly=False), FAIL,
         "a private tmpfs mounted on /tmp",
         "probe: unshare(mount) {via}, make / private, mount tmpfs on /tmp, write a file"),
    _Row("tmpfs overlay", probes.overlay, DEGRADED,
         "tmpfs paths show the host's files (an overlay: the host's directory below, the "
         "box's tmpfs above)",
         "probe: unshare(mount) {via}, tmpfs on /tmp, overlay with the host's /tmp below; a "
         "host file shows, deleting it leaves the host's", _overlay),
    _Row("read-only mounts", partial(probes.tmpfs_mount, readonly=True), DEGRADED,
         "mount_setattr(AT_RECURSIVE, MOUNT_ATTR_RDONLY) made / read-only",
         "probe: mount tmpfs on /tmp {via}, mount_setattr / read-only, a write gets EROFS",
         _readonly),
    _Row("loopback", probes.loopback, FAIL,
         "lo up in a fresh net namespace; a TCP connect to 127.0.0.1 works",
         "probe: unshare(net) {via}, ioctl(SIOCSIFFLAGS) lo up, TCP connect"),
    _tc_row("veth", "multi-host networks"),
    _tc_row("bridge", "multi-host networks"),
    _tc_row("netem", "netem faults"),
    _tc_row("tbf", "netem rate limits"),
)


def _check(row: _Row, userns: bool, timeout: float) -> Check:
    via = "in a fresh user namespace" if userns else "without a user namespace (root)"
    result = run_probe(partial(row.probe, userns), timeout)
    how = row.how.format(via=via)
    if result["ok"]:
        return Check(row.name, PASS, row.good.format(via=via), method=how)
    detail, fix = failure(result)
    if row.explain is not None:
        detail, fix = row.explain(result, detail, fix)
    return Check(row.name, row.bad, detail, fix, how)


def _user_namespace(timeout: float) -> tuple[Check, Result]:
    from ..box.fixes import USERNS_FIX

    user = run_probe(probes.user_namespace, timeout)
    how = "probe: fork, unshare(CLONE_NEWUSER), write uid_map, setgroups, gid_map"
    if user["ok"]:
        return Check("user namespace", PASS, "created, and its uid/gid maps written",
                     method=how), user
    detail, _ = failure(user)
    cause = userns_cause(user.get("step", ""))
    detail += f" (likely: {cause})" if cause else ""
    if os.geteuid() == 0:
        detail += "; as root, boxes with user='host' still run"
    return Check("user namespace", FAIL, detail, USERNS_FIX, how), user


def _not_tried(user: Result) -> tuple[list[Check], Result]:
    """Without root and without a user namespace, nothing else can be tried."""
    names = ", ".join(name for name, _ in _NAMESPACES)
    box = {"ok": False, "step": user.get("step", "unshare"), "errno": user.get("errno", 0)}
    detail, fix = failure(box)
    return [Check("other namespaces", FAIL, f"{names} namespaces, mounts, loopback, veth and "
                  "qdiscs not tried: without root each needs a user namespace",
                  "the user namespace fix above"),
            Check("default box", FAIL, detail, fix, "the user namespace probe")], box


def _default_box(userns: bool, timeout: float) -> tuple[Check, Result]:
    box = run_probe(probes.default_box, timeout)
    how = "probe: the init's set-up of BoxOptions() in its namespaces"
    if box["ok"]:
        return Check("default box", PASS, "every step of a default box's set-up works",
                     method=how), box
    if not userns and str(box.get("step")) in ("unshare", "clone"):
        return Check("default box", FAIL, "needs a user namespace (user='self')",
                     "the user namespace fix above; or, as root, user='host'", how), box
    detail, fix = failure(box)
    return Check("default box", FAIL, detail, fix, how), box


def kernel_checks(timeout: float) -> tuple[list[Check], Result]:
    """The namespace, mount and network lines, and the default-box probe result."""
    user_check, user = _user_namespace(timeout)
    userns = bool(user["ok"])
    if not userns and os.geteuid() != 0:
        rest, box = _not_tried(user)
        return [user_check, *rest], box
    checks = [user_check, *(_check(row, userns, timeout) for row in _ROWS)]
    box_check, box = _default_box(userns, timeout)
    return [*checks, box_check], box
