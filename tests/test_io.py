"""The `io` option: disk bandwidth and IOPS limits on the device behind a path, measured.

Natively (hybrid cgroups, root) the v1 blkio throttle limits the disk that holds the
working directory. In the VM lane (tests/vm_io/run.sh: cgroup v2, no disk, a brd RAM disk
loaded for the lane) NSBOX_IO_DEVICE names the block device to throttle, and the tests
write and read that device directly. Timing assertions are lower bounds only: the kernel
holds the box back, so they cannot pass early by luck, only fail if the limit is gone.
"""

from __future__ import annotations

import inspect
import mmap
import os
import stat
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import needs
from pytest_nsbox import Box
from pytest_nsbox.box.errors import BoxUnavailable
from pytest_nsbox.box.options import OptionError, parse_options, parse_text
from pytest_nsbox.resources import cgroups

# These tests examine the host's own cgroups and disks: under --nsbox they run unboxed.
pytestmark = pytest.mark.nsbox(enabled=False)

MiB = 1 << 20
DEVICE = os.environ.get("NSBOX_IO_DEVICE", "")  # a block device to throttle (VM lane)


def _throttle_reason() -> str:
    """"" when this machine can throttle io on the device behind the target; else why not."""
    try:
        box = cgroups.box_cgroup(parse_options({"io": {"path": DEVICE or os.getcwd(),
                                                       "write_bps": 100 * MiB}}))
    except cgroups.CgroupUnavailable as exc:
        return str(exc)
    assert box is not None
    box.remove()
    return ""


WHY_NOT = _throttle_reason()
needs_throttle = pytest.mark.skipif(bool(WHY_NOT), reason=f"lacks: io throttling: {WHY_NOT}")


@pytest.fixture
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, Any]]]:
    """(path the box writes with O_DIRECT, Box keyword arguments that make it reachable)."""
    if DEVICE:
        yield DEVICE, {"devices": [DEVICE], "io_path": DEVICE}
        return
    here = Path(os.getcwd()) / f".nsbox-io-{os.getpid()}"
    here.mkdir(exist_ok=True)
    try:
        yield str(here / "data"), {"writable_paths": [str(here)], "io_path": str(here)}
    finally:
        for entry in here.iterdir():
            entry.unlink()
        here.rmdir()


def _box(kwargs: dict[str, Any], **io: Any) -> Box:
    extra = {k: v for k, v in kwargs.items() if k != "io_path"}
    return Box(io={"path": kwargs["io_path"], **io} if io else None, **extra)


def _aligned(size: int) -> mmap.mmap:
    buf = mmap.mmap(-1, size)  # page-aligned, as O_DIRECT needs
    buf.write(b"\x5a" * size)
    return buf


WARMUP = 4 * MiB  # spends the throttle's first slice, which v2 lets through at once


