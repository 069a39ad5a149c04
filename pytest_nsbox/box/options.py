"""Parse and validate box options from markers, the command line and ini files.

One table (`OPTIONS`) is the single source of every option's name, parser, default and
help text: the plugin builds its CLI flags and ini keys from it, and the docs build the
options reference from it, so the three can never disagree.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .units import format_size

__all__ = [
    "OPTIONS",
    "BoxOptions",
    "OptionError",
    "OptionSpec",
    "check_net_options",
    "format_size",
    "parse_forward",
    "parse_forward_text",
    "parse_options",
    "parse_size",
]


class OptionError(ValueError):
    """An option value that is not accepted; the message names the option and what is."""

    def __init__(self, name: str, value: object, accepted: str) -> None:
        self.name = name
        self.value = value
        self.accepted = accepted
        super().__init__(f"nsbox option {name}={value!r} is not valid; accepted: {accepted}")


_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?|\.\d+)\s*([kmgtp]?)(i?)(b?)\s*$", re.IGNORECASE)
_SIZE_SHIFT = {"": 0, "k": 10, "m": 20, "g": 30, "t": 40, "p": 50}
_SIZE_ACCEPTED = (
    "a positive number of bytes, or a string such as '64M', '1.5G', '512Ki' (binary units)"
)


def parse_size(value: object, name: str = "memory") -> int:
    """Bytes from an int or a string with a binary unit (K, M, G, T; Ki/KiB/KB alike)."""
    if isinstance(value, bool):
        raise OptionError(name, value, _SIZE_ACCEPTED)
    if isinstance(value, int):
        number: float = value
    elif isinstance(value, float) and math.isfinite(value):
        number = value
    elif isinstance(value, str) and (match := _SIZE_RE.match(value)):
        number = float(match.group(1)) * (1 << _SIZE_SHIFT[match.group(2).lower()])
    else:
        raise OptionError(name, value, _SIZE_ACCEPTED)
    if number < 1:
        raise OptionError(name, value, _SIZE_ACCEPTED)
    return int(number)


def _number(name: str, accepted: str, minimum: float, integer: bool,
            maximum: float | None = None) -> Callable[[object], Any]:
    def parse(value: object) -> int | float:
        if isinstance(value, bool):
            raise OptionError(name, value, accepted)
        try:
            number = float(value) if isinstance(value, str) else value
        except ValueError:
            raise OptionError(name, value, accepted) from None
        if not isinstance(number, int | float) or not math.isfinite(number):
            raise OptionError(name, value, accepted)
        if integer and number != int(number):
            raise OptionError(name, value, accepted)
        if number < minimum or (minimum == 0 and number == 0):
            raise OptionError(name, value, accepted)
        if maximum is not None and number > maximum:
            raise OptionError(name, value, accepted)
        return int(number) if integer else float(number)

    return parse


def _choice(name: str, choices: tuple[str, ...]) -> Callable[[object], str]:
    def parse(value: object) -> str:
        if not isinstance(value, str) or value not in choices:
            raise OptionError(name, value, " or ".join(repr(c) for c in choices))
        return value

    return parse


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _boolean(name: str) -> Callable[[object], bool]:
    def parse(value: object) -> bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        raise OptionError(name, value, "True or False (ini and CLI: true/false, yes/no, 1/0)")

    return parse


_CPUSET_RE = re.compile(r"^\d+(-\d+)?(,\d+(-\d+)?)*$")


def _cpuset(value: object) -> str:
    accepted = "CPU numbers and ranges such as '0', '0-1', '0,2-3'"
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return str(value)
    if not isinstance(value, str) or not _CPUSET_RE.match(value.replace(" ", "")):
        raise OptionError("cpuset", value, accepted)
    text = value.replace(" ", "")
    for part in text.split(","):
        low, _, high = part.partition("-")
        if high and int(high) < int(low):
            raise OptionError("cpuset", value, accepted)
    return text


_HOSTNAME_RE = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9-]{1,63}(?<!-))*$")


def _hostname(value: object) -> str:
    if not isinstance(value, str) or len(value) > 64 or not _HOSTNAME_RE.match(value):
        raise OptionError("hostname", value,
                          "a host name of letters, digits, '-' and '.', 64 at most")
    return value


def _path_list(name: str, accepted: str, prefix: str) -> Callable[[object], tuple[str, ...]]:
    def parse(value: object) -> tuple[str, ...]:
        items: Iterable[object]
        if isinstance(value, str):
            items = [p for p in value.replace(",", " ").split() if p]
        elif isinstance(value, list | tuple | set | frozenset):
            items = value
        else:
            raise OptionError(name, value, accepted)
        paths = []
        for item in items:
            if name == "devices" and item == "host":
                paths.append("host")
                continue
            if not isinstance(item, str) or not item.startswith(prefix) or "\0" in item:
                raise OptionError(name, value, accepted)
            paths.append("/" + item.strip("/") if item != "/" else "/")
        if "/" in paths or "/dev" in paths:
            raise OptionError(name, value, accepted + " other than '/' and '/dev'")
        if "host" in paths and len(paths) > 1:
            raise OptionError(name, value, "'host' alone")
        return tuple(dict.fromkeys(paths))

    return parse


_NETEM_KEYS = {
    "delay": "a time such as '50ms', '1s', '200us'",
    "jitter": "a time such as '5ms'",
    "loss": "a percentage such as '1%' or '0.5%'",
    "duplicate": "a percentage such as '1%'",
    "reorder": "a percentage such as '25%'",
    "corrupt": "a percentage such as '0.1%'",
    "rate": "a rate such as '1mbit', '500kbit', '10mbps'",
}
_TIME_RE = re.compile(r"^\d+(\.\d+)?(us|ms|s)$")
_PERCENT_RE = re.compile(r"^\d+(\.\d+)?%$")
_RATE_RE = re.compile(r"^\d+(\.\d+)?(bit|kbit|mbit|gbit|bps|kbps|mbps|gbps)$")


def _netem(value: object) -> Mapping[str, str] | None:
    accepted = "a dict with keys " + ", ".join(f"{k} ({v})" for k, v in _NETEM_KEYS.items())
    if value is None:
        return None
    if not isinstance(value, Mapping) or not value:
        raise OptionError("netem", value, accepted)
    checked: dict[str, str] = {}
    for key, raw in value.items():
        if key not in _NETEM_KEYS:
            raise OptionError("netem", value, accepted)
        text = str(raw).strip().lower()
        if key in ("delay", "jitter"):
            ok = bool(_TIME_RE.match(text))
        elif key == "rate":
            ok = bool(_RATE_RE.match(text))
        else:
            ok = bool(_PERCENT_RE.match(text)) and float(text[:-1]) <= 100
        if not ok:
            raise OptionError(f"netem[{key!r}]", raw, _NETEM_KEYS[key])
        checked[key] = text
    if "jitter" in checked and "delay" not in checked:
        raise OptionError("netem", value, "'jitter' together with a 'delay'")
    return checked


_IO_LIMITS = {
    "read_bps": "bytes per second such as 10485760 or '10M' (binary units)",
    "write_bps": "bytes per second such as '10M'",
    "read_iops": "whole operations per second, 1 or more",
    "write_iops": "whole operations per second, 1 or more",
}


def _io(value: object) -> Mapping[str, Any] | None:
    """{'path': str | None, 'read_bps': int | None, ...}: limits on the device behind a path."""
    accepted = ("a dict with at least one of " + ", ".join(f"{k} ({v})" for k, v in
                                                           _IO_LIMITS.items())
                + ", and optionally path (an absolute path on the file system or the block "
                "device to throttle; default: the box's working directory)")
    if value is None:
        return None
    if not isinstance(value, Mapping) or not set(value) & set(_IO_LIMITS):
        raise OptionError("io", value, accepted)
    checked: dict[str, Any] = {"path": None, **dict.fromkeys(_IO_LIMITS)}
    for key, raw in value.items():
        if key == "path":
            if raw is not None and (not isinstance(raw, str) or not raw.startswith("/")
                                    or "\0" in raw):
                raise OptionError("io['path']", raw, "an absolute path such as '/work'")
            checked["path"] = raw
        elif key in ("read_bps", "write_bps"):
            checked[key] = parse_size(raw, f"io[{key!r}]")
        elif key in _IO_LIMITS:
            checked[key] = _number(f"io[{key!r}]", _IO_LIMITS[key], 1, True)(raw)
        else:
            raise OptionError("io", value, accepted)
    return checked


Target = tuple[str, int]
_FORWARD_ACCEPTED = ("a dict {box_port: target}: box_port 1-65535 on the box's loopback, target "
                     "'host:port', '[::1]:port', a port number (127.0.0.1) or a (host, port) pair; "
                     "e.g. {5432: '127.0.0.1:5432'}")


def _port(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    return value if isinstance(value, int) and 0 < value < 65536 else None


def _target(value: object) -> Target | None:
    port = _port(value)
    if port is not None:
        return ("127.0.0.1", port)
    if isinstance(value, tuple | list) and len(value) == 2 and isinstance(value[0], str):
        port = _port(value[1])
        return (value[0], port) if port is not None and value[0] else None
    if not isinstance(value, str):
        return None
    host, sep, port_text = value.strip().rpartition(":")
    port = _port(port_text)
    if not sep or port is None or not host:
        return None
    if host.startswith("["):
        if not host.endswith("]") or len(host) < 3:
            return None
        host = host[1:-1]
    elif ":" in host:
        return None  # an IPv6 address needs brackets: '[::1]:5432'
    return (host, port)


def parse_forward(value: object) -> dict[int, Target] | None:
    """Validate the `forward` option; raise OptionError naming what is accepted."""
    if value is None:
        return None
    if not isinstance(value, Mapping) or not value:
        raise OptionError("forward", value, _FORWARD_ACCEPTED)
    parsed: dict[int, Target] = {}
    for key, raw in value.items():
        port, target = _port(key), _target(raw)
        if port is None or target is None:
            raise OptionError(f"forward[{key!r}]", raw, _FORWARD_ACCEPTED)
        parsed[port] = target
    return parsed


def parse_forward_text(text: str) -> dict[str, str]:
    """The ini/CLI spelling: '5432=127.0.0.1:5432 8080=localhost:80' (or comma-separated)."""
    pairs = [p.split("=", 1) for p in text.replace(",", " ").split()]
    if not pairs or not all(len(p) == 2 for p in pairs):
        raise OptionError("forward", text, "BOX_PORT=HOST:PORT pairs such as "
                          "'5432=127.0.0.1:5432 8080=localhost:80'")
    return {k: v for k, v in pairs}


@dataclass(frozen=True)
class OptionSpec:
    """One box option: how to parse it, its default, and the help text users read."""

    name: str
    parse: Callable[[Any], Any]
    default: Any
    help: str
    metavar: str = "VALUE"
    nullable: bool = True


OPTIONS: tuple[OptionSpec, ...] = (
    OptionSpec("memory", parse_size, None,
               "hard memory limit of the whole box (all its processes): bytes or '64M', '1.5G'",
               "SIZE"),
    OptionSpec("cpu", _number("cpu", "a positive number of cores such as 0.5 or 2", 0, False),
               None, "CPU bandwidth in cores, e.g. 0.5", "CORES"),
    OptionSpec("cpu_weight", _number("cpu_weight", "a whole number from 1 to 10000 (100 is the "
                                     "kernel's default)", 1, True, 10000), None,
               "the box's share of contended CPU against the boxes running beside it in the "
               "same pytest process (cpu.weight; v1: cpu.shares = weight x 10.24), 1-10000 "
               "(default: the kernel's, 100); a weight, not a cap", "WEIGHT"),
    OptionSpec("cpuset", _cpuset, None, "CPUs the box may run on, e.g. '0' or '0-1'", "CPUS"),
    OptionSpec("pids", _number("pids", "a whole number of tasks, 1 or more", 1, True), None,
               "most tasks (processes and threads) alive at once in the box", "N"),
    OptionSpec("timeout", _number("timeout", "a positive number of seconds", 0, False), None,
               "wall-clock seconds; then every process in the box is killed", "SECONDS"),
    OptionSpec("memory_budget", lambda value: parse_size(value, "memory_budget"), None,
               "memory peak the test should stay under; it passes, but is reported as over "
               "budget when it used more (it is not killed, unlike memory): bytes or '80M'",
               "SIZE"),
    OptionSpec("cpu_budget", _number("cpu_budget", "a positive number of CPU seconds", 0, False),
               None, "CPU seconds the test should stay under; reported, not enforced, as "
               "memory_budget", "SECONDS"),
    OptionSpec("net", _choice("net", ("isolated", "none", "host")), "isolated",
               "'isolated': own network, loopback up; 'none': no usable interface; "
               "'host': the host's network", "MODE", nullable=False),
    OptionSpec("netem", _netem, None,
               "link faults on the box's interfaces, e.g. {'delay': '50ms', 'loss': '1%'}",
               "DICT"),
    OptionSpec("forward", parse_forward, None,
               "host services reachable on the box's loopback (net='isolated'): "
               "{box_port: 'host:port'}, e.g. {5432: '127.0.0.1:5432'}", "PORTS"),
    OptionSpec("auto_forward", _boolean("auto_forward"), True,
               "in an isolated box, the TCP ports that pytest and its child processes "
               "listen on when the box starts (a session fixture's server) are relayed to "
               "the same address and port inside it; an explicit forward wins on a clash; "
               "False: only forward's ports", "BOOL", nullable=False),
    OptionSpec("io", _io, None,
               "disk bandwidth and IOPS limits on the device behind a path, e.g. "
               "{'path': '/work', 'write_bps': '10M', 'read_iops': 100}", "DICT"),
    OptionSpec("hostname", _hostname, "nsbox", "host name inside the box", "NAME",
               nullable=False),
    OptionSpec("tmpfs", _path_list("tmpfs", "an absolute path or a list of absolute paths, "
                                   "e.g. ('/tmp', '/var/tmp')", "/"),
               ("/tmp",), "paths that get a fresh private tmpfs", "PATHS", nullable=False),
    OptionSpec("tmpfs_mode", _choice("tmpfs_mode", ("overlay", "empty")), "overlay",
               "'overlay': a tmpfs path shows what the host had there when the box started, "
               "and what the box writes stays in the box (where the kernel allows overlay "
               "mounts, else 'empty'); 'empty': an empty tmpfs", "MODE", nullable=False),
    OptionSpec("tmpfs_storage", _choice("tmpfs_storage", ("disk", "ram")), "disk",
               "where what the box writes to its tmpfs paths lives: 'disk': a directory of "
               "the box's own on the host's disk (page cache, as unboxed; removed with the "
               "box; see --nsbox-storage), RAM where that disk cannot hold it; 'ram': a "
               "tmpfs, counted in the box's memory", "WHERE", nullable=False),
    OptionSpec("tmpfs_size", lambda value: parse_size(value, "tmpfs_size"), None,
               "most bytes the box may write to each tmpfs path, e.g. '1G' (then 'No space "
               "left on device'); the kernel enforces it as the size of a tmpfs, so it goes "
               "with tmpfs_storage='ram'", "SIZE"),
    OptionSpec("devices", _path_list("devices", "device paths under /dev such as ['/dev/fuse'], "
                                     "or 'host' for the host's whole /dev", "/dev/"),
               (), "devices the box sees and may open beyond its minimal /dev (null, zero, "
               "full, random, urandom, tty, pts, shm; the kernel refuses the rest where "
               "pytest may set device rules); 'host' keeps the host's /dev", "PATHS",
               nullable=False),
    OptionSpec("readonly", _boolean("readonly"), False,
               "whole file system read-only, except the tmpfs paths and pytest's tmp_path base",
               "BOOL", nullable=False),
    OptionSpec("user", _choice("user", ("self", "root", "host")), "self",
               "'self': your uid in a new user namespace; 'root': uid 0 inside; "
               "'host': no user namespace (pytest must run as root)", "USER", nullable=False),
    OptionSpec("enabled", _boolean("enabled"), True, "False opts a test out of boxing", "BOOL",
               nullable=False),
)
_SPECS = {spec.name: spec for spec in OPTIONS}


@dataclass(frozen=True)
class BoxOptions:
    """The validated options of one box; build it with `parse_options`."""

    memory: int | None = None
    cpu: float | None = None
    cpu_weight: int | None = None
    cpuset: str | None = None
    pids: int | None = None
    timeout: float | None = None
    memory_budget: int | None = None
    cpu_budget: float | None = None
    net: str = "isolated"
    netem: Mapping[str, str] | None = None
    forward: Mapping[int, tuple[str, int]] | None = None
    auto_forward: bool = True
    io: Mapping[str, Any] | None = None
    hostname: str = "nsbox"
    tmpfs: tuple[str, ...] = ("/tmp",)
    tmpfs_mode: str = "overlay"
    tmpfs_storage: str = "disk"
    tmpfs_size: int | None = None
    devices: tuple[str, ...] = ()
    readonly: bool = False
    user: str = "self"
    enabled: bool = True
    extra: Mapping[str, Any] = field(default_factory=dict, compare=False)

    def replace(self, **changes: Any) -> BoxOptions:
        """A copy with `changes` validated and applied."""
        return parse_options(changes, base=self)

    def as_dict(self) -> dict[str, Any]:
        return {spec.name: getattr(self, spec.name) for spec in OPTIONS}


def _parse_one(name: str, value: object) -> object:
    spec = _SPECS.get(name)
    if spec is None:
        close = difflib.get_close_matches(name, _SPECS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise OptionError(name, value, "the options " + ", ".join(_SPECS) + hint)
    if value is None and spec.nullable:
        return None
    return spec.parse(value)


def parse_options(values: Mapping[str, object], base: BoxOptions | None = None) -> BoxOptions:
    """Validate `values` over `base` (the defaults); raise OptionError naming the option."""
    parsed: dict[str, Any] = {name: _parse_one(name, value) for name, value in values.items()}
    options = dataclasses.replace(base or BoxOptions(), **parsed)
    if options.netem or options.forward:
        check_net_options(options)
    if options.tmpfs_size is not None and options.tmpfs_storage != "ram":
        raise OptionError("tmpfs_size", options.tmpfs_size,
                          "a size together with tmpfs_storage='ram' (the kernel enforces it "
                          "as a tmpfs's size; a private path on disk has no quota)")
    return options


def check_net_options(options: BoxOptions) -> None:
    """Refuse option mixes that cannot mean anything: faults or forwards on the host's net."""
    net = options.net
    forward = getattr(options, "forward", None)
    if options.netem and net != "isolated":
        raise OptionError("netem", options.netem,
                          "link faults together with net='isolated' (the box's own loopback; "
                          f"net={net!r} has none to shape)")
    if forward and net != "isolated":
        raise OptionError("forward", forward,
                          f"forwarded ports together with net='isolated' (net={net!r} has "
                          "no loopback of its own to listen on)")
    netem = options.netem or {}
    if "reorder" in netem and "delay" not in netem:
        raise OptionError("netem", netem, "'reorder' together with a 'delay' (netem reorders "
                          "by sending some packets without the delay)")


def parse_text(name: str, text: str) -> object:
    """Turn an ini/CLI string into the value `parse_options` takes ('none' clears a limit)."""
    spec = _SPECS[name]
    if spec.nullable and text.strip().lower() in ("", "none"):
        return None
    if name == "forward":
        return parse_forward_text(text)
    if name in ("netem", "io"):
        pairs = [p.split("=", 1) for p in text.replace(",", " ").split()]
        if not all(len(p) == 2 for p in pairs):
            example = "'delay=50ms loss=1%'" if name == "netem" else "'path=/work write_bps=10M'"
            raise OptionError(name, text, f"key=value pairs such as {example}")
        return {k: v for k, v in pairs}
    return text
