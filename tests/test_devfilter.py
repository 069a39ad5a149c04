"""Real kernel tests for pytest_nsbox.resources.devices: the devices a box may use.

A forked child joins a cgroup made here (v1 devices controller, or a v2 cgroup with the
eBPF filter attached) and tries devices; the kernel's answer (ok or the errno's name)
comes back through a pipe. Every cgroup made here is removed after its child exits.
"""

from __future__ import annotations

import errno
import json
import os
import stat
from collections.abc import Callable, Iterator

import pytest

from conftest import needs
from pytest_nsbox.resources import cgroups
from pytest_nsbox.resources import devices as devfilter
from pytest_nsbox.resources.devices import DeviceRule

# These tests examine the host's own cgroups and devices: under --nsbox they run unboxed.
pytestmark = [pytest.mark.nsbox(enabled=False), pytest.mark.vm]  # vm: the v2 eBPF lane

RW = os.O_RDWR | os.O_CLOEXEC
RO = os.O_RDONLY | os.O_CLOEXEC
WO = os.O_WRONLY | os.O_CLOEXEC


def _v1_devices() -> str | None:
    facts = cgroups.detect().get("v1", {}).get("devices")
    return facts["path"] if facts and facts["writable"] else None


def _v2_parent() -> str | None:
    """Where a test may make a v2 cgroup: the unified hierarchy (hybrid), or ours (v2)."""
    facts = cgroups.detect()
    path = facts.get("unified") or (facts.get("path") if facts.get("writable") else None)
    return path if path and os.access(path, os.W_OK) else None


V1_DEVICES = _v1_devices()
V2_PARENT = _v2_parent()
#: A device no box gets, present on this machine.
FORBIDDEN = next((p for p in ("/dev/kmsg", "/dev/mem", "/dev/port") if os.path.exists(p)), None)


def _needs_v1() -> str:
    needs(V1_DEVICES is not None, "lacks: a writable cgroup v1 devices hierarchy")
    assert V1_DEVICES is not None
    return V1_DEVICES


def _needs_v2() -> str:
    needs(V2_PARENT is not None, "lacks: a writable cgroup v2 directory")
    needs(devfilter.filter_available(), "lacks: bpf(BPF_PROG_LOAD) of a cgroup device program")
    assert V2_PARENT is not None
    return V2_PARENT


def _needs_forbidden() -> str:
    needs(FORBIDDEN is not None, "lacks: /dev/kmsg, /dev/mem or /dev/port to be refused")
    assert FORBIDDEN is not None
    return FORBIDDEN


@pytest.fixture
def make_cgroup() -> Iterator[Callable[[str], str]]:
    """Make cgroup directories (unique names); rmdir them, deepest first, at the end."""
    made: list[str] = []

    def make(parent: str) -> str:
        path = f"{parent}/devfilter-test-{os.getpid()}-{os.urandom(4).hex()}"
        os.mkdir(path)
        made.append(path)
        return path

    yield make
    for path in reversed(made):
        os.rmdir(path)  # the children have exited: an error here is a leftover


def _attempt(action: Callable[[], object]) -> str:
    try:
        action()
    except OSError as exc:
        return errno.errorcode.get(exc.errno or 0, str(exc))
    return "ok"


def _open(path: str, flags: int) -> Callable[[], object]:
    return lambda: os.close(os.open(path, flags))


def _mknod(path: str, kind: str, major: int, minor: int) -> Callable[[], object]:
    mode = (stat.S_IFCHR if kind == "c" else stat.S_IFBLK) | 0o600

    def make() -> None:
        os.mknod(path, mode, os.makedev(major, minor))
        os.unlink(path)

    return make


