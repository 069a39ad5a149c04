"""pytest-nsbox: run tests in Linux namespaces and cgroups, with results over a pipe.

The names below are imported on first use: the pytest plugin loads this package in
every pytest run, and a run that boxes nothing should not pay for the box machinery.
"""

from __future__ import annotations

import importlib

TYPE_CHECKING = False  # typing is not imported: the box maker imports this package
if TYPE_CHECKING:
    from typing import Any

    from .box.api import Box
    from .box.context import BoxContext, current_box
    from .box.errors import (
        BoxError,
        BoxExited,
        BoxKilled,
        BoxTimeout,
        BoxUnavailable,
        MemoryLimitExceeded,
        RemoteError,
    )
    from .box.options import BoxOptions, OptionError
    from .box.outcome import Usage

_WHERE = {
    "Box": "box.api", "BoxContext": "box.context", "current_box": "box.context",
    "Usage": "box.outcome",
    "BoxError": "box.errors", "BoxExited": "box.errors", "BoxKilled": "box.errors",
    "BoxTimeout": "box.errors", "BoxUnavailable": "box.errors",
    "MemoryLimitExceeded": "box.errors", "RemoteError": "box.errors",
    "OptionError": "box.options", "BoxOptions": "box.options",
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
