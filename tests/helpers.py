"""Host-side checks shared by the tests: what a box may not leave behind."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid


def token() -> str:
    return f"nsbox-token-{uuid.uuid4().hex[:12]}"


def processes_with(marker: str) -> list[int]:
    """Pids on the host whose command line contains `marker`."""
    found = []
    needle = marker.encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as file:
                if needle in file.read():
                    found.append(int(entry))
        except OSError:
            continue
    return [pid for pid in found if pid != os.getpid()]


def wait_gone(marker: str, seconds: float) -> list[int]:
    """Poll until no process carries `marker` or `seconds` pass; return what is left."""
    deadline = time.monotonic() + seconds
    while (left := processes_with(marker)) and time.monotonic() < deadline:
        time.sleep(0.02)
    return left


def spawn_daemon(marker: str) -> None:
    """Double fork + setsid a sleeper whose command line carries `marker`, then return."""
    subprocess.Popen(
        [sys.executable, "-c", "import os,time\nif os.fork(): os._exit(0)\nos.setsid()\n"
         "time.sleep(1000)", marker],
        start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    ).wait()


def has_pids_peak() -> bool:
    """Whether this kernel keeps a peak of a pids cgroup (pids.peak, Linux 6.13+)."""
    for path in ("/sys/fs/cgroup/pids", "/sys/fs/cgroup"):
        for root, dirs, files in os.walk(path):
            if "pids.peak" in files:
                return True
            if root.count("/") > 5:
                dirs.clear()
    return False