def in_cgroup(cgroup: str, probes: dict[str, Callable[[], object]]) -> dict[str, str]:
    """Fork a child that joins `cgroup` and runs each probe: {name: "ok" or errno name}."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            os.close(read_fd)
            with open(f"{cgroup}/cgroup.procs", "wb", buffering=0) as procs:
                procs.write(b"0")
            result = {name: _attempt(probe) for name, probe in probes.items()}
            os.write(write_fd, json.dumps(result).encode())
        except BaseException as exc:
            os.write(write_fd, json.dumps({"error": repr(exc)}).encode())
            code = 1
        os._exit(code)
    os.close(write_fd)
    _, status = os.waitpid(pid, 0)
    with os.fdopen(read_fd, "rb") as pipe:
        result = json.loads(pipe.read() or b"{}")
    assert status == 0, result
    return dict(result)


def _box_probes(tmp: str, forbidden: str) -> dict[str, Callable[[], object]]:
    return {
        "null": _open("/dev/null", RW),
        "forbidden": _open(forbidden, RO),
        "mknod": _mknod(f"{tmp}/node", "c", 1, 3),
    }


# --- rules -------------------------------------------------------------------------------

def test_standard_rules_are_the_box_dev_and_cached() -> None:
    rules = devfilter.box_device_rules()
    assert rules is devfilter.box_device_rules()
    c = [(r.major, r.minor) for r in rules]
    assert c == [(1, 3), (1, 5), (1, 7), (1, 8), (1, 9), (5, 0), (5, 2),
                 *((major, None) for major in range(136, 144))]
    assert {(r.kind, r.access) for r in rules} == {("c", "rw")}


@pytest.mark.parametrize("path", ["/dev/fuse", "/dev/loop-control"])
def test_an_extra_device_adds_its_own_numbers(path: str) -> None:
    needs(os.path.exists(path), f"lacks: {path}")
    st = os.stat(path)
    rules = devfilter.box_device_rules((path,))
    assert rules[:-1] == devfilter.box_device_rules()
    assert rules[-1] == DeviceRule("c", os.major(st.st_rdev), os.minor(st.st_rdev), "rw")
    # Asked twice, or a standard device asked again: one rule each.
    assert devfilter.box_device_rules((path, "/dev/null", path)) == rules


def test_a_block_device_is_kind_b() -> None:
    path = next((p for p in ("/dev/loop0", "/dev/vda", "/dev/sda")
                 if os.path.exists(p) and stat.S_ISBLK(os.stat(p).st_mode)), None)
    needs(path is not None, "lacks: a block device node (/dev/loop0, /dev/vda or /dev/sda)")
    assert path is not None
    rule = devfilter.box_device_rules((path,))[-1]
    assert (rule.kind, rule.major, rule.minor) == ("b", os.major(os.stat(path).st_rdev),
                                                   os.minor(os.stat(path).st_rdev))


def test_what_is_not_a_device_node_is_a_value_error_naming_it(tmp_path) -> None:
    regular = tmp_path / "regular"
    regular.write_text("")
    for path in (str(regular), str(tmp_path), str(tmp_path / "missing")):
        with pytest.raises(ValueError, match=path):
            devfilter.box_device_rules(("/dev/null", path))


def test_a_bad_rule_is_refused() -> None:
    with pytest.raises(ValueError, match="kind"):
        DeviceRule("a", None, None, "rw")
    with pytest.raises(ValueError, match="access"):
        DeviceRule("c", 1, 3, "rx")
    with pytest.raises(ValueError, match="access"):
        DeviceRule("c", 1, 3, "")
    with pytest.raises(ValueError, match="major"):
        DeviceRule("c", -1, 3, "r")


def test_v1_lines() -> None:
    assert devfilter.v1_rules(devfilter.box_device_rules()) == (
        b"c 1:3 rw", b"c 1:5 rw", b"c 1:7 rw", b"c 1:8 rw", b"c 1:9 rw", b"c 5:0 rw",
        b"c 5:2 rw", b"c 136:* rw", b"c 137:* rw", b"c 138:* rw", b"c 139:* rw",
        b"c 140:* rw", b"c 141:* rw", b"c 142:* rw", b"c 143:* rw")
    assert devfilter.v1_rules((DeviceRule("b", None, None, "mwr"), DeviceRule("c", 10, 229, "r"))
                              ) == (b"b *:* rwm", b"c 10:229 r")


# --- cgroup v1: the devices controller -----------------------------------------------------

def test_v1_devices_controller_refuses_the_rest(make_cgroup, tmp_path) -> None:
    parent = _needs_v1()
    forbidden = _needs_forbidden()
    extra = ("/dev/fuse",) if os.path.exists("/dev/fuse") else ()
    cgroup = make_cgroup(parent)
    with open(f"{cgroup}/devices.deny", "wb", buffering=0) as deny:
        deny.write(b"a")
    for line in devfilter.v1_rules(devfilter.box_device_rules(extra)):
        with open(f"{cgroup}/devices.allow", "wb", buffering=0) as allow:
            allow.write(line)
    probes = _box_probes(str(tmp_path), forbidden)
    if extra:
        probes["extra"] = _open("/dev/fuse", RW)
    result = in_cgroup(cgroup, probes)
    assert result == {"null": "ok", "forbidden": "EPERM", "mknod": "EPERM",
                      **({"extra": "ok"} if extra else {})}


# --- cgroup v2: the eBPF filter ------------------------------------------------------------

def test_ebpf_filter_refuses_the_rest(make_cgroup, tmp_path) -> None:
    parent = _needs_v2()
    forbidden = _needs_forbidden()
    needs(os.path.exists("/dev/fuse"), "lacks: /dev/fuse")
    cgroup = make_cgroup(parent)
    devfilter.attach_filter(cgroup, devfilter.box_device_rules(("/dev/fuse",)))
    probes = {**_box_probes(str(tmp_path), forbidden), "extra": _open("/dev/fuse", RW)}
    assert in_cgroup(cgroup, probes) == {"null": "ok", "forbidden": "EPERM", "mknod": "EPERM",
                                         "extra": "ok"}
    # Without the filter (this cgroup's parent) all of it works: the refusals were its own.
    if forbidden != "/dev/mem":
        assert in_cgroup(parent, probes) == dict.fromkeys(probes, "ok")


@pytest.mark.parametrize(("rules", "probes", "expected"), [
    pytest.param((DeviceRule("c", 1, 3, "r"),),
                 {"ro": ("open", "/dev/null", RO), "wo": ("open", "/dev/null", WO),
                  "rw": ("open", "/dev/null", RW), "zero": ("open", "/dev/zero", RO)},
                 {"ro": "ok", "wo": "EPERM", "rw": "EPERM", "zero": "EPERM"}, id="read-only"),
    pytest.param((DeviceRule("c", 1, 3, "w"), DeviceRule("c", 1, 3, "r")),
                 {"rw": ("open", "/dev/null", RW)},
                 {"rw": "EPERM"}, id="access-is-per-rule"),
    pytest.param((DeviceRule("c", 1, None, "rw"),),
                 {"null": ("open", "/dev/null", RW), "zero": ("open", "/dev/zero", RW),
                  "tty": ("open", "/dev/tty", RO), "mknod": ("mknod", "c", 1, 3)},
                 {"null": "ok", "zero": "ok", "tty": "EPERM", "mknod": "EPERM"},
                 id="any-minor"),
    pytest.param((DeviceRule("c", 1, 3, "m"),),
                 {"mknod": ("mknod", "c", 1, 3), "other": ("mknod", "c", 1, 5),
                  "block": ("mknod", "b", 1, 3), "open": ("open", "/dev/null", RO)},
                 {"mknod": "ok", "other": "EPERM", "block": "EPERM", "open": "EPERM"},
                 id="mknod-only"),
    pytest.param((DeviceRule("b", None, None, "rwm"),),
                 {"block": ("mknod", "b", 7, 0), "char": ("mknod", "c", 1, 3),
                  "null": ("open", "/dev/null", RO)},
                 {"block": "ok", "char": "EPERM", "null": "EPERM"}, id="any-block"),
    pytest.param((),
                 {"null": ("open", "/dev/null", RO), "mknod": ("mknod", "c", 1, 3)},
                 {"null": "EPERM", "mknod": "EPERM"}, id="no-rules"),
])
def test_the_program_allows_exactly_its_rules(make_cgroup, tmp_path, rules, probes,
                                              expected) -> None:
    cgroup = make_cgroup(_needs_v2())
    devfilter.attach_filter(cgroup, rules)
    actions: dict[str, Callable[[], object]] = {}
    for name, (what, *args) in probes.items():
        if what == "open":
            actions[name] = _open(*args)
        else:
            actions[name] = _mknod(str(tmp_path / name), *args)
    assert in_cgroup(cgroup, actions) == expected


def test_nested_filters_all_apply(make_cgroup, tmp_path) -> None:
    """ALLOW_MULTI: a box's stricter filter adds to its parent's; it cannot loosen it."""
    forbidden = _needs_forbidden()
    needs(os.path.exists("/dev/fuse"), "lacks: /dev/fuse")
    outer = make_cgroup(_needs_v2())
    inner = make_cgroup(outer)
    plain = make_cgroup(outer)
    devfilter.attach_filter(outer, devfilter.box_device_rules(("/dev/fuse",)))
    devfilter.attach_filter(inner, devfilter.box_device_rules())
    # A looser filter below: the outer one still refuses what it refuses.
    loose = make_cgroup(outer)
    devfilter.attach_filter(loose, (DeviceRule("c", None, None, "rwm"),))
    probes = {**_box_probes(str(tmp_path), forbidden), "fuse": _open("/dev/fuse", RW)}
    boxed = {"null": "ok", "forbidden": "EPERM", "mknod": "EPERM"}
    assert in_cgroup(outer, probes) == {**boxed, "fuse": "ok"}
    assert in_cgroup(inner, probes) == {**boxed, "fuse": "EPERM"}
    assert in_cgroup(plain, probes) == {**boxed, "fuse": "ok"}
    assert in_cgroup(loose, probes) == {**boxed, "fuse": "ok"}


# --- the program cache, fds, errors --------------------------------------------------------

def _fds() -> set[int]:
    """This process's open fds (not the one listdir used, closed by the time of fstat)."""
    found = set()
    for name in os.listdir("/proc/self/fd"):
        try:
            os.fstat(int(name))
        except OSError:
            continue
        found.add(int(name))
    return found


