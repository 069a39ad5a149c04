"""Cgroups a normal user owns, so that boxes get limits without root at test time.

``pytest-nsbox cgroup-setup --user NAME`` (root, once per boot: cgroups do not survive a
reboot) makes ``nsbox-user-NAME`` cgroups owned by NAME; ``pytest-nsbox cgroup-exec CMD``
(NAME) runs CMD in them. No cgroup-tools, no systemd.

- cgroup v1: one directory in each hierarchy a box uses (memory, cpu, cpuacct, pids,
  cpuset with ``cpuset.cpus``/``cpuset.mems`` filled from the parent, freezer), owned by
  NAME; ``cgroup-exec`` writes its pid into each and execs CMD.
- cgroup v2: the kernel lets a process move only where it may write the ``cgroup.procs``
  of the common ancestor of both cgroups, so a user cannot enter a subtree root made
  elsewhere (systemd's ``Delegate=`` has PID 1 move it). Root enables the controllers
  down to ``nsbox-user-NAME``, hands it to NAME (as systemd delegates a subtree), and
  starts a small spawner there, running as NAME: ``cgroup-exec`` asks it over a unix
  socket to start CMD with the caller's argv, environment, directory and terminal (the
  same file descriptors), and relays signals and the exit status. Where the caller may
  move itself (already in a delegated subtree), it does so and execs CMD directly.

`resources.cgroups.userfix.fix()` is the one fix every message gives (the cgroup error,
the doctor, the README).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import signal
import socket
import struct
import sys
from typing import Any, NoReturn

from .resources.cgroups import userfix

__all__ = ["PREFIX", "main_exec", "main_setup"]

PREFIX = "nsbox-user-"
#: v1 hierarchies a box uses (freezer: a box with a timeout is frozen before it is killed)
V1_CONTROLLERS = ("memory", "cpu", "cpuacct", "pids", "cpuset", "freezer")
#: v2 controllers enabled down to the user's cgroup, where the machine has them
V2_CONTROLLERS = ("memory", "pids", "cpu", "cpuset", "io")
SPAWNER = "spawner"  # v2: the leaf the spawner lives in ("no internal processes")
RUN_PREFIX = "run-"  # v2: one leaf per command the spawner starts
_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)


class SetupError(Exception):
    """What went wrong, in words, for the command line."""


# --- where the hierarchies are ---------------------------------------------------------------

def hierarchies() -> tuple[dict[str, str], str | None]:
    """({v1 controller: its mount point}, the cgroup2 mount point) as this process sees them."""
    v1: dict[str, str] = {}
    v2 = None
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fields, rfields = left.split(), right.split()
            if len(rfields) < 3 or fields[3].startswith("/.."):
                continue
            if rfields[0] == "cgroup":
                for option in rfields[2].split(","):
                    if option in V1_CONTROLLERS:
                        v1.setdefault(option, fields[4])
            elif rfields[0] == "cgroup2" and v2 is None:
                v2 = fields[4]
    return v1, v2


def user_cgroups(user: str) -> tuple[list[str], str | None]:
    """(v1 directories, one a hierarchy; the v2 directory) of `user`'s cgroups.

    v1 where the memory controller is on v1 (hybrid machines included), else v2.
    """
    v1, v2 = hierarchies()
    if "memory" in v1:
        return sorted({f"{point}/{PREFIX}{user}" for point in v1.values()}), None
    return [], (f"{v2}/{PREFIX}{user}" if v2 else None)


def _socket_path(user: str) -> str:
    base = "/run" if os.path.isdir("/run") else "/tmp"
    return f"{base}/pytest-nsbox-{user}/spawner.sock"


# --- root's part ----------------------------------------------------------------------------

def _read(path: str) -> str:
    with open(path) as f:
        return f.read().strip()


def _write(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def _chown_tree(path: str, uid: int, gid: int, names: tuple[str, ...] | None = None) -> None:
    """Give `path` and its files (or only `names` of them) to uid:gid, as cgcreate -a -t."""
    os.chown(path, uid, gid)
    for entry in os.scandir(path):
        if entry.is_file() and (names is None or entry.name in names):
            os.chown(entry.path, uid, gid)


def setup(user: str) -> tuple[list[str], str]:
    """Make `user`'s cgroups (idempotent); their paths and the prefix the user runs under."""
    import pwd

    if os.geteuid() != 0:
        raise SetupError("cgroup-setup makes cgroups for another user: run it as root")
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        raise SetupError(f"no user named {user!r}") from None
    uid, gid = entry.pw_uid, entry.pw_gid
    v1_dirs, v2_dir = user_cgroups(user)
    if v1_dirs:
        for path in v1_dirs:
            with contextlib.suppress(FileExistsError):
                os.mkdir(path)
            if os.path.exists(f"{path}/cpuset.cpus"):  # empty in a new v1 cpuset cgroup
                parent = os.path.dirname(path)
                for name in ("cpuset.cpus", "cpuset.mems"):
                    if not _read(f"{path}/{name}"):
                        _write(f"{path}/{name}", _read(f"{parent}/{name}"))
            _chown_tree(path, uid, gid)
        return v1_dirs, userfix.fix_commands(user)[1]
    if v2_dir is None:
        raise SetupError("no cgroup hierarchy is mounted: `mount -t cgroup2 none /sys/fs/cgroup`")
    _setup_v2(v2_dir, user, uid, gid)
    return [v2_dir], userfix.fix_commands(user)[1]


