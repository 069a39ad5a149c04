"""What this machine gives boxes, found by really trying it, and how to fix what it lacks.

Every kernel feature is probed in a forked child with a timeout, doing what a box does
(file reads alone lie: Ubuntu allows `unshare(CLONE_NEWUSER)` and then refuses the
uid_map; Docker's masked /proc refuses a fresh /proc mount). Each line is PASS, DEGRADED
(boxes run, one feature is missing) or FAIL (boxes cannot run); the exit status is the
worst line's rank. Netlink links and qdiscs are made with a hand-built rtnetlink request,
so the doctor needs neither pyroute2 nor cloudpickle.

`header_line()` and `boxing_available()` are cheap: they reuse a cache of the probes,
keyed by kernel, uid, boot and the user-namespace sysctls, and import nothing Linux-only
at module level, so this module imports on macOS and Windows too.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import platform
import select
import signal
import socket
import struct
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pytest

__all__ = [
    "DEGRADED",
    "FAIL",
    "PASS",
    "Check",
    "Report",
    "boxing_available",
    "header_line",
    "main",
    "run_doctor",
    "run_from_pytest",
    "run_probe",
]

PASS, DEGRADED, FAIL = "PASS", "DEGRADED", "FAIL"
RANK = {PASS: 0, DEGRADED: 1, FAIL: 2}
PROBE_TIMEOUT = 30.0  # the emulated VM runs 15-20x slower than a real machine
LINUX = sys.platform.startswith("linux")
_CACHE_VERSION = 2

Result = dict[str, Any]  # what a probe child sends back, as JSON


@dataclass
class Check:
    """One line of the report."""

    name: str
    status: str
    detail: str
    fix: str = ""
    method: str = ""


@dataclass
class Report:
    checks: list[Check]
    machine: dict[str, Any]

    @property
    def exit_status(self) -> int:
        return max((RANK[c.status] for c in self.checks), default=0)

    @property
    def verdict(self) -> str:
        return {0: PASS, 1: DEGRADED, 2: FAIL}[self.exit_status]

    def as_dict(self) -> dict[str, Any]:
        return {"verdict": self.verdict, "exit_status": self.exit_status,
                "machine": self.machine, "checks": [asdict(c) for c in self.checks]}

    def render(self, verbose: bool = False) -> str:
        m = self.machine
        lines = [f"pytest-nsbox doctor: {m['system']} {m['release']} {m['arch']}, "
                 f"uid {m['uid']}, Python {m['python']}"]
        width = max((len(c.name) for c in self.checks), default=0)
        for c in self.checks:
            lines.append(f"{c.status:<9} {c.name:<{width}}  {c.detail}")
            if c.fix and c.status != PASS:
                lines.append(f"{'':<9} {'':<{width}}  fix: {c.fix}")
            if verbose and c.method:
                lines.append(f"{'':<9} {'':<{width}}  how: {c.method}")
        meaning = {PASS: "boxes get everything they can ask for",
                   DEGRADED: "boxes run; the DEGRADED lines name what they cannot have",
                   FAIL: "boxes cannot run here until the FAIL lines are fixed"}
        lines.append(f"verdict: {self.verdict} (exit {self.exit_status}): {meaning[self.verdict]}")
        return "\n".join(lines)


# --- running a probe in a child ----------------------------------------------------------

def run_probe(fn: Callable[[], Result], timeout: float = PROBE_TIMEOUT) -> Result:
    """Run `fn` in a forked child and return its JSON result; a hang or crash is a result too.

    The child (and any child it forks) dies with its parent, so a timeout leaves nothing.
    """
    from .box import namespaces as ns

    parent = os.getpid()
    read_fd, write_fd = os.pipe()
    pid = ns.fork_quietly()
    if pid == 0:  # pragma: no cover - the child never returns
        out: Result
        try:
            os.close(read_fd)
            ns.set_parent_death_signal(signal.SIGKILL)
            if os.getppid() not in (parent, 0):  # 0: the parent is outside our pid ns
                os._exit(1)
            out = fn()
        except ns.SetupFailed as exc:
            out = {"ok": False, "step": exc.step, "errno": exc.errno or 0}
        except OSError as exc:
            out = {"ok": False, "step": str(exc), "errno": exc.errno or 0}
        except BaseException as exc:
            out = {"ok": False, "step": repr(exc), "errno": 0}
        try:
            os.write(write_fd, json.dumps(out).encode())
        finally:
            os._exit(0)
    os.close(write_fd)
    data, deadline = b"", time.monotonic() + timeout
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([read_fd], [], [], left)[0]:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                return {"ok": False, "step": f"probe timed out after {timeout:g} s", "errno": 0,
                        "timeout": True}
            chunk = os.read(read_fd, 65536)
            if not chunk:
                break
            data += chunk
    finally:
        os.close(read_fd)
    _, status = os.waitpid(pid, 0)
    try:
        result: Result = json.loads(data)
    except ValueError:
        return {"ok": False, "step": f"probe child died (wait status {status})", "errno": 0}
    return result


# --- probes (each runs in a child) --------------------------------------------------------

def _enter_userns(userns: bool) -> None:
    """A fresh user namespace mapping our own ids, as a default box makes (user='self')."""
    from .box import namespaces as ns

    if userns:
        uid, gid = os.geteuid(), os.getegid()  # before unshare: then they read as 65534
        ns.unshare(ns.CLONE_NEWUSER)
        ns.write_id_maps(uid, uid, gid, gid)


def _probe_userns() -> Result:
    uid = os.geteuid()
    _enter_userns(True)
    return {"ok": os.geteuid() == uid, "step": "uid inside is not the mapped uid", "errno": 0}


def _probe_namespace(flag_name: str, userns: bool) -> Result:
    from .box import namespaces as ns

    _enter_userns(userns)
    ns.unshare(getattr(ns, flag_name))
    if flag_name == "CLONE_NEWPID":
        return run_probe(lambda: {"ok": os.getpid() == 1, "step": "not pid 1", "errno": 0})
    if flag_name == "CLONE_NEWNET":
        names = [name for _, name in socket.if_nameindex()]
        return {"ok": names == ["lo"], "step": f"fresh namespace has {names}", "errno": 0}
    if flag_name == "CLONE_NEWUTS":
        ns.set_hostname("nsbox-doctor")
        return {"ok": socket.gethostname() == "nsbox-doctor", "step": "sethostname", "errno": 0}
    if flag_name == "CLONE_NEWNS":
        ns.make_mounts_private()
    return {"ok": True}


def _probe_proc(userns: bool) -> Result:
    from .box import namespaces as ns

    _enter_userns(userns)
    ns.unshare(ns.CLONE_NEWPID | ns.CLONE_NEWNS)

    def inside() -> Result:
        ns.make_mounts_private()
        ns.mount_proc()
        return {"ok": os.readlink("/proc/self") == "1", "step": "/proc shows the host's pids",
                "errno": 0}

    return run_probe(inside)


def _probe_tmpfs(userns: bool, readonly: bool) -> Result:
    from .box import namespaces as ns

    _enter_userns(userns)
    ns.unshare(ns.CLONE_NEWNS)
    ns.make_mounts_private()
    ns.mount_tmpfs("/tmp")
    if readonly:
        ns.make_readonly("/")
    try:
        with open("/tmp/nsbox-doctor", "w") as f:
            f.write("x")
    except OSError as exc:
        if readonly and exc.errno == errno.EROFS:
            return {"ok": True}
        raise
    return {"ok": not readonly, "step": "/ still writable after mount_setattr", "errno": 0}


def _probe_loopback(userns: bool) -> Result:
    from .box import namespaces as ns

    _enter_userns(userns)
    ns.unshare(ns.CLONE_NEWNET)
    ns.bring_loopback_up()
    with socket.socket() as server, socket.socket() as client:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        client.settimeout(5)
        client.connect(server.getsockname())
    return {"ok": True}


# rtnetlink, by hand (linux/netlink.h, rtnetlink.h, if_link.h, pkt_sched.h)
_NLM_F_REQUEST, _NLM_F_ACK, _NLM_F_EXCL, _NLM_F_CREATE = 1, 4, 0x200, 0x400
_NLMSG_ERROR, _RTM_NEWLINK, _RTM_NEWQDISC = 2, 16, 36
_IFLA_IFNAME, _IFLA_LINKINFO, _IFLA_INFO_KIND, _IFLA_INFO_DATA, _VETH_INFO_PEER = 3, 18, 1, 2, 1
_TCA_KIND, _TCA_OPTIONS, _TCA_TBF_PARMS, _TC_H_ROOT = 1, 2, 1, 0xFFFFFFFF


def _attr(kind: int, payload: bytes) -> bytes:
    size = 4 + len(payload)
    return struct.pack("=HH", size, kind) + payload + b"\0" * (-size % 4)


def _netlink(msg_type: int, body: bytes) -> None:
    """Send one rtnetlink create request; raise OSError with the kernel's errno."""
    flags = _NLM_F_REQUEST | _NLM_F_ACK | _NLM_F_CREATE | _NLM_F_EXCL
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0) as sock:
        sock.settimeout(10)
        sock.bind((0, 0))
        sock.send(struct.pack("=LHHLL", 16 + len(body), msg_type, flags, 1, 0) + body)
        reply = sock.recv(65536)
    if struct.unpack_from("=H", reply, 4)[0] == _NLMSG_ERROR:
        err = -struct.unpack_from("=i", reply, 16)[0]
        if err:
            raise OSError(err, os.strerror(err))


