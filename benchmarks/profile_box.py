#!/usr/bin/env python3
"""Where the time of one box goes: a per-step timeline of many boxes, mean µs per step.

    python benchmarks/profile_box.py                 # 300 x Box().run(int), then a pytest
                                                     # session of 300 boxed tests
    python benchmarks/profile_box.py --hold-mb 300   # the same with a 300 MB parent
    python benchmarks/profile_box.py --write-docs    # also fill docs/performance.md

Nothing in pytest_nsbox is edited: the script wraps its functions (module attributes,
looked up at call time) with probes that stamp ``time.perf_counter_ns()`` (CLOCK_MONOTONIC,
one clock for every process and namespace). The box's processes stamp in their own
memory and write their stamps, just before their ``os._exit``, to a file descriptor
opened before the first box (a descriptor crosses mount namespaces; a path under /tmp
would land in the box's tmpfs). The parent then joins the stamps of each box into steps.

Reference rows time the kernel's part alone, in this same process: fork + _exit + wait,
and clone() with each namespace flag + _exit + wait.
"""

from __future__ import annotations

import argparse
import os
import pickle
import statistics
import struct
import sys
import tempfile
import time
import types
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

# -- probes ---------------------------------------------------------------------------

_events: list[tuple[int, str, int]] = []  # (box number, stamp name, ns)
_box = [0]
_role = ["parent"]
_sink_fd = [-1]
_now = time.perf_counter_ns


def stamp(name: str) -> None:
    _events.append((_box[0], name, _now()))


def span(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        stamp(name + ">")
        try:
            return fn(*args, **kwargs)
        finally:
            stamp(name + "<")

    wrapper.__wrapped__ = fn  # type: ignore[attr-defined]
    return wrapper


def _flush() -> None:
    """Ship this box process's stamps to the sink (one O_APPEND write, length-prefixed)."""
    if _role[0] == "parent" or _sink_fd[0] < 0:
        return
    data = pickle.dumps(_events)
    os.write(_sink_fd[0], struct.pack("<I", len(data)) + data)


def _become(role: str) -> None:
    _role[0] = role
    del _events[:]


class _OsProxy(types.ModuleType):
    """A stand-in for `os` in one pytest_nsbox module: some calls probed, the rest as is."""

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)


def install(nsbox_src: str | None) -> dict[str, Any]:
    """Import pytest_nsbox and wrap the steps of a box with probes; return its modules.

    The one-copy core: pytest takes a box its maker made ahead (`spawn.take`), forks the
    test process into it (`spawn.start`), which joins the box (`test_process_main`) and
    runs the target; the box's init is killed at the end (`spawn.end`). What the maker
    and the init do runs in another process, off this path, and is not stamped here.
    """
    if nsbox_src:
        sys.path.insert(0, nsbox_src)
    import pytest_nsbox.box.api as box
    import pytest_nsbox.box.channel as channel
    import pytest_nsbox.box.inside as inside
    import pytest_nsbox.box.namespaces as ns
    import pytest_nsbox.box.spawn as spawn
    import pytest_nsbox.box.supervise as supervise

    # parent
    supervise.run_box = span("run_box", supervise.run_box)
    supervise._preload = span("preload", supervise._preload)
    supervise._auto_forwards = span("auto_forwards", supervise._auto_forwards)
    spawn.take = span("take", spawn.take)
    spawn._receive = span("receive", spawn._receive)
    spawn.ask = span("ask", spawn.ask)
    spawn.prefetch = span("prefetch", spawn.prefetch)
    spawn.tidy = span("tidy", spawn.tidy)
    spawn.end = span("end", spawn.end)
    spawn.start = span("start", spawn.start)
    supervise._supervise = span("supervise", supervise._supervise)
    channel.FrameDecoder.feed = span("decode", channel.FrameDecoder.feed)  # type: ignore[method-assign]
    sup_os = _OsProxy("os")
    sup_os.wait4 = span("wait4", os.wait4)  # type: ignore[attr-defined]
    supervise.os = sup_os  # type: ignore[attr-defined]
    def fork_quietly() -> int:
        stamp("fork>")
        pid = ns.fork_quietly()
        if pid == 0:
            _become("test")
            stamp("fork_child")
        else:
            stamp("fork<")
        return pid

    spawn.ns = _NsProxy(ns, fork_quietly)  # type: ignore[attr-defined]

    # the test process: joining the box, then the test
    inside.ns = _NsProxy(ns, None, {"setns": span("setns", ns.setns),
                                    "clone_vm": span("clone_vm", ns.clone_vm)})  # type: ignore[attr-defined]
    real_test = inside.test_main

    def test_main(plan: Any) -> Any:
        stamp("test_entry")
        real_target = plan.target

        def target(send: Any) -> None:
            stamp("target>")
            try:
                real_target(send)
            finally:
                stamp("target<")

        plan.target = target
        return real_test(plan)

    inside.test_main = test_main
    in_os = _OsProxy("os")

    def _exit(code: int) -> None:
        stamp(f"exit_{_role[0]}")
        _flush()
        os._exit(code)

    in_os._exit = _exit  # type: ignore[attr-defined]
    in_os.setsid = span("setsid", os.setsid)  # type: ignore[attr-defined]
    inside.os = in_os  # type: ignore[attr-defined]
    inside.encode_frame = span("encode_frame", inside.encode_frame)
    inside.write_frame = span("write_frame", inside.write_frame)

    import faulthandler

    faulthandler.enable = span("faulthandler", faulthandler.enable)  # type: ignore[assignment]
    faulthandler.register = span("faulthandler_reg", faulthandler.register)  # type: ignore[assignment]
    return {"box": box, "supervise": supervise, "inside": inside, "ns": ns, "spawn": spawn}


