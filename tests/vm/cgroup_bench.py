"""Figures for the closing note: per-box cgroup cost, peak accuracy, OOM detection.

Run natively (`.venv/bin/python tests/vm/cgroup_bench.py`) or in a VM lane. Prints one
line per figure; exits 1 if a limit that must work here did not.
"""

from __future__ import annotations

import os
import sys
import time

from pytest_nsbox.box.options import BoxOptions
from pytest_nsbox.resources import cgroups

MiB = 1 << 20


def run_in(box: cgroups.BoxCgroup, size: int) -> int:
    pid = os.fork()
    if pid == 0:
        for fd in box.join_fds:
            os.write(fd, b"0")
        held = b"x" * size
        os._exit(0 if held else 1)
    box.close_join_fds()
    return os.waitpid(pid, 0)[1]


def cost(options: BoxOptions, rounds: int) -> float:
    start = time.perf_counter()
    for _ in range(rounds):
        box = cgroups.box_cgroup(options)
        assert box is not None
        box.close_join_fds()
        box.remove()
    return (time.perf_counter() - start) / rounds * 1e3


def main() -> int:
    facts = cgroups.detect()
    print(f"cgroups: {facts['version']} uid={os.getuid()} "
          f"cgroup={open('/proc/self/cgroup').read().split()[-1]}")
    try:
        probe = cgroups.box_cgroup(BoxOptions(memory=64 * MiB))
    except cgroups.CgroupUnavailable as exc:
        print(f"limits unavailable (CgroupUnavailable): {exc}")
        print(f"no limit asked -> {cgroups.box_cgroup(BoxOptions())!r}")
        return 0
    assert probe is not None
    probe.remove()
    rounds = int(os.environ.get("BENCH_ROUNDS", "300"))
    cost(BoxOptions(), 5)
    print(f"per-box cost, accounting only (create+join fds+remove): "
          f"{cost(BoxOptions(), rounds):.3f} ms")
    print(f"per-box cost, memory+pids limits: "
          f"{cost(BoxOptions(memory=64 * MiB, pids=64), rounds):.3f} ms")
    full = BoxOptions(memory=64 * MiB, pids=64, cpu=0.5, cpuset="0")
    print(f"per-box cost, memory+pids+cpu+cpuset: {cost(full, rounds):.3f} ms")
    box = cgroups.box_cgroup(BoxOptions(memory=256 * MiB))
    assert box is not None
    status = run_in(box, 64 * MiB)
    peak = box.usage().memory_peak or 0
    box.remove()
    error = (peak - 64 * MiB) / (64 * MiB) * 100
    print(f"peak of a child holding 64 MiB: {peak / MiB:.2f} MiB ({error:+.1f}%), status {status}")
    box = cgroups.box_cgroup(BoxOptions(memory=64 * MiB))
    assert box is not None
    status = run_in(box, 256 * MiB)
    oom, usage = box.oom_killed(), box.usage()
    box.remove()
    killed = os.WIFSIGNALED(status) and os.WTERMSIG(status) == 9
    print(f"256 MiB under memory=64M: SIGKILL={killed} oom_killed()={oom} "
          f"peak={(usage.memory_peak or 0) / MiB:.2f} MiB")
    cgroups.session_cleanup()
    return 0 if (killed and oom and abs(error) <= 10) else 1


if __name__ == "__main__":
    sys.exit(main())
