"""io limits: the block device behind a path, its throttle (v1 blkio, v2 io.max), the bytes."""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from typing import Any

from .files import _read, _read_all, _write
from .limits import CgroupUnavailable

_IO_V1_FILES = (("read_bps", "blkio.throttle.read_bps_device"),
                ("write_bps", "blkio.throttle.write_bps_device"),
                ("read_iops", "blkio.throttle.read_iops_device"),
                ("write_iops", "blkio.throttle.write_iops_device"))
_IO_V2_KEYS = (("read_bps", "rbps"), ("write_bps", "wbps"), ("read_iops", "riops"),
               ("write_iops", "wiops"))
_IO_FIX = ("give io a 'path' on a disk-backed file system (ext4, xfs, btrfs on a disk) or a "
           "block device such as '/dev/sda'")


def _io_devices(io: Any) -> tuple[str, ...]:
    """The "MAJ:MIN" of the whole disk behind io['path'] (default: the working directory)."""
    path = io.get("path") or os.getcwd()
    return (block_device(path),)


def block_device(path: str) -> str:
    """"MAJ:MIN" of the disk that holds `path` (a block device node: that device).

    Partitions map to their disk (the throttle works on whole disks); a file system whose
    st_dev is not a block device (btrfs subvolumes) maps to its mount's source device.
    CgroupUnavailable when nothing backs the path with a block device (tmpfs, overlay...).
    """
    try:
        st = os.stat(path)
    except OSError as exc:
        raise CgroupUnavailable(f"io: cannot find the device behind {path}: "
                                f"{os.strerror(exc.errno or 0)}") from None
    dev = st.st_rdev if stat.S_ISBLK(st.st_mode) else st.st_dev
    name = f"{os.major(dev)}:{os.minor(dev)}"
    if not os.path.exists(f"/sys/dev/block/{name}"):
        fstype, source = _mount_of(name)
        try:
            src = os.stat(source) if source.startswith("/dev/") else None
        except OSError:
            src = None
        if src is None or not stat.S_ISBLK(src.st_mode):
            raise CgroupUnavailable(
                f"io: {path} is on a file system of type {fstype or 'unknown'} (source "
                f"{source!r}), which has no block device to throttle; {_IO_FIX}")
        name = f"{os.major(src.st_rdev)}:{os.minor(src.st_rdev)}"
    sysdir = os.path.realpath(f"/sys/dev/block/{name}")
    if os.path.exists(f"{sysdir}/partition"):
        with contextlib.suppress(OSError):
            name = _read(f"{os.path.dirname(sysdir)}/dev").decode().strip()
    return name


def _mount_of(dev: str) -> tuple[str, str]:
    """(fstype, source) of the mount whose device number is `dev` ("", "") when none."""
    try:
        text = _read_all("/proc/self/mountinfo").decode("utf-8", "replace")
    except OSError:
        return "", ""
    for line in text.splitlines():
        left, _, right = line.partition(" - ")
        fields, rfields = left.split(), right.split()
        if len(fields) > 2 and fields[2] == dev and len(rfields) >= 2:
            return rfields[0], rfields[1]
    return "", ""


def _write_io(path: str, v2: bool, devices: tuple[str, ...], io: Any, parent: str) -> None:
    """Throttle the box on each device: v2 io.max, v1 blkio.throttle.*_device."""
    try:
        for dev in devices:
            if v2:
                limits = " ".join(f"{key}={io[name]}" for name, key in _IO_V2_KEYS
                                  if io.get(name) is not None)
                _write(f"{path}/io.max", f"{dev} {limits}".encode())
                continue
            for name, filename in _IO_V1_FILES:
                if io.get(name) is not None:
                    _write(f"{path}/{filename}", f"{dev} {io[name]}".encode())
    except OSError as exc:
        if exc.errno in (errno.EINVAL, errno.ENODEV, errno.EOPNOTSUPP, errno.ENOENT):
            raise CgroupUnavailable(
                f"io: the kernel refuses to throttle device {', '.join(devices)} in {parent} "
                f"({os.strerror(exc.errno or 0)}); {_IO_FIX}") from None
        raise


def _counter_lines(path: str) -> list[bytes]:
    """The lines of a counters file; none where it cannot be read."""
    try:
        return _read_all(path).split(b"\n")
    except OSError:
        return []


def _io_bytes_v1(path: str) -> tuple[int, int]:
    """(read, write) bytes from blkio.throttle.io_service_bytes, summed over devices."""
    read = write = 0
    for line in _counter_lines(path):
        parts = line.split()
        if len(parts) == 3 and parts[2].isdigit():
            if parts[1] == b"Read":
                read += int(parts[2])
            elif parts[1] == b"Write":
                write += int(parts[2])
    return read, write


def _io_bytes_v2(path: str) -> tuple[int, int]:
    """(read, write) bytes from io.stat (rbytes, wbytes), summed over devices."""
    read = write = 0
    for line in _counter_lines(path):
        for word in line.split()[1:]:
            key, _, value = word.partition(b"=")
            if key == b"rbytes" and value.isdigit():
                read += int(value)
            elif key == b"wbytes" and value.isdigit():
                write += int(value)
    return read, write
