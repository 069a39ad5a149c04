"""pytest-nsbox: run tests in Linux namespaces and cgroups, with results over a pipe.

The names below are imported on first use: the pytest plugin loads this package in
every pytest run, and a run that boxes nothing should not pay for the box machinery.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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

_WHERE = {
    "Box": "box", "BoxContext": "box", "Usage": "box", "current_box": "box",
    "BoxError": "errors", "BoxExited": "errors", "BoxKilled": "errors",
    "BoxTimeout": "errors", "BoxUnavailable": "errors", "MemoryLimitExceeded": "errors",
    "RemoteError": "errors", "BoxOptions": "options", "OptionError": "options",
}

__all__ = [
    "Box", "BoxContext", "BoxError", "BoxExited", "BoxKilled", "BoxOptions", "BoxTimeout",
    "BoxUnavailable", "MemoryLimitExceeded", "OptionError", "RemoteError", "Usage",
    "current_box",
]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'pytest_nsbox' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value