class _NsProxy:
    """A stand-in for the namespaces package in one module: some functions probed."""

    def __init__(self, ns: Any, fork: Any, more: dict[str, Any] | None = None) -> None:
        self._ns, self._more = ns, dict(more or {})
        if fork is not None:
            self._more["fork_quietly"] = fork

    def __getattr__(self, name: str) -> Any:
        return self._more.get(name) or getattr(self._ns, name)


def install_protocol() -> None:
    """Probes on the pytest side: the boxed runtest protocol in the parent and in the box."""
    import pytest_nsbox.plugin.protocol as protocol

    entry = "boxed_runtestprotocol" if hasattr(protocol, "boxed_runtestprotocol") else "run_boxed"
    real_run_boxed = getattr(protocol, entry)

    def run_boxed(*args: Any, **kwargs: Any) -> Any:
        _box[0] += 1
        stamp("run_boxed>")
        try:
            return real_run_boxed(*args, **kwargs)
        finally:
            stamp("run_boxed<")

    setattr(protocol, entry, run_boxed)
    if hasattr(protocol, "_changed_attributes"):
        protocol._changed_attributes = span("changed_attributes", protocol._changed_attributes)
    protocol._setup_shared = span("setup_shared", protocol._setup_shared)
    protocol._reports_from = span("reports_from", protocol._reports_from)
    protocol._in_box = span("in_box", protocol._in_box)
    protocol.call_and_report = span("call_and_report", protocol.call_and_report)
    real_box = protocol.Box
    protocol.Box = span("Box()", real_box)  # type: ignore[misc]


# -- reading the stamps ---------------------------------------------------------------


def read_sink(path: str) -> list[tuple[int, str, int]]:
    data = Path(path).read_bytes()
    events: list[tuple[int, str, int]] = []
    offset = 0
    while offset + 4 <= len(data):
        (size,) = struct.unpack_from("<I", data, offset)
        events += pickle.loads(data[offset + 4: offset + 4 + size])
        offset += 4 + size
    return events


