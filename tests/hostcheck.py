"""The host before and after a hostile test: what a box may not leave behind.

`host` (a fixture, import it into a test module) snapshots the machine before the test
and, after it, looks for leftovers: processes (by a unique marker in argv), cgroups named
nsbox-*, mounts, SysV IPC objects, POSIX shared memory and message queues, network
interfaces, files under /tmp, this process's children and file descriptors, and the
hostname. What it finds it removes first (so a failing test leaves nothing either), then
fails the test naming each leftover.

The machine may be shared with other pytest sessions running at the same time, so the
checks that could see someone else's objects look only at what carries the test's marker
or at the places a box must never touch (e.g. a mount at /etc).
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from helpers import processes_with

from pytest_nsbox.resources.cgroups.session import _alive

CGROUP_ROOT = "/sys/fs/cgroup"
#: Mount points a box may mount over in its own namespace, never on the host.
WATCHED_MOUNTS = ("/", "/etc", "/tmp", "/dev/shm", "/dev/mqueue", "/proc", "/sys", "/mnt",
                  "/run", "/var", "/home", "/root", "/usr", "/opt", "/srv", "/media")
#: Interfaces other things on this machine may add or remove while we run.
_NET_NOISE = ("tap", "veth", "vnet", "fc", "nsb", "br-", "docker")


def new_marker() -> str:
    """A marker unique to one test; short enough for an interface or IPC name."""
    return f"nsbxh{uuid.uuid4().hex[:10]}"


def sysv_key(marker: str) -> int:
    """A SysV IPC key derived from a marker (positive, 31 bits)."""
    return int(marker[-7:], 16) | 0x10000000


# --- readers -----------------------------------------------------------------------------


def children_of(pid: int) -> set[int]:
    """Pids whose parent is `pid` (zombies included)."""
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as file:
                stat = file.read()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2:].split()
        if len(fields) > 1 and int(fields[1]) == pid:
            found.add(int(entry))
    return found


def _fd_target(fd: int) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError as exc:
        return exc.strerror or "?"


def _box_machinery() -> tuple[set[int], set[int]]:
    """The box maker (one a pytest process, not a box's) and the fds kept for it."""
    spawn = sys.modules.get("pytest_nsbox.box.spawn")
    return spawn.machinery() if spawn is not None else (set(), set())


def nsbox_cgroups() -> set[str]:
    """Every cgroup directory named nsbox-* (sessions) and the boxes below them."""
    found = set()
    for session in glob.glob(f"{CGROUP_ROOT}/*/**/nsbox-*", recursive=True):
        found.add(session)
        found.update(glob.glob(f"{session}/**/", recursive=True))
    return {path.rstrip("/") for path in found}


def _owner(path: str) -> int | None:
    """The pid of the pytest a cgroup path belongs to (its nsbox-<pid>-... part)."""
    for part in path.split("/"):
        if part.startswith("nsbox-") and not part.startswith("nsbox-leaf-"):
            pid = part[len("nsbox-"):].split("-", 1)[0]
            if pid.isdigit():
                return int(pid)
    return None


def mounts() -> set[tuple[str, str]]:
    """(mount point, file system type) of this mount namespace."""
    found = set()
    with open("/proc/self/mountinfo") as file:
        for line in file:
            left, _, right = line.partition(" - ")
            found.add((left.split()[4], right.split()[0]))
    return found


def sysv_objects() -> dict[str, set[tuple[int, int]]]:
    """{shm|sem|msg: {(key, id)}} on the host."""
    found: dict[str, set[tuple[int, int]]] = {}
    for kind in ("shm", "sem", "msg"):
        found[kind] = set()
        try:
            with open(f"/proc/sysvipc/{kind}") as file:
                rows = file.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            cols = row.split()
            if len(cols) > 1:
                found[kind].add((int(cols[0]), int(cols[1])))
    return found


def listing(path: str) -> set[str]:
    try:
        return set(os.listdir(path))
    except OSError:
        return set()


def tmp_entries(marker: str) -> list[str]:
    """Paths under /tmp (two levels deep) whose name carries `marker`."""
    found = []
    for top in listing("/tmp"):
        path = os.path.join("/tmp", top)
        if marker in top:
            found.append(path)
            continue
        if os.path.isdir(path) and not os.path.islink(path):
            found += [os.path.join(path, name) for name in listing(path) if marker in name]
    return found


def open_fds() -> set[int]:
    """This process's fds, without the one the listing itself opened."""
    found = set()
    for fd in map(int, listing("/proc/self/fd")):
        try:
            os.fstat(fd)
        except OSError:
            continue  # the listing's own directory fd, closed by now
        found.add(fd)
    return found


# --- the snapshot and the check ---------------------------------------------------------


@dataclass
class Host:
    """The host as a test found it; `leftovers()` says what changed because of the test."""

    marker: str = field(default_factory=new_marker)
    cgroups: set[str] = field(default_factory=nsbox_cgroups)
    mounts: set[tuple[str, str]] = field(default_factory=mounts)
    sysv: dict[str, set[tuple[int, int]]] = field(default_factory=sysv_objects)
    interfaces: set[str] = field(default_factory=lambda: listing("/sys/class/net"))
    children: set[int] = field(default_factory=lambda: children_of(os.getpid()))
    fds: set[int] = field(default_factory=open_fds)
    hostname: str = field(default_factory=socket.gethostname)
    #: set by a test that made its own fds or children on purpose
    check_fds: bool = True
    #: pids of the pytest processes whose cgroups this test answers for (inner sessions
    #: add theirs); other sessions on the machine may come and go meanwhile
    owners: set[int] = field(default_factory=lambda: {os.getpid()})

    @property
    def key(self) -> int:
        return sysv_key(self.marker)

    def leftovers(self, patience: float = 2.0) -> dict[str, list[str]]:
        found: dict[str, list[str]] = {}

        def note(what: str, items: object) -> None:
            if items:
                found[what] = sorted(str(i) for i in items)  # type: ignore[attr-defined]

        deadline = time.monotonic() + patience  # the kernel reaps a dying box asynchronously
        while (left := processes_with(self.marker)) and time.monotonic() < deadline:
            time.sleep(0.02)
        note("processes", left)
        mine = os.getpid()
        new = nsbox_cgroups() - self.cgroups
        note("cgroups", [path for path in new if (owner := _owner(path)) in self.owners
                         and (not _alive(owner) or "/box-" in path)])
        note("mounts", [m for m in mounts() - self.mounts
                        if m[0] in WATCHED_MOUNTS or self.marker in m[0]])
        now = sysv_objects()
        for kind, objects in now.items():
            note(f"sysv {kind}", objects - self.sysv.get(kind, set()))
        note("posix shm", [n for n in listing("/dev/shm") if self.marker in n])
        note("posix mqueue", [n for n in listing("/dev/mqueue") if self.marker in n])
        note("interfaces", [n for n in listing("/sys/class/net") - self.interfaces
                            if not n.startswith(_NET_NOISE) or self.marker[-6:] in n])
        note("files under /tmp", tmp_entries(self.marker))
        machinery_pids, machinery_fds = _box_machinery()
        deadline = time.monotonic() + patience / 2
        while ((kids := children_of(mine) - self.children - machinery_pids)
               and time.monotonic() < deadline):
            time.sleep(0.02)
        note("children of pytest", kids)
        if self.check_fds:
            note("file descriptors of pytest", [f"{fd} ({_fd_target(fd)})" for fd in
                                                open_fds() - self.fds - machinery_fds])
        if socket.gethostname() != self.hostname:
            found["hostname"] = [socket.gethostname()]
        return found

    def clean(self, found: dict[str, list[str]]) -> None:
        """Remove what `leftovers` found, so a failing test leaves nothing either."""
        for pid in processes_with(self.marker):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        for pid in map(int, found.get("children of pytest", ())):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(OSError):
                os.waitpid(pid, 0)
        for path in sorted(found.get("cgroups", ()), key=len, reverse=True):
            for pid in listing_procs(path):
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(OSError):
                os.rmdir(path)
        for text in found.get("mounts", ()):
            point = text.split("'")[1] if "'" in text else text
            subprocess.run(["umount", "-l", point], check=False, capture_output=True)
        flags = {"shm": "-m", "sem": "-s", "msg": "-q"}
        for kind, flag in flags.items():
            for text in found.get(f"sysv {kind}", ()):
                ident = text.strip("()").split(",")[1].strip()
                subprocess.run(["ipcrm", flag, ident], check=False, capture_output=True)
        for name in found.get("posix shm", ()):
            with contextlib.suppress(OSError):
                os.unlink(f"/dev/shm/{name}")
        for name in found.get("posix mqueue", ()):
            with contextlib.suppress(OSError):
                os.unlink(f"/dev/mqueue/{name}")
        for name in found.get("interfaces", ()):
            subprocess.run(["ip", "link", "del", name], check=False, capture_output=True)
        for path in found.get("files under /tmp", ()):
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    os.unlink(path)
        for fd in (int(text.split()[0]) for text in found.get("file descriptors of pytest", ())):
            with contextlib.suppress(OSError):
                os.close(fd)
        if "hostname" in found and os.geteuid() == 0:
            with contextlib.suppress(OSError):
                socket.sethostname(self.hostname)


def listing_procs(cgroup: str) -> list[int]:
    try:
        with open(f"{cgroup}/cgroup.procs") as file:
            return [int(p) for p in file.read().split()]
    except OSError:
        return []


def check_host(host: Host) -> None:
    """Fail naming every leftover of the test (after removing it)."""
    found = host.leftovers()
    if found:
        host.clean(found)
        lines = [f"  {what}: {', '.join(items)}" for what, items in found.items()]
        pytest.fail("the box left these on the host:\n" + "\n".join(lines), pytrace=False)


@pytest.fixture
def host() -> Iterator[Host]:
    """The host before the test; after it, no leftover or the test fails (and is cleaned)."""
    snapshot = Host()
    yield snapshot
    check_host(snapshot)


# --- inner sessions with per-test results ------------------------------------------------

_REPORTER = '''
import json, os

_LOG = {log!r}

def pytest_configure(config):
    os.environ["NSBOX_OUTER_PYTEST_PID"] = str(os.getpid())
    with open(_LOG + ".pid", "a") as file:
        file.write(f"{{os.getpid()}}\\n")

def pytest_runtest_logreport(report):
    text = str(report.longrepr or "")
    row = {{
        "nodeid": report.nodeid, "when": report.when, "outcome": report.outcome,
        "length": len(text),
        "text": text[:20000] + ("\\n...\\n" + text[-2000:] if len(text) > 22000 else ""),
        "sections": {{name: len(body) for name, body in report.sections}},
        "section_text": "".join(body[:2000] for _, body in report.sections),
        "duration": report.duration,
    }}
    with open(_LOG, "a") as file:
        file.write(json.dumps(row) + "\\n")
'''


@dataclass
class Result:
    """One inner test: its outcome word and the text of its failure (all phases)."""

    outcome: str = "passed"  # passed | failed | error | skipped
    text: str = ""
    length: int = 0  # of the longest failure text (it may be cut in `text`)
    sections: dict[str, int] = field(default_factory=dict)
    section_text: str = ""
    phases: list[str] = field(default_factory=list)


def read_results(log: str) -> dict[str, Result]:
    import json

    results: dict[str, Result] = {}
    if not os.path.exists(log):
        return results
    with open(log) as file:
        for line in file:
            row = json.loads(line)
            name = row["nodeid"].split("::")[-1]
            result = results.setdefault(name, Result())
            result.phases.append(f"{row['when']}:{row['outcome']}")
            for key, size in row["sections"].items():  # a later phase repeats earlier ones
                result.sections[key] = max(result.sections.get(key, 0), size)
            result.section_text += row["section_text"]
            if row["outcome"] == "failed":
                result.outcome = "failed" if row["when"] == "call" else "error"
                result.text += row["text"]
                result.length = max(result.length, row["length"])
            elif row["outcome"] == "skipped" and result.outcome == "passed":
                result.outcome = "skipped"
    return results


def run_inner_session(pytester: pytest.Pytester, host: Host, source: str, *args: str,
                      timeout: float = 60) -> tuple[pytest.RunResult, dict[str, Result]]:
    """Run `source` as an inner boxed session; the marker rides in every box's argv."""
    import textwrap

    log = str(pytester.path / f"results-{host.marker}.jsonl")
    pytester.makeconftest(_REPORTER.format(log=log))
    pytester.makepyfile(test_hostile_inner=textwrap.dedent(source))
    basetemp = pytester.path / f"bt-{host.marker}"
    try:
        result = pytester.runpytest_subprocess(
            "-p", "no:cacheprovider", "-p", "no:rerunfailures", f"--basetemp={basetemp}",
            "-q", "-rA", *args, timeout=timeout)
    finally:
        host.owners.update(read_pids(log + ".pid"))
    return result, read_results(log)


def read_pids(path: str) -> set[int]:
    try:
        with open(path) as file:
            return {int(line) for line in file if line.strip()}
    except OSError:
        return set()


def cgroups_writable() -> bool:
    """True when a box may have a memory limit here (root on v1, or a delegated v2)."""
    from pytest_nsbox.box.options import BoxOptions
    from pytest_nsbox.resources import cgroups

    try:
        box = cgroups.box_cgroup(BoxOptions(memory=256 << 20))
    except cgroups.CgroupUnavailable:
        return False
    if box is not None:
        box.remove()
    return True
