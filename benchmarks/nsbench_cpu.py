"""Where the machine's CPU goes per box, by process: pytest's side, the test processes,
the box maker, and the rest (the boxes' inits and the kernel's own threads).

`overhead.py` gives the machine's CPU per test of a whole mode; this splits one mode by
who spends it, and times the process creations a box is made of against a bare fork, so
that the next design is chosen on figures. Library boxes (`Box().run(int)`), one after
another, in a process holding a Python heap like pytest's (200k strings).

    .venv/bin/python benchmarks/nsbench_cpu.py [--boxes 300] [--light]

How: /proc/stat busy time for the machine, getrusage for this process (pytest's side)
and its reaped children (the test processes), /proc/<pid>/stat for the maker; the rest is
what none of them account for (the inits, reaped by the kernel, and kernel threads).
"""

from __future__ import annotations

import argparse
import os
import resource
import time
from collections.abc import Callable

from pytest_nsbox import Box
from pytest_nsbox.box import spawn

_TICK_MS = 1000 / os.sysconf("SC_CLK_TCK")


def _machine_busy_ms() -> float:
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    return (sum(fields) - fields[3] - fields[4]) * _TICK_MS  # all but idle and iowait


def _process_ms(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * _TICK_MS  # utime + stime


def _rusage_ms(who: int) -> float:
    usage = resource.getrusage(who)
    return (usage.ru_utime + usage.ru_stime) * 1000


def _median_us(fn: Callable[[], None], rounds: int = 300) -> float:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    times.sort()
    return times[len(times) // 2] * 1e6


def _fork_round_trip() -> None:
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)


def _spawn_true() -> None:
    pid = os.posix_spawn("/bin/true", ["/bin/true"], {})
    os.waitpid(pid, 0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--boxes", type=int, default=300)
    parser.add_argument("--light", action="store_true",
                        help="the lightest options (net='host', user='host', tmpfs=())")
    args = parser.parse_args()
    heap = [str(i) for i in range(200_000)]  # noqa: F841 - a heap like pytest's
    box = Box(net="host", user="host", tmpfs=()) if args.light else Box()
    for _ in range(10):
        box.run(int)
    assert spawn._maker is not None
    maker = spawn._maker.process.pid
    time.sleep(0.3)
    before = (_machine_busy_ms(), _rusage_ms(resource.RUSAGE_SELF),
              _rusage_ms(resource.RUSAGE_CHILDREN), _process_ms(maker))
    start = time.perf_counter()
    for _ in range(args.boxes):
        box.run(int)
    wall = (time.perf_counter() - start) * 1000
    time.sleep(0.3)  # the last box's teardown in the kernel's workqueues
    after = (_machine_busy_ms(), _rusage_ms(resource.RUSAGE_SELF),
             _rusage_ms(resource.RUSAGE_CHILDREN), _process_ms(maker))
    machine, parent, tests, made = (b - a for a, b in zip(before, after, strict=True))
    n = args.boxes
    print(f"{'lightest' if args.light else 'full'} boxes, {n} of them, ms per box:")
    print(f"| wall | machine CPU | pytest's side | test processes | box maker | "
          f"the rest (inits, kernel threads) |\n|---:|---:|---:|---:|---:|---:|\n"
          f"| {wall / n:.2f} | {machine / n:.2f} | {parent / n:.2f} | {tests / n:.2f} | "
          f"{made / n:.2f} | {(machine - parent - tests - made) / n:.2f} |")
    print(f"process creation here (median µs of a round trip): fork of this process "
          f"{_median_us(_fork_round_trip):.0f}; posix_spawn of /bin/true "
          f"{_median_us(_spawn_true):.0f}")


if __name__ == "__main__":
    main()
