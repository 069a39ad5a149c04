"""What the plugin asks of the doctor each session: one header line and whether a default
box can run. Cheap: cached probe results and file reads, one ~10 ms probe only when the
cache is cold, and nothing Linux-only or third-party imported at module level.
"""

from __future__ import annotations

import errno
import platform
from typing import Any

from .cache import load_cache, save_cache
from .cgroups import summary as cgroup_summary
from .facts import LINUX, kernel_module, userns_cause
from .report import PASS
from .runner import Result


def box_result() -> Result:
    """Whether a default box can be made here: cached, else probed once (~10 ms) and cached."""
    data = load_cache()
    box: Result | None = data.get("box")
    if box is None:
        # imported before the fork: another thread, e.g. execnet's under xdist, may hold
        # the import lock at fork time
        from ..box import init, maker, options  # noqa: F401
        from .probes import default_box
        from .runner import run_probe

        box = run_probe(default_box, 10.0)
        data["box"] = box
        save_cache(data)
    return box


def boxing_available() -> tuple[bool, str]:
    """(True, '') when a default box can run here, else (False, why and the fix)."""
    if not LINUX:
        return False, (f"boxes need Linux namespaces and cgroups; this is {platform.system()}")
    box = box_result()
    if box.get("ok"):
        return True, ""
    from .runner import failure

    detail, fix = failure(box)
    cause = userns_cause(box.get("step", ""))
    return False, detail + (f" (likely: {cause})" if cause else "") + (
        f". Fix: {fix}" if fix else "")


def header_line(tmpfs_mode: str = "overlay", tmpfs: tuple[str, ...] = ("/tmp",)) -> str:
    """One line for pytest's header: what boxes get here (cached probes + file reads).

    `tmpfs_mode` and `tmpfs` are the session's default box options (``--nsbox-tmpfs-mode``,
    ``--nsbox-tmpfs`` or their ini keys): what /tmp shows in a box depends on them too.
    """
    if not LINUX:
        return f"nsbox: unavailable (boxes need Linux; this is {platform.system()})"
    box = box_result()
    if box.get("ok"):
        parts = ["user+pid+net+mount+uts+ipc namespaces"]
    else:
        parts = [f"boxes unavailable ({box.get('step')}: "
                 f"{errno.errorcode.get(int(box.get('errno', 0)), box.get('errno'))}; "
                 "see `python -m pytest_nsbox doctor`)"]
    parts.append(cgroup_summary())
    cached = {c["name"]: c["status"] for c in load_cache().get("checks", [])}
    if "netem" in cached:
        netem = cached["netem"] == PASS
    else:
        netem = kernel_module("sch_netem") in ("loaded", "built in", "on disk")
    parts.append("netem" if netem else "netem missing")
    if box.get("ok"):
        parts.append(_tmp_part(box.get("tmpfs"), tmpfs_mode, tmpfs))
    return "nsbox: " + "; ".join(parts)


def _tmp_part(probed: Any, tmpfs_mode: str, tmpfs: tuple[str, ...]) -> str:
    """What a default box's /tmp shows: the probe says whether an overlay works here, the
    session's options whether one is asked for."""
    if "/tmp" not in tmpfs:
        return "/tmp: the host's own (not a tmpfs path)"
    if tmpfs_mode == "empty":
        return "/tmp: empty (tmpfs_mode='empty')"
    if probed == "overlay":
        return "/tmp: the host's files below the box's"
    return "/tmp: empty (no overlay here; see the doctor)"
