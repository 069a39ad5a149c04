"""pytest's side of a box's start: boxes made ahead, the one fork, the clean-up after.

Per boxed test, on the critical path, pytest forks once; the test process joins a box
its maker made ahead (`inside.enter`). Around that fork, off the path:

- *ahead*: while a test runs, the next test's box is asked for (`prefetch`): its cgroup
  and pipes here, its namespaces and mounts in the maker, on the other core. A box made
  ahead is used only by a test whose box it is (`_construction` equal); any other is
  removed and a fresh one made;
- *after*: the box's init is killed when its test ends, and `end` waits until it is
  gone: the kernel reaps every process of the box's pid namespace before its init
  counts as dead, so when the next test (or a fixture's teardown, or the session's end)
  looks, no process of the box is alive, no port or lock of it is held, and its cgroup is
  empty. Removing the cgroup's directories and the box's files on disk waits for the
  next box (`later`, `tidy`); a library `Box.run` waits for both.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import select
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn

from ..resources.storage import Storage
from . import namespaces as ns
from .errors import BoxUnavailable
from .maker import Maker, Reply, Request
from .namespaces.join import PidNamespace, may_set_pid_namespace, pidfd_kill
from .namespaces.mounts import remove_tree

if TYPE_CHECKING:
    from .options import BoxOptions


@dataclass(eq=False)
class Made:
    """One box: asked for (reply None) or made (its init's pidfd in reply.fds[0])."""

    construction: tuple[Any, ...]
    cgroup: Any
    result_r: int
    result_w: int
    diag_r: int
    diag_w: int
    auto: tuple[Any, ...]
    storage: str | None = None  # the box's directory on disk (`resources.storage`)
    reply: Reply | None = None

    @property
    def init_pidfd(self) -> int:
        assert self.reply is not None
        return self.reply.fds[0]

    @property
    def relay_end(self) -> int | None:
        assert self.reply is not None
        return self.reply.fds[1] if len(self.reply.fds) > 1 else None


_maker: Maker | None = None
_ahead: Made | None = None
_later: list[tuple[int, Any, str | None]] = []  # (init pidfd, cgroup, storage) of ended boxes
_storage: Storage | None = None
_storage_settings: tuple[str | None, bool] = (None, False)  # (root, keep old kept boxes)
_pid_ns: PidNamespace | None = None
_may_set_pid: bool | None = None


def maker() -> Maker:
    """This process's maker (a box's own pytest starts its own, inside the box)."""
    global _maker, _ahead
    if _maker is None or _maker.owner != os.getpid():
        _maker, _ahead = Maker(), None
        _later.clear()
    return _maker


_process_paths: tuple[tuple[str, ...], tuple[str, ...]] = ((), ())


def inherited_fds() -> tuple[int, ...]:
    """fds of the parent's that its boxes must not keep: the eBPF device programs (with
    one, and a cgroup directory it can open, a box could detach its own filter), the
    storage's session lock."""
    devfilter = sys.modules.get("pytest_nsbox.resources.devices")
    programs = devfilter.program_fds() if devfilter is not None else ()
    return programs + (_storage.fds() if _storage is not None else ())


def configure_storage(root: str | None, keep_old: bool = False) -> None:
    """Where this process's boxes keep their private paths on disk (None: the default
    root), and whether the kept boxes of earlier sessions stay (--nsbox-keep-failed)."""
    global _storage_settings
    _storage_settings = (root, keep_old)


def storage() -> Storage:
    """This process's box storage on disk, made at the first box that needs it."""
    global _storage
    if _storage is None or _storage.owner != os.getpid():
        root, keep_old = _storage_settings
        _storage = Storage(root, keep_old)
    return _storage


def _box_storage(options: BoxOptions) -> str | None:
    """A directory on disk for the box's private paths, None when they are RAM."""
    if not options.tmpfs or options.tmpfs_storage != "disk":
        return None
    store = storage()
    if any(ns.is_under(store.root, path) for path in options.tmpfs):
        return None  # the storage is itself private to the box: it cannot hold its layers
    return store.box_dir()


def keep_files(made_storage: str, name: str, paths: tuple[str, ...]) -> dict[str, str]:
    """Keep what a finished box wrote to its private `paths` (--nsbox-keep-failed)."""
    return storage().keep(made_storage, name, tuple(sorted(paths)))



def process_paths() -> tuple[str, ...]:
    """Where this Python, its imports and its working directory live, so that a box whose
    tmpfs covers them (a checkout or a venv under /tmp) can still run and import."""
    global _process_paths
    key = (os.getcwd(), *sys.path)
    if _process_paths[0] != key:
        found = {os.getcwd(), sys.prefix, sys.exec_prefix, sys.base_prefix,
                 os.path.dirname(os.path.abspath(sys.executable))}
        found.update(os.path.abspath(p) for p in sys.path if p and os.path.isdir(p))
        _process_paths = (key, tuple(sorted(found)))
    return _process_paths[1]


def make_cgroup(options: BoxOptions) -> Any:
    """The box's cgroup (limits and accounting), None where cgroups are not usable."""
    from ..resources.cgroups import CgroupUnavailable, box_cgroup

    try:
        return box_cgroup(options)
    except CgroupUnavailable as exc:
        from .context import current_box

        outer = current_box()
        if outer is not None and exc.unheld:  # else not about nesting (a tmpfs io path)
            raise BoxUnavailable(_nested_message(outer, exc)) from None
        raise BoxUnavailable(str(exc)) from None


def _nested_message(outer: Any, exc: Exception) -> str:
    """Why a box inside a box cannot have a limit, and what to change."""
    unheld = ", ".join(getattr(exc, "unheld", ())) or "its limits"
    if not getattr(outer.cgroup, "paths", ()):  # none, or best-effort rlimits only
        return (f"a box inside a box cannot have {unheld}: the outer box has no cgroup to "
                "give it (pytest's cgroups are not writable here; `pytest --nsbox-doctor` "
                "says why). Fix: leave the limit off the inner box, or run pytest where its "
                "boxes get cgroups.")
    if "io=" in unheld and not getattr(outer.cgroup, "v2", True):
        return (f"a box inside a box cannot have {unheld}: io limits do not nest on cgroup "
                "v1 (its blk-throttle does not apply a parent's limit to its children). Fix: "
                "put the io limit on the outer box, or run on cgroup v2.")
    return (f"a box inside a box cannot have {unheld}: a box gets cgroups of the kinds its "
            "outer box has (memory and pids always; cpu, cpuset and io where the outer box "
            "has a limit of that kind), and delegates those. Fix: give the outer box a limit "
            "of the same kind too (the inner one then holds below it), or leave it off the "
            f"inner box. (Here: {getattr(exc, 'reasons', '') or exc}.)")


def construction(box: Any, auto: tuple[Any, ...],
                 sockets: tuple[tuple[str, int], ...] = ()) -> tuple[Any, ...]:
    """What a box is made of: two tests with the same construction can use one made ahead.

    The timeout and the budgets are pytest's business, not the box's (v1 gives a box
    with a timeout a freezer cgroup: whether there is one counts).
    """
    options = box.options
    built = dataclasses.replace(options, timeout=1.0 if options.timeout else None,
                                memory_budget=None, cpu_budget=None)
    return (built, box.keep_paths + process_paths(), box.writable_paths, auto,
            os.geteuid(), os.getegid(), sockets)


def ask(box: Any, auto: tuple[Any, ...], sockets: tuple[tuple[str, int], ...] = (),
        key: tuple[Any, ...] | None = None) -> Made:
    """Ask the maker for a box (its cgroup and pipes made here, now)."""
    key = key or construction(box, auto, sockets)
    options = box.options
    cgroup = make_cgroup(options)
    result_r, result_w = os.pipe()
    diag_r, diag_w = os.pipe()
    box_storage = _box_storage(options)
    request = Request(options=key[0], keep_paths=key[1], writable_paths=key[2],
                      uid=key[4], gid=key[5], views=getattr(cgroup, "views", ()),
                      auto_forward=auto, relay=bool(options.forward or auto),
                      storage=box_storage, unix_sockets=tuple(path for path, _ in sockets))
    made = Made(key, cgroup, result_r, result_w, diag_r, diag_w, auto, box_storage)
    try:
        maker().send(request, [result_w, *getattr(cgroup, "join_fds", ())])
    except BaseException:
        throw_away(made)
        raise
    return made


def take(box: Any, auto: tuple[Any, ...], sockets: tuple[tuple[str, int], ...] = ()
         ) -> Made:
    """The box for this test: the one made ahead when it fits, else one made now."""
    global _ahead
    key = construction(box, auto, sockets)
    made, _ahead = _ahead, None
    if made is not None and made.construction != key:
        throw_away(made)
        made = None
    if made is None:
        made = ask(box, auto, sockets, key)
    _receive(made)
    return made


def _receive(made: Made) -> None:
    if made.reply is not None:
        return
    try:
        made.reply = maker().receive()
    except OSError as exc:
        throw_away(made)
        raise BoxUnavailable(f"the box maker process ended ({exc}); it starts again with "
                             "the next box") from None
    reply = made.reply
    if reply.failed is not None or reply.error:
        throw_away(made)
        if reply.error:
            raise BoxUnavailable(f"the box's init failed while it made the box:\n{reply.error}")
        from .fixes import explain_setup_failure

        step, err, message = reply.failed  # type: ignore[misc]
        raise BoxUnavailable(message or explain_setup_failure(step, err))


def prefetch(box: Any | None, auto: tuple[Any, ...] = (),
             sockets: tuple[tuple[str, int], ...] = ()) -> None:
    """Ask for `box` now, to be taken by the next test (a no-op when one is asked for)."""
    global _ahead
    if box is None or _ahead is not None or _maker is None or _maker.owner != os.getpid():
        return
    try:
        _ahead = ask(box, auto, sockets)
    except Exception:
        _ahead = None  # the next test asks again, and says why if it fails again


def throw_away(made: Made) -> None:
    """A box no test will use: its init killed, its fds closed, its cgroup removed later."""
    if made.reply is None and _maker is not None and _maker.pending:
        with contextlib.suppress(OSError):
            made.reply = _maker.receive()
    for fd in (made.result_r, made.result_w, made.diag_r, made.diag_w):
        with contextlib.suppress(OSError):
            os.close(fd)
    fds = made.reply.fds if made.reply is not None else []
    if fds:
        pidfd_kill(fds[0])
        for fd in fds[1:]:
            os.close(fd)
        later(fds[0], made.cgroup, made.storage)
    else:
        if made.cgroup is not None:
            made.cgroup.close_join_fds()
            made.cgroup.remove()
        if made.storage is not None:
            remove_tree(made.storage)


def start(made: Made, plan: Any, test_process_main: Callable[[Any], NoReturn]
          ) -> tuple[int, bool]:
    """Fork the test process into `made` (it runs `test_process_main(plan)`); (its pid,
    whether it goes on as a clone_vm child, whose own pid it sends first)."""
    global _pid_ns, _may_set_pid

    if _may_set_pid is None:
        _may_set_pid = may_set_pid_namespace() and not os.environ.get("NSBOX_CLONE_VM")
    direct = _may_set_pid
    plan.clone_vm = not direct
    for stream in (sys.stdout, sys.stderr):  # else the box writes the parent's pending
        with contextlib.suppress(Exception):  # output a second time when it flushes its own
            stream.flush()
    if direct:
        if _pid_ns is None:
            _pid_ns = PidNamespace()
        _pid_ns.enter(made.init_pidfd)
        try:
            pid = ns.fork_quietly()
            if pid == 0:
                test_process_main(plan)
        finally:
            if pid != 0:
                _pid_ns.leave()
    else:
        pid = ns.fork_quietly()
        if pid == 0:
            test_process_main(plan)
    return pid, not direct


#: Most seconds `end` waits for a killed box to be gone (a process stuck in the kernel,
#: uninterruptible on a hung NFS server, can hold it up; then the next tidy waits too).
END_PATIENCE = 10.0


def end(made: Made, defer: bool) -> None:
    """The test ended: kill what is left of the box and wait until it is gone.

    Waited for here, not later: measured with examples/test_leaks.py, a daemon of the
    box was still alive, in the box's cgroup, when the next test started in 1 run of 20
    as a user and 2 of 10 as root (10 daemons), for up to 25 ms. Its init's pidfd reads
    as ended only once the kernel has killed and reaped every process in its pid
    namespace (`zap_pid_ns_processes` runs before the init's exit is signalled).
    """
    pidfd = made.init_pidfd
    pidfd_kill(pidfd)
    relay_end = made.relay_end
    if relay_end is not None:
        with contextlib.suppress(OSError):
            os.close(relay_end)
    select.select([pidfd], [], [], END_PATIENCE)
    later(pidfd, made.cgroup, made.storage)
    if not defer:
        tidy(block=True)


def later(pidfd: int, cgroup: Any, box_storage: str | None = None) -> None:
    _later.append((pidfd, cgroup, box_storage))


def tidy(block: bool = False) -> None:
    """Remove the cgroups and files of boxes whose init is gone (all of them, waiting,
    if `block`)."""
    keep = []
    for pidfd, cgroup, box_storage in _later:
        if not block and not select.select([pidfd], [], [], 0)[0]:
            keep.append((pidfd, cgroup, box_storage))
            continue
        if block:
            select.select([pidfd], [], [], 10.0)
        os.close(pidfd)
        if cgroup is not None:
            cgroup.close_join_fds()
            cgroup.remove()
        if box_storage is not None:
            _remove_files(box_storage, block)
    _later[:] = keep


def _remove_files(box_storage: str, now: bool) -> None:
    """A finished box's files: removed by the maker while it is idle (pytest's own time is
    the next test's), or here, `now` (a library `Box.run`, which waits for its box)."""
    if not now and _maker is not None and _maker.owner == os.getpid():
        try:
            _maker.discard(box_storage)
            return
        except OSError:
            pass
    remove_tree(box_storage)


def close() -> None:
    """End of the session: the box made ahead is removed, every init waited for."""
    global _ahead, _maker
    if _ahead is not None:
        made, _ahead = _ahead, None
        throw_away(made)
    tidy(block=True)
    if _maker is not None and _maker.owner == os.getpid():
        _maker.close()
    _maker = None
    if _storage is not None:
        _storage.close()


def machinery() -> tuple[set[int], set[int]]:
    """(pids, fds) this process holds for boxes beyond any one box's life: the maker, its
    socket, the pid namespace handle, a box made ahead, the device filter programs. For
    leak checks that look at pytest's children and fds."""
    pids: set[int] = set()
    fds: set[int] = set()
    if _maker is not None and _maker.owner == os.getpid():
        pids.add(_maker.process.pid)
        with contextlib.suppress(OSError):
            fds.add(_maker.channel.fileno())
    if _pid_ns is not None:
        fds.add(_pid_ns._own)
    if _ahead is not None:
        fds.update((_ahead.result_r, _ahead.result_w, _ahead.diag_r, _ahead.diag_w))
        fds.update(_ahead.reply.fds if _ahead.reply is not None else ())
        fds.update(getattr(_ahead.cgroup, "join_fds", ()))
    fds.update(pidfd for pidfd, _, _ in _later)
    fds.update(inherited_fds())  # the eBPF device filter programs, kept for the session
    return pids, fds


def forget_inherited() -> object:
    """In a box's test process: the parent's maker, boxes and pid namespace are not its
    own (a box inside it starts its own maker); their fds are closed. Returns them, for
    the caller to keep (`inside._inherited`: freeing them there only copies pages)."""
    global _maker, _ahead, _pid_ns, _may_set_pid, _later, _storage
    fds = [pidfd for pidfd, _, _ in _later]
    if _maker is not None:
        fds.append(_maker.channel.detach())
    if _pid_ns is not None:
        fds.append(_pid_ns._own)
    if _ahead is not None:
        fds += [_ahead.result_r, _ahead.result_w, _ahead.diag_r, _ahead.diag_w]
        fds += _ahead.reply.fds if _ahead.reply is not None else []
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)
    forgotten = (_maker, _ahead, _pid_ns, _later, _storage)
    _maker, _ahead, _pid_ns, _may_set_pid, _later, _storage = None, None, None, None, [], None
    return forgotten
