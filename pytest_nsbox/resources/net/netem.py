"""Link faults (tc: netem, tbf) on a box's interfaces.

The box's init calls `apply_netem` after it brought `lo` up, in the box's own network
namespace, before it forks the test. pyroute2 is imported inside the functions that
need it (importing it costs ~200 ms), and its `IPRoute` is made here, never before a
fork. The unit parsers are pure so options, this module and `topology` agree on units.
"""

from __future__ import annotations

import errno
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ...box import namespaces as ns

if TYPE_CHECKING:
    from ...box.options import BoxOptions

__all__ = [
    "NETEM_FIX",
    "QdiscPlan",
    "QdiscUnavailable",
    "apply_netem",
    "parse_percent",
    "parse_rate",
    "parse_time",
    "plan_qdiscs",
    "set_faults",
]

NETEM_FIX = ("modprobe sch_netem (as root), or run on a kernel that has it (most distribution "
             "kernels do; Ubuntu ships it in linux-modules-extra-$(uname -r))")

_TIME_US = {"us": 1, "ms": 1000, "s": 1_000_000}
# tc's units: 'bit' suffixes are bits per second, 'bps' suffixes are BYTES per second.
_RATE_BYTES = {
    "bit": 1 / 8, "kbit": 1000 / 8, "mbit": 1e6 / 8, "gbit": 1e9 / 8,
    "bps": 1, "kbps": 1000, "mbps": 1e6, "gbps": 1e9,
}
_NUMBER_UNIT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-z%]*)\s*$")


class QdiscUnavailable(ns.SetupFailed):
    """The kernel lacks a qdisc the asked faults need; the message names it and the fix.

    A `SetupFailed`, so an init that only knows `SetupFailed` still ends the box with
    `BoxUnavailable`; `str(exc)` is the full sentence to show the user.
    """

    def __init__(self, qdisc: str, device: str) -> None:
        super().__init__(f"add a {qdisc} qdisc on {device}", errno.ENOENT)
        self.qdisc = qdisc
        self.message = (
            f"this kernel has no sch_{qdisc} (needed for the box's netem faults on "
            f"{device}): {NETEM_FIX if qdisc == 'netem' else f'modprobe sch_{qdisc}'}"
        )

    def __str__(self) -> str:
        return self.message


def _split(text: str, what: str) -> tuple[float, str]:
    match = _NUMBER_UNIT.match(str(text).lower())
    if not match:
        raise ValueError(f"not a {what}: {text!r}")
    return float(match.group(1)), match.group(2)


def parse_time(text: str) -> int:
    """Microseconds from '50ms', '1s', '200us' (tc's spelling)."""
    number, unit = _split(text, "time")
    if unit not in _TIME_US:
        raise ValueError(f"not a time: {text!r} (use us, ms or s)")
    return round(number * _TIME_US[unit])


def parse_rate(text: str) -> int:
    """Bytes per second from '8mbit', '500kbit', '1mbps' (tc: 'bps' means bytes)."""
    number, unit = _split(text, "rate")
    if unit not in _RATE_BYTES:
        raise ValueError(f"not a rate: {text!r} (use {', '.join(_RATE_BYTES)})")
    return max(1, round(number * _RATE_BYTES[unit]))


def parse_percent(text: str) -> float:
    """0..100 from '1%' or '0.5%'."""
    number, unit = _split(text, "percentage")
    if unit not in ("%", "") or number > 100:
        raise ValueError(f"not a percentage: {text!r}")
    return number


@dataclass(frozen=True)
class QdiscPlan:
    """One `tc qdisc add`: which kind, where it hangs, and pyroute2's keyword arguments."""

    kind: str
    handle: int
    parent: int | None  # None: the root qdisc
    kwargs: Mapping[str, Any] = field(default_factory=dict)


_NETEM_ONLY = ("delay", "jitter", "loss", "duplicate", "reorder", "corrupt")