def _enable(path: str, wanted: tuple[str, ...]) -> None:
    """Enable the `wanted` controllers `path` has for its children; processes living in
    `path` itself move to a leaf beside ("no internal processes")."""
    have = _read(f"{path}/cgroup.controllers").split()
    data = " ".join(f"+{c}" for c in wanted if c in have)
    if not data:
        return
    try:
        _write(f"{path}/cgroup.subtree_control", data)
    except OSError as exc:
        if exc.errno != errno.EBUSY:
            raise
        leaf = f"{path}/nsbox-setup-procs"
        with contextlib.suppress(FileExistsError):
            os.mkdir(leaf)
        for pid in _read(f"{path}/cgroup.procs").split():
            with contextlib.suppress(ProcessLookupError):
                _write(f"{leaf}/cgroup.procs", pid)
        _write(f"{path}/cgroup.subtree_control", data)


def _setup_v2(path: str, user: str, uid: int, gid: int) -> None:
    _enable(os.path.dirname(path), V2_CONTROLLERS)
    with contextlib.suppress(FileExistsError):
        os.mkdir(path)
    _enable(path, V2_CONTROLLERS)
    # what systemd hands over with Delegate=yes: the directory and these three files
    _chown_tree(path, uid, gid, ("cgroup.procs", "cgroup.subtree_control", "cgroup.threads"))
    sock = _socket_path(user)
    if _spawner_alive(sock):
        return
    folder = os.path.dirname(sock)
    os.makedirs(folder, mode=0o700, exist_ok=True)
    os.chown(folder, uid, gid)
    os.chmod(folder, 0o700)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(sock)
    leaf = f"{path}/{SPAWNER}"
    with contextlib.suppress(FileExistsError):
        os.mkdir(leaf)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the daemon, in its own session, as the user
        try:
            os.setsid()
            if os.fork():
                os._exit(0)
            _write(f"{leaf}/cgroup.procs", str(os.getpid()))
            os.initgroups(user, gid)
            os.setgid(gid)
            os.setuid(uid)
            os.chdir("/")
            null = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(null, fd)
            _serve(sock, path, uid)
        finally:
            os._exit(1)
    os.waitpid(pid, 0)
    import time

    deadline = time.monotonic() + 10
    while not _spawner_alive(sock):
        if time.monotonic() > deadline:
            raise SetupError(f"the spawner for {user} did not start ({sock})")
        time.sleep(0.02)


def _spawner_alive(sock: str) -> bool:
    with socket.socket(socket.AF_UNIX) as s:
        try:
            s.connect(sock)
        except OSError:
            return False
    return True