def _probe_tc(kind: str, userns: bool) -> Result:
    """Make a `kind` link (veth, bridge) or root qdisc on lo (netem, tbf) in a fresh netns."""
    from .box import namespaces as ns

    _enter_userns(userns)
    ns.unshare(ns.CLONE_NEWNET)
    ifinfo = struct.pack("=BxHiII", socket.AF_UNSPEC, 0, 0, 0, 0)
    if kind in ("veth", "bridge"):
        data = b""
        if kind == "veth":
            peer = ifinfo + _attr(_IFLA_IFNAME, b"nsbx1\0")
            data = _attr(_IFLA_INFO_DATA, _attr(_VETH_INFO_PEER, peer))
        info = _attr(_IFLA_LINKINFO, _attr(_IFLA_INFO_KIND, kind.encode() + b"\0") + data)
        step = f"add a {kind} link"
        body = ifinfo + _attr(_IFLA_IFNAME, b"nsbx0\0") + info
        msg = _RTM_NEWLINK
    else:
        tcmsg = struct.pack("=BxxxiIII", socket.AF_UNSPEC, socket.if_nametoindex("lo"),
                            0x10000, _TC_H_ROOT, 0)
        if kind == "netem":  # struct tc_netem_qopt: latency limit loss gap duplicate jitter
            options = struct.pack("=6I", 0, 1000, 0, 0, 0, 0)
        else:  # tc_tbf_qopt: rate, peakrate (tc_ratespec), limit, buffer (ticks), mtu
            rate = struct.pack("=BBHhHI", 0, 1, 0, 0, 0, 125_000)  # 1 mbit, ethernet
            peak = struct.pack("=BBHhHI", 0, 0, 0, 0, 0, 0)
            options = _attr(_TCA_TBF_PARMS, rate + peak + struct.pack("=III", 100_000,
                                                                        1_000_000, 0))
        step = f"add a {kind} qdisc on lo"
        body = tcmsg + _attr(_TCA_KIND, kind.encode() + b"\0") + _attr(_TCA_OPTIONS, options)
        msg = _RTM_NEWQDISC
    try:
        _netlink(msg, body)
    except OSError as exc:
        return {"ok": False, "step": step, "errno": exc.errno or 0}
    return {"ok": True}


