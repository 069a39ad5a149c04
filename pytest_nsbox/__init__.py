"""pytest-nsbox: run tests in Linux namespaces and cgroups, with results over a pipe."""

from __future__ import annotations

from .box import Box, BoxContext, Usage, current_box
from .errors import (
    BoxError,
    BoxExited,
    BoxKilled,
    BoxTimeout,
    BoxUnavailable,
    MemoryLimitExceeded,
    RemoteError,
)
from .options import BoxOptions, OptionError

__all__ = [
    "Box",
    "BoxContext",
    "BoxError",
    "BoxExited",
    "BoxKilled",
    "BoxOptions",
    "BoxTimeout",
    "BoxUnavailable",
    "MemoryLimitExceeded",
    "OptionError",
    "RemoteError",
    "Usage",
    "current_box",
]
__version__ = "0.1.0"
