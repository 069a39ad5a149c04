"""Benchmark modes run as an unprivileged user (``overhead.py --user NAME``), beside root's.

Root prepares, once per run, what that user needs and cannot make alone:

- venvs of its own from the system ``/usr/bin/python3`` (root's pyenv Python under /root
  is not readable by others), with the dev venv's versions of pytest, pluggy,
  cloudpickle, pyroute2 and pytest-xdist, and one with pytest-forked's pins; cached in
  ``.work/user-NAME``;
- its own copies of the suite and of the pytest_nsbox measured (so pytest can write their
  bytecode, as it can for root);
- cgroups it owns, as ``cgcreate -a NAME -t NAME`` would make them (the fix nsbox's own
  ``BoxUnavailable`` message gives a user on cgroup v1): a directory below this
  process's own in each v1 hierarchy nsbox uses (on pure v2, beside this process's own,
  which gives it the same controllers: a cgroup with processes cannot enable them for a
  child), chowned to the user, removed (with anything left in it) at the end.

The user's runs use the system's Python, not root's (see ``SYSTEM_PYTHON``), so
overhead.py also runs root's modes on that Python (``sys:``): compare the user's column
with that one.

Each of the user's pytest runs joins those cgroups and drops to the user in the child
before ``exec`` (``preexec_fn``), so its wall time holds only pytest's work.
"""

from __future__ import annotations

import atexit
import importlib.metadata
import os
import pwd
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pytest_nsbox.resources.cgroups.layout import ROOT, _layout
from pytest_nsbox.resources.cgroups.tree import _remove_tree

SYSTEM_PYTHON = "/usr/bin/python3"
PACKAGES = ("pytest", "pluggy", "cloudpickle", "pyroute2", "pytest-xdist", "execnet")
V1_CONTROLLERS = ("memory", "cpu", "cpuacct", "cpuset", "pids")
V2_CONTROLLERS = ("memory", "pids", "cpu", "cpuset")


@dataclass
class User:
    """An unprivileged user the benchmark runs pytest as, and what root made for it."""

    name: str
    work: Path
    uid: int = 0
    gid: int = 0
    home: str = ""
    cgroups: list[str] = field(default_factory=list)  # directories the user's runs join
    nsbox_src: str | None = None  # the directory holding the user's copy of pytest_nsbox

    def env(self, base: dict[str, str]) -> dict[str, str]:
        """`base` with the user's HOME and USER (pip's cache, pytest's basetemp name), and
        without root's venv, PATH and runtime directories."""
        env = {k: v for k, v in base.items()
               if k not in ("VIRTUAL_ENV", "TMPDIR", "XDG_RUNTIME_DIR")}
        return {**env, "HOME": self.home, "USER": self.name, "LOGNAME": self.name,
                "PATH": "/usr/local/bin:/usr/bin:/bin"}

    def preexec(self) -> Callable[[], None]:
        """For the child: join the user's cgroups (still root), then become the user."""
        procs = [f"{d}/cgroup.procs" for d in self.cgroups]

        def enter() -> None:
            for path in procs:
                with open(path, "w") as f:
                    f.write("0")
            os.setgroups([])
            os.setgid(self.gid)
            os.setuid(self.uid)

        return enter

    def run(self, cmd: list[str]) -> None:
        """`cmd` as the user, in its cgroups, checked."""
        subprocess.run(cmd, preexec_fn=self.preexec(), env=self.env(dict(os.environ)),
                       check=True)

    def venv(self, name: str, pins: list[str]) -> str:
        """A venv of the user's own with `pins` (made once; remade when they change)."""
        path = self.work / name
        python = path / "bin" / "python"
        stamp = path / "pins.txt"
        want = "\n".join(pins) + "\n"
        if stamp.exists() and stamp.read_text() == want:
            return str(python)
        if path.exists():
            shutil.rmtree(path)
        print(f"making {path} as {self.name} ({', '.join(pins)}) ...", flush=True)
        self.run([SYSTEM_PYTHON, "-m", "venv", str(path)])
        self.run([str(python), "-m", "pip", "install", "-q", *pins])
        stamp.write_text(want)
        return str(python)

    def copy(self, tree: Path) -> Path:
        """A copy of `tree` the user owns, in its work directory."""
        target = self.work / tree.name
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(tree, target, ignore=shutil.ignore_patterns("__pycache__"))
        _chown_tree(target, self.uid, self.gid)
        return target

    def remove_cgroups(self) -> None:
        """Remove the user's cgroups and whatever its runs left in them (each one tried)."""
        for d in reversed(self.cgroups):
            try:
                _remove_tree(d)
            except OSError as exc:
                print(f"could not remove {d}: {exc}", flush=True)
        self.cgroups.clear()