def _probe_box() -> Result:
    """The whole set-up of a default box (the init's: mounts, the lock, the loopback), as
    one child makes it."""
    from .box import namespaces as ns
    from .box.init import level_one_flags, lock, prepare, prepare_net
    from .box.maker import Request
    from .box.options import BoxOptions

    options = BoxOptions()
    request = Request(options=options, keep_paths=(), writable_paths=(), uid=os.geteuid(),
                      gid=os.getegid())
    ns.unshare(level_one_flags(options))

    def inside() -> Result:
        prepare(request)
        tmpfs = "overlay" if _is_overlay("/tmp") else "empty"
        lock(request)
        prepare_net(request, None)
        return {"ok": True, "tmpfs": tmpfs}

    return run_probe(inside)


def _is_overlay(path: str) -> bool:
    """Whether the topmost mount at `path` is an overlay (as a box's /tmp over the host's)."""
    kind = ""
    with open("/proc/self/mountinfo") as file:
        for line in file:
            fields = line.split()
            if fields[4] == path and "-" in fields:
                kind = fields[fields.index("-") + 1]
    return kind == "overlay"


def _mounts_below(path: str) -> list[str]:
    """Mount points strictly below `path` in this mount namespace."""
    prefix = path.rstrip("/") + "/"
    try:
        with open("/proc/self/mountinfo") as file:
            return [fields[4] for fields in (line.split() for line in file)
                    if fields[4].startswith(prefix)]
    except OSError:
        return []


def _probe_overlay(userns: bool) -> Result:
    """A box's /tmp: the host's below, a tmpfs above; a host file shows, a write stays in."""
    import tempfile

    from .box import namespaces as ns

    fd, name = tempfile.mkstemp(prefix="nsbox-doctor-", dir="/tmp")
    os.close(fd)
    base = os.path.basename(name)
    host_tmp = None
    try:
        _enter_userns(userns)
        ns.unshare(ns.CLONE_NEWNS)
        ns.make_mounts_private()
        host_tmp = os.open("/tmp", os.O_PATH | os.O_DIRECTORY)  # a mount of this namespace
        ns.mount_tmpfs("/tmp")
        ns.mount_overlay(host_tmp, "/tmp")
        if not os.path.exists(name):
            return {"ok": False, "step": "the host's file is not seen through the overlay",
                    "errno": 0}
        os.unlink(name)  # in the box's layer only
        try:
            os.stat(base, dir_fd=host_tmp)  # the host's copy, below the overlay
        except FileNotFoundError:
            return {"ok": False, "step": "a file deleted in the overlay was deleted on the host",
                    "errno": 0}
        return {"ok": True}
    finally:
        with contextlib.suppress(OSError):
            os.unlink(base, dir_fd=host_tmp) if host_tmp is not None else os.unlink(name)


def _probe_cgroup_write(dirs: list[str], limit_files: dict[str, str]) -> Result:
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


# --- facts from files ---------------------------------------------------------------------

def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def _userns_sysctls() -> dict[str, str | None]:
    return {
        "user.max_user_namespaces": _read("/proc/sys/user/max_user_namespaces"),
        "kernel.unprivileged_userns_clone": _read("/proc/sys/kernel/unprivileged_userns_clone"),
        "kernel.apparmor_restrict_unprivileged_userns":
            _read("/proc/sys/kernel/apparmor_restrict_unprivileged_userns"),
    }


def _container() -> str | None:
    if os.path.exists("/.dockerenv"):
        return "docker"
    if os.path.exists("/run/.containerenv"):
        return "podman"
    return os.environ.get("container") or None  # noqa: SIM112 (systemd spells it so)


def _seccomp_filtered() -> bool:
    status = _read("/proc/self/status") or ""
    return any(line.split() == ["Seccomp:", "2"] for line in status.splitlines())


