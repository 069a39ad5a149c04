"""Freezing a timed-out box: dump its stack, freeze it, list what is alive, call the
frozen-box hook, kill it; nothing is left. Natively on the v1 freezer, in the VM lane
(tests/vm_io/run.sh) on cgroup v2 ``cgroup.freeze``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import pytest

from conftest import needs
from pytest_nsbox import Box
from pytest_nsbox.box.errors import BoxTimeout
from pytest_nsbox.box.options import BoxOptions
from pytest_nsbox.resources import cgroups

# These tests examine the host's own cgroups and disks: under --nsbox they run unboxed.
pytestmark = pytest.mark.nsbox(enabled=False)


def _freezable() -> str:
    """"" when a box with a timeout gets a cgroup that can freeze; else what is missing."""
    try:
        box = cgroups.box_cgroup(BoxOptions(timeout=5.0))
    except cgroups.CgroupUnavailable as exc:
        return str(exc)
    if box is None:
        return "no writable cgroup"
    try:
        if not box.v2 and "freezer" not in box.dirs:
            return "no writable v1 freezer hierarchy"
        return box.freeze(0.5)
    finally:
        box.remove()


WHY_NOT = _freezable()
#: the box timeout of these tests: 1 s natively; the VM lane (15-20x slower) needs longer
#: for 50 processes to start before it
TIMEOUT = float(os.environ.get("NSBOX_FREEZE_TIMEOUT", "1"))
needs_freezer = pytest.mark.skipif(bool(WHY_NOT), reason=f"lacks: a cgroup freezer: {WHY_NOT}")


def cpu_ticks(pid: int) -> int:
    """utime + stime of `pid`, in clock ticks."""
    with open(f"/proc/{pid}/stat") as file:
        fields = file.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def _gone(pids: list[int], seconds: float) -> list[int]:
    deadline = time.monotonic() + seconds
    while (left := [p for p in pids if os.path.exists(f"/proc/{p}")]) and (
            time.monotonic() < deadline):
        time.sleep(0.01)
    return left


def hang_with_50(spin: bool = True) -> None:
    """In the box: 49 `sleep 100` children and a busy loop child, then hang."""
    children = [subprocess.Popen(["sleep", "100"]) for _ in range(49)]
    if spin and os.fork() == 0:
        while True:
            pass
    assert children
    time.sleep(100)


@needs_freezer
def test_a_timed_out_box_of_50_processes_is_frozen_listed_and_killed() -> None:
    seen: dict[str, Any] = {}

    def on_frozen(pids: list[int]) -> None:
        seen["at"] = time.monotonic()
        seen["pids"] = pids
        # a frozen box runs nothing: the busy loop gains no CPU time while we look
        ticks = {pid: cpu_ticks(pid) for pid in pids}
        time.sleep(0.3)
        seen["ran"] = [pid for pid in pids if cpu_ticks(pid) != ticks[pid]]

    box = Box(timeout=TIMEOUT)
    started = time.monotonic()
    outcome = box.execute(lambda send: hang_with_50(), on_frozen=on_frozen)
    ended = time.monotonic()
    error = outcome.error(box.options)
    assert isinstance(error, BoxTimeout)
    assert len(seen["pids"]) == 52, seen["pids"]  # init, test, 49 sleepers, the busy loop
    assert seen["ran"] == [], "processes ran while the box was frozen"
    assert outcome.freeze_seconds is not None, outcome.freeze_note
    assert [pid for pid, _ in outcome.processes][:2] == [1, 3]  # the test process: its stack
    assert outcome.processes[0] == (1, "init")
    assert sum(cmd == "sleep 100" for _, cmd in outcome.processes) == 49
    text = str(error)
    assert "processes still in the box: 1 init, 3 sleep 100, " in text
    assert "and 26 more" in text
    assert "in hang_with_50" in text  # the stack dump came first
    assert _gone(seen["pids"], 2.0) == [], "processes outlived their frozen box"
    dump_and_freeze = seen["at"] - started - TIMEOUT
    print(f"\nfreeze of 52 processes: {outcome.freeze_seconds * 1e3:.2f} ms; timeout to hook "
          f"(stack dump + freeze + listing): {dump_and_freeze * 1e3:.0f} ms; timeout to box "
          f"gone: {(ended - started - TIMEOUT - 0.3) * 1e3:.0f} ms (hook's 0.3 s taken out)")


@needs_freezer
def test_a_frozen_box_is_killed_then_thawed_so_nothing_survives() -> None:
    """v1: SIGKILL does not end a frozen task until it thaws; kill() must thaw after it."""
    box = cgroups.box_cgroup(BoxOptions(timeout=5.0))
    assert box is not None
    box.close_join_fds()
    sleepers = []
    try:
        for _ in range(5):
            proc = subprocess.Popen(["sleep", "100"], stdin=subprocess.DEVNULL)
            for path in box.paths:
                with open(f"{path}/cgroup.procs", "w") as file:
                    file.write(str(proc.pid))
            sleepers.append(proc)
        assert box.freeze(1.0) == ""
        assert sorted(box.pids()) == sorted(p.pid for p in sleepers)
        started = time.monotonic()
        box.kill()
        for proc in sleepers:
            proc.wait(timeout=2)
        assert time.monotonic() - started < 0.5
        assert box.pids() == []
    finally:
        for proc in sleepers:
            proc.kill()
            proc.wait()
        box.remove()


@needs_freezer
def test_a_failing_hook_is_noted_and_the_box_dies_all_the_same() -> None:
    pids: list[int] = []

    def on_frozen(frozen: list[int]) -> None:
        pids.extend(frozen)
        raise RuntimeError("hook broke")

    box = Box(timeout=0.5)
    outcome = box.execute(lambda send: hang_with_50(spin=False), on_frozen=on_frozen)
    assert "a frozen-box hook raised RuntimeError: hook broke" in str(outcome.error(box.options))
    assert pids and _gone(pids, 2.0) == []


def test_the_timeout_message_lists_processes_and_cuts_long_lists() -> None:
    error = BoxTimeout(1.0, "", [(1, "init"), (2, "python -m pytest"), (57, "sleep 100")])
    assert str(error) == ("box timed out after 1 s and was killed; processes still in the "
                          "box: 1 init, 2 python -m pytest, 57 sleep 100")
    many = BoxTimeout(2.0, "", [(n, "sleep 1") for n in range(1, 41)], "frozen late")
    assert "25 sleep 1 and 15 more (frozen late)" in str(many)
    assert "26 sleep 1" not in str(many)


@needs_freezer
def test_the_frozen_hook_sees_the_box_in_a_pytest_session(
    run_inner: Callable[..., pytest.RunResult], pytester: pytest.Pytester,
) -> None:
    pytester.makeconftest("""
        def pytest_nsbox_frozen(item, pids):
            states = []
            for pid in pids:
                with open(f"/proc/{pid}/cmdline", "rb") as file:
                    states.append(file.read().replace(b"\\0", b" ").decode().strip())
            print(f"FROZEN {item.name}: {len(pids)} processes:", sorted(states)[-1])
    """)
    pytester.makepyfile(f"""
        import subprocess, time, pytest

        @pytest.mark.nsbox(timeout={TIMEOUT})
        def test_hang():
            subprocess.Popen(["sleep", "123"])
            time.sleep(100)
    """)
    result = run_inner("-q", "-s")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([
        "FROZEN test_hang: 3 processes: sleep 123",
        f"*box timed out after {TIMEOUT:g} s and was killed; processes still in the box: "
        "1 init, 3 sleep 123*",
    ])


def test_no_freezer_cgroup_without_a_timeout() -> None:
    needs(not WHY_NOT, f"lacks: a cgroup freezer: {WHY_NOT}")
    box = cgroups.box_cgroup(BoxOptions(memory=64 << 20))
    assert box is not None
    try:
        assert "freezer" not in box.dirs
    finally:
        box.remove()


if __name__ == "__main__":  # pragma: no cover - a quick manual run
    sys.exit(pytest.main([__file__, "-q", "-s"]))
