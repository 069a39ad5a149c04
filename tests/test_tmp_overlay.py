"""A box's /tmp shows what the session left there; what the box writes stays in the box."""

from __future__ import annotations

import os
import tempfile

import pytest

from pytest_nsbox import Box
from pytest_nsbox.doctor import _mounts_below


def overlay_here(path: str = "/tmp") -> bool:
    """The kernel refuses, in a user namespace, an overlay over a directory with mounts
    below it: in a box that runs pytest, pytest's base temp directory is bound back under
    /tmp (and the box storage's root covered under /var/tmp), so the boxes a test there
    makes get an empty one (as tmpfs_mode='empty')."""
    return not _mounts_below(path)

SESSION_FILE = """
    import os, tempfile
    import pytest

    @pytest.fixture(scope="session")
    def certificate():
        fd, path = tempfile.mkstemp(prefix="nsbox-cert-", suffix=".pem", dir="/tmp")
        os.write(fd, b"session data")
        os.close(fd)
        with open("where.txt", "w") as file:
            file.write(path)
        yield path
        with open("after.txt", "w") as file:  # what pytest's process sees at the end
            file.write(open(path).read() + "|" + str(os.path.exists(path + ".new")))
        os.unlink(path)
"""


def _write_suite(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(SESSION_FILE)
    pytester.makepyfile(test_files="""
        import os

        def test_read(certificate):
            assert open(certificate).read() == "session data"

        def test_change(certificate):
            with open(certificate, "a") as file:
                file.write(" changed")
            assert open(certificate).read() == "session data changed"

        def test_unchanged_in_the_next_box(certificate):
            assert open(certificate).read() == "session data"

        def test_delete(certificate):
            os.unlink(certificate)
            assert not os.path.exists(certificate)

        def test_write_new(certificate):
            with open(certificate + ".new", "w") as file:
                file.write("mine")
            assert sorted(os.listdir("/tmp")).count(os.path.basename(certificate) + ".new") == 1

        def test_still_there(certificate):
            assert open(certificate).read() == "session data"
            assert not os.path.exists(certificate + ".new")
    """)


def test_session_files_in_tmp_are_seen_and_stay_unchanged(pytester: pytest.Pytester,
                                                           run_inner) -> None:
    _write_suite(pytester)
    result = run_inner("--nsbox")
    if overlay_here():
        result.assert_outcomes(passed=6)
    else:
        result.assert_outcomes(passed=1, failed=5)
    path = (pytester.path / "where.txt").read_text()
    assert path.startswith("/tmp/nsbox-cert-")
    assert (pytester.path / "after.txt").read_text() == "session data|False"


def test_tmpfs_mode_empty_hides_them(pytester: pytest.Pytester, run_inner) -> None:
    _write_suite(pytester)
    result = run_inner("--nsbox", "--nsbox-tmpfs-mode", "empty")
    result.assert_outcomes(passed=1, failed=5)  # only test_write_new works on an empty /tmp
    result.stdout.fnmatch_lines(["*FAILED*test_read*FileNotFoundError*"])


def _host_file(directory: str = "/tmp") -> str:
    fd, path = tempfile.mkstemp(prefix="nsbox-host-", dir=directory)
    os.write(fd, b"host")
    os.close(fd)
    return path


def _read_change_delete(path: str) -> tuple[str, str, bool, bool]:
    first = open(path).read()
    with open(path, "w") as file:
        file.write("box")
    second = open(path).read()
    os.unlink(path)
    with open(path + ".box", "w") as file:
        file.write("new")
    return first, second, os.path.exists(path), os.path.exists(path + ".box")


@pytest.mark.parametrize("values", [{}, {"user": "root"}, {"readonly": True}],
                         ids=["self", "root", "readonly"])
def test_box_reads_host_tmp_and_writes_its_own(values: dict[str, object]) -> None:
    path = _host_file()
    try:
        if overlay_here():
            assert Box(**values).run(_read_change_delete, path) == ("host", "box", False, True)
        else:
            assert Box(**values).run(os.path.exists, path) is False
        assert open(path).read() == "host"
        assert not os.path.exists(path + ".box")
    finally:
        os.unlink(path)


def test_every_tmpfs_path_is_an_overlay() -> None:
    path = _host_file("/var/tmp")
    try:
        if overlay_here("/var/tmp"):
            result = Box(tmpfs=("/tmp", "/var/tmp")).run(_read_change_delete, path)
            assert result == ("host", "box", False, True)
        else:  # in a box, whose storage root is covered under /var/tmp: an empty one
            assert Box(tmpfs=("/tmp", "/var/tmp")).run(os.path.exists, path) is False
        assert open(path).read() == "host" and not os.path.exists(path + ".box")
    finally:
        os.unlink(path)


def test_a_box_inside_a_box_sees_the_host_tmp() -> None:
    """Two overlays deep the host's files still show. The kernel stacks overlays at most
    two deep: a third box (this test run under --nsbox) gets an empty tmpfs."""
    from pytest_nsbox import current_box

    path = _host_file()
    try:
        from pytest_nsbox.box.spawn import process_paths

        # the outer box binds this process's paths (a checkout under /tmp) back below its
        # /tmp: then the inner box's overlay is refused like any over mounts below /tmp
        bound_below = any(p.startswith("/tmp/") for p in process_paths())
        if current_box() is None and overlay_here() and not bound_below:
            inner = Box().run(lambda: Box().run(_read_change_delete, path))
            assert inner == ("host", "box", False, True)
        else:
            assert Box().run(lambda: Box().run(os.path.exists, path)) is False
        assert open(path).read() == "host"
    finally:
        os.unlink(path)


def test_empty_mode_shows_nothing_of_the_host() -> None:
    path = _host_file()
    try:
        assert os.path.basename(path) not in Box(tmpfs_mode="empty").run(os.listdir, "/tmp")
    finally:
        os.unlink(path)


def _mount_below_then_box() -> list[str]:
    import ctypes

    os.mkdir("/tmp/below")
    libc = ctypes.CDLL(None, use_errno=True)
    assert libc.mount(b"tmpfs", b"/tmp/below", b"tmpfs", 0, None) == 0, ctypes.get_errno()
    open("/tmp/seen-above", "w").close()
    return Box().run(os.listdir, "/tmp")  # type: ignore[no-any-return]


def test_a_mount_below_tmp_leaves_an_empty_tmp_not_a_broken_one() -> None:
    """The kernel refuses an overlay, in a user namespace, over a directory with mounts
    below it (they would be hidden): the box gets an empty tmpfs, with nothing of the
    overlay's making left in it."""
    listing = Box(user="root").run(_mount_below_then_box)
    assert "seen-above" not in listing  # what the outer box had in /tmp is not shown
    assert not [name for name in listing if name.startswith(".nsbox-")]


def test_bad_tmpfs_mode_names_what_is_accepted() -> None:
    with pytest.raises(ValueError, match=r"tmpfs_mode='lower'.*'overlay' or 'empty'"):
        Box(tmpfs_mode="lower")