def _userns_cause(step: str) -> str:
    """Which sysctl or sandbox most likely refused the user namespace, from file reads."""
    s = _userns_sysctls()
    if s["user.max_user_namespaces"] == "0":
        return "user.max_user_namespaces is 0"
    if s["kernel.unprivileged_userns_clone"] == "0" and os.geteuid() != 0:
        return "kernel.unprivileged_userns_clone is 0"
    if s["kernel.apparmor_restrict_unprivileged_userns"] == "1" and "map" in step:
        return "Ubuntu's AppArmor restriction (kernel.apparmor_restrict_unprivileged_userns=1)"
    if _seccomp_filtered():
        where = f" ({_container()})" if _container() else ""
        return f"a seccomp filter refuses namespace flags{where}"
    return ""


def _module(name: str) -> str:
    """'loaded', 'on disk', 'absent' or 'absent, no module loading' for kernel module `name`."""
    if os.path.exists(f"/sys/module/{name}"):
        return "loaded"
    base = f"/lib/modules/{platform.release()}"
    for index in ("modules.builtin", "modules.dep"):
        text = _read(f"{base}/{index}") or ""
        if f"/{name}.ko" in text:
            return "built in" if index == "modules.builtin" else "on disk"
    if not os.path.exists("/proc/modules"):
        return "absent, no module loading"
    return "absent"


# --- the report -----------------------------------------------------------------------------

def _failure(result: Result) -> tuple[str, str]:
    """(detail, fix) for a probe's failure, worded by fixes.explain_setup_failure."""
    from .box.fixes import explain_setup_failure

    if result.get("timeout"):
        return result["step"], "the kernel hung on this step; see `dmesg`"
    if not result.get("errno"):
        return str(result.get("step", "probe failed")), ""
    text = explain_setup_failure(result.get("step", "probe"), int(result["errno"]))
    detail, _, fix = text.partition(". Fix: ")
    return detail, fix


_NAMESPACES = (("pid", "CLONE_NEWPID"), ("net", "CLONE_NEWNET"), ("mount", "CLONE_NEWNS"),
               ("uts", "CLONE_NEWUTS"), ("ipc", "CLONE_NEWIPC"), ("cgroup", "CLONE_NEWCGROUP"))


