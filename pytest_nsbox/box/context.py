"""The box this code runs in: `current_box()`, set in each box's test process."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .options import BoxOptions
from .outcome import Usage

__all__ = ["BoxContext", "current_box"]


@dataclass(frozen=True)
class BoxContext:
    """What code inside a box can ask about the box it runs in."""

    options: BoxOptions
    cgroup: Any = None

    def usage(self) -> Usage:
        """Memory, CPU and tasks so far, from the box's cgroup (empty without one)."""
        if self.cgroup is None:
            return Usage()
        return self.cgroup.usage()  # type: ignore[no-any-return]


_current: BoxContext | None = None


def current_box() -> BoxContext | None:
    """The box this code runs in, or None outside any box."""
    return _current
