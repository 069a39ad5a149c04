"""Where this process's cgroups are: v1, v2, hybrid or none, from /proc/self."""

from __future__ import annotations

from dataclasses import dataclass, field

ROOT = "/sys/fs/cgroup"


@dataclass
class _Layout:
    version: str  # "v1", "v2", "hybrid" or "none"
    unified: str | None = None  # this process's cgroup directory on the v2 hierarchy
    v1: dict[str, str] = field(default_factory=dict)  # controller -> this process's v1 dir


def _layout() -> _Layout:
    mounts: list[tuple[str, str, str, set[str]]] = []  # (fstype, mount root, mountpoint, opts)
    with open("/proc/self/mountinfo", "rb") as f:
        for line in f.read().decode().splitlines():
            left, _, right = line.partition(" - ")
            fields, rfields = left.split(), right.split()
            # a mount whose root lies outside this cgroup namespace ("/..") is not ours
            # (pytest in a container's cgroup namespace)
            if (len(rfields) >= 3 and rfields[0] in ("cgroup", "cgroup2")
                    and not fields[3].startswith("/..")):
                mounts.append((rfields[0], fields[3], fields[4], set(rfields[2].split(","))))
    with open("/proc/self/cgroup", "rb") as f:
        own = [line.split(":", 2) for line in f.read().decode().splitlines() if line]
    layout = _Layout("none")
    v1_paths = {c: path for _, ctrls, path in own if ctrls for c in ctrls.split(",")}
    unified_path = next((path for _, ctrls, path in own if not ctrls), None)
    for fstype, mroot, point, opts in mounts:
        if fstype == "cgroup2" and unified_path is not None and layout.unified is None:
            layout.unified = _join(point, mroot, unified_path)
        elif fstype == "cgroup":
            for c in opts & set(v1_paths):
                layout.v1.setdefault(c, _join(point, mroot, v1_paths[c]))
    if layout.v1:
        layout.version = "hybrid" if layout.unified else "v1"
    elif layout.unified:
        layout.version = "v2"
    return layout


def _join(point: str, mroot: str, path: str) -> str:
    if mroot != "/" and (path == mroot or path.startswith(mroot + "/")):
        path = path[len(mroot):]
    return point + path.rstrip("/") if path != "/" else point