def _kernel_checks(timeout: float) -> tuple[list[Check], Result]:
    """The namespace, mount and network lines, and the default-box probe result."""
    from .box.fixes import USERNS_FIX
    from .resources.net.netem import NETEM_FIX

    checks: list[Check] = []
    user = run_probe(_probe_userns, timeout)
    how = "probe: fork, unshare(CLONE_NEWUSER), write uid_map, setgroups, gid_map"
    if user["ok"]:
        checks.append(Check("user namespace", PASS, "created, and its uid/gid maps written",
                            method=how))
    else:
        detail, _ = _failure(user)
        cause = _userns_cause(user.get("step", ""))
        detail += f" (likely: {cause})" if cause else ""
        if os.geteuid() == 0:
            detail += "; as root, boxes with user='host' still run"
        checks.append(Check("user namespace", FAIL, detail, USERNS_FIX, how))
    userns = bool(user["ok"])
    via = "in a fresh user namespace" if userns else "without a user namespace (root)"
    if not userns and os.geteuid() != 0:
        names = ", ".join(name for name, _ in _NAMESPACES)
        checks.append(Check("other namespaces", FAIL, f"{names} namespaces, mounts, loopback, "
                            "veth and qdiscs not tried: without root each needs a user namespace",
                            "the user namespace fix above"))
        box = {"ok": False, "step": user.get("step", "unshare"), "errno": user.get("errno", 0)}
        detail, fix = _failure(box)
        checks.append(Check("default box", FAIL, detail, fix, "the user namespace probe"))
        return checks, box

    for name, flag in _NAMESPACES:
        result = run_probe(lambda flag=flag: _probe_namespace(flag, userns), timeout)  # type: ignore[misc]
        how = f"probe: unshare({flag}) {via}"
        if result["ok"]:
            checks.append(Check(f"{name} namespace", PASS, f"created {via}", method=how))
        else:
            detail, fix = _failure(result)
            status = DEGRADED if name == "cgroup" else FAIL
            if name == "cgroup":
                detail += " (boxes do not use a cgroup namespace yet)"
            checks.append(Check(f"{name} namespace", status, detail, fix, how))

    probes: list[tuple[str, Callable[[], Result], str, str, str]] = [
        ("/proc mount", lambda: _probe_proc(userns), FAIL,
         "a fresh /proc mounted in a new pid+mount namespace",
         f"probe: unshare(pid, mount) {via}, fork, mount proc on /proc, readlink /proc/self"),
        ("tmpfs mount", lambda: _probe_tmpfs(userns, False), FAIL,
         "a private tmpfs mounted on /tmp",
         f"probe: unshare(mount) {via}, make / private, mount tmpfs on /tmp, write a file"),
        ("tmpfs overlay", lambda: _probe_overlay(userns), DEGRADED,
         "tmpfs paths show the host's files (an overlay: the host's directory below, the "
         "box's tmpfs above)",
         f"probe: unshare(mount) {via}, tmpfs on /tmp, overlay with the host's /tmp below; a "
         "host file shows, deleting it leaves the host's"),
        ("read-only mounts", lambda: _probe_tmpfs(userns, True), DEGRADED,
         "mount_setattr(AT_RECURSIVE, MOUNT_ATTR_RDONLY) made / read-only",
         f"probe: mount tmpfs on /tmp {via}, mount_setattr / read-only, a write gets EROFS"),
        ("loopback", lambda: _probe_loopback(userns), FAIL,
         "lo up in a fresh net namespace; a TCP connect to 127.0.0.1 works",
         f"probe: unshare(net) {via}, ioctl(SIOCSIFFLAGS) lo up, TCP connect"),
    ]
    for kind, use in (("veth", "multi-host networks"), ("bridge", "multi-host networks"),
                      ("netem", "netem faults"), ("tbf", "netem rate limits")):
        what = "link" if kind in ("veth", "bridge") else "qdisc on lo"
        probes.append((kind, lambda kind=kind: _probe_tc(kind, userns), DEGRADED,  # type: ignore[misc]
                       f"a {kind} {what} created in a fresh net namespace ({use})",
                       f"probe: unshare(net) {via}, rtnetlink RTM_NEW"
                       f"{'LINK' if what == 'link' else 'QDISC'} {kind}; on failure the module "
                       "is looked up in /sys/module, /proc/modules, /lib/modules"))
    for name, fn, bad, good, how in probes:
        result = run_probe(fn, timeout)
        if result["ok"]:
            checks.append(Check(name, PASS, good, method=how))
            continue
        detail, fix = _failure(result)
        if name in ("veth", "bridge", "netem", "tbf"):
            module = f"sch_{name}" if name in ("netem", "tbf") else name
            state = _module(module)
            detail = (f"{result.get('step')}: {os.strerror(int(result.get('errno', 0)))}; "
                      f"module {module}: {state}")
            if state == "absent, no module loading":
                detail += " (this kernel cannot load modules: modprobe cannot help here)"
            fix = NETEM_FIX if name == "netem" else (
                f"modprobe {module} (as root), or use a kernel built with it")
            if state == "absent, no module loading":
                fix += (f"; modprobe needs module loading, which this kernel lacks: use a "
                        f"kernel built with {module} in (=y)")
            elif state == "absent":
                fix += "; or install the kernel's extra modules (linux-modules-extra-$(uname -r))"
        if name == "tmpfs overlay":
            below = _mounts_below("/tmp")
            if below and result.get("errno") == errno.EINVAL:
                detail += (f" (the kernel refuses an overlay in a user namespace over a "
                           f"directory with mounts below it: {', '.join(below[:3])})")
            detail += ("; boxes get an empty tmpfs instead (as tmpfs_mode='empty'): files "
                       "session fixtures write to /tmp are not seen in boxes")
            fix = ("Linux 5.11 or newer allows overlay mounts in a user namespace; meanwhile "
                   "write session files under pytest's tmp_path_factory (kept in boxes) or "
                   "pass the path to the box with keep_paths")
            if below and result.get("errno") == errno.EINVAL:
                fix = (f"mount {below[0]} somewhere outside /tmp (or unmount it), or write "
                       "session files under pytest's tmp_path_factory (kept in boxes)")
        if name == "read-only mounts" and result.get("errno") == errno.ENOSYS:
            detail, fix = ("this kernel has no mount_setattr (Linux 5.12+): readonly=True "
                           "boxes cannot run", "use Linux 5.12 or newer")
        checks.append(Check(name, bad, detail, fix, how))

    box = run_probe(_probe_box, timeout)
    if not box["ok"] and not userns and str(box.get("step")) in ("unshare", "clone"):
        checks.append(Check("default box", FAIL, "needs a user namespace (user='self')",
                            "the user namespace fix above; or, as root, user='host'",
                            "probe: the init's set-up of BoxOptions() in its namespaces"))
    elif box["ok"]:
        checks.append(Check("default box", PASS, "every step of a default box's set-up works",
                            method="probe: the init's set-up of BoxOptions() in its namespaces"))
    else:
        detail, fix = _failure(box)
        checks.append(Check("default box", FAIL, detail, fix,
                            "probe: the init's set-up of BoxOptions() in its namespaces"))
    return checks, box


_V1_NEEDED = ("memory", "cpu", "cpuacct", "pids", "cpuset")
_V2_NEEDED = ("memory", "cpu", "pids", "cpuset")
_DOCKER_CGROUP_FIX = ("in Docker, give the container its own writable cgroup: `--cgroupns=private` "
                      "and a read-write /sys/fs/cgroup (`--privileged`, or rootless Docker/Podman "
                      "with a delegated cgroup)")


