"""Multi-host test networks: hosts in their own network namespaces on one virtual switch.

Layout of one `Network`::

    caller (test process)               hub (child of the caller, pid-death-signalled)
      | holds: user ns fd,                unshare(CLONE_NEWUSER): uid 0 inside = caller
      |        a netns fd per host        "wire" netns: bridge sw0, ports p0, p1, ...
      | forks host processes that         host netns "a": lo, eth0 = 10.77.0.1/24
      |   setns(user), setns(net),        host netns "b": lo, eth0 = 10.77.0.2/24
      |   unshare(mount, uts),            one IPRoute per netns, made in it, after the fork
      |   bind /etc/hosts, hostname       serves faults / link up-down / partition requests

Every namespace belongs to the hub's user namespace, so building works the same as root
and rootless. The namespaces live as long as the hub and the host processes hold them;
`close()` (the fixture's teardown) kills the host processes, ends the hub and closes the
fds, and the kernel then removes every interface with its namespace. Nothing is ever
made in the caller's own network namespace.
"""

from __future__ import annotations

import contextlib
import ctypes
import ipaddress
import json
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NoReturn

from ...box import namespaces as ns
from ...box.errors import BoxError, BoxUnavailable
from ...box.namespaces import mounts

__all__ = ["Host", "HostProcess", "Link", "Network", "NetworkFactory"]

DEFAULT_SUBNET = "10.77.0.0/24"
_NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,30}$")
_POISON_MAC = "02:00:5e:00:de:ad"  # partition: frames to this MAC reach no host and vanish
_NUD_PERMANENT = 0x80
_REPLY_TIMEOUT = 30.0

_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int, nstype: int, what: str) -> None:
    if _libc.setns(ctypes.c_int(fd), ctypes.c_int(nstype)) < 0:
        raise ns.SetupFailed(f"setns into the network's {what} namespace", ctypes.get_errno())


# -- the hub: runs in its own process, owns the user namespace and every netlink socket --


class _Hub:
    """State of the hub process: one IPRoute per namespace, interface indexes by host."""

    def __init__(self, names: Sequence[str], addresses: Sequence[str], prefix: int) -> None:
        from pyroute2 import IPRoute

        self.names = list(names)
        self.addresses = dict(zip(names, addresses, strict=True))
        self.fds: list[int] = []
        ns.unshare(ns.CLONE_NEWNET)
        self.fds.append(os.open("/proc/self/ns/net", os.O_RDONLY))
        self.wire = self._iproute(IPRoute)
        self.wire.link("add", ifname="sw0", kind="bridge")
        bridge = self.wire.link_lookup(ifname="sw0")[0]
        self.wire.link("set", index=bridge, state="up")
        self.hosts: dict[str, Any] = {}
        self.port: dict[str, int] = {}  # host -> its switch port's index (wire netns)
        self.eth: dict[str, int] = {}  # host -> its eth0's index (host netns)
        for number, name in enumerate(self.names):
            ns.unshare(ns.CLONE_NEWNET)
            fd = os.open("/proc/self/ns/net", os.O_RDONLY)
            self.fds.append(fd)
            ipr = self.hosts[name] = self._iproute(IPRoute)
            ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
            port_name = f"p{number}"
            self.wire.link("add", ifname=port_name, kind="veth",
                           peer={"ifname": "eth0", "net_ns_fd": fd})
            self.port[name] = self.wire.link_lookup(ifname=port_name)[0]
            self.wire.link("set", index=self.port[name], master=bridge, state="up")
            self.eth[name] = ipr.link_lookup(ifname="eth0")[0]
            ipr.addr("add", index=self.eth[name], address=self.addresses[name], prefixlen=prefix)
            ipr.link("set", index=self.eth[name], state="up")
        self.fds.append(os.open("/proc/self/ns/user", os.O_RDONLY))

    @staticmethod
    def _iproute(factory: Callable[[], Any]) -> Any:
        ipr = factory()
        ipr.link_lookup(ifname="lo")  # bind the socket now, in this namespace
        return ipr

    def handle(self, request: Mapping[str, Any]) -> Any:
        from .netem import set_faults

        op = request["op"]
        if op == "faults":
            name, netem = request["host"], request["netem"]
            set_faults(self.wire, self.port[name], f"the switch port of {name}", netem)
            set_faults(self.hosts[name], self.eth[name], f"eth0 of {name}", netem)
        elif op == "link":
            self.wire.link("set", index=self.port[request["host"]],
                           state="up" if request["up"] else "down")
        elif op == "partition":
            for a, b in request["pairs"]:
                for src, dst in ((a, b), (b, a)):
                    self.hosts[src].neigh("replace", dst=self.addresses[dst],
                                          lladdr=_POISON_MAC, ifindex=self.eth[src],
                                          state=_NUD_PERMANENT)
        elif op == "heal":
            for name, ipr in self.hosts.items():
                for neigh in ipr.get_neighbours(ifindex=self.eth[name]):
                    if neigh.get("lladdr") == _POISON_MAC:
                        ipr.neigh("del", dst=neigh.get("NDA_DST"), ifindex=self.eth[name])
        elif op == "interfaces":
            return {name: sorted(link.get("ifname") for link in ipr.get_links())
                    for name, ipr in [("(switch)", self.wire), *self.hosts.items()]}
        else:
            raise ValueError(f"unknown request {op!r}")
        return None

    def close(self) -> None:
        for ipr in [self.wire, *self.hosts.values()]:
            ipr.close()


