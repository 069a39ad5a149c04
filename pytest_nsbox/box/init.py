"""The box's init (its pid 1), made ahead by the box maker: it builds the box and reaps.

It runs in the maker's small process, not in a copy of pytest, while the previous test
still runs. In order:

1. a user, pid and mount namespace of its own (the maker's clone), with its one uid and
   gid mapped; every mount the box has (private propagation, /proc, the tmpfs paths and
   their overlays, a read-only root, /dev, the cgroup view, the paths bound back);
2. the lock: a second user namespace with a mount, UTS, IPC and network namespace of its
   own. The mounts of step 1 are inherited by a mount namespace owned by a less
   privileged user namespace, so the kernel locks them (MNT_LOCKED, MNT_LOCK_READONLY):
   the test, which joins these namespaces, holds every capability over them and none
   over step 1's, and cannot unmount, move or remount what the box set up;
3. inside the lock: the hostname, loopback, link faults, the forwarded ports' listeners.

Then it says so to the maker, keeps a copy of the result pipe (the test may open it
again through /proc/1/fd when it closed its own) and reaps the orphans the test leaves
until pytest kills it, which ends every process left in the box.
"""

from __future__ import annotations

import os
import signal

from . import namespaces as ns

TYPE_CHECKING = False  # no typing in the maker, whose copies every box's init is
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable
    from typing import Any, NoReturn

CGROUP_ROOT = "/sys/fs/cgroup"


def level_one_flags(options: Any) -> int:
    """The namespaces of the maker's clone (step 1)."""
    flags = ns.CLONE_NEWPID | ns.CLONE_NEWNS
    if options.user == "host":  # no user namespace: nothing to lock with, one level
        flags |= ns.CLONE_NEWUTS | ns.CLONE_NEWIPC
        if options.net != "host":
            flags |= ns.CLONE_NEWNET
    else:
        flags |= ns.CLONE_NEWUSER
    return flags


def lock_flags(options: Any) -> int:
    """The namespaces of the lock (step 2); 0 for user='host'."""
    if options.user == "host":
        return 0
    flags = ns.CLONE_NEWUSER | ns.CLONE_NEWNS | ns.CLONE_NEWUTS | ns.CLONE_NEWIPC
    if options.net != "host":
        flags |= ns.CLONE_NEWNET
    return flags


def join_flags(options: Any) -> int:
    """What the test process joins of the init's namespaces (all but its pid namespace)."""
    flags = ns.CLONE_NEWNS | ns.CLONE_NEWUTS | ns.CLONE_NEWIPC
    if options.user != "host":
        flags |= ns.CLONE_NEWUSER
    if options.net != "host":
        flags |= ns.CLONE_NEWNET
    return flags


def init_main(request: Any, result_fd: int, relay_fd: int | None, ready_fd: int,
              join_fds: tuple[int, ...] = ()) -> NoReturn:
    """Pid 1 of a box made ahead. Reports to the maker through `ready_fd`: nothing (EOF)
    when the box is ready, else the failed step (pickled)."""
    try:
        ns.set_parent_death_signal(signal.SIGKILL)
        os.setsid()
        for fd in join_fds:  # the box's cgroup: its limits and counts include the init
            os.write(fd, b"0")
            os.close(fd)
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
            signal.signal(signum, signal.SIG_IGN)
        try:
            prepare(request)
            lock(request)
            relay = prepare_net(request, relay_fd)
        except ns.SetupFailed as exc:
            import pickle

            os.write(ready_fd, pickle.dumps((exc.step, exc.errno or 0,
                                             getattr(exc, "message", None))))
            os._exit(0)
        os.close(ready_fd)
    except BaseException:
        import traceback

        try:
            os.write(ready_fd, traceback.format_exc().encode("utf-8", "replace"))
        except OSError:
            pass
        os._exit(120)
    if relay is not None:  # copies the relayed connections (and the kernel reaps)
        from ..resources.net.relay_box import serve

        serve(relay, result_fd)
    _reap_for_ever(result_fd)


def _reap_for_ever(keep: int) -> NoReturn:
    """Wait for orphans (reparented here) until pytest kills this process."""
    for fd in _open_fds():
        if fd not in (0, 1, 2, keep):
            try:
                os.close(fd)
            except OSError:
                pass
    while True:
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            signal.pause()
        except InterruptedError:
            continue


def _open_fds() -> list[int]:
    try:
        return [int(fd) for fd in os.listdir("/proc/self/fd")]
    except OSError:
        return []


