"""The last doctor run's results on disk, so the plugin's header need not probe again.

Keyed by kernel release, uid, boot id and the user-namespace sysctls: a change in any of
them (a reboot, a sysctl) makes a new file, and an old one of this uid is removed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
from typing import Any

from .facts import read, userns_sysctls

_CACHE_VERSION = 2


def cache_path() -> str:
    key = "|".join([platform.release(), str(os.geteuid()),
                    read("/proc/sys/kernel/random/boot_id") or "",
                    json.dumps(userns_sysctls(), sort_keys=True), str(_CACHE_VERSION)])
    digest = hashlib.sha1(key.encode()).hexdigest()[:16]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "pytest-nsbox", f"doctor-{os.geteuid()}-{digest}.json")


def load_cache() -> dict[str, Any]:
    try:
        with open(cache_path()) as f:
            data: dict[str, Any] = json.load(f)
            return data
    except (OSError, ValueError):
        return {}


def save_cache(data: dict[str, Any]) -> None:
    path = cache_path()
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        for old in os.listdir(os.path.dirname(path)):
            if old.startswith(f"doctor-{os.geteuid()}-") and old != os.path.basename(path):
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(os.path.dirname(path), old))
        tmp = f"{path}.{os.getpid()}"
        with open(tmp, "w") as f:
            json.dump(data, f)
        os.replace(tmp, path)
    except OSError:
        pass
