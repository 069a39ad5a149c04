"""What a timed-out box's message lists: the processes besides the test process (whose
stack the message already shows), and, where the box could not be paused first, why, in
words a user knows."""

from __future__ import annotations

import subprocess
import time

import pytest
from test_freezer import WHY_NOT

from pytest_nsbox import Box
from pytest_nsbox.box.errors import BoxTimeout
from pytest_nsbox.resources.cgroups.boxcgroup import BoxCgroup

pytestmark = pytest.mark.nsbox(enabled=False)

needs_freezer = pytest.mark.skipif(bool(WHY_NOT), reason=f"lacks: a cgroup freezer: {WHY_NOT}")


def hang_with_a_child() -> None:
    child = subprocess.Popen(["sleep", "123"])
    assert child.pid
    time.sleep(100)


@needs_freezer
def test_the_test_process_is_not_listed_among_those_left() -> None:
    box = Box(timeout=0.5)
    error = box.execute(lambda send: hang_with_a_child(), on_frozen=None).error(box.options)
    assert isinstance(error, BoxTimeout)
    assert [cmd for _, cmd in error.processes] == ["init", "sleep 123"], error.processes
    assert "processes still in the box: 1 init, 3 sleep 123;" in str(error)
    assert "in hang_with_a_child" in str(error)  # the test process: by its stack


@needs_freezer
def test_under_xdist_the_worker_command_is_not_listed(pytester: pytest.Pytester,
                                                     run_inner) -> None:
    pytest.importorskip("xdist", reason="lacks: pytest-xdist (pip install -e '.[test]')")
    pytester.makepyfile("""
        import subprocess, time, pytest

        @pytest.mark.nsbox(timeout=0.5)
        def test_hang():
            subprocess.Popen(["sleep", "123"])
            time.sleep(100)
    """)
    result = run_inner("-n", "1")
    result.assert_outcomes(failed=1)
    out = result.stdout.str()
    assert "processes still in the box: 1 init, 3 sleep 123;" in out, out
    assert "exec(" not in out and "python3 -u -c" not in out


def test_without_a_freezer_the_note_says_why_in_plain_words() -> None:
    """A user's cgroups without the freezer (cgcreate -g memory,pids:...), and no cgroup."""
    user = BoxCgroup({"pids": "/nonexistent/pids/box"}, False).freeze()
    assert user == ("listed while they ran: no cgroup freezer could pause the box first (the v1 "
                    "freezer hierarchy is not mounted or not writable by this user)")
    none = BoxCgroup({}, False).freeze()
    assert "without a cgroup" in none and "freezer cgroup" not in none
    error = BoxTimeout(1.0, "", [(1, "init"), (3, "sleep 123")], user)
    assert str(error).endswith("processes still in the box: 1 init, 3 sleep 123 (listed while "
                               "they ran: no cgroup freezer could pause the box first (the v1 "
                               "freezer hierarchy is not mounted or not writable by this user))")