def prepare(request: Any) -> None:
    """Id maps, private mounts, /proc, tmpfs, read-only root, /dev, the cgroup view."""
    options = request.options
    if options.user != "host":
        inside = 0 if options.user == "root" else request.uid
        inside_gid = 0 if options.user == "root" else request.gid
        ns.write_id_maps(inside, request.uid, inside_gid, request.gid)
    ns.make_mounts_private()
    kept = _open_dirs(_outermost(p for p in request.keep_paths + request.writable_paths
                                 if any(ns.is_under(p, t) for t in options.tmpfs)))
    writable = _open_dirs(request.writable_paths) if options.readonly else []
    devices = _open_devices(options.devices) if options.devices != ("host",) else None
    views = request.views
    cgroup_dirs = _open_dirs(path for path, _ in views)
    writable_views = {path for path, writable in views if writable}
    lowers = _open_dirs(options.tmpfs) if options.tmpfs_mode == "overlay" else []
    sockets = _open_files(request.unix_sockets)
    layers = _make_layers(request.storage, len(options.tmpfs))
    if options.readonly:
        ns.make_readonly("/")
        if layers is not None:
            _bind(layers, writable=True)  # the box's own layers stay writable
    ns.mount_proc()
    _mount_tmpfs_paths(options.tmpfs, {path: fd for fd, path in lowers}, layers,
                       options.tmpfs_size)
    if devices is not None:
        _minimal_dev(devices)
    elif os.path.isdir("/dev/shm"):
        ns.mount_tmpfs("/dev/shm")  # POSIX shared memory belongs to the box's IPC
    _hide_cgroups(cgroup_dirs, writable_views)
    for fd, path in kept:
        ns.bind_back(fd, path)
    for fd, path in writable:
        ns.make_writable(fd, path)
    for fd, _ in kept + writable:
        os.close(fd)
    for fd, path in sockets:
        ns.bind_onto(fd, path)  # through the overlay, connect() would be refused
        os.close(fd)
    if layers is not None:  # the storage of every box, this one's included, out of sight
        _bind(f"{layers}/inner", os.path.dirname(os.path.dirname(layers)), options.readonly)


def lock(request: Any) -> None:
    """Step 2: a less privileged user namespace over what `prepare` mounted."""
    flags = lock_flags(request.options)
    if not flags:
        return
    ns.unshare(flags)
    inside = 0 if request.options.user == "root" else request.uid
    inside_gid = 0 if request.options.user == "root" else request.gid
    ns.write_id_maps(inside, inside, inside_gid, inside_gid)


def prepare_net(request: Any, relay_fd: int | None) -> Any:
    """Hostname, loopback, link faults, then the forwarded ports' listeners; the relay's
    channel, which the init keeps, when there are."""
    options = request.options
    ns.set_hostname(options.hostname)
    if options.net == "isolated":
        ns.bring_loopback_up()
    if options.netem:
        from ..resources.net.netem import apply_netem

        apply_netem(options)
    if relay_fd is not None:
        from ..resources.net.relay_box import make_listeners

        return make_listeners(options.forward or {}, relay_fd, request.auto_forward, serve=True)
    return None


def _make_layers(box_dir: str | None, count: int) -> str | None:
    """The box's directory on disk (its storage, `resources.storage`): a subdirectory
    for each private path and `inner`, what the box sees where the storage is. None
    (RAM) where it cannot be made."""
    if box_dir is None or not count:
        return None
    try:
        os.mkdir(box_dir, 0o700)
        for name in ("inner", *map(str, range(count))):
            os.mkdir(f"{box_dir}/{name}", 0o700)
    except OSError:
        return None
    return box_dir