def prepare(name: str, work: Path) -> User:
    """The user `name` (made with useradd when missing), its work directory and cgroups."""
    if os.geteuid() != 0:
        raise SystemExit("--user needs root: root makes the user's venvs and cgroups")
    if not os.access(SYSTEM_PYTHON, os.X_OK):
        raise SystemExit(f"--user: no {SYSTEM_PYTHON} to make the user's venvs with")
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        subprocess.run(["useradd", "-m", name], check=True)
        entry = pwd.getpwnam(name)
    user = User(name, work / f"user-{name}", entry.pw_uid, entry.pw_gid, entry.pw_dir)
    user.work.mkdir(parents=True, exist_ok=True)
    os.chown(user.work, user.uid, user.gid)
    user.cgroups = _make_cgroups(f"nsbench-{name}", user.uid, user.gid)
    atexit.register(user.remove_cgroups)
    return user


def dev_pins() -> list[str]:
    """The dev venv's versions of what nsbox needs, for the user's venv."""
    return [f"{p}=={importlib.metadata.version(p)}" for p in PACKAGES]


def _make_cgroups(leaf: str, uid: int, gid: int) -> list[str]:
    """Cgroups owned by uid:gid next to this process's own, as `cgcreate -a -t` makes them;
    on failure, none."""
    layout = _layout()
    if layout.v1:
        parents = list(dict.fromkeys(layout.v1[c] for c in V1_CONTROLLERS if c in layout.v1))
    elif layout.unified:
        own = layout.unified
        parents = [own if own == ROOT else os.path.dirname(own)]
    else:
        raise SystemExit("--user: this machine has no cgroup hierarchy to give the user")
    made: list[str] = []
    try:
        for parent in parents:
            path = f"{parent}/{leaf}"
            os.makedirs(path, exist_ok=True)
            made.append(path)
            if os.path.exists(f"{path}/cpuset.cpus"):  # a new v1 cpuset has no cpus or mems
                for knob in ("cpuset.cpus", "cpuset.mems"):
                    with open(f"{parent}/{knob}") as src, open(f"{path}/{knob}", "w") as dst:
                        dst.write(src.read())
            if not layout.v1 and parent == ROOT:  # the root cgroup may enable controllers
                with open(f"{parent}/cgroup.controllers") as f:
                    available = set(f.read().split())
                with open(f"{parent}/cgroup.subtree_control", "w") as f:
                    f.write(" ".join(f"+{c}" for c in V2_CONTROLLERS if c in available))
            _chown_tree(Path(path), uid, gid)
    except OSError as exc:
        for path in reversed(made):
            os.rmdir(path)
        raise SystemExit(f"--user: cannot make the user's cgroup {leaf} ({exc})") from None
    return made


def _chown_tree(top: Path, uid: int, gid: int) -> None:
    os.chown(top, uid, gid)
    for dirpath, dirnames, filenames in os.walk(top):
        for n in (*dirnames, *filenames):
            os.chown(os.path.join(dirpath, n), uid, gid, follow_symlinks=False)
