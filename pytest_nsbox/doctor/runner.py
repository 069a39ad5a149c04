"""A probe runs in a forked child with a timeout, so a kernel that refuses, hangs or
crashes on a step costs the doctor one line, not its own process.

The child sends back one JSON object ({"ok": ..., "step": ..., "errno": ...}): JSON, not
cloudpickle, so the doctor runs with the standard library alone.
"""

from __future__ import annotations

import json
import os
import select
import signal
import time
from collections.abc import Callable
from typing import Any

PROBE_TIMEOUT = 30.0  # the emulated VM runs 15-20x slower than a real machine

Result = dict[str, Any]  # what a probe child sends back, as JSON


def run_probe(fn: Callable[[], Result], timeout: float = PROBE_TIMEOUT) -> Result:
    """Run `fn` in a forked child and return its JSON result; a hang or crash is a result too.

    The child (and any child it forks) dies with its parent, so a timeout leaves nothing.
    """
    from ..box import namespaces as ns

    parent = os.getpid()
    read_fd, write_fd = os.pipe()
    pid = ns.fork_quietly()
    if pid == 0:  # pragma: no cover - the child never returns
        out: Result
        try:
            os.close(read_fd)
            ns.set_parent_death_signal(signal.SIGKILL)
            if os.getppid() not in (parent, 0):  # 0: the parent is outside our pid ns
                os._exit(1)
            out = fn()
        except ns.SetupFailed as exc:
            out = {"ok": False, "step": exc.step, "errno": exc.errno or 0}
        except OSError as exc:
            out = {"ok": False, "step": str(exc), "errno": exc.errno or 0}
        except BaseException as exc:
            out = {"ok": False, "step": repr(exc), "errno": 0}
        try:
            os.write(write_fd, json.dumps(out).encode())
        finally:
            os._exit(0)
    os.close(write_fd)
    data, deadline = b"", time.monotonic() + timeout
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([read_fd], [], [], left)[0]:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                return {"ok": False, "step": f"probe timed out after {timeout:g} s", "errno": 0,
                        "timeout": True}
            chunk = os.read(read_fd, 65536)
            if not chunk:
                break
            data += chunk
    finally:
        os.close(read_fd)
    _, status = os.waitpid(pid, 0)
    try:
        result: Result = json.loads(data)
    except ValueError:
        return {"ok": False, "step": f"probe child died (wait status {status})", "errno": 0}
    return result


def failure(result: Result) -> tuple[str, str]:
    """(detail, fix) for a probe's failure, worded by fixes.explain_setup_failure."""
    from ..box.fixes import explain_setup_failure

    if result.get("timeout"):
        return result["step"], "the kernel hung on this step; see `dmesg`"
    if not result.get("errno"):
        return str(result.get("step", "probe failed")), ""
    text = explain_setup_failure(result.get("step", "probe"), int(result["errno"]))
    detail, _, fix = text.partition(". Fix: ")
    return detail, fix