def _bind(source: str, target: str | None = None, writable: bool = False) -> None:
    """Bind `source` onto `target` (itself by default), writable again if asked."""
    fd = os.open(source, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        if writable:
            ns.make_writable(fd, target or source)
        else:
            ns.bind_back(fd, target or source)
    finally:
        os.close(fd)


def _mount_tmpfs_paths(paths: Iterable[str], lowers: dict[str, int], layers: str | None,
                       size: int | None) -> None:
    """A private layer on each path; over the host's directory (open in `lowers`) where
    there is one, an overlay, so what the session left there shows through. The layer is
    on disk in `layers` where the kernel takes it, else a tmpfs (of `size`).

    In order: an overlay on disk; an overlay on a tmpfs (an upper layer on an overlay,
    as where / is one, is refused); an empty directory on disk (an overlay over a
    directory with mounts below it is refused in a user namespace); an empty tmpfs.
    """
    mounted: list[str] = []
    for index, path in enumerate(sorted(paths)):  # outer first: an inner one is made in it
        lower = lowers.pop(path, None)
        if any(ns.is_under(path, top) for top in mounted):
            os.makedirs(path, exist_ok=True)
        elif not os.path.isdir(path):
            raise ns.SetupFailed(f"mount tmpfs: no directory {path}", 2)
        mounted.append(path)
        layer = f"{layers}/{index}" if layers is not None else None
        tmpfs = False
        if lower is not None:
            try:
                if layer is not None and _attempt(ns.mount_overlay, lower, path, layer):
                    continue
                ns.mount_tmpfs(path, size=size)
                tmpfs = True
                if _attempt(ns.mount_overlay, lower, path):
                    continue
            finally:
                os.close(lower)
        if layer is not None and _attempt(_bind_empty, f"{layer}/upper", path):
            continue  # (over the tmpfs whose overlay was refused, if any)
        if not tmpfs:
            ns.mount_tmpfs(path, size=size)


def _attempt(mount: Callable[..., None], *args: Any) -> bool:
    """Whether `mount(*args)` worked; False where the kernel refused it."""
    try:
        mount(*args)
    except (OSError, ns.SetupFailed):
        return False
    return True


def _bind_empty(directory: str, path: str) -> None:
    """An empty directory of the box's, on disk, bound writable onto `path`."""
    os.makedirs(directory, exist_ok=True)  # a refused overlay's upper, if it is left
    os.chmod(directory, 0o1777)  # as a fresh tmpfs is
    _bind(directory, path, writable=True)


_DEVICES = ("/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom", "/dev/tty")
_DEV_LINKS = (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
              ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2"), ("ptmx", "pts/ptmx"))


def _open_devices(extra: tuple[str, ...]) -> list[tuple[int, str]]:
    """O_PATH handles of the host's device nodes the box gets, before /dev is covered."""
    opened = []
    for path in _DEVICES + extra:
        try:
            opened.append((os.open(path, os.O_PATH), path))
        except OSError as exc:
            if path in extra:
                raise ns.SetupFailed(f"open device {path}", exc.errno or 2) from None
    return opened


def _minimal_dev(devices: list[tuple[int, str]]) -> None:
    """A /dev of the box's own: the standard nodes, its own pts and shm, nothing else."""
    ns.mount_tmpfs("/dev", "755")  # not sticky: O_CREAT on its nodes must work
    for fd, path in devices:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        ns.bind_file(fd, path)
        os.close(fd)
    for name in ("pts", "shm"):
        os.mkdir(f"/dev/{name}", 0o1777 if name == "shm" else 0o755)
    ns.mount_devpts("/dev/pts")
    ns.mount_tmpfs("/dev/shm")
    for name, target in _DEV_LINKS:
        os.symlink(target, f"/dev/{name}")


def _hide_cgroups(own: list[tuple[int, str]], writable: set[str]) -> None:
    """The box sees only its own cgroup directories: where limits sit, read-only; the
    subtree delegated to it, writable (a box inside it makes its cgroups there).

    Its uid may be the files' owner (root mapped to root), so without this it could move
    itself out of its cgroup or raise its own limits.
    """
    if not os.path.isdir(CGROUP_ROOT):
        return
    ns.mount_tmpfs(CGROUP_ROOT, "755")
    for fd, path in own:  # outer first: a delegated child is bound inside its parent
        if path in writable:
            os.makedirs(path, exist_ok=True)
            ns.make_writable(fd, path)  # the bind would copy a read-only root's flag
        else:
            ns.bind_readonly(fd, path)
        os.close(fd)


def _open_files(paths: Iterable[str]) -> list[tuple[int, str]]:
    """O_PATH handles of files (the session's Unix sockets), before a mount hides them."""
    opened = []
    for path in paths:
        try:
            opened.append((os.open(path, os.O_PATH | os.O_CLOEXEC), path))
        except OSError:
            continue  # gone since pytest listed it
    return opened


def _open_dirs(paths: Iterable[str]) -> list[tuple[int, str]]:
    """O_PATH handles of directories, taken before a mount hides them."""
    opened = []
    for path in dict.fromkeys(paths):
        try:
            opened.append((os.open(path, os.O_PATH | os.O_DIRECTORY), path))
        except OSError:
            continue
    return opened


def _outermost(paths: Iterable[str]) -> list[str]:
    """The paths not inside another of them: binding those brings the rest along."""
    unique = sorted(set(paths))
    return [p for p in unique if not any(q != p and ns.is_under(p, q) for q in unique)]



