"""Name the box's network when it is why a boxed test failed.

In a box with ``net="isolated"`` or ``net="none"``, a connect to a host service the
session did not start is refused (or finds no network), and an outside name does not
resolve; the traceback then says ``Connection refused`` or ``Temporary failure in name
resolution`` and nothing about the box. A failed report whose exception chain holds such
an error gets a short section naming the option and the fixes, as pytest-socket's error
names itself. Only failures pay: the hook returns at ``call.excinfo is None``.
"""

from __future__ import annotations

import errno
import re
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

if TYPE_CHECKING:
    from types import FrameType

Kind = Literal["refused", "unreachable", "lookup"]

SECTION = "nsbox network"
MAX_NODES = 30  # exceptions looked at in one chain
MAX_TEXT = 4000  # characters of one exception's text read for a port

_ERRNOS: dict[int, Kind] = {
    errno.ECONNREFUSED: "refused",
    errno.ENETUNREACH: "unreachable",
    errno.EHOSTUNREACH: "unreachable",
}
# getaddrinfo's EAI_AGAIN, EAI_NONAME, EAI_FAIL, EAI_NODATA, EAI_ADDRFAMILY: negative, so
# no real errno; aiohttp's ClientConnectorDNSError carries them without being a gaierror
_LOOKUP_ERRNOS = frozenset({-3, -2, -4, -5, -9})
# what C libraries print instead of raising an OSError (libpq: 'connection to server at
# "127.0.0.1", port 5432 failed: Connection refused'), most telling first
_PHRASES: tuple[tuple[str, Kind], ...] = (
    ("Temporary failure in name resolution", "lookup"),
    ("Name or service not known", "lookup"),
    ("No address associated with hostname", "lookup"),
    ("could not translate host name", "lookup"),
    ("Connection refused", "refused"),
    ("Network is unreachable", "unreachable"),
    ("No route to host", "unreachable"),
)
_RANK: dict[Kind, int] = {"lookup": 0, "refused": 1, "unreachable": 2}
# where a failed connect's texts name the port: urllib3 "host='localhost', port=5432",
# asyncio "('127.0.0.1', 5432)", aiohttp/redis "127.0.0.1:5432", libpq '"db", port 5432'
_ADDRESS = (
    r"""host=['"](?P<h1>[^'"]+)['"],\s*port=(?P<p1>\d{1,5})\b"""
    r"""|\(['"](?P<h2>[^'"]+)['"],\s*(?P<p2>\d{1,5})[,)]"""
    r"""|(?<![\w.:])(?P<h3>localhost|\d{1,3}(?:\.\d{1,3}){3}|\[[0-9A-Fa-f:.]+\]):(?P<p3>\d{1,5})\b"""
    r"""|"(?P<h4>[^"]+)",\s*port\s+(?P<p4>\d{1,5})\b""")


class Finding(NamedTuple):
    """What the chain says went wrong, and where it connected when its texts say so."""

    kind: Kind
    port: int | None = None
    host: str | None = None


def chain(exc: BaseException, limit: int = MAX_NODES) -> Iterator[BaseException]:
    """The exceptions behind `exc`, breadth first, each once, at most `limit`: causes,
    contexts, urllib3's ``.reason``, aiohttp's ``.os_error``, an exception group's members,
    and exceptions passed as arguments (requests wraps urllib3's error so)."""
    seen: set[int] = set()
    queue: list[BaseException] = [exc]
    for node in queue:
        if len(seen) >= limit:
            return
        if id(node) in seen:
            continue
        seen.add(id(node))
        yield node
        for linked in _linked(node):
            if id(linked) not in seen and len(queue) < limit * 4:
                queue.append(linked)


def _linked(exc: BaseException) -> list[BaseException]:
    found: list[BaseException] = []
    for name in ("__cause__", "__context__", "reason", "os_error"):
        try:
            value = getattr(exc, name, None)
        except Exception:  # a property that raises
            continue
        if isinstance(value, BaseException):
            found.append(value)
    for name in ("exceptions", "args"):
        try:
            values = getattr(exc, name, ())
            if isinstance(values, tuple | list):
                found.extend(v for v in values[:8] if isinstance(v, BaseException))
        except Exception:
            continue
    return found


def _kind(exc: BaseException) -> Kind | None:
    """The network failure `exc` itself stands for, from its type and errno."""
    if not isinstance(exc, OSError):
        return None
    import socket

    if isinstance(exc, socket.gaierror):
        return "lookup"
    try:
        number = exc.errno
    except Exception:
        return None
    if not isinstance(number, int):
        return None
    if number in _LOOKUP_ERRNOS:
        return "lookup"
    return _ERRNOS.get(number)


def _text(exc: BaseException) -> str:
    """str(exc), bounded, or "" when its __str__ is broken."""
    try:
        text = str(exc)
    except Exception:
        return ""
    return text[:MAX_TEXT] if isinstance(text, str) else ""


def _phrase_kind(text: str) -> Kind | None:
    for phrase, kind in _PHRASES:
        if phrase in text:
            return kind
    return None


