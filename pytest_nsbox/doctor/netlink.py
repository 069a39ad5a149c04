"""rtnetlink create requests, built by hand (linux/netlink.h, rtnetlink.h, if_link.h,
pkt_sched.h), so the doctor can try a veth, a bridge, netem and tbf without pyroute2.

Only what the probes need: one request, one acknowledgement, the kernel's errno.
"""

from __future__ import annotations

import os
import socket
import struct

_NLM_F_REQUEST, _NLM_F_ACK, _NLM_F_EXCL, _NLM_F_CREATE = 1, 4, 0x200, 0x400
_NLMSG_ERROR, _RTM_NEWLINK, _RTM_NEWQDISC = 2, 16, 36
_IFLA_IFNAME, _IFLA_LINKINFO, _IFLA_INFO_KIND, _IFLA_INFO_DATA, _VETH_INFO_PEER = 3, 18, 1, 2, 1
_TCA_KIND, _TCA_OPTIONS, _TCA_TBF_PARMS, _TC_H_ROOT = 1, 2, 1, 0xFFFFFFFF

LINK_KINDS = ("veth", "bridge")  # made with RTM_NEWLINK; the rest are qdiscs on lo


def _attr(kind: int, payload: bytes) -> bytes:
    size = 4 + len(payload)
    return struct.pack("=HH", size, kind) + payload + b"\0" * (-size % 4)


def send(msg_type: int, body: bytes) -> None:
    """Send one rtnetlink create request; raise OSError with the kernel's errno."""
    flags = _NLM_F_REQUEST | _NLM_F_ACK | _NLM_F_CREATE | _NLM_F_EXCL
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0) as sock:
        sock.settimeout(10)
        sock.bind((0, 0))
        sock.send(struct.pack("=LHHLL", 16 + len(body), msg_type, flags, 1, 0) + body)
        reply = sock.recv(65536)
    if struct.unpack_from("=H", reply, 4)[0] == _NLMSG_ERROR:
        err = -struct.unpack_from("=i", reply, 16)[0]
        if err:
            raise OSError(err, os.strerror(err))


def _new_link(kind: str) -> tuple[int, bytes]:
    """RTM_NEWLINK of a `kind` link named nsbx0 (a veth's peer: nsbx1)."""
    ifinfo = struct.pack("=BxHiII", socket.AF_UNSPEC, 0, 0, 0, 0)
    data = b""
    if kind == "veth":
        peer = ifinfo + _attr(_IFLA_IFNAME, b"nsbx1\0")
        data = _attr(_IFLA_INFO_DATA, _attr(_VETH_INFO_PEER, peer))
    info = _attr(_IFLA_LINKINFO, _attr(_IFLA_INFO_KIND, kind.encode() + b"\0") + data)
    return _RTM_NEWLINK, ifinfo + _attr(_IFLA_IFNAME, b"nsbx0\0") + info


def _new_root_qdisc(kind: str) -> tuple[int, bytes]:
    """RTM_NEWQDISC of a root `kind` qdisc (netem or tbf) on lo, with small options."""
    tcmsg = struct.pack("=BxxxiIII", socket.AF_UNSPEC, socket.if_nametoindex("lo"),
                        0x10000, _TC_H_ROOT, 0)
    if kind == "netem":  # struct tc_netem_qopt: latency limit loss gap duplicate jitter
        options = struct.pack("=6I", 0, 1000, 0, 0, 0, 0)
    else:  # tc_tbf_qopt: rate, peakrate (tc_ratespec), limit, buffer (ticks), mtu
        rate = struct.pack("=BBHhHI", 0, 1, 0, 0, 0, 125_000)  # 1 mbit, ethernet
        peak = struct.pack("=BBHhHI", 0, 0, 0, 0, 0, 0)
        options = _attr(_TCA_TBF_PARMS, rate + peak + struct.pack("=III", 100_000,
                                                                    1_000_000, 0))
    body = tcmsg + _attr(_TCA_KIND, kind.encode() + b"\0") + _attr(_TCA_OPTIONS, options)
    return _RTM_NEWQDISC, body


def request(kind: str) -> tuple[str, int, bytes]:
    """(step, message type, body) that makes a `kind` link (veth, bridge) or root qdisc on
    lo (netem, tbf); the step names the request in a failure line."""
    if kind in LINK_KINDS:
        return (f"add a {kind} link", *_new_link(kind))
    return (f"add a {kind} qdisc on lo", *_new_root_qdisc(kind))