def remove(user: str) -> list[str]:
    """Kill everything in `user`'s cgroups (the spawner too) and remove them."""
    from .resources.cgroups.tree import _remove_tree

    v1_dirs, v2_dir = user_cgroups(user)
    gone = [p for p in (*v1_dirs, *([v2_dir] if v2_dir else [])) if os.path.isdir(p)]
    for path in gone:
        _remove_tree(path)
    shutil.rmtree(os.path.dirname(_socket_path(user)), ignore_errors=True)
    return gone


# --- the spawner (v2, runs as the user, inside the user's cgroup) ----------------------------

def _serve(sock_path: str, cgroup: str, uid: int) -> NoReturn:  # pragma: no cover - daemon
    server = socket.socket(socket.AF_UNIX)
    server.bind(sock_path)
    server.listen(16)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # runners reap themselves
    while True:
        conn, _ = server.accept()
        creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        if struct.unpack("3i", creds)[1] not in (uid, 0) or os.fork():
            conn.close()
            continue
        server.close()
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        try:
            _run_one(conn, cgroup)
        finally:
            os._exit(0)


def _recv_exact(conn: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            raise EOFError
        data += chunk
    return data


def _run_one(conn: socket.socket, cgroup: str) -> None:  # pragma: no cover - daemon
    """Start one command in a leaf of its own; send its pid, then its exit status."""
    import select

    header, fds, _, _ = socket.recv_fds(conn, 4, 3)
    request: dict[str, Any] = json.loads(_recv_exact(conn, struct.unpack("=I", header)[0]))
    leaf = f"{cgroup}/{RUN_PREFIX}{os.getpid()}"
    os.mkdir(leaf)
    child = os.fork()
    if child == 0:
        try:
            _write(f"{leaf}/cgroup.procs", str(os.getpid()))
            os.setpgid(0, 0)
            for target, fd in enumerate(fds):
                os.dup2(fd, target)
            os.closerange(3, 1 << 16)
            os.chdir(request["cwd"])
            os.umask(request["umask"])
            for number in _SIGNALS:
                signal.signal(number, signal.SIG_DFL)
            os.execvpe(request["argv"][0], request["argv"], request["env"])
        except OSError as exc:
            os.write(2, f"pytest-nsbox cgroup-exec: {request['argv'][0]}: {exc.strerror}\n"
                        .encode())
        os._exit(127)
    for fd in fds:
        os.close(fd)
    conn.sendall(struct.pack("=i", child))
    pidfd = os.pidfd_open(child)
    while True:
        ready = select.select([conn.fileno(), pidfd], [], [])[0]
        if pidfd in ready:
            break
        if not conn.recv(64):  # the caller went away: so does its command
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child, signal.SIGTERM)
            select.select([pidfd], [], [], 10)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child, signal.SIGKILL)
            break
    _, status = os.waitpid(child, 0)
    with contextlib.suppress(OSError):
        conn.sendall(struct.pack("=i", os.waitstatus_to_exitcode(status)))
    with contextlib.suppress(OSError):
        os.rmdir(leaf)


# --- the user's part --------------------------------------------------------------------------

def _resolve(name: str) -> str:
    """A bare command name beside pytest-nsbox (its venv's bin) first, then on PATH."""
    if "/" in name:
        return name
    beside = os.path.join(os.path.dirname(os.path.abspath(sys.argv[0])), name)
    if os.path.basename(sys.argv[0]) == "pytest-nsbox" and os.access(beside, os.X_OK):
        return beside
    return shutil.which(name) or name