def find(exc: BaseException) -> Finding | None:
    """The network failure in `exc`'s chain, or None. An OSError's errno (or a gaierror)
    wins over words in a message; an assertion's message is never read (it quotes values)."""
    nodes = list(chain(exc))
    texts = [_text(node) for node in nodes]
    kinds: list[Kind] = []
    for node in nodes:
        kind = _kind(node)
        if kind is not None:
            kinds.append(kind)
    if not kinds:
        for node, text in zip(nodes, texts, strict=True):
            kind = None if isinstance(node, AssertionError) else _phrase_kind(text)
            if kind is not None:
                kinds.append(kind)
    if not kinds:
        return None
    found = min(kinds, key=lambda kind: _RANK[kind])
    for node in nodes:
        if _kind(node) is not None and (address := _connected_to(node)) is not None:
            return Finding(found, address[1], address[0])
    pattern = re.compile(_ADDRESS)  # compiled on the first failure that needs it, then cached
    for text in texts:
        match = pattern.search(text)
        while match is not None:
            host = next(value for value in match.group("h1", "h2", "h3", "h4") if value)
            port = int(next(value for value in match.group("p1", "p2", "p3", "p4") if value))
            if 0 < port < 65536:
                return Finding(found, port, host.strip("[]"))
            match = pattern.search(text, match.end())
    return Finding(found)


def _connected_to(exc: BaseException) -> tuple[str | None, int] | None:
    """Where a failed connect went, from the frames the OSError passed through, innermost
    first: ``socket.create_connection`` (which http.client, httpcore and most clients call)
    and asyncio's ``create_connection`` hold ``host`` and ``port``; the message has neither."""
    frames: list[FrameType] = []
    tb = exc.__traceback__
    while tb is not None and len(frames) < 40:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    for frame in reversed(frames[-12:]):
        try:
            names = frame.f_locals
            port, host = names.get("port"), names.get("host")
        except Exception:
            continue
        if type(port) is int and 0 < port < 65536:
            return (host if isinstance(host, str) else None, port)
    return None


def hint(finding: Finding, net: str) -> str:
    """The section's text: what failed, why the box is the likely reason, and the fixes."""
    port = str(finding.port) if finding.port else "PORT"
    relay = f"forward={{{port}: '127.0.0.1:{port}'}}"
    what = {"refused": "connection refused", "unreachable": "network unreachable",
            "lookup": "name lookup failed"}[finding.kind]
    head = f"[nsbox] {what} in a box with net={net!r}: "
    host_net = "Fix: net='host' shares the host's network; "
    if net == "none":
        where = ("a session fixture's server on 127.0.0.1 is relayed" if finding.kind == "lookup"
                 else f"forward={{{port}: '{_target(finding, port)}'}} relays a host service")
        lines = [head + "the box has no network, not even a loopback.",
                 host_net + "net='isolated' gives the box a loopback of its own,",
                 f"where {where}."]
    elif finding.kind == "lookup":
        lines = [head + "the box has no route out, so no DNS.",
                 host_net + "or serve the test from a session fixture on",
                 "127.0.0.1 (ports that pytest's processes listen on are relayed into the box)."]
    elif finding.kind == "refused":
        lines = [head + "the box has a loopback of its own.",
                 "Only ports that pytest's processes listen on when the box starts are relayed "
                 "into it.",
                 f"Fix: {relay} relays a host service; net='host' shares the host's network."]
    else:
        lines = [head + "the box's only network is its own loopback.",
                 host_net + f"or forward={{{port}: '{_target(finding, port, 'HOST')}'}} relays "
                 "one service",
                 f"to 127.0.0.1:{port} in the box."]
    return "\n".join(lines)


def _target(finding: Finding, port: str, unknown: str = "127.0.0.1") -> str:
    """The host side of a suggested forward: where the test connected, when that was not a
    loopback address (which means the host's own loopback once forwarded)."""
    host = finding.host
    if not host or not finding.port:
        return f"{unknown}:{port}"
    if host == "localhost" or host.startswith("127.") or host == "::1":
        host = "127.0.0.1"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def short_hint(finding: Finding, net: str) -> str:
    """One line, for --tb=line and --tb=no, where only the crash line is shown."""
    port = str(finding.port) if finding.port else "PORT"
    if finding.kind == "refused" and net == "isolated":
        fix = f"forward={{{port}: '127.0.0.1:{port}'}} or net='host'"
    else:
        fix = "net='host'"
    return f"[nsbox] net={net!r} may be why: try {fix}"


def _crash_line_only(item: Any) -> bool:
    """Whether the terminal shows this failure as its crash line alone, without sections:
    --tb=no (the short summary), and --tb=line before pytest 9 (9.0 shows sections there)."""
    from .pytest_internals import crash_line_only

    return crash_line_only(item.config)


def add_hint(item: Any, call: Any, report: Any) -> None:
    """In a box with its own network, add the hint to a failed report whose exception
    chain holds a refused connect, an unreachable network or a failed lookup. Never raises:
    a report must not break for its hint's sake."""
    try:
        _add_hint(item, call, report)
    except Exception:
        return


def _add_hint(item: Any, call: Any, report: Any) -> None:
    if not report.failed:
        return
    from ..box.context import current_box

    box = current_box()
    net = getattr(getattr(box, "options", None), "net", None)
    if net not in ("isolated", "none"):
        return  # not in a box, or in one on the host's network
    if "nsbox_network" in getattr(item, "fixturenames", ()):
        return  # the test builds networks of its own; the box's loopback is not the point
    finding = find(call.excinfo.value)
    if finding is None:
        return
    text = hint(finding, net)
    longrepr = report.longrepr
    if isinstance(longrepr, str):
        report.longrepr = f"{longrepr}\n\n{text}"
    elif hasattr(longrepr, "addsection"):
        longrepr.addsection(SECTION, text)
        crash = getattr(longrepr, "reprcrash", None)
        if _crash_line_only(item) and crash is not None and isinstance(crash.message, str):
            first, newline, rest = crash.message.partition("\n")
            crash.message = f"{first} {short_hint(finding, net)}{newline}{rest}"
