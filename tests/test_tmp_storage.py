"""A box's private /tmp lives on the host's disk, private to the box and gone with it.

Unboxed, a 400 MB temporary file is page cache on disk; a box whose /tmp was a tmpfs
counted it as shared memory and was killed for it under memory="256M". Now the box's
layer is a directory of its own under the storage root (`resources.storage`), removed
after the box, after the session, and by the next session after a SIGKILL of pytest.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hostcheck import cgroups_writable
from test_tmp_overlay import overlay_here

from conftest import needs
from pytest_nsbox import Box
from pytest_nsbox.resources.storage import KEPT, default_root, remove_stale


@pytest.fixture
def root() -> Iterator[Path]:
    """A storage root of the test's own, outside /tmp (a root under a box's private path
    cannot hold its layers: such boxes get RAM)."""
    import tempfile

    from pytest_nsbox.resources.storage import remove_tree

    path = Path(tempfile.mkdtemp(prefix="nsbox-test-storage-", dir="/var/tmp"))
    yield path / "storage"
    remove_tree(str(path))


def _sessions(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.name != KEPT) if root.exists() else []


def _disk_total(path: str) -> int:
    info = os.statvfs(path)
    return info.f_blocks * info.f_frsize


def _mount_type(path: str, options: bool = False) -> str:
    """The file system type of the mount at `path`, as this process sees it (and its
    super block's options, with `options`)."""
    found = ""
    with open("/proc/self/mountinfo") as mounts:
        for line in mounts:
            fields = line.split()
            if fields[4] == path:
                after = fields.index("-")
                found = fields[after + 1] + (f" {fields[after + 3]}" if options else "")
    return found


def test_the_box_tmp_is_on_the_hosts_disk_and_the_storage_is_out_of_sight() -> None:
    def inside() -> tuple[int, str, list[str], str]:
        with open("/tmp/nsbox-on-disk", "w") as file:
            file.write("x")
        root = default_root()
        return _disk_total("/tmp"), _mount_type("/tmp", True), os.listdir(root), root

    total, kind, seen, root = Box().run(inside)
    if overlay_here():
        assert kind.startswith("overlay ")
        assert "volatile" in kind  # else its unmount syncs the host's file system, every box
    else:  # pytest in a box: its tmp_path base is bound under /tmp, the kernel refuses
        assert kind.split()[0] not in ("overlay", "tmpfs")  # the layer, bound
    assert total == _disk_total(root)  # the disk's size, not half the RAM
    assert seen == []  # no other box's (or session's) files
    assert not os.path.exists("/tmp/nsbox-on-disk")


def test_empty_mode_and_a_readonly_root_keep_the_tmp_on_disk() -> None:
    def inside() -> tuple[int, list[str], int]:
        with open("/tmp/written", "w") as file:
            file.write("x")
        try:
            open("/etc/nsbox-readonly-probe", "w").close()
        except OSError:
            pass
        else:
            raise AssertionError("the root is writable")
        return _disk_total("/tmp"), os.listdir("/tmp"), os.stat("/tmp").st_mode & 0o7777

    total, listing, mode = Box(tmpfs_mode="empty", readonly=True).run(inside)
    assert total == _disk_total(default_root())
    assert listing == ["written"]
    assert mode == 0o1777


def test_ram_only_on_request_with_a_size_the_kernel_enforces() -> None:
    def inside() -> tuple[str, int]:
        try:
            with open("/tmp/big", "wb") as file:
                file.write(b"\0" * (2 << 20))
        except OSError as exc:
            return _mount_type("/tmp"), exc.errno or 0
        return _mount_type("/tmp"), 0

    kind, error = Box(tmpfs_storage="ram", tmpfs_size="1M", tmpfs_mode="empty").run(inside)
    assert (kind, error) == ("tmpfs", 28)  # ENOSPC


def test_a_size_needs_ram(run_inner, pytester: pytest.Pytester) -> None:
    pytester.makepyfile("""
        import pytest

        @pytest.mark.nsbox(tmpfs_size="1G")
        def test_quota():
            pass
    """)
    result = run_inner("-q")
    result.stdout.fnmatch_lines(["*tmpfs_size=1073741824 is not valid; accepted: a size "
                                 "together with tmpfs_storage='ram'*"])


def test_a_400_mb_temporary_file_under_a_256m_limit_passes(run_inner,
                                                           pytester: pytest.Pytester,
                                                           root: Path) -> None:
    needs(cgroups_writable(), "lacks: a writable cgroup (a memory limit)")
    pytester.makepyfile("""
        import os, tempfile
        import pytest

        @pytest.mark.nsbox(memory="256M")
        def test_big_temporary_file():
            chunk = os.urandom(1 << 20)
            with tempfile.TemporaryFile() as file:  # in /tmp
                for _ in range(400):
                    file.write(chunk)
                file.flush()
                assert os.fstat(file.fileno()).st_size == 400 << 20
    """)
    result = run_inner("-q", f"--nsbox-storage={root}")
    result.assert_outcomes(passed=1)
    assert _sessions(root) == []  # the session's files went with it


def test_a_killed_sessions_files_go_with_the_next_session(pytester: pytest.Pytester,
                                                          root: Path) -> None:
    ready = root.parent / "ready"  # outside the box's private /tmp
    pytester.makepyfile(test_wait=f"""
        import time
        import pytest

        @pytest.mark.nsbox
        def test_write_and_wait():
            with open("/tmp/left-by-a-killed-session", "wb") as file:
                file.write(b"x" * 100000)
            open({str(ready)!r}, "w").close()
            time.sleep(60)
    """)
    inner = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "no:randomly",
         f"--nsbox-storage={root}", "test_wait.py"],
        cwd=pytester.path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not ready.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ready.exists()
        left = list(root.glob("*/*/*/upper/left-by-a-killed-session"))
        assert len(left) == 1
    finally:
        inner.send_signal(signal.SIGKILL)
        inner.wait()
    time.sleep(0.2)  # the maker and the box die of their parent's death signal
    assert _sessions(root) != []  # what a killed session leaves ...
    pytester.makepyfile(test_wait="""
        import pytest

        @pytest.mark.nsbox
        def test_next():
            pass
    """)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:randomly",
                                           f"--nsbox-storage={root}")
    result.assert_outcomes(passed=1)
    assert _sessions(root) == []  # ... the next session removes