def _cgroup_checks(timeout: float) -> list[Check]:
    from .resources import cgroups

    try:
        facts = cgroups.detect()
    except OSError as exc:
        return [Check("cgroups", DEGRADED, f"cannot read the cgroup layout: {exc}",
                      "mount cgroup2 on /sys/fs/cgroup", "file: /proc/self/mountinfo")]
    version = facts["version"]
    how = "file: cgroups.detect() (/proc/self/mountinfo, /proc/self/cgroup, cgroup files)"
    if version == "none":
        return [Check("cgroup version", DEGRADED, "no cgroup hierarchy is mounted: no limits, "
                      "no memory peak", "mount cgroup2: `mount -t cgroup2 none /sys/fs/cgroup` "
                      "(as root)", how)]
    v2 = version == "v2"
    label = {"v1": "v1", "hybrid": "v1 (hybrid: controllers on v1, cgroup2 unused)",
             "v2": "v2 (unified)"}[version]
    checks = [Check("cgroup version", PASS, label, method=how)]
    fix = cgroups.user_fix()
    if _container():
        fix += f"; {_DOCKER_CGROUP_FIX}"

    if v2:
        have = set(facts.get("controllers_available", []))
        where = facts.get("path", "")
    else:
        have = set(facts.get("v1", {}))
        where = ", ".join(sorted({d["path"] for c, d in facts.get("v1", {}).items()
                                  if c in _V1_NEEDED}))
    needed = _V2_NEEDED if v2 else _V1_NEEDED
    missing = [c for c in needed if c not in have]
    listed = " ".join(c for c in needed if c in have) or "none"
    if missing:
        cfix = ("delegate them: `sudo systemctl edit user@.service` with `[Service]` "
                "`Delegate=cpu cpuset io memory pids`, or enable them in the parent's "
                "cgroup.subtree_control" if v2 else
                "mount the missing v1 hierarchies (or boot with cgroup v2)")
        checks.append(Check("cgroup controllers", DEGRADED,
                            f"{listed}; missing {' '.join(missing)} (those limits fail)",
                            cfix, how))
    else:
        checks.append(Check("cgroup controllers", PASS, listed, method=how))

    if v2:
        dirs = [where] if where else []
        limits = {where: "memory.max"} if "memory" in have else {}
    else:
        v1 = {c: d for c, d in facts.get("v1", {}).items() if c in _V1_NEEDED}
        dirs = sorted({d["path"] for d in v1.values()})
        limits = {v1["memory"]["path"]: "memory.limit_in_bytes"} if "memory" in v1 else {}
    result = run_probe(lambda: _probe_cgroup_write(dirs, limits), timeout)
    wprobe = f"probe: mkdir a cgroup under {where or 'nothing'}, write a memory limit, rmdir"
    if result["ok"] and dirs:
        checks.append(Check("cgroup writable", PASS, f"a box cgroup can be made under {where}",
                            method=wprobe))
    else:
        by_error: dict[str, list[str]] = {}
        for path, error in result.get("failed", {}).items():
            by_error.setdefault(error, []).append(path)
        why = "; ".join(f"{e} under {', '.join(ps)}" for e, ps in by_error.items()) or (
            result.get("step") or "no cgroup directory")
        checks.append(Check("cgroup writable", DEGRADED,
                            f"not writable ({why}): boxes run without limits or memory peak",
                            fix, wprobe))
    checks.append(_cpu_weight_check(facts, v2, "cpu" in have, bool(result["ok"] and dirs),
                                     fix, how))
    if v2:
        if facts.get("delegated"):
            checks.append(Check("cgroup delegation", PASS, f"{where} is delegated to uid "
                                f"{os.geteuid()} (cgroup.subtree_control writable)", method=how))
        else:
            checks.append(Check("cgroup delegation", DEGRADED,
                                f"{where} is not delegated to uid {os.geteuid()}",
                                cgroups.user_fix(), how))
    if facts.get("cgroup_kill"):
        checks.append(Check("cgroup.kill", PASS, "a box is killed in one write", method=how))
    else:
        checks.append(Check("cgroup.kill", DEGRADED,
                            "absent" + (" (cgroup v1)" if not v2 else "")
                            + ": boxes are killed by rounds of kill(2), racing forks",
                            "cgroup v2 on Linux 5.14+ (boot with "
                            "`systemd.unified_cgroup_hierarchy=1`)", how))
    peak_file = "memory.peak" if v2 else "memory.max_usage_in_bytes"
    if facts.get("memory_peak"):
        checks.append(Check("memory peak", PASS, f"{peak_file} present", method=how))
    else:
        checks.append(Check("memory peak", DEGRADED, f"{peak_file} absent: no nsbox_memory_peak",
                            "Linux 5.19+ for memory.peak on cgroup v2", how))
    checks.append(_device_check(facts, v2))
    swap_file = "memory.swap.max" if v2 else "memory.memsw.limit_in_bytes"
    no_swap = len((_read("/proc/swaps") or "").splitlines()) <= 1
    if facts.get("swap_accounting"):
        checks.append(Check("swap accounting", PASS, f"{swap_file} present: a memory limit "
                            "counts swap too", method=how))
    elif no_swap:
        checks.append(Check("swap accounting", PASS, f"{swap_file} absent, but this machine "
                            "has no swap, so memory limits hold", method=how + ", /proc/swaps"))
    else:
        checks.append(Check("swap accounting", DEGRADED, f"{swap_file} absent: a box may swap "
                            "past its memory limit", "boot with `swapaccount=1` (cgroup v1) or "
                            "a kernel with CONFIG_MEMCG_SWAP", how + ", /proc/swaps"))
    return checks


