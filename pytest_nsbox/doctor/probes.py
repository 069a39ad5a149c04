"""The kernel probes: each runs in a forked child (runner.run_probe) and does what a box
does, because file reads alone lie (Ubuntu allows `unshare(CLONE_NEWUSER)` and then
refuses the uid_map; Docker's masked /proc refuses a fresh /proc mount).

`userns` says whether a probe first enters a fresh user namespace, as a default box
(user='self') does; without one (root) it tries the step as a user='host' box would.
The box package is imported in the functions: this module imports on any platform.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket

from . import netlink
from .facts import is_overlay
from .runner import Result, run_probe


def _enter_userns(userns: bool) -> None:
    """A fresh user namespace mapping our own ids, as a default box makes (user='self')."""
    from ..box import namespaces as ns

    if userns:
        uid, gid = os.geteuid(), os.getegid()  # before unshare: then they read as 65534
        ns.unshare(ns.CLONE_NEWUSER)
        ns.write_id_maps(uid, uid, gid, gid)


def user_namespace() -> Result:
    uid = os.geteuid()
    _enter_userns(True)
    return {"ok": os.geteuid() == uid, "step": "uid inside is not the mapped uid", "errno": 0}


def namespace(flag_name: str, userns: bool) -> Result:
    """unshare one namespace (a `CLONE_NEW*` name) and try what a box does in it."""
    from ..box import namespaces as ns

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


def proc_mount(userns: bool) -> Result:
    from ..box import namespaces as ns

    _enter_userns(userns)
    ns.unshare(ns.CLONE_NEWPID | ns.CLONE_NEWNS)

    def inside() -> Result:
        ns.make_mounts_private()
        ns.mount_proc()
        return {"ok": os.readlink("/proc/self") == "1", "step": "/proc shows the host's pids",
                "errno": 0}

    return run_probe(inside)


def tmpfs_mount(userns: bool, readonly: bool) -> Result:
    from ..box import namespaces as ns

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


def overlay(userns: bool) -> Result:
    """A box's /tmp: the host's below, a tmpfs above; a host file shows, a write stays in."""
    import tempfile

    from ..box import namespaces as ns

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


def loopback(userns: bool) -> Result:
    from ..box import namespaces as ns

    _enter_userns(userns)
    ns.unshare(ns.CLONE_NEWNET)
    ns.bring_loopback_up()
    with socket.socket() as server, socket.socket() as client:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        client.settimeout(5)
        client.connect(server.getsockname())
    return {"ok": True}


def tc(kind: str, userns: bool) -> Result:
    """Make a `kind` link (veth, bridge) or root qdisc on lo (netem, tbf) in a fresh netns."""
    from ..box import namespaces as ns

    _enter_userns(userns)
    ns.unshare(ns.CLONE_NEWNET)
    step, msg, body = netlink.request(kind)
    try:
        netlink.send(msg, body)
    except OSError as exc:
        return {"ok": False, "step": step, "errno": exc.errno or 0}
    return {"ok": True}


def default_box() -> Result:
    """The whole set-up of a default box (the init's: mounts, the lock, the loopback), as
    one child makes it."""
    from ..box import namespaces as ns
    from ..box.init import level_one_flags, lock, prepare, prepare_net
    from ..box.maker import Request
    from ..box.options import BoxOptions

    options = BoxOptions()
    request = Request(options=options, keep_paths=(), writable_paths=(), uid=os.geteuid(),
                      gid=os.getegid())
    ns.unshare(level_one_flags(options))

    def inside() -> Result:
        prepare(request)
        tmpfs = "overlay" if is_overlay("/tmp") else "empty"
        lock(request)
        prepare_net(request, None)
        return {"ok": True, "tmpfs": tmpfs}

    return run_probe(inside)
