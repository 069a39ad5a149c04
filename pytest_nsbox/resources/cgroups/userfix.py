"""The one fix for cgroups a normal user cannot write, as every message words it.

Here, below the cgroup error that prints it; `pytest_nsbox.cgroup_setup` is the command
it names (``pytest-nsbox cgroup-setup`` and ``cgroup-exec``).
"""

from __future__ import annotations

import os
import shutil
import sys

__all__ = ["command", "fix", "fix_commands"]

def command() -> str:
    """How to call pytest-nsbox from here: this Python's (the venv's) script, else PATH's,
    else ``python -m``."""
    beside = os.path.join(os.path.dirname(sys.executable), "pytest-nsbox")
    if os.access(beside, os.X_OK):
        return beside
    return shutil.which("pytest-nsbox") or f"{sys.executable} -m pytest_nsbox"


def _user_name() -> str:
    import pwd

    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return str(os.geteuid())


def fix_commands(user: str | None = None, cmd: str | None = None) -> tuple[str, str]:
    """(root's command, once per boot; the prefix the user runs pytest under)."""
    cmd = cmd or command()
    return (f"{cmd} cgroup-setup --user {user or _user_name()}", f"{cmd} cgroup-exec")


def fix(user: str | None = None, cmd: str | None = None) -> str:
    """The fix for limits as a normal user, as every message words it."""
    setup, prefix = fix_commands(user, cmd)
    return (f"run `{setup}` as root (once per boot: it makes cgroups the user owns), then "
            f"run pytest under `{prefix}`, e.g. `{prefix} pytest ...`")
