"""Boxes inside boxes: limits nest through the cgroup subtree delegated to a box, and the
kernel refuses devices a box was not given (v1 devices controller, v2 eBPF filter).

Marked `vm`: the same tests run in the cgroup v2 VM lane (root, delegated user).
"""

from __future__ import annotations

import errno
import os
import re
import stat
import textwrap

import pytest

from conftest import needs
from pytest_nsbox import Box, BoxUnavailable, MemoryLimitExceeded
from pytest_nsbox.resources import cgroups

pytestmark = pytest.mark.vm

MiB = 1 << 20


def _cgroups_writable() -> bool:
    from pytest_nsbox.box.options import BoxOptions

    try:
        made = cgroups.box_cgroup(BoxOptions(memory=256 * MiB))
    except cgroups.CgroupUnavailable:
        return False
    if made is not None:
        made.remove()
    return made is not None


@pytest.fixture(scope="module")
def limits() -> None:
    needs(_cgroups_writable(), "lacks: a writable cgroup (limits)")


def hog(mib: int) -> int:
    block = bytearray(mib * MiB)
    block[::4096] = b"x" * (len(block) // 4096)
    return len(block) // MiB


def _inner(options: dict[str, object], mib: int) -> object:
    """Run hog(mib) in an inner box; what it returned or the error it raised."""
    try:
        return Box(**options).run(hog, mib)
    except Exception as exc:  # the outcome is the answer
        return exc


@pytest.mark.usefixtures("limits")
def test_an_inner_box_gets_a_memory_limit_of_its_own() -> None:
    fits, over = Box(memory="256M").run(
        lambda: (_inner({"memory": "64M"}, 32), _inner({"memory": "64M"}, 128)))
    assert fits == 32
    assert isinstance(over, MemoryLimitExceeded), over
    assert not over.enclosing
    assert str(over).startswith("exceeded its memory limit of 64 MiB")


@pytest.mark.usefixtures("limits")
def test_the_outer_limit_holds_over_an_inner_box() -> None:
    """An inner box asking for more than the outer allows is still held by the outer."""
    outcome = Box(memory="128M").run(_inner, {"memory": "1G"}, 200)
    assert isinstance(outcome, MemoryLimitExceeded), outcome
    assert outcome.enclosing
    assert "below its own memory limit of 1 GiB" in str(outcome)


def _three_deep() -> tuple[object, object]:
    return _inner({"memory": "64M"}, 16), _inner({"memory": "64M"}, 100)


@pytest.mark.usefixtures("limits")
def test_limits_nest_three_deep() -> None:
    """Every box's test process is pid 2: the third box must not take the second's
    cgroup session (inherited from its outer test process) for its own."""
    fits, over = Box(memory="256M").run(lambda: Box(memory="128M").run(_three_deep))
    assert fits == 16
    assert isinstance(over, MemoryLimitExceeded) and not over.enclosing, over


@pytest.mark.usefixtures("limits")
def test_an_inner_box_gets_a_pids_limit_of_its_own() -> None:
    def spawn(count: int) -> int:
        started = 0
        children = []
        for _ in range(count):
            try:
                pid = os.fork()
            except BlockingIOError:
                break
            if pid == 0:
                os.read(os.open("/dev/zero", os.O_RDONLY), 1)
                os._exit(0)
            children.append(pid)
            started += 1
        for pid in children:
            os.waitpid(pid, 0)
        return started

    inner = Box(pids=100).run(lambda: Box(pids=8).run(spawn, 20))
    assert 0 < inner < 8  # the inner box's init and test process count too


def _mount_errors() -> dict[str, int]:
    """Try to mount each cgroup file system; {kind: errno, 0 if it mounted}."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    os.makedirs("/tmp/cg", exist_ok=True)
    found = {}
    for kind, fstype, data in (("v2", b"cgroup2", None), ("v1 cpu", b"cgroup", b"cpu"),
                               ("v1 devices", b"cgroup", b"devices")):
        status = libc.mount(b"none", b"/tmp/cg", fstype, 0, data)
        found[kind] = 0 if status == 0 else ctypes.get_errno()
        if status == 0:
            libc.umount2(b"/tmp/cg", 2)
    return found


@pytest.mark.usefixtures("limits")
def test_a_box_cannot_mount_a_cgroup_file_system() -> None:
    """Found by review: a cgroup namespace of the box's own let it mount every hierarchy,
    see pytest's cgroups where it had none of its own, and write cgroup.kill there."""
    for options in ({}, {"memory": "64M"}, {"user": "root", "memory": "64M"}):
        found = Box(**options).run(_mount_errors)
        assert set(found.values()) <= {errno.EPERM, errno.EBUSY}, (options, found)
        assert errno.EPERM in found.values(), (options, found)


def _bpf_program_fds() -> list[str]:
    links = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            links.append(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:
            pass
    return [link for link in links if "bpf-prog" in link]


@pytest.mark.nsbox(enabled=False)  # loads a program in pytest's own process
def test_a_box_holds_no_device_program_of_its_parent() -> None:
    """With the parent's program fd and its own cgroup directory a box could detach its
    device filter (found by review); the init closes them."""
    from pytest_nsbox.resources import devices as devfilter

    needs(devfilter.filter_available(), "lacks: bpf(BPF_PROG_LOAD) of a cgroup device program")
    assert _bpf_program_fds()  # loaded here
    assert Box().run(_bpf_program_fds) == []
    assert Box(memory="64M").run(_bpf_program_fds) == []


def _lift_then_hog() -> tuple[list[str], int]:
    """Try to lift every limit and leave every cgroup the box can see, then hog 200 MiB
    in a child; the files written and the child's wait status."""
    lifts = {"memory.limit_in_bytes": "-1", "memory.memsw.limit_in_bytes": "-1",
             "memory.max": "max", "memory.swap.max": "max", "pids.max": "max",
             "cgroup.procs": str(os.getpid())}
    written = []
    for top, _, files in os.walk("/sys/fs/cgroup"):
        for name in files:
            if name in lifts:
                try:
                    with open(f"{top}/{name}", "w") as file:
                        file.write(lifts[name])
                    written.append(f"{top}/{name}")
                except OSError:
                    pass
    child = os.fork()
    if child == 0:
        hog(200)
        os._exit(0)
    return written, os.waitpid(child, 0)[1]


@pytest.mark.usefixtures("limits")
def test_a_box_cannot_lift_its_own_limits() -> None:
    """Every limit file and cgroup.procs the box can see is tried: only the subtree
    delegated to it takes a limit write, and 200 MiB under a 64 MiB limit is still killed."""
    written, status = Box(memory="64M", pids=64).run(_lift_then_hog)
    assert any(path.endswith("/cgroup.procs") for path in written), written
    lifted = [path for path in written if not path.endswith("/cgroup.procs")]
    assert all(f"/{cgroups.DELEGATED}/" in path for path in lifted), lifted
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == 9, status


@pytest.mark.usefixtures("limits")
def test_what_an_inner_box_leaves_is_removed_with_the_outer_box() -> None:
    """An inner box's cgroups left behind (its test process ends without cleaning up)
    go with the outer box."""

    def leave_an_inner_cgroup() -> tuple[str, ...]:
        from pytest_nsbox.box.options import BoxOptions

        made = cgroups.box_cgroup(BoxOptions(memory=32 * MiB))
        assert made is not None
        return made.paths  # the box sees its cgroups at their paths on the host

    left = Box(memory="64M").run(leave_an_inner_cgroup)
    assert left and all(len(re.findall(r"/box-\d+", path)) >= 2 for path in left), left
    assert not any(os.path.exists(path) for path in left), left


def test_inner_limits_without_a_delegated_subtree_are_a_clear_unavailable(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Where the outer box has no cgroups (here: none to give it), an inner limit says
    why and what to do."""

    def inner() -> str:
        try:
            Box(memory="64M").run(int)
        except BoxUnavailable as exc:
            return str(exc)
        return "ran"

    from pytest_nsbox.box import spawn

    monkeypatch.setattr(spawn, "make_cgroup", _no_cgroup_outside(spawn.make_cgroup))
    message = Box().run(inner)
    assert message.startswith("a box inside a box cannot have memory=64 MiB: the outer box "
                              "has no cgroup to give it"), message
    assert "--nsbox-doctor" in message


def _inner_cpu_limit() -> str:
    try:
        Box(cpu=0.5).run(int)
    except BoxUnavailable as exc:
        return str(exc)
    return "ran"


@pytest.mark.nsbox(cpu=2.0)  # itself in a box with a cpu cgroup, --nsbox or not
@pytest.mark.usefixtures("limits")
def test_an_inner_box_has_limits_of_the_kinds_its_outer_box_has() -> None:
    """The outer box gets (and delegates) a cpu cgroup only when it has a cpu limit."""
    assert Box(cpu=1.0).run(_inner_cpu_limit) == "ran"
    needs(cgroups.detect()["version"] != "v2",
          "lacks: cgroup v1 (on v2 a session that enabled cpu once gives it to every box)")
    message = Box().run(_inner_cpu_limit)
    assert message.startswith("a box inside a box cannot have cpu=0.5: a box gets cgroups "
                              "of the kinds its outer box has"), message
    assert "give the outer box a limit of the same kind" in message
    assert "cgcreate" not in message  # the fix for pytest's own cgroups does not apply


def _inner_io_limit() -> str:
    try:
        Box(io={"write_bps": "8M"}).run(int)
    except BoxUnavailable as exc:
        return str(exc)
    return "ran"


@pytest.mark.usefixtures("limits")
def test_io_limits_do_not_nest_on_cgroup_v1() -> None:
    needs(cgroups.detect()["version"] != "v2", "lacks: cgroup v1 (this is v1 blk-throttle's case)")
    message = Box().run(_inner_io_limit)
    assert message.startswith("a box inside a box cannot have io={write_bps=8388608}: io "
                              "limits do not nest on cgroup v1"), message


def _inner_io_on_a_tmpfs() -> str:
    try:  # a box's /dev/shm is a tmpfs (its /tmp is on disk, or an overlay over it)
        Box(io={"path": "/dev/shm", "write_bps": "8M"}).run(int)
    except BoxUnavailable as exc:
        return str(exc)
    return "ran"


@pytest.mark.usefixtures("limits")
def test_an_inner_error_that_is_not_about_nesting_keeps_its_own_message() -> None:
    message = Box().run(_inner_io_on_a_tmpfs)
    assert not message.startswith("a box inside a box"), message
    assert "give io a 'path' on a disk-backed file system" in message, message


def _no_cgroup_outside(real):  # type: ignore[no-untyped-def]
    """The outer box gets no cgroup (as on a machine without writable cgroups)."""
    outer = os.stat("/proc/self/ns/pid").st_ino  # not the pid: every box's test is pid 2

    def make(options):  # type: ignore[no-untyped-def]
        return None if os.stat("/proc/self/ns/pid").st_ino == outer else real(options)

    return make


def test_an_inner_pytest_session_boxes_its_tests_with_limits(
        pytester: pytest.Pytester, limits: None) -> None:
    pytester.makepyfile(test_inner=textwrap.dedent("""
        import pytest

        def hog(mib):
            block = bytearray(mib << 20)
            block[::4096] = b"x" * (len(block) // 4096)

        @pytest.mark.nsbox(memory="64M")
        def test_over():
            hog(128)

        @pytest.mark.nsbox(memory="64M")
        def test_under():
            hog(16)
    """))

    def run_inner_session() -> tuple[int, str]:
        result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:randomly",
                                               "-p", "no:rerunfailures", "-q")
        return int(result.ret), "\n".join(result.outlines)

    ret, out = Box(memory="512M", keep_paths=(str(pytester.path),),
                   writable_paths=(str(pytester.path),)).run(run_inner_session)
    assert ret == 1, out
    assert "1 failed, 1 passed" in out, out
    assert "exceeded its memory limit of 64 MiB" in out, out


# --- devices -----------------------------------------------------------------------------

#: Devices outside the standard set that root (also in a user namespace) may open.
_CANDIDATES = ("/dev/fuse", "/dev/net/tun", "/dev/userfaultfd", "/dev/vga_arbiter",
               "/dev/cpu_dma_latency")


@pytest.fixture
def device_node(tmp_path) -> tuple[str, str]:
    """(a device outside the standard set, a node of it made in a directory boxes keep):
    the first candidate that opens on the host and in a box given the host's /dev."""
    needs(os.geteuid() == 0, "lacks: root (to make a device node on the host)")
    for device in _CANDIDATES:
        if not os.path.exists(device) or _open_errno(device):
            continue
        node = str(tmp_path / os.path.basename(device))
        os.mknod(node, 0o600 | stat.S_IFCHR, os.stat(device).st_rdev)
        if Box(devices="host", keep_paths=[str(tmp_path)]).run(_open_errno, node) == 0:
            return device, node
        os.unlink(node)
    needs(False, f"lacks: a device a box may open (one of {', '.join(_CANDIDATES)})")
    raise AssertionError("unreachable")


def _open_errno(path: str) -> int:
    try:
        os.close(os.open(path, os.O_RDONLY | os.O_NONBLOCK))
    except OSError as exc:
        return exc.errno or -1
    return 0


def _mknod_errno(path: str) -> int:
    try:
        os.mknod(path, 0o600 | stat.S_IFCHR, os.makedev(1, 1))  # /dev/mem
    except OSError as exc:
        return exc.errno or -1
    return 0


def _device_control() -> bool:
    """Whether this machine gives boxes a kernel device control (v1 devices hierarchy of
    its own, or an eBPF device filter on v2)."""
    from pytest_nsbox.resources.devices import filter_available

    facts = cgroups.detect()
    if facts["version"] == "v2":
        return filter_available()
    return "devices" in facts.get("v1", {}) and facts["v1"]["devices"]["writable"]


@pytest.mark.nsbox(enabled=False)  # makes a device node on the host
@pytest.mark.usefixtures("limits")
@pytest.mark.parametrize("user", ["root", "host"])
def test_the_kernel_refuses_a_device_the_box_was_not_given(
        device_node: tuple[str, str], user: str) -> None:
    needs(_device_control(), "lacks: a devices cgroup (v1) or an eBPF device filter (v2)")
    device, node = device_node
    kept = [os.path.dirname(node)]
    assert Box(user=user, keep_paths=kept).run(_open_errno, node) == errno.EPERM
    assert Box(user=user, devices=[device], keep_paths=kept).run(_open_errno, node) == 0
    assert Box(user=user, devices="host", keep_paths=kept).run(_open_errno, node) == 0
    assert Box(user=user).run(_open_errno, "/dev/null") == 0


@pytest.mark.nsbox(enabled=False)  # user='host' boxes need pytest's own root
@pytest.mark.usefixtures("limits")
def test_a_real_root_box_cannot_make_device_nodes(tmp_path) -> None:
    needs(os.geteuid() == 0, "lacks: root (user='host' boxes)")
    needs(_device_control(), "lacks: a devices cgroup (v1) or an eBPF device filter (v2)")
    made = str(tmp_path / "mem")
    assert Box(user="host", writable_paths=[tmp_path]).run(_mknod_errno, made) == errno.EPERM
    assert Box(user="host", devices="host", writable_paths=[tmp_path]).run(
        _mknod_errno, made) == 0


@pytest.mark.nsbox(enabled=False)  # runs a script of its own
def test_output_pending_in_the_parent_is_not_written_twice(tmp_path) -> None:
    """A box flushes its own stdout at the end; what the parent had not flushed yet must
    not be in that buffer (found in the VM lane: a script's prints came out twice; it did
    not show natively)."""
    import subprocess
    import sys

    script = tmp_path / "prints.py"
    script.write_text(textwrap.dedent("""
        from pytest_nsbox import Box
        print("before")
        Box().run(print, "inside")
        Box().run(int)
        print("after")
    """))
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    assert out.split() == ["before", "inside", "after"], out