def plan_qdiscs(netem: Mapping[str, str], mtu: int = 65536) -> list[QdiscPlan]:
    """The qdiscs for `netem` (validated option values): tbf for the rate, netem for the rest.

    A rate alone uses tbf, which every kernel with tc has; any other fault needs netem,
    as the root, with the tbf (if a rate is asked) as its child: the classic recipe, and
    pyroute2 0.9 cannot encode netem's own rate attribute. tbf's bucket must hold the
    largest packet (lo's MTU is 64 KiB) or tbf drops it.
    """
    faults = {k: v for k, v in netem.items() if k in _NETEM_ONLY}
    plans = []
    if faults:
        kwargs: dict[str, Any] = {"limit": 10000}
        if "delay" in faults:
            kwargs["delay"] = parse_time(faults["delay"])
        if "jitter" in faults:
            kwargs["jitter"] = parse_time(faults["jitter"])
        for key, arg in (("loss", "loss"), ("duplicate", "duplicate"),
                         ("reorder", "prob_reorder"), ("corrupt", "prob_corrupt")):
            if key in faults:
                kwargs[arg] = parse_percent(faults[key])
        plans.append(QdiscPlan("netem", 0x10000, None, kwargs))
    if "rate" in netem:
        bps = parse_rate(netem["rate"])
        burst = max(mtu + 1024, bps // 100)  # >= one packet, >= 10 ms of traffic
        limit = burst + max(bps // 4, 2 * (mtu + 1024))  # ~250 ms queue, 2 packets at least
        handle, parent = (0x20000, 0x10001) if plans else (0x10000, None)
        plans.append(QdiscPlan("tbf", handle, parent,
                               {"rate": bps, "burst": burst, "limit": limit}))
    return plans


def set_faults(ipr: Any, index: int, device: str, netem: Mapping[str, str] | None) -> None:
    """Replace the root qdisc of interface `index` with the plan for `netem` (None: clear)."""
    from pyroute2.netlink.exceptions import NetlinkError

    try:
        ipr.tc("del", index=index, root=True)
    except NetlinkError as exc:
        if exc.code not in (errno.ENOENT, errno.EINVAL):  # no qdisc of ours there yet
            raise
    if not netem:
        return
    mtu = _mtu(ipr, index)
    for step in plan_qdiscs(netem, mtu):
        placement: dict[str, Any] = {"root": True} if step.parent is None else {
            "parent": step.parent}
        try:
            ipr.tc("add", step.kind, index=index, handle=step.handle, **placement,
                   **step.kwargs)
        except NetlinkError as exc:
            if exc.code == errno.ENOENT:  # "Specified qdisc kind is unknown"
                raise QdiscUnavailable(step.kind, device) from None
            raise ns.SetupFailed(f"tc qdisc add {step.kind} on {device}", exc.code) from None


def _mtu(ipr: Any, index: int) -> int:
    link = ipr.link("get", index=index)[0]
    return int(link.get("mtu") or 65536)


def apply_netem(options: BoxOptions | Mapping[str, str] | None,
                interfaces: Iterable[str] = ("lo",)) -> None:
    """Put the box's link faults on `interfaces` (its loopback): call inside the box.

    Runs in the box's init, in its user and network namespaces. Raises
    `QdiscUnavailable` when the kernel lacks a qdisc, `SetupFailed` for other refusals.
    Every packet on lo crosses it once, so a round trip inside the box pays the delay
    twice, as two hosts would with the delay on both ends of their link.
    """
    netem = options if isinstance(options, Mapping) or options is None else options.netem
    if not netem:
        return
    from pyroute2 import IPRoute  # made here, inside the box: never share one across a fork

    with IPRoute() as ipr:
        for name in interfaces:
            found = ipr.link_lookup(ifname=name)
            if not found:
                raise ns.SetupFailed(f"netem: no interface {name}", errno.ENODEV)
            set_faults(ipr, found[0], name, netem)