def _cpu_weight_check(facts: dict[str, Any], v2: bool, have_cpu: bool, writable: bool,
                      fix: str, how: str) -> Check:
    """Whether a box may have a cpu_weight: the cpu controller, in cgroups pytest may write."""
    name, file = "cpu weight", "cpu.weight" if v2 else "cpu.shares"
    if not have_cpu:
        return Check(name, DEGRADED, "no cpu controller: a box with cpu_weight fails with "
                     "BoxUnavailable", "the cgroup controllers fix above", how)
    cpu_writable = (facts.get("delegated") if v2
                    else facts.get("v1", {}).get("cpu", {}).get("writable"))
    if not (writable and cpu_writable):
        return Check(name, DEGRADED, "the cpu controller is not writable here: a box with "
                     "cpu_weight fails with BoxUnavailable", fix, how)
    return Check(name, PASS, f"cpu_weight is written as {file} of each box that asks it",
                 method=how)


def _device_check(facts: dict[str, Any], v2: bool) -> Check:
    """Whether the kernel refuses devices a box was not given (not only its /dev)."""
    if v2:
        from .resources.devices import filter_available

        how = "probe: load a BPF_PROG_TYPE_CGROUP_DEVICE program"
        if filter_available():
            return Check("device control", PASS, "an eBPF device filter is attached to each "
                         "box's cgroup", method=how)
    else:
        how = "file: /proc/self/mountinfo (a devices hierarchy of its own), its access"
        v1 = facts.get("v1", {})
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


def _machine() -> dict[str, Any]:
    uid = os.geteuid() if hasattr(os, "geteuid") else None
    return {"system": platform.system(), "release": platform.release(),
            "arch": platform.machine(), "uid": uid, "python": platform.python_version(),
            "container": _container() if LINUX else None}


def _storage_check(root: str | None = None) -> Check:
    """Where boxes keep their private paths (/tmp) on disk, and whether they can."""
    from .resources.storage import KEPT, default_root

    root = root or default_root()
    how = "statvfs and /proc/self/mountinfo of the storage directory"
    existing = root
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.access(existing, os.W_OK | os.X_OK):
        return Check("box storage", DEGRADED, f"{root} cannot be made or written: boxes keep "
                     "their /tmp in RAM (counted in their memory limit)",
                     "pytest --nsbox-storage DIR (or ini nsbox_storage) with a directory you "
                     "may write on a disk", how)
    kind = _fs_type(existing)
    info = os.statvfs(existing)
    free = info.f_bavail * info.f_frsize
    kept = os.path.join(root, KEPT)
    extra = (f"; {len(os.listdir(kept))} sessions' kept failed boxes in {kept} "
             "(`pytest-nsbox clean` removes them)") if os.path.isdir(kept) else ""
    if kind in _NOT_A_DISK:
        what = "RAM" if kind != "overlay" else "an overlay, which cannot hold a box's layer"
        detail = f"{root} is on {kind} ({what}): boxes keep their /tmp in RAM{extra}"
        if _fs_type("/tmp") in _NOT_A_DISK:  # as this machine keeps its own /tmp
            return Check("box storage", PASS, f"{detail}, as this machine's /tmp is",
                         method=how)
        return Check("box storage", DEGRADED, detail, "pytest --nsbox-storage DIR (or ini "
                     "nsbox_storage) with a directory on a disk", how)
    return Check("box storage", PASS, f"a box's /tmp lives on disk in {root} ({kind}, "
                 f"{free / (1 << 30):.1f} GiB free), removed after the box{extra}", method=how)


_NOT_A_DISK = ("overlay", "tmpfs", "ramfs")


def _fs_type(path: str) -> str:
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


def run_doctor(timeout: float = PROBE_TIMEOUT) -> Report:
    """Probe everything and return the report (and refresh the header's cache)."""
    if not LINUX:
        return Report([Check("platform", FAIL, f"boxes need Linux namespaces; this is "
                             f"{platform.system()}", "run the boxed tests on Linux (a VM or a "
                             "Linux CI runner)", "platform.system()")], _machine())
    checks, box = _kernel_checks(timeout)
    checks += _cgroup_checks(timeout)
    checks.append(_storage_check())
    report = Report(checks, _machine())
    _save_cache({"box": box, "checks": [asdict(c) for c in checks]})
    return report


# --- cheap answers for the plugin ------------------------------------------------------------

def _cache_path() -> str:
    key = "|".join([platform.release(), str(os.geteuid()),
                    _read("/proc/sys/kernel/random/boot_id") or "",
                    json.dumps(_userns_sysctls(), sort_keys=True), str(_CACHE_VERSION)])
    digest = hashlib.sha1(key.encode()).hexdigest()[:16]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "pytest-nsbox", f"doctor-{os.geteuid()}-{digest}.json")


def _load_cache() -> dict[str, Any]:
    try:
        with open(_cache_path()) as f:
            data: dict[str, Any] = json.load(f)
            return data
    except (OSError, ValueError):
        return {}


def _save_cache(data: dict[str, Any]) -> None:
    path = _cache_path()
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        for old in os.listdir(os.path.dirname(path)):
            if old.startswith(f"doctor-{os.geteuid()}-") and old != os.path.basename(path):
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(os.path.dirname(path), old))
        tmp = f"{path}.{os.getpid()}"
        with open(tmp, "w") as f:
            json.dump(data, f)
        os.replace(tmp, path)
    except OSError:
        pass