def _prog_type(fd: int) -> int:
    with open(f"/proc/self/fdinfo/{fd}") as info:
        fields = dict(line.split(":", 1) for line in info.read().splitlines() if ":" in line)
    return int(fields["prog_type"])


def test_a_program_is_loaded_once_per_rules_and_process(make_cgroup) -> None:
    _needs_v2()
    devfilter.clear_cache()
    before = _fds()
    standard = devfilter.box_device_rules()
    fd = devfilter.program_fd(standard)
    assert devfilter.program_fd(devfilter.box_device_rules()) == fd
    assert _prog_type(fd) == 15  # BPF_PROG_TYPE_CGROUP_DEVICE
    other = devfilter.program_fd((DeviceRule("c", 1, 3, "r"),))
    assert other != fd
    assert _fds() - before == {fd, other}
    # Attaching reuses the program and leaves no fd open.
    cgroup = make_cgroup(V2_PARENT)
    devfilter.attach_filter(cgroup, standard)
    assert _fds() - before == {fd, other}
    # The same program twice on one cgroup: the kernel refuses (EINVAL), an OSError.
    with pytest.raises(OSError) as refused:
        devfilter.attach_filter(cgroup, standard)
    assert refused.value.errno == errno.EINVAL and cgroup in str(refused.value)
    assert _fds() - before == {fd, other}

    # A forked child loads its own (it may have closed or reused the inherited numbers).
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(read_fd)
            os.close(fd)  # as a box's init may: the number is then reused for anything
            os.dup2(os.open("/dev/null", os.O_RDONLY), fd)
            mine = devfilter.program_fd(standard)
            os.write(write_fd, json.dumps([mine, _prog_type(mine)]).encode())
        except BaseException as exc:
            os.write(write_fd, json.dumps([repr(exc), None]).encode())
        finally:
            os._exit(0)
    os.close(write_fd)
    os.waitpid(pid, 0)
    with os.fdopen(read_fd, "rb") as pipe:
        child_fd, child_type = json.loads(pipe.read())
    assert child_fd not in (fd, other) and child_type == 15
    assert devfilter.program_fd(standard) == fd  # the parent's cache is untouched

    devfilter.clear_cache()
    assert _fds() == before


def test_attach_to_what_is_not_a_cgroup_is_an_oserror(tmp_path) -> None:
    _needs_v2()
    with pytest.raises(OSError) as refused:
        devfilter.attach_filter(str(tmp_path), devfilter.box_device_rules())
    assert refused.value.errno is not None and str(tmp_path) in str(refused.value)


def test_a_refused_program_carries_the_verifier_log() -> None:
    _needs_v2()
    with pytest.raises(OSError) as refused:
        devfilter._load(bytes(8))  # one instruction, not an exit
    assert refused.value.errno == errno.EINVAL
    assert "verifier log" in str(refused.value) and "exit" in str(refused.value)


def test_filter_available_here_when_root_on_x86_64_or_aarch64() -> None:
    available = devfilter.filter_available()
    assert available is devfilter.filter_available()
    if os.geteuid() == 0 and os.uname().machine in ("x86_64", "aarch64"):
        assert available