def run(argv: list[str]) -> int:
    """Run argv in this user's cgroups: moved there and exec'd, or started by the spawner."""
    user = userfix._user_name()
    v1_dirs, v2_dir = user_cgroups(user)
    argv = [_resolve(argv[0]), *argv[1:]]
    missing = [p for p in (*v1_dirs, *([v2_dir] if v2_dir else [])) if not os.path.isdir(p)]
    if missing or not (v1_dirs or v2_dir):
        raise SetupError(f"no cgroups for {user} ({', '.join(missing) or 'no hierarchy'}); "
                         f"as root, once per boot: `{userfix.fix_commands(user)[0]}`")
    if v1_dirs:
        for path in v1_dirs:
            _write(f"{path}/cgroup.procs", str(os.getpid()))
        os.execvp(argv[0], argv)
    assert v2_dir is not None
    for entry in os.listdir(v2_dir):  # leaves of commands that ended (rmdir refuses others)
        if entry.startswith(RUN_PREFIX):
            with contextlib.suppress(OSError):
                os.rmdir(f"{v2_dir}/{entry}")
    leaf = f"{v2_dir}/{RUN_PREFIX}{os.getpid()}"
    try:  # where this process may move itself (a delegated subtree), no spawner is needed
        os.mkdir(leaf)
        _write(f"{leaf}/cgroup.procs", str(os.getpid()))
    except OSError:
        with contextlib.suppress(OSError):
            os.rmdir(leaf)
    else:
        os.execvp(argv[0], argv)
    return _through_spawner(user, argv)


def _through_spawner(user: str, argv: list[str]) -> int:
    sock = _socket_path(user)
    conn = socket.socket(socket.AF_UNIX)
    try:
        conn.connect(sock)
    except OSError as exc:
        raise SetupError(f"the cgroup spawner for {user} is not running ({sock}: "
                         f"{exc.strerror}); as root: `{userfix.fix_commands(user)[0]}`") from None
    umask = os.umask(0)
    os.umask(umask)
    body = json.dumps({"argv": argv, "cwd": os.getcwd(), "env": dict(os.environ),
                       "umask": umask}).encode()
    socket.send_fds(conn, [struct.pack("=I", len(body))], [0, 1, 2])
    conn.sendall(body)
    child = struct.unpack("=i", _recv_exact(conn, 4))[0]

    def forward(number: int, frame: object) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child, number)

    for number in _SIGNALS:
        signal.signal(number, forward)
    try:
        code = int(struct.unpack("=i", _recv_exact(conn, 4))[0])
        return code if code >= 0 else 128 - code  # killed by a signal: as a shell says
    except EOFError:
        return 1
    finally:
        conn.close()


# --- command lines --------------------------------------------------------------------------

def main_setup(argv: list[str]) -> int:
    """`pytest-nsbox cgroup-setup --user NAME [--remove]`."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="pytest-nsbox cgroup-setup",
        description="As root, once per boot: make cgroups USER owns, so that USER's boxes "
                    "get memory, cpu, cpuset and pids limits (run pytest under the prefix "
                    "this prints).")
    parser.add_argument("--user", required=True, help="the user who will run pytest")
    parser.add_argument("--remove", action="store_true",
                        help="kill what runs in USER's cgroups and remove them")
    args = parser.parse_args(argv)
    try:
        if args.remove:
            gone = remove(args.user)
            print(f"removed: {', '.join(gone) or 'nothing (no cgroups for ' + args.user + ')'}")
            return 0
        paths, prefix = setup(args.user)
    except (SetupError, OSError) as exc:
        print(f"pytest-nsbox cgroup-setup: {exc}", file=sys.stderr)
        return 1
    print(f"cgroups owned by {args.user}: {', '.join(paths)}")
    print(f"{args.user} now runs pytest under: {prefix}")
    print(f"e.g.: {prefix} pytest --nsbox")
    return 0


def main_exec(argv: list[str]) -> int:
    """`pytest-nsbox cgroup-exec [--] COMMAND [ARGS...]`."""
    if argv[:1] == ["--"]:
        argv = argv[1:]
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: pytest-nsbox cgroup-exec [--] COMMAND [ARGS...]\n\nrun COMMAND (e.g. "
              "pytest) in the cgroups `pytest-nsbox cgroup-setup --user $USER` made for you; "
              "a bare COMMAND found beside pytest-nsbox (its venv) runs from there")
        return 0 if argv else 2
    try:
        return run(argv)
    except (SetupError, OSError) as exc:
        print(f"pytest-nsbox cgroup-exec: {exc}", file=sys.stderr)
        return 1
