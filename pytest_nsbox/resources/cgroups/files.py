"""Small cgroup file helpers: os.open/os.read/os.write, no Python file objects.

Every boxed test pays for these, so each stays a handful of syscalls.
"""

from __future__ import annotations

import os

_W = os.O_WRONLY | os.O_CLOEXEC
_R = os.O_RDONLY | os.O_CLOEXEC


def _write(path: str, data: bytes) -> None:
    fd = os.open(path, _W)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def _read(path: str) -> bytes:
    fd = os.open(path, _R)
    try:
        return os.read(fd, 65536)
    finally:
        os.close(fd)


def _read_int(path: str) -> int | None:
    try:
        return int(_read(path))
    except (OSError, ValueError):
        return None


def _keyed(path: str) -> dict[str, int]:
    """A flat keyed file (cpu.stat, memory.events, memory.oom_control) as a dict."""
    try:
        text = _read(path)
    except OSError:
        return {}
    out = {}
    for line in text.split(b"\n"):
        key, _, value = line.partition(b" ")
        if value.isdigit():
            out[key.decode()] = int(value)
    return out


def _pids(procs: str) -> list[int]:
    try:
        return [int(p) for p in _read_all(procs).split()]
    except OSError:
        return []


def _read_all(path: str) -> bytes:
    fd = os.open(path, _R)
    try:
        chunks = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)