def _hub_main(channel: socket.socket, names: Sequence[str], addresses: Sequence[str],
              prefix: int, uid: int, gid: int) -> NoReturn:
    """The hub process: build, send the namespace fds, then serve requests until EOF."""
    code = 0
    try:
        ns.set_parent_death_signal(signal.SIGKILL)
        os.setsid()  # out of the caller's process group: a ^C there is the caller's to handle
        hub = None
        try:
            ns.unshare(ns.CLONE_NEWUSER)
            ns.write_id_maps(0, uid, 0, gid)
            hub = _Hub(names, addresses, prefix)
        except Exception as exc:
            unavailable = isinstance(exc, ns.SetupFailed)
            channel.send(json.dumps({"error": _describe(exc), "unavailable": unavailable})
                         .encode())
            os._exit(0)
        socket.send_fds(channel, [json.dumps({"ok": True}).encode()], hub.fds)
        while True:
            message = channel.recv(1 << 16)
            if not message:
                break
            request = json.loads(message)
            if request["op"] == "close":
                break
            try:
                reply = {"ok": hub.handle(request)}
            except Exception as exc:
                reply = {"error": _describe(exc), "unavailable": isinstance(exc, ns.SetupFailed)}
            channel.send(json.dumps(reply).encode())
        hub.close()
    except BaseException:
        import traceback

        traceback.print_exc()
        code = 1
    os._exit(code)


def _describe(exc: BaseException) -> str:
    from ...box.fixes import explain_setup_failure
    from .netem import QdiscUnavailable

    if isinstance(exc, QdiscUnavailable):
        return str(exc)
    if isinstance(exc, ns.SetupFailed):
        return explain_setup_failure(exc.step, exc.errno or 0)
    return f"{type(exc).__name__}: {exc}"


# -- the caller's side ----------------------------------------------------------------