def _box_result() -> Result:
    """Whether a default box can be made here: cached, else probed once (~10 ms) and cached."""
    data = _load_cache()
    box: Result | None = data.get("box")
    if box is None:
        from .box import init, maker, options  # noqa: F401  (imported before the fork: another
        # thread, e.g. execnet's under xdist, may hold the import lock at fork time)

        box = run_probe(_probe_box, 10.0)
        data["box"] = box
        _save_cache(data)
    return box


def boxing_available() -> tuple[bool, str]:
    """(True, '') when a default box can run here, else (False, why and the fix)."""
    if not LINUX:
        return False, (f"boxes need Linux namespaces and cgroups; this is {platform.system()}")
    box = _box_result()
    if box.get("ok"):
        return True, ""
    detail, fix = _failure(box)
    cause = _userns_cause(box.get("step", ""))
    return False, detail + (f" (likely: {cause})" if cause else "") + (
        f". Fix: {fix}" if fix else "")


def header_line(tmpfs_mode: str = "overlay", tmpfs: tuple[str, ...] = ("/tmp",)) -> str:
    """One line for pytest's header: what boxes get here (cached probes + file reads).

    `tmpfs_mode` and `tmpfs` are the session's default box options (``--nsbox-tmpfs-mode``,
    ``--nsbox-tmpfs`` or their ini keys): what /tmp shows in a box depends on them too.
    """
    if not LINUX:
        return f"nsbox: unavailable (boxes need Linux; this is {platform.system()})"
    box = _box_result()
    if box.get("ok"):
        parts = ["user+pid+net+mount+uts+ipc namespaces"]
    else:
        parts = [f"boxes unavailable ({box.get('step')}: "
                 f"{errno.errorcode.get(int(box.get('errno', 0)), box.get('errno'))}; "
                 "see `python -m pytest_nsbox doctor`)"]
    parts.append(_cgroup_summary())
    cached = {c["name"]: c["status"] for c in _load_cache().get("checks", [])}
    if "netem" in cached:
        netem = cached["netem"] == PASS
    else:
        netem = _module("sch_netem") in ("loaded", "built in", "on disk")
    parts.append("netem" if netem else "netem missing")
    if box.get("ok"):
        parts.append(_tmp_part(box.get("tmpfs"), tmpfs_mode, tmpfs))
    return "nsbox: " + "; ".join(parts)


def _tmp_part(probed: Any, tmpfs_mode: str, tmpfs: tuple[str, ...]) -> str:
    """What a default box's /tmp shows: the probe says whether an overlay works here, the
    session's options whether one is asked for."""
    if "/tmp" not in tmpfs:
        return "/tmp: the host's own (not a tmpfs path)"
    if tmpfs_mode == "empty":
        return "/tmp: empty (tmpfs_mode='empty')"
    if probed == "overlay":
        return "/tmp: the host's files below the box's"
    return "/tmp: empty (no overlay here; see the doctor)"


def _cgroup_summary() -> str:
    from .resources import cgroups

    try:
        facts = cgroups.detect()
    except OSError:
        return "cgroups unreadable"
    version = facts["version"]
    if version == "none":
        return "no cgroups (no limits)"
    if version == "v2":
        have = [c for c in _V2_NEEDED if c in facts.get("controllers_available", [])]
        state = "delegated (limits available)" if facts.get("delegated") else (
            "writable" if facts.get("writable") else "not writable (no limits)")
        return f"cgroup v2 ({' '.join(have)}) {state}"
    # only the hierarchies boxes use: devices, blkio or a named one (name=systemd) left
    # root's do not take limits away (found under cgroup-setup's cgroups: limits held
    # while this said "not writable")
    v1 = {c: d for c, d in facts.get("v1", {}).items() if c in _V1_NEEDED}
    have = [c for c in ("memory", "cpu", "pids", "cpuset") if c in v1]
    writable = v1 and all(d["writable"] for d in v1.values())
    return f"cgroup v1 ({' '.join(have)}) " + ("writable (limits available)" if writable
                                                else "not writable (no limits)")


# --- entry points -------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    """`python -m pytest_nsbox doctor [--json] [-v]`: print the report, exit by the worst line."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m pytest_nsbox doctor",
                                     description="What this machine gives pytest-nsbox boxes, "
                                     "and how to fix what it lacks.")
    parser.add_argument("--json", action="store_true", help="print machine-readable results")
    parser.add_argument("-v", "--verbose", action="store_true", help="say how each line was found")
    parser.add_argument("--timeout", type=float, default=PROBE_TIMEOUT,
                        help="seconds each probe may take (default %(default)s)")
    args = parser.parse_args(argv)
    report = run_doctor(args.timeout)
    if args.json:
        print(json.dumps(report.as_dict(), indent=2))
    else:
        print(report.render(args.verbose))
    return report.exit_status


def run_from_pytest(config: pytest.Config) -> int:
    """`pytest --nsbox-doctor`: print the report (verbose with -v) and return the exit status."""
    report = run_doctor()
    print(report.render(config.option.verbose > 0), flush=True)
    return report.exit_status
