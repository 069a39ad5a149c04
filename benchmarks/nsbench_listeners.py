#!/usr/bin/env python3
"""What finding the session's listeners (auto_forward) costs the parent per box, in µs.

    python benchmarks/nsbench_listeners.py [--rounds 2000] [--fds 40] [--boxes 100]

Cases, each the median of `--rounds` calls of what `run_box` calls before each clone
(`supervise._auto_forwards`: the sock_diag dumps, the fd scan unless the set of
listening inodes is the one of the last box, the mapping):

* nothing listens in the network namespace at all (measured inside a box: its own);
* no listener of the session's, the machine's own (sshd...) unchanged: the cached path;
* no listener of the session's, the cache dropped before each call: dump + fd scan;
* one session listener, a new set each time (cache dropped): dump + fd scan + mapping;
* one session listener, the set unchanged: dump, reuse.

`--fds` extra fds are held open (pytest holds a few dozen), since the scan reads each.
`--boxes` boxes are then run with one session listener, with and without auto_forward,
to show what the relay itself (socketpair, the box's listen, the thread) adds per box.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pytest_nsbox import Box
from pytest_nsbox.box.options import BoxOptions
from pytest_nsbox.box.supervise import _auto_forwards
from pytest_nsbox.resources.net import listeners

OPTIONS = BoxOptions()


def _drop_cache() -> None:
    listeners._last = (0, frozenset(), ())


def median_us(fn: Callable[[], object], rounds: int, before: Callable[[], None] | None = None,
              ) -> float:
    times = []
    for _ in range(rounds):
        if before is not None:
            before()
        start = time.perf_counter_ns()
        fn()
        times.append(time.perf_counter_ns() - start)
    return statistics.median(times) / 1000


def measure(rounds: int) -> dict[str, float]:
    call = lambda: _auto_forwards(OPTIONS, {})  # noqa: E731
    figures = {}
    figures["no session listener, set unchanged"] = median_us(call, rounds)
    figures["no session listener, cache dropped"] = median_us(call, rounds, _drop_cache)
    with socket.create_server(("127.0.0.1", 0)):
        assert _auto_forwards(OPTIONS, {}), "the listener was not found"
        figures["one session listener, new set (cache dropped)"] = median_us(
            call, rounds, _drop_cache)
        figures["one session listener, set unchanged"] = median_us(call, rounds)
    return figures


def in_empty_netns(rounds: int) -> float:
    assert not listeners.listening()
    return median_us(lambda: _auto_forwards(OPTIONS, {}), rounds)


def box_walls(boxes: int) -> dict[str, float]:
    walls: dict[str, list[float]] = {"auto_forward=True": [], "auto_forward=False": []}
    with socket.create_server(("127.0.0.1", 0)):
        pair = [("auto_forward=True", Box()), ("auto_forward=False", Box(auto_forward=False))]
        for _ in range(boxes):
            pair.reverse()  # the second of two boxes in a row waits for the first's netns
            for name, box in pair:
                start = time.perf_counter_ns()
                box.run(int)
                walls[name].append(time.perf_counter_ns() - start)
    return {name: statistics.median(values) / 1000 for name, values in walls.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=2000)
    parser.add_argument("--fds", type=int, default=40)
    parser.add_argument("--boxes", type=int, default=100)
    args = parser.parse_args()
    held = [os.open(os.devnull, os.O_RDONLY) for _ in range(args.fds)]
    every = listeners.listening()
    print(f"{len(os.listdir('/proc/self/fd'))} fds open; {len(every)} listeners of other "
          f"processes in this network namespace; uid {os.geteuid()}; median of {args.rounds}")
    print(f"{'case':<50} {'µs per box':>10}")
    empty = Box().run(in_empty_netns, args.rounds)
    print(f"{'nothing listens at all (an empty netns)':<50} {empty:>10.1f}")
    for name, value in measure(args.rounds).items():
        print(f"{name:<50} {value:>10.1f}")
    if args.boxes:
        print(f"whole box with one session listener, median of {args.boxes}:")
        for name, value in box_walls(args.boxes).items():
            print(f"  {name:<48} {value:>10.1f}")
    for fd in held:
        os.close(fd)


if __name__ == "__main__":
    main()