def direct_write(path: str, total: int, chunk: int, warmup: int = 0) -> float:
    """Seconds to write `total` bytes in `chunk`-sized O_DIRECT writes (then fsync), after
    `warmup` bytes that are written first and not timed."""
    flags = os.O_WRONLY | os.O_DIRECT | os.O_CLOEXEC
    if not (os.path.exists(path) and stat.S_ISBLK(os.stat(path).st_mode)):
        flags |= os.O_CREAT | os.O_TRUNC
    fd = os.open(path, flags, 0o600)
    buf = _aligned(chunk)
    try:
        for _ in range(warmup // chunk):
            os.write(fd, buf)
        started = time.monotonic()
        for _ in range(total // chunk):
            os.write(fd, buf)
        os.fsync(fd)
    finally:
        os.close(fd)
    return time.monotonic() - started


def direct_read(path: str, total: int, chunk: int, warmup: int = 0) -> float:
    """Seconds to read `total` bytes in `chunk`-sized O_DIRECT reads, after an untimed
    `warmup`."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECT | os.O_CLOEXEC)
    buf = mmap.mmap(-1, chunk)
    try:
        for _ in range(warmup // chunk):
            assert os.readv(fd, [buf]) == chunk
        started = time.monotonic()
        for _ in range(total // chunk):
            assert os.readv(fd, [buf]) == chunk
    finally:
        os.close(fd)
    return time.monotonic() - started


def _in_box(box: Box, fn: Callable[..., float], *args: Any) -> tuple[float, Any]:
    """fn's seconds measured in the box, and the box's usage."""
    outcome = box.execute(lambda send: send(("return", fn(*args))))
    assert outcome.frames and outcome.frames[0][0] == "return", (outcome.frames, outcome.stack)
    return outcome.frames[0][1], outcome.usage


def _unthrottled_is_fast(seconds: float) -> None:
    """The proof needs a disk clearly faster than the limit, or a pass proves nothing."""
    needs(seconds < 0.45, f"lacks: a disk faster than ~22 MiB/s (10 MiB took {seconds:.2f} s)")


# --- the option --------------------------------------------------------------------------

def test_io_option_accepts_sizes_and_refuses_nonsense() -> None:
    io = parse_options({"io": {"path": "/work", "read_bps": "10M", "write_bps": 1 << 20,
                               "read_iops": 100, "write_iops": "50"}}).io
    assert io == {"path": "/work", "read_bps": 10 * MiB, "write_bps": MiB, "read_iops": 100,
                  "write_iops": 50}
    assert parse_options({"io": parse_text("io", "write_bps=10M")}).io == {
        "path": None, "read_bps": None, "write_bps": 10 * MiB, "read_iops": None,
        "write_iops": None}
    for bad, named in (({}, "io"), ({"path": "/work"}, "io"), ({"write_bps": "fast"},
                       "io['write_bps']"), ({"read_iops": 0.5}, "io['read_iops']"),
                       ({"path": "work", "write_bps": 1}, "io['path']"),
                       ({"speed": 1}, "io"), ("10M", "io")):
        with pytest.raises(OptionError) as info:
            parse_options({"io": bad})
        assert info.value.name == named
        assert "accepted:" in str(info.value)


def test_the_device_of_a_path_is_a_whole_disk() -> None:
    dev = cgroups.block_device(DEVICE or os.getcwd()) if not WHY_NOT else ""
    needs(bool(dev), f"lacks: a block device behind {os.getcwd()}: {WHY_NOT}")
    assert os.path.isdir(f"/sys/dev/block/{dev}")
    assert not os.path.exists(f"/sys/dev/block/{dev}/partition")


def test_a_path_without_a_block_device_is_unavailable_with_the_reason() -> None:
    needs(os.path.isdir("/dev/shm"), "lacks: /dev/shm")
    with pytest.raises(BoxUnavailable) as info:
        Box(io={"path": "/dev/shm", "write_bps": "10M"}).run(int)
    text = str(info.value)
    assert "/dev/shm is on a file system of type tmpfs" in text
    assert "no block device to throttle" in text
    with pytest.raises(BoxUnavailable, match="cannot find the device behind /nonexistent"):
        Box(io={"path": "/nonexistent", "write_bps": "10M"}).run(int)


# --- the limits, measured ------------------------------------------------------------------

@needs_throttle
def test_10_mib_written_with_o_direct_under_10_mib_s_take_at_least_0_9_s(
    target: tuple[str, dict[str, Any]],
) -> None:
    path, kwargs = target
    free, _ = _in_box(_box(kwargs), direct_write, path, 10 * MiB, MiB)
    _unthrottled_is_fast(free)
    seconds, usage = _in_box(_box(kwargs, write_bps="10M"), direct_write, path, 10 * MiB, MiB,
                             WARMUP)
    rate = 10 / seconds
    print(f"\nio write: asked 10 MiB/s, measured {rate:.2f} MiB/s ({seconds:.3f} s for 10 MiB;"
          f" unthrottled {free:.3f} s)")
    assert seconds >= 0.9, f"10 MiB in {seconds:.3f} s: {rate:.1f} MiB/s under a 10 MiB/s limit"
    assert usage.io_write_bytes is not None and usage.io_write_bytes >= 10 * MiB, usage


@needs_throttle
def test_10_mib_read_with_o_direct_under_10_mib_s_take_at_least_0_9_s(
    target: tuple[str, dict[str, Any]],
) -> None:
    path, kwargs = target
    direct_write(path, 10 * MiB + WARMUP, MiB)  # unboxed: the data to read back
    free, _ = _in_box(_box(kwargs), direct_read, path, 10 * MiB, MiB)
    _unthrottled_is_fast(free)
    seconds, usage = _in_box(_box(kwargs, read_bps="10M"), direct_read, path, 10 * MiB, MiB,
                             WARMUP)
    rate = 10 / seconds
    print(f"\nio read: asked 10 MiB/s, measured {rate:.2f} MiB/s ({seconds:.3f} s for 10 MiB;"
          f" unthrottled {free:.3f} s)")
    assert seconds >= 0.9, f"10 MiB in {seconds:.3f} s: {rate:.1f} MiB/s under a 10 MiB/s limit"
    assert usage.io_read_bytes is not None and usage.io_read_bytes >= 10 * MiB, usage


@needs_throttle
def test_write_iops_limit_holds_150_writes_to_about_1_5_s(
    target: tuple[str, dict[str, Any]],
) -> None:
    path, kwargs = target
    direct_write(path, 150 * 4096, 150 * 4096)  # unboxed: blocks allocated, so 1 write = 1 io
    free, _ = _in_box(_box(kwargs), direct_write, path, 150 * 4096, 4096)
    needs(free < 0.45, f"lacks: a disk doing over ~330 IOPS (150 writes took {free:.2f} s)")
    seconds, _ = _in_box(_box(kwargs, write_iops=100), direct_write, path, 150 * 4096, 4096)
    print(f"\nio write iops: asked 100/s, measured {150 / seconds:.1f}/s "
          f"(unthrottled {150 / free:.0f}/s)")
    assert seconds >= 1.2, f"150 writes in {seconds:.3f} s under write_iops=100"


@needs_throttle
def test_the_marker_throttles_a_boxed_test_and_reports_bytes(
    run_inner: Callable[..., pytest.RunResult], pytester: pytest.Pytester,
) -> None:
    needs(not DEVICE, "lacks: a disk-backed working directory (the VM lane has a RAM disk)")
    tests = textwrap.dedent("""
        @pytest.mark.nsbox(io={"write_bps": "8M"})
        def test_marker(tmp_path, nsbox):
            seconds = direct_write(str(tmp_path / "f"), 4 << 20, 1 << 20)
            assert seconds >= 0.4, seconds
            assert nsbox.usage().io_write_bytes >= 4 << 20

        @pytest.mark.nsbox
        def test_cli_default(tmp_path):
            seconds = direct_write(str(tmp_path / "f"), 4 << 20, 1 << 20)
            assert seconds >= 0.4, seconds
    """)
    helpers = inspect.getsource(_aligned) + "\n\n" + inspect.getsource(direct_write)
    pytester.makepyfile(test_throttled="import mmap, os, stat, time\nimport pytest\n\n\n"
                        + helpers + "\n" + tests)
    result = run_inner("-q", "--nsbox-io", "write_bps=8M")
    result.assert_outcomes(passed=2)