def per_box(events: list[tuple[int, str, int]]) -> dict[int, dict[str, list[int]]]:
    boxes: dict[int, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
    for number, name, ns in events:
        boxes[number][name].append(ns)
    return boxes


def _spans(stamps: dict[str, list[int]], name: str) -> int | None:
    """Total ns in `name>`..`name<` pairs of one box (None if absent)."""
    starts, ends = sorted(stamps.get(name + ">", [])), sorted(stamps.get(name + "<", []))
    if not starts or len(starts) != len(ends):
        return None
    return sum(e - s for s, e in zip(starts, ends))


def _first(stamps: dict[str, list[int]], name: str) -> int | None:
    values = stamps.get(name)
    return min(values) if values else None


def _last(stamps: dict[str, list[int]], name: str) -> int | None:
    values = stamps.get(name)
    return max(values) if values else None


def _diff(a: int | None, b: int | None) -> int | None:
    return None if a is None or b is None else b - a


ROWS: list[tuple[str, str, Callable[[dict[str, list[int]]], int | None]]] = []


def row(side: str, label: str) -> Callable[[Callable[[dict[str, list[int]]], int | None]], None]:
    def add(fn: Callable[[dict[str, list[int]]], int | None]) -> None:
        ROWS.append((side, label, fn))

    return add


# Each row is one step of the critical path (they add up to the box's wall time) unless
# its side says "(within)": a part of the row above it.
row("pytest", "run_boxed: shared fixtures (_setup_shared)")(lambda s: _spans(s, "setup_shared"))
row("pytest", "run_boxed: Box(options, paths) construction")(lambda s: _spans(s, "Box()"))
row("parent", "run_box start -> take (preload, listeners)")(
    lambda s: _diff(_first(s, "run_box>"), _first(s, "take>")))
row("parent", "take: the box made ahead (or ask and wait), tidy up the last ones")(
    lambda s: _spans(s, "take"))
row("(within)", "  ask the maker now (no box made ahead fitted)")(lambda s: _spans(s, "ask"))
row("(within)", "  receive the maker's reply (waits when the box is not ready)")(
    lambda s: _spans(s, "receive"))
row("(within)", "  tidy: cgroups of boxes whose init is gone")(lambda s: _spans(s, "tidy"))
row("parent", "take -> fork (Plan, relay)")(
    lambda s: _diff(_last(s, "take<"), _first(s, "fork>")))
row("kernel", "fork() of the test process -> the child runs")(
    lambda s: _diff(_first(s, "fork>"), _first(s, "fork_child")))
row("(within)", "  fork() as seen by the parent (returns)")(
    lambda s: _diff(_first(s, "fork>"), _first(s, "fork<")))
row("test", "test: join (close fds, setsid, cgroup, setns, chdir)")(
    lambda s: _diff(_first(s, "fork_child"), _first(s, "test_entry")))
row("(within)", "  setns(pidfd) into the box's namespaces")(lambda s: _spans(s, "setns"))
row("test", "test: entry -> target (faulthandler, context, coverage)")(
    lambda s: _diff(_first(s, "test_entry"), _first(s, "target>")))
row("test", "target: the test / fn itself, reports, pickling, writing")(
    lambda s: _diff(_first(s, "target>"), _last(s, "target<")))
row("(within)", "  _in_box: setup+call+teardown, to_serializable, send")(lambda s: _spans(s, "in_box"))
row("(within)", "  call_and_report x3")(lambda s: _spans(s, "call_and_report"))
row("(within)", "  encode_frame (cloudpickle) for every send")(lambda s: _spans(s, "encode_frame"))
row("(within)", "  write_frame")(lambda s: _spans(s, "write_frame"))
row("test", "test: target end -> os._exit (flush)")(
    lambda s: _diff(_last(s, "target<"), _first(s, "exit_test")))
row("kernel", "test _exit -> the parent's wait4 returns")(
    lambda s: _diff(_first(s, "exit_test"), _last(s, "wait4<")))
row("(within)", "  decode frames (pickle.loads) in the parent")(lambda s: _spans(s, "decode"))
row("parent", "parent: after wait4 (kill the init, drain, cgroup counters)")(
    lambda s: _diff(_last(s, "wait4<"), _first(s, "end>")))
row("parent", "end: the init killed; its cgroup left for later")(lambda s: _spans(s, "end"))
row("(within)", "  prefetch: the next box asked for (while the test ran)")(
    lambda s: _spans(s, "prefetch"))
row("total", "run_box (the box, wall)")(lambda s: _spans(s, "run_box"))
row("pytest", "run_boxed: reports from frames (_reports_from)")(lambda s: _spans(s, "reports_from"))
row("pytest", "run_boxed: the rest (teardown_exact, logreport, terminal)")(
    lambda s: None if _spans(s, "run_boxed") is None else _spans(s, "run_boxed") - sum(  # type: ignore[operator]
        _spans(s, k) or 0 for k in ("setup_shared", "Box()", "run_box", "reports_from")))
row("total", "run_boxed (one boxed test in pytest, wall)")(lambda s: _spans(s, "run_boxed"))


def table(boxes: dict[int, dict[str, list[int]]], skip: int) -> list[tuple[str, str, float, float, int]]:
    numbers = sorted(n for n in boxes if n > skip)
    out = []
    for side, label, fn in ROWS:
        values = [v for v in (fn(boxes[n]) for n in numbers) if v is not None]
        if not values:
            continue
        out.append((side, label, statistics.fmean(values) / 1000,
                    statistics.median(values) / 1000, len(values)))
    return out


def render(title: str, rows: list[tuple[str, str, float, float, int]]) -> str:
    lines = [f"**{title}**", "", "| where | step | mean µs | median µs |", "|---|---|---:|---:|"]
    for side, label, mean, med, _ in rows:
        name = label.replace("->", "→")
        if side == "total":
            lines.append(f"| | **{name}** | **{mean:.0f}** | **{med:.0f}** |")
        elif side == "(within)":
            lines.append(f"| | *{name.strip()}* (part of the row above) | *{mean:.0f}* | *{med:.0f}* |")
        else:
            lines.append(f"| {side} | {name} | {mean:.0f} | {med:.0f} |")
    return "\n".join(lines)


# -- the runs -------------------------------------------------------------------------


def profile_library(count: int, options: dict[str, Any]) -> dict[int, dict[str, list[int]]]:
    from pytest_nsbox import Box

    box = Box(**options)
    base = _box[0]
    for i in range(count):
        _box[0] = base + i + 1
        assert box.run(int, "7") == 7
    return per_box(_events)


def profile_session(count: int, args: list[str], workdir: Path) -> dict[int, dict[str, list[int]]]:
    import pytest

    suite = workdir / "suite"
    suite.mkdir(parents=True, exist_ok=True)
    (suite / "pytest.ini").write_text("[pytest]\n")
    for m in range(0, count, 100):
        (suite / f"test_m{m // 100:03d}.py").write_text(
            "".join(f"def test_{i}():\n    pass\n\n" for i in range(m, min(count, m + 100))))
    install_protocol()
    os.environ["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"  # only nsbox, loaded once, by -p
    old = os.getcwd()
    os.chdir(suite)
    try:
        code = pytest.main(["-q", "-p", "no:cacheprovider", "-p", "pytest_nsbox.plugin",
                            *args, str(suite)])
    finally:
        os.chdir(old)
    if code != 0:
        raise SystemExit(f"the profiled pytest session failed with exit code {code}")
    return per_box(_events)


def reference(count: int) -> list[tuple[str, float]]:
    """The kernel's part alone: fork/clone + _exit + wait, µs per round trip (median)."""
    import pytest_nsbox.box.namespaces as ns

    clone = getattr(ns.clone_box, "__wrapped__", ns.clone_box)

    def trip(make: Callable[[], int]) -> float:
        times = []
        for _ in range(count):
            t0 = _now()
            pid = make()
            if pid == 0:
                os._exit(0)
            os.waitpid(pid, 0)
            times.append(_now() - t0)
        return statistics.median(times) / 1000

    rows = [("os.fork() + _exit + waitpid", trip(os.fork))]
    flags = {"(none)": 0, "NEWUSER": ns.CLONE_NEWUSER, "NEWPID": ns.CLONE_NEWPID,
             "NEWNS": ns.CLONE_NEWNS, "NEWUTS": ns.CLONE_NEWUTS, "NEWIPC": ns.CLONE_NEWIPC,
             "NEWNET": ns.CLONE_NEWNET}
    for name, flag in flags.items():
        rows.append((f"clone({name}) + _exit + waitpid", trip(lambda f=flag: clone(f))))
    all_flags = 0
    for flag in flags.values():
        all_flags |= flag
    rows.append(("clone(all six) + _exit + waitpid", trip(lambda: clone(all_flags))))
    rows.append(("clone(all but NEWNET) + _exit + waitpid",
                 trip(lambda: clone(all_flags & ~ns.CLONE_NEWNET))))

    def fork_pipe_pickle() -> float:
        times = []
        for _ in range(count):
            t0 = _now()
            r, w = os.pipe()
            pid = os.fork()
            if pid == 0:
                os.write(w, pickle.dumps(("return", 7)))
                os._exit(0)
            os.close(w)
            while os.read(r, 65536):
                pass
            os.close(r)
            os.waitpid(pid, 0)
            times.append(_now() - t0)
        return statistics.median(times) / 1000

    rows.append(("fork + pipe + pickle + waitpid (the floor's core)", fork_pipe_pickle()))
    return rows


def apply_experiments(names: list[str], modules: dict[str, Any]) -> None:
    """Candidate fixes, applied from outside so their effect shows in the same table."""
    import gc

    supervise, inside = modules["supervise"], modules["inside"]
    if "warm-pickle" in names:
        from pytest_nsbox.box.channel import encode_frame

        encode_frame(("report", {"a": 1}, {}))
    if "gc-freeze" in names:
        run_box = supervise.run_box

        def frozen_run_box(*args: Any, **kwargs: Any) -> Any:
            gc.freeze()
            return run_box(*args, **kwargs)

        supervise.run_box = frozen_run_box
    if "no-gc-in-box" in names:
        test_main = inside.test_main

        def no_gc_test_main(plan: Any) -> Any:
            gc.disable()
            return test_main(plan)

        inside.test_main = no_gc_test_main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--boxes", type=int, default=300)
    parser.add_argument("--hold-mb", type=int, default=0, help="hold this much memory first")
    parser.add_argument("--nsbox-src", default=None,
                        help="directory holding the pytest_nsbox to profile (default: importable one)")
    parser.add_argument("--no-session", action="store_true", help="only Box().run(int)")
    parser.add_argument("--session-args", default="--nsbox --nsbox-memory=256M --nsbox-pids=64",
                        help="pytest options of the profiled session")
    parser.add_argument("--write-docs", action="store_true")
    parser.add_argument(
        "--try", dest="experiments", action="append", default=[],
        choices=("gc-freeze", "warm-pickle", "no-gc-in-box"),
        help="try a candidate fix from outside (repeatable): gc-freeze = gc.freeze() in the "
             "parent before each box; warm-pickle = one encode_frame in the parent first, so "
             "boxes inherit cloudpickle's warm caches; no-gc-in-box = gc.disable() in the test "
             "process")
    args = parser.parse_args()

    held = None
    if args.hold_mb:
        held = bytearray(args.hold_mb << 20)
        held[::4096] = b"\x01" * len(range(0, len(held), 4096))
    modules = install(args.nsbox_src)
    import pytest_nsbox

    apply_experiments(args.experiments, modules)

    sink = tempfile.NamedTemporaryFile(prefix="nsbench-stamps-", delete=False)
    _sink_fd[0] = os.open(sink.name, os.O_WRONLY | os.O_APPEND)
    warm = 20
    sections = [f"Profiled: `{Path(pytest_nsbox.__file__).parent}`, {args.boxes} boxes each "
                f"(the first {warm} left out), parent holding "
                f"{args.hold_mb or 'no extra'} MB; Python {sys.version.split()[0]}, Linux "
                f"{os.uname().release}, {os.cpu_count()} cores. Generated by `python "
                f"benchmarks/profile_box.py{' --hold-mb ' + str(args.hold_mb) if args.hold_mb else ''}"
                f"{''.join(' --try ' + e for e in args.experiments)}`."]
    try:
        for title, options in (("Box().run(int), full options (6 namespaces, /tmp tmpfs, lo up)", {}),
                               ("Box(net='host', user='host', tmpfs=()).run(int), lightest",
                                {"net": "host", "user": "host", "tmpfs": ()})):
            _events.clear()
            _box[0] = 0
            os.ftruncate(_sink_fd[0], 0)
            profile_library(args.boxes + warm, options)
            boxes = per_box(_events + read_sink(sink.name))
            sections.append(render(title, table(boxes, warm)))
            print(sections[-1], "\n", flush=True)
        if not args.no_session:
            _events.clear()
            _box[0] = 0
            os.ftruncate(_sink_fd[0], 0)
            with tempfile.TemporaryDirectory(prefix="nsbench-prof-", dir=str(HERE / ".work")
                                             if (HERE / ".work").exists() else None) as tmp:
                profile_session(args.boxes + warm, args.session_args.split(), Path(tmp))
            boxes = per_box(_events + read_sink(sink.name))
            sections.append(render(f"pytest session, {args.session_args}, trivial tests",
                                   table(boxes, warm)))
            print(sections[-1], "\n", flush=True)
        ref = reference(200)
        lines = ["**Reference: the kernel's part alone, in this process** (median µs of a "
                 "round trip)", "", "| operation | µs |", "|---|---:|"]
        lines += [f"| {name} | {us:.0f} |" for name, us in ref]
        sections.append("\n".join(lines))
        print(sections[-1], flush=True)
    finally:
        os.close(_sink_fd[0])
        os.unlink(sink.name)
    del held
    if args.write_docs:
        from nsbench_docs import replace_section

        load = os.getloadavg()[0]
        if load > 1.5:
            sections.insert(1, f"Note: 1-minute load average {load:.1f} at the end of this run: "
                            "other work shared the 2 cores, so the means carry long tails; "
                            "medians are the steadier figure. Re-run on a quiet machine.")
        name = "profile" + ("-hold" if args.hold_mb else "") + "".join(
            "-" + e for e in args.experiments)
        replace_section(name, "\n\n".join(sections))
        print(f"\nwrote the {name} section of docs/performance.md")


if __name__ == "__main__":
    main()
