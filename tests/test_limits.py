"""Limits end to end: real OOM kills, fork exhaustion and accounting in inner sessions."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest
from helpers import processes_with, token

# These tests examine the host's own cgroups (and probes): under --nsbox they run unboxed.
pytestmark = pytest.mark.nsbox(enabled=False)


@pytest.fixture(autouse=True)
def _nothing_left_in_cgroups():
    """Session cgroups of inner pytest runs that ended must be gone (live ones may be
    another pytest's on this machine)."""
    import glob
    import os
    import re

    def dead_sessions() -> set[str]:
        found = set()
        for path in glob.glob("/sys/fs/cgroup/**/nsbox-*", recursive=True):
            match = re.match(r"nsbox-(\d+)-", os.path.basename(path))
            if match and not os.path.exists(f"/proc/{match.group(1)}"):
                found.add(path)
        return found

    before = dead_sessions()
    yield
    assert dead_sessions() <= before


needs_cgroups = pytest.mark.usefixtures("_writable_cgroups")


@pytest.fixture
def _writable_cgroups() -> None:
    from hostcheck import cgroups_writable

    from conftest import needs

    needs(cgroups_writable(), "lacks: a writable cgroup (root, or a delegated v2 subtree)")


@needs_cgroups
def test_memory_limit_kills_the_box_and_says_so(pytester: pytest.Pytester, run_inner) -> None:
    pytester.makepyfile("""
        import pytest

        @pytest.mark.nsbox(memory="64M")
        def test_hog():
            data = bytearray(1 << 30)
            for i in range(0, len(data), 4096):
                data[i] = 1

        def test_next():
            pass
    """)
    result = run_inner("--nsbox")
    result.assert_outcomes(failed=1, passed=1)
    result.stdout.fnmatch_lines(["*exceeded its memory limit of 64 MiB (peak 64 MiB)*"])


@needs_cgroups
def test_memory_limit_covers_subprocesses(pytester: pytest.Pytester, run_inner) -> None:
    pytester.makepyfile("""
        import subprocess, sys, pytest

        @pytest.mark.nsbox(memory="64M")
        def test_child_hog():
            code = "b = bytearray(512 << 20)\\nfor i in range(0, len(b), 4096): b[i] = 1"
            proc = subprocess.run([sys.executable, "-c", code])
            assert proc.returncode == -9  # the kernel killed the child at the box's limit
    """)
    run_inner().assert_outcomes(passed=1)


@needs_cgroups
def test_memory_peak_of_a_test_holding_64_mib(pytester: pytest.Pytester, run_inner) -> None:
    pytester.makepyfile("""
        def test_hold(nsbox):
            data = bytearray(64 << 20)
            for i in range(0, len(data), 4096):
                data[i] = 1
            print("INSIDE", nsbox.usage().memory_peak)
    """)
    result = run_inner("--nsbox", "-s", "--junitxml=out.xml", "--nsbox-usage=3")
    result.assert_outcomes(passed=1)
    props = {p.get("name"): p.get("value")
             for p in ET.parse(pytester.path / "out.xml").iter("property")}
    peak = int(props["nsbox_memory_peak"])
    assert 64 << 20 <= peak <= (64 << 20) * 1.1
    inside = int(result.stdout.str().split("INSIDE ")[1].split()[0])
    assert 64 << 20 <= inside <= peak
    result.stdout.fnmatch_lines(["*nsbox: top 1 boxed tests by memory peak*",
                                 "*MiB*test_hold*", "*top 1 boxed tests by CPU*"])


@needs_cgroups
def test_fork_bomb_under_pids_ends_cleanly(pytester: pytest.Pytester, run_inner) -> None:
    marker = token()
    pytester.makepyfile(f"""
        import errno, os, time, pytest

        @pytest.mark.nsbox(pids=64, timeout=20)
        def test_bomb():
            children = 0
            try:
                while True:
                    if os.fork() == 0:
                        os.execvp("sleep", ["sleep", "100", {marker!r}])
                    children += 1
            except BlockingIOError as exc:
                assert exc.errno == errno.EAGAIN
            assert 50 <= children < 64
    """)
    result = run_inner("--junitxml=out.xml")
    result.assert_outcomes(passed=1)
    assert processes_with(marker) == []


def test_limit_without_cgroups_is_unavailable_with_the_fix(pytester, run_inner) -> None:
    from hostcheck import cgroups_writable

    from conftest import needs

    needs(not cgroups_writable(), "lacks: a machine whose cgroups this user cannot write "
          "(the unprivileged user lane)")
    pytester.makepyfile("""
        import pytest

        @pytest.mark.nsbox(memory="64M")
        def test_x():
            pass
    """)
    result = run_inner()
    result.assert_outcomes(errors=1)  # the box could not be made: an error at setup
    result.stdout.fnmatch_lines(["*ERROR at setup of test_x*", "*memory=64 MiB*"])
    assert "Fix:" in result.stdout.str()