class HostProcess:
    """A function running in a host, as a child of the caller; `result()` waits for it."""

    def __init__(self, pid: int, result_fd: int, name: str) -> None:
        self.pid = pid
        self.host = name
        self._fd: int | None = result_fd
        self._status: int | None = None
        self._data = bytearray()

    def result(self, timeout: float | None = None) -> Any:
        """The function's return value, or its exception re-raised; kill it after `timeout`."""
        from ...box.channel import FrameDecoder
        from ...box.remote import rebuild

        deadline = None if timeout is None else time.monotonic() + timeout
        while self._fd is not None:
            wait = None if deadline is None else max(0.0, deadline - time.monotonic())
            ready, _, _ = select.select([self._fd], [], [], wait)
            if not ready:
                self.kill()
                raise TimeoutError(f"host {self.host}: process {self.pid} still ran after "
                                   f"{timeout} s and was killed")
            chunk = os.read(self._fd, 1 << 20)
            if chunk:
                self._data += chunk
            else:
                os.close(self._fd)
                self._fd = None
        status = self.wait()
        frames = FrameDecoder().feed(bytes(self._data)) if self._data else []
        for frame in frames:
            if frame[0] == "return":
                return frame[1]
            if frame[0] == "raise":
                raise rebuild(frame)
        raise BoxError(f"host {self.host}: process {self.pid} ended (wait status {status}) "
                       "without a result")

    def wait(self) -> int:
        """Reap the process; its wait status."""
        if self._status is None:
            _, self._status = os.waitpid(self.pid, 0)
        return self._status

    @property
    def alive(self) -> bool:
        if self._status is not None:
            return False
        pid, status = os.waitpid(self.pid, os.WNOHANG)
        if pid:
            self._status = status
        return not pid

    def kill(self) -> None:
        """SIGKILL the process and everything in its process group; reap it."""
        if self._status is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
            self.wait()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class Host:
    """One host of a network: `run(fn)`, `spawn(fn)` or `popen(argv)` inside it."""

    def __init__(self, network: Network, name: str, address: str) -> None:
        self.network = network
        self.name = name
        self.address = address

    def __repr__(self) -> str:
        return f"<Host {self.name} {self.address}>"

    def enter(self) -> None:
        """Move this (freshly forked, single-threaded) process into the host."""
        net = self.network
        _setns(net._userns_fd, ns.CLONE_NEWUSER, "user")
        _setns(net._netns_fds[self.name], ns.CLONE_NEWNET, "network")
        ns.unshare(ns.CLONE_NEWNS | ns.CLONE_NEWUTS)
        ns.make_mounts_private()
        mounts._mount_call(net._hosts_file, "/etc/hosts", None, mounts.MS_BIND, None,
                       "bind the network's /etc/hosts")
        ns.set_hostname(self.name)

    def spawn(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> HostProcess:
        """Start `fn(*args, **kwargs)` in this host; returns at once (a server, say)."""
        from ...box.channel import encode_frame, write_frame
        from ...box.remote import raise_frame

        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child
            code = 0
            try:
                os.close(read_fd)
                os.setpgid(0, 0)
                ns.set_parent_death_signal(signal.SIGKILL)
                self.network._close_in_child()
                self.enter()
                try:
                    frame: tuple[Any, ...] = ("return", fn(*args, **kwargs))
                except BaseException as exc:
                    frame = raise_frame(exc)
                try:
                    data = encode_frame(frame)
                except Exception as exc:
                    data = encode_frame(raise_frame(TypeError(
                        f"the result of {fn!r} in host {self.name} could not be sent: {exc}")))
                write_frame(write_fd, data)
            except BaseException:
                import traceback

                traceback.print_exc()
                code = 1
            os._exit(code)
        os.close(write_fd)
        with contextlib.suppress(OSError):
            os.setpgid(pid, pid)
        process = HostProcess(pid, read_fd, self.name)
        self.network._processes.append(process)
        return process

    def run(self, fn: Callable[..., Any], /, *args: Any, timeout: float | None = 60.0,
            **kwargs: Any) -> Any:
        """Call `fn(*args, **kwargs)` in this host and return its value (or raise)."""
        return self.spawn(fn, *args, **kwargs).result(timeout)

    def popen(self, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """subprocess.Popen of `argv` in this host; killed at teardown if still running."""
        def preexec() -> None:
            os.setpgid(0, 0)
            ns.set_parent_death_signal(signal.SIGKILL)
            self.enter()

        proc = subprocess.Popen(argv, preexec_fn=preexec, **kwargs)
        self.network._popens.append(proc)
        return proc


class Link:
    """A host's cable to the switch: faults on it (both directions), pull and plug it."""

    def __init__(self, network: Network, name: str) -> None:
        self.network = network
        self.host = name

    def faults(self, netem: Mapping[str, str] | None = None, **keys: str) -> None:
        """Set faults on this link, e.g. `faults(delay="20ms", loss="1%")`; None clears."""
        spec = dict(netem or {}, **keys) or None
        if spec is not None:
            from ...box.options import parse_options

            spec = dict(parse_options({"netem": spec}).netem or {})
        self.network._request({"op": "faults", "host": self.host, "netem": spec})

    def down(self) -> None:
        """Pull the cable: the host keeps its address but nothing gets through."""
        self.network._request({"op": "link", "host": self.host, "up": False})

    def up(self) -> None:
        self.network._request({"op": "link", "host": self.host, "up": True})


class Network:
    """Hosts on one switch, each in its own network namespace; use as a context manager."""

    def __init__(self, names: Sequence[str], subnet: str = DEFAULT_SUBNET,
                 faults: Mapping[str, Mapping[str, str]] | None = None) -> None:
        if not names:
            raise ValueError("a network needs at least one host name")
        for name in names:
            if not isinstance(name, str) or not _NAME_RE.match(name):
                raise ValueError(f"host name {name!r}: use 1-31 lower-case letters, digits "
                                 "and '-', starting with a letter")
        if len(set(names)) != len(names):
            raise ValueError(f"host names repeat: {list(names)}")
        network = ipaddress.ip_network(subnet)
        if not network.is_private or network.num_addresses < len(names) + 2:
            raise ValueError(f"subnet {subnet!r}: a private network with room for "
                             f"{len(names)} hosts, e.g. {DEFAULT_SUBNET!r}")
        self.names = list(names)
        self.prefix = network.prefixlen
        hosts = network.hosts()
        self.hosts = {name: Host(self, name, str(next(hosts))) for name in names}
        self.build_seconds: float | None = None
        self._faults = dict(faults or {})
        self._hub_pid: int | None = None
        self._channel: socket.socket | None = None
        self._userns_fd = -1
        self._netns_fds: dict[str, int] = {}
        self._owned_fds: list[int] = []
        self._tmpdir: str | None = None
        self._hosts_file = ""
        self._processes: list[HostProcess] = []
        self._popens: list[subprocess.Popen[Any]] = []

    def __enter__(self) -> Network:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def host(self, name: str) -> Host:
        try:
            return self.hosts[name]
        except KeyError:
            raise KeyError(f"no host {name!r} in this network; hosts: {self.names}") from None

    def link(self, name: str) -> Link:
        self.host(name)
        return Link(self, name)

    def address(self, name: str) -> str:
        return self.host(name).address

    def start(self) -> Network:
        """Build the namespaces, the switch, the cables and the addresses."""
        started = time.perf_counter()
        import pyroute2  # noqa: F401 - once in the caller, so no hub pays the import again

        self._tmpdir = tempfile.mkdtemp(prefix="nsbox-net-")
        self._hosts_file = os.path.join(self._tmpdir, "hosts")
        with open(self._hosts_file, "w") as out:
            out.write("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n")
            out.writelines(f"{h.address}\t{h.name}\n" for h in self.hosts.values())
        os.chmod(self._tmpdir, 0o755)
        os.chmod(self._hosts_file, 0o644)
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        addresses = [h.address for h in self.hosts.values()]
        uid, gid = os.geteuid(), os.getegid()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the hub
            mine.close()
            _hub_main(theirs, self.names, addresses, self.prefix, uid, gid)
        theirs.close()
        self._hub_pid, self._channel = pid, mine
        try:
            ready, _, _ = select.select([mine], [], [], _REPLY_TIMEOUT)
            message, fds, _, _ = socket.recv_fds(mine, 1 << 16, 2 + len(self.names)) \
                if ready else (b"", [], 0, None)
            for fd in fds:
                os.set_inheritable(fd, False)  # recvmsg hands them over inheritable
            self._owned_fds = list(fds)
            reply = json.loads(message) if message else {"error": "the hub died while building"}
            if "error" in reply:
                kind = BoxUnavailable if reply.get("unavailable") else BoxError
                raise kind(f"cannot build the test network: {reply['error']}")
            _wire, *hosts, self._userns_fd = fds
            self._netns_fds = dict(zip(self.names, hosts, strict=True))
            for name, spec in self._faults.items():
                self.link(name).faults(spec)
        except BaseException:
            self.close()
            raise
        self.build_seconds = time.perf_counter() - started
        return self

    def partition(self, *groups: Sequence[str] | str) -> None:
        """Cut traffic between groups, silently (packets vanish, as on a real cut).

        `partition(["a"], ["b", "c"])`: a cannot reach b or c, b and c still talk. Hosts
        not named form one more group. `heal()` restores everything.
        """
        sets = [{g} if isinstance(g, str) else set(g) for g in groups]
        named = set().union(*sets) if sets else set()
        for name in named:
            self.host(name)
        rest = set(self.names) - named
        if rest:
            sets.append(rest)
        pairs = [[a, b] for i, left in enumerate(sets) for right in sets[i + 1:]
                 for a in sorted(left) for b in sorted(right)]
        self._request({"op": "partition", "pairs": pairs})

    def heal(self) -> None:
        """Undo every partition (link faults and pulled cables stay)."""
        self._request({"op": "heal"})

    def interfaces(self) -> dict[str, list[str]]:
        """Interface names per namespace: '(switch)' and each host."""
        return dict(self._request({"op": "interfaces"}))

    def namespace_ids(self) -> set[int]:
        """Inode numbers of every namespace of this network, to check they are gone."""
        return {os.fstat(fd).st_ino for fd in self._owned_fds}

    def _request(self, request: Mapping[str, Any]) -> Any:
        if self._channel is None:
            raise BoxError("this network is closed")
        self._channel.send(json.dumps(request).encode())
        ready, _, _ = select.select([self._channel], [], [], _REPLY_TIMEOUT)
        message = self._channel.recv(1 << 20) if ready else b""
        if not message:
            raise BoxError(f"the network's hub did not answer {request['op']!r}")
        reply = json.loads(message)
        if "error" in reply:
            kind = BoxUnavailable if reply.get("unavailable") else BoxError
            raise kind(reply["error"])
        return reply["ok"]

    def _close_in_child(self) -> None:
        """A host process keeps the namespace fds, not the hub's channel."""
        if self._channel is not None:
            with contextlib.suppress(OSError):
                os.close(self._channel.fileno())

    def close(self) -> None:
        """Kill the hosts' processes, end the hub, close the fds: the kernel does the rest."""
        for process in self._processes:
            process.kill()
        for proc in self._popens:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait()
        self._processes.clear()
        self._popens.clear()
        if self._channel is not None:
            with contextlib.suppress(OSError):
                self._channel.send(json.dumps({"op": "close"}).encode())
            self._channel.close()
            self._channel = None
        if self._hub_pid is not None:
            _reap(self._hub_pid, grace=5.0)
            self._hub_pid = None
        for fd in self._owned_fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._owned_fds.clear()
        self._netns_fds.clear()
        self._userns_fd = -1
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None


def _reap(pid: int, grace: float) -> None:
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done:
            return
        time.sleep(0.005)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)


class NetworkFactory:
    """What the `nsbox_network` fixture gives: call it to build a network."""

    def __init__(self) -> None:
        self.networks: list[Network] = []

    def __call__(self, *names: str, subnet: str = DEFAULT_SUBNET,
                 faults: Mapping[str, Mapping[str, str]] | None = None) -> Network:
        network = Network(names, subnet=subnet, faults=faults)
        self.networks.append(network)
        return network.start()

    def close(self) -> None:
        while self.networks:
            self.networks.pop().close()
