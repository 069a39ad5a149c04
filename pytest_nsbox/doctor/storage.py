"""The box storage line: where boxes keep their private paths (/tmp) on disk.

A box's /tmp on RAM counts in its memory limit, so the line says which file system the
storage directory is on, how much is free, and what failed boxes were kept there.
"""

from __future__ import annotations

import os

from .facts import fs_type
from .report import DEGRADED, PASS, Check

NOT_A_DISK = ("overlay", "tmpfs", "ramfs")


def storage_check(root: str | None = None) -> Check:
    """Where boxes keep their private paths (/tmp) on disk, and whether they can."""
    from ..resources.storage import KEPT, default_root

    root = root or default_root()
    how = "statvfs and /proc/self/mountinfo of the storage directory"
    existing = root
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.access(existing, os.W_OK | os.X_OK):
        return Check("box storage", DEGRADED, f"{root} cannot be made or written: boxes keep "
                     "their /tmp in RAM (counted in their memory limit)",
                     "pytest --nsbox-storage DIR (or ini nsbox_storage) with a directory you "
                     "may write on a disk", how)
    kind = fs_type(existing)
    info = os.statvfs(existing)
    free = info.f_bavail * info.f_frsize
    kept = os.path.join(root, KEPT)
    extra = (f"; {len(os.listdir(kept))} sessions' kept failed boxes in {kept} "
             "(`pytest-nsbox clean` removes them)") if os.path.isdir(kept) else ""
    if kind in NOT_A_DISK:
        what = "RAM" if kind != "overlay" else "an overlay, which cannot hold a box's layer"
        detail = f"{root} is on {kind} ({what}): boxes keep their /tmp in RAM{extra}"
        if fs_type("/tmp") in NOT_A_DISK:  # as this machine keeps its own /tmp
            return Check("box storage", PASS, f"{detail}, as this machine's /tmp is",
                         method=how)
        return Check("box storage", DEGRADED, detail, "pytest --nsbox-storage DIR (or ini "
                     "nsbox_storage) with a directory on a disk", how)
    return Check("box storage", PASS, f"a box's /tmp lives on disk in {root} ({kind}, "
                 f"{free / (1 << 30):.1f} GiB free), removed after the box{extra}", method=how)