def test_a_failed_box_keeps_its_files_where_its_report_says(run_inner,
                                                            pytester: pytest.Pytester,
                                                            root: Path) -> None:
    pytester.makepyfile("""
        import pytest

        @pytest.mark.nsbox
        def test_fails():
            with open("/tmp/evidence.txt", "w") as file:
                file.write("the clue")
            assert False

        @pytest.mark.nsbox
        def test_passes():
            with open("/tmp/fine.txt", "w") as file:
                file.write("fine")
    """)
    result = run_inner("-q", "--nsbox-keep-failed", f"--nsbox-storage={root}")
    result.assert_outcomes(passed=1, failed=1)
    text = result.stdout.str()
    found = re.findall(r"/tmp is kept at (\S+)", text)
    assert len(found) == 1, text
    kept = Path(found[0])
    assert (kept / "evidence.txt").read_text() == "the clue"
    assert kept.is_relative_to(root / KEPT)
    assert not list((root / KEPT).rglob("fine.txt"))  # a test that passed keeps nothing
    assert _sessions(root) == []

    again = run_inner("-q", "--nsbox-keep-failed", f"--nsbox-storage={root}",
                      "-k", "test_passes")
    again.assert_outcomes(passed=1, deselected=1)
    assert (kept / "evidence.txt").exists()  # a session that keeps leaves them
    clean = subprocess.run([sys.executable, "-m", "pytest_nsbox", "clean", "--storage",
                            str(root)], capture_output=True, text=True, check=True)
    assert "1 removed" in clean.stdout
    assert not kept.exists()

    run_inner("-q", "--nsbox-keep-failed", f"--nsbox-storage={root}", "-k", "test_fails")
    assert len(list((root / KEPT).rglob("evidence.txt"))) == 1
    run_inner("-q", f"--nsbox-storage={root}", "-k", "test_passes")  # without the flag
    assert not (root / KEPT).exists()


def test_stale_sessions_go_and_live_ones_stay(tmp_path: Path) -> None:
    import fcntl

    live, dead, unlocked = (tmp_path / name for name in ("1-live", "2-dead", "3-new"))
    for path in (live, dead, unlocked):
        path.mkdir()
        (path / "1").mkdir()
        (path / "1" / "work").mkdir(mode=0)  # as an overlay leaves its work directory
    (dead / "lock").touch()
    (live / "lock").touch()
    holder = os.open(live / "lock", os.O_RDWR)
    fcntl.flock(holder, fcntl.LOCK_EX)
    try:
        removed = remove_stale(str(tmp_path))
    finally:
        os.close(holder)
    assert removed == [str(dead)]
    assert live.exists() and unlocked.exists()  # a session that is still starting


def test_the_maker_removes_a_finished_boxs_files(monkeypatch: pytest.MonkeyPatch) -> None:
    """Deferred (the plugin's way), a box's files go by the box maker, not pytest: the
    unlinks cost pytest 1-2 ms a box on an ext4 with discard."""
    from pytest_nsbox.box import spawn

    def not_here(path: str) -> None:
        raise AssertionError(f"pytest removed {path} itself")

    box = Box()
    written = box.execute(lambda send: send(("return", 1)), next_box=box, defer=True).storage
    assert written is not None and os.path.isdir(written)
    monkeypatch.setattr(spawn, "remove_tree", not_here)
    box.execute(lambda send: send(("return", 1)), next_box=box, defer=True)  # tidies the first
    deadline = time.monotonic() + 10
    while os.path.exists(written) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not os.path.exists(written)
    monkeypatch.undo()
    spawn.tidy(block=True)
