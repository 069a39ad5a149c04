"""libc through ctypes, and `SetupFailed`: the error every namespace step raises."""

from __future__ import annotations

import ctypes
import os


class SetupFailed(OSError):
    """A namespace step failed; `step` says which, for the message and the fix."""

    def __init__(self, step: str, err: int) -> None:
        super().__init__(err, f"{step}: {os.strerror(err)}")
        self.step = step


libc = ctypes.CDLL(None, use_errno=True)
MACHINE = os.uname().machine  # platform.machine() without importing platform


def check(result: int, step: str) -> int:
    if result < 0:
        raise SetupFailed(step, ctypes.get_errno())
    return result
