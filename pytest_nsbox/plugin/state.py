"""The plugin's per-session state and the stash keys the pytest side shares."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from ..box.options import BoxOptions

__all__ = ["SessionState", "options_key", "state_key", "timeout_key"]


@dataclass
class SessionState:
    """Per-session settings, fixed at configure time."""

    defaults: BoxOptions
    box_all: bool
    unavailable: str = "fail"
    keep_paths: tuple[str, ...] = ()
    writable_paths: tuple[str, ...] = ()
    prepared: bool = False
    #: why boxing is off for this run (e.g. --pdb), or ""
    disabled: str = ""
    #: nodeid -> the usage figures of its last box, kept only for --nsbox-usage (filled
    #: from the logged reports by `usage.plugin.TopUsage`, under xdist too)
    usage: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: --nsbox-keep-failed: a failed box's files stay on disk, its report says where
    keep_failed: bool = False
    #: --nsbox-storage / nsbox_storage: where boxes keep their private paths (None: default)
    storage_root: str | None = None
    #: the pytest process's output and logs while a box runs (plugin.session_output)
    session_output: Any = None


state_key = pytest.StashKey[SessionState]()
options_key = pytest.StashKey["BoxOptions | None"]()


timeout_key = pytest.StashKey[float]()
