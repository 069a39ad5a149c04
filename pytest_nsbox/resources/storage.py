"""Where a box's private paths (its /tmp, ...) live on the host's disk, and their removal.

A box's private /tmp is the upper layer of an overlay (or, with ``tmpfs_mode='empty'``,
a plain directory) in a directory of its own on disk, as Docker keeps a container's
writable layer and Bazel its sandbox's /tmp: what a test writes there is page cache,
reclaimable and counted as a file, as it is unboxed, not shared memory that a memory
limit kills for (a 400 MB temporary file under ``memory='256M'``).

Layout, under the storage root (``/var/tmp/pytest-nsbox-UID`` unless set)::

    ROOT/PID-XXXX/        one per pytest process (a session, an xdist worker),
    ROOT/PID-XXXX/lock    held with flock while it lives
    ROOT/PID-XXXX/N/      one per box: made by the box's init, removed after the box
    ROOT/kept/...         failed boxes' files, kept with --nsbox-keep-failed

A session removes its own directory at its end; one killed with SIGKILL leaves it, and
the next session to use the same root removes every directory whose lock nobody holds
(a flock dies with the last process holding it, so a reused pid cannot fool it).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import stat
import tempfile

from ..box.namespaces.mounts import remove_tree

__all__ = ["KEPT", "Storage", "default_root", "remove_stale", "remove_tree"]

KEPT = "kept"
_LOCK = "lock"
#: a session directory with no lock file yet is a session that died while making it,
#: once it is older than this (seconds); a younger one may be starting right now
_UNLOCKED_GRACE = 60.0


def default_root() -> str:
    """``/var/tmp/pytest-nsbox-UID``: /var/tmp is the FHS's place for larger temporary
    files, on disk where /tmp may be RAM; the temp dir where /var/tmp is missing."""
    base = "/var/tmp" if os.access("/var/tmp", os.W_OK | os.X_OK) else tempfile.gettempdir()
    return os.path.join(base, f"pytest-nsbox-{os.geteuid()}")


class Storage:
    """This process's directory of box files under `root`, made at the first box."""

    def __init__(self, root: str | None = None, keep_old: bool = False) -> None:
        self.root = os.path.abspath(root or default_root())
        #: keep the kept boxes of earlier sessions (this session keeps failed boxes too)
        self.keep_old = keep_old
        self.session: str | None = None
        #: why boxes cannot have their files on disk here ("" while they can)
        self.problem = ""
        self.owner = os.getpid()
        self._lock = -1
        self._count = 0

    def box_dir(self) -> str | None:
        """A path for one box's files (its init makes it); None where the disk cannot
        hold them (the reason is in `problem`: the box's private paths are then RAM)."""
        if self.session is None and not self.problem:
            self._open()
        if self.session is None:
            return None
        self._count += 1
        return f"{self.session}/{self._count}"

    def _open(self) -> None:
        try:
            _own_directory(self.root)
            remove_stale(self.root, kept=not self.keep_old)
            session = tempfile.mkdtemp(prefix=f"{os.getpid()}-", dir=self.root)
            lock = os.open(f"{session}/{_LOCK}", os.O_CREAT | os.O_RDWR | os.O_CLOEXEC, 0o600)
            fcntl.flock(lock, fcntl.LOCK_EX)
        except OSError as exc:
            self.problem = (f"the storage directory {self.root} cannot be used "
                            f"({exc.strerror or exc}); boxes keep their private paths in RAM")
            return
        self.session, self._lock = session, lock
        import atexit

        atexit.register(self.close)  # a library user's process, which never closes it

    def fds(self) -> tuple[int, ...]:
        """The fds a box's test process must not keep (the session's lock)."""
        return (self._lock,) if self._lock >= 0 else ()

    def keep(self, box_dir: str, name: str, paths: tuple[str, ...]) -> dict[str, str]:
        """Move what a box wrote to its private `paths` under ROOT/kept/; {path: where}."""
        session = os.path.basename(self.session or "session")
        target = os.path.join(self.root, KEPT, session, _safe_name(name))
        os.makedirs(os.path.dirname(target), mode=0o700, exist_ok=True)
        remove_tree(target)  # the same test failed again in this session: the last run wins
        os.mkdir(target, 0o700)
        kept: dict[str, str] = {}
        for index, path in enumerate(paths):
            written = f"{box_dir}/{index}/upper"
            if os.path.isdir(written):
                where = os.path.join(target, path.strip("/").replace("/", "_") or "root")
                os.rename(written, where)
                kept[path] = where
        return kept

    def close(self) -> None:
        """The session's end: its directory goes (kept boxes are outside it)."""
        if self.session is not None and self.owner == os.getpid():
            remove_tree(self.session)
            os.close(self._lock)
        self.session, self._lock = None, -1


def _own_directory(path: str) -> None:
    """Make `path` (mode 700) or check that it is a directory of ours and no one else's:
    /var/tmp is writable by everyone, who could leave a symlink or a directory there."""
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, 0o700)
    info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid():
        raise OSError(0, f"not a directory owned by uid {os.geteuid()}")
    if info.st_mode & 0o077:
        os.chmod(path, 0o700)


def remove_stale(root: str, kept: bool = True) -> list[str]:
    """Remove the session directories under `root` whose session is gone (and the kept
    boxes, with `kept`); returns what was removed."""
    removed: list[str] = []
    try:
        entries = os.listdir(root)
    except OSError:
        return removed
    for entry in entries:
        path = os.path.join(root, entry)
        if entry == KEPT:
            if kept:
                remove_tree(path)
                removed.append(path)
            continue
        if _abandoned(path):
            removed.append(path)
    return removed


def _abandoned(path: str) -> bool:
    """Remove `path` if the session that made it is gone; True if it was removed."""
    try:
        lock = os.open(f"{path}/{_LOCK}", os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        try:
            young = os.stat(path).st_mtime > _now() - _UNLOCKED_GRACE
        except OSError:
            return False
        if young:
            return False
        remove_tree(path)
        return True
    except OSError:
        return False
    try:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return False  # its session is alive
        remove_tree(path)
        return True
    finally:
        os.close(lock)


def _now() -> float:
    import time

    return time.time()


def _safe_name(name: str) -> str:
    """A test's node id as one directory name."""
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", name).strip("_")[-150:] or "test"
