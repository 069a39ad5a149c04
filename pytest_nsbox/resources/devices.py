"""Which devices a box may use, enforced by the kernel rather than by what /dev shows.

A box's /dev holds only a few nodes, but a process that is real root in it could mknod
any device or reach one through another path. The kernel refuses every device the box
was not given:

* cgroup v1: the devices controller. The caller writes ``b"a"`` to the box cgroup's
  ``devices.deny`` and then each line of `v1_rules` to its ``devices.allow``.
* cgroup v2: an eBPF program of type ``BPF_PROG_TYPE_CGROUP_DEVICE`` attached to the box's
  cgroup (`attach_filter`). It is attached with ``BPF_F_ALLOW_MULTI``: the kernel runs the
  programs of the cgroup and of every ancestor and allows an access only if all of them
  do, so a nested box can add a stricter filter of its own but never loosen its parent's.

The program is written here from the kernel's ABI (``include/uapi/linux/bpf.h``): for
``struct bpf_cgroup_dev_ctx {u32 access_type; u32 major; u32 minor;}`` with
``access_type = (access << 16) | type``, return 1 when some rule has the type, the major
(or any), the minor (or any) and grants every access bit asked; otherwise 0.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import stat
import struct
from dataclasses import dataclass

__all__ = [
    "STANDARD_RULES",
    "DeviceRule",
    "attach_filter",
    "box_device_rules",
    "clear_cache",
    "filter_available",
    "forget_inherited",
    "program_fd",
    "program_fds",
    "v1_rules",
]


@dataclass(frozen=True)
class DeviceRule:
    """A device (or a range: None is any major or minor) and the access allowed to it."""

    kind: str  # "c" or "b"
    major: int | None  # None = any
    minor: int | None  # None = any
    access: str  # a subset of "rwm" (read, write, mknod)

    def __post_init__(self) -> None:
        if self.kind not in ("c", "b"):
            raise ValueError(f"device rule kind must be 'c' or 'b', not {self.kind!r}")
        if not self.access or set(self.access) - set("rwm"):
            raise ValueError(f"device rule access must be a subset of 'rwm', not {self.access!r}")
        for name, number in (("major", self.major), ("minor", self.minor)):
            if number is not None and not 0 <= number < 1 << 31:
                raise ValueError(f"device rule {name} out of range: {number}")


def _rw(major: int, minor: int | None) -> DeviceRule:
    return DeviceRule("c", major, minor, "rw")


#: null, zero, full, random, urandom, tty, ptmx and the pty slaves (majors 136-143).
STANDARD_RULES: tuple[DeviceRule, ...] = (
    _rw(1, 3), _rw(1, 5), _rw(1, 7), _rw(1, 8), _rw(1, 9), _rw(5, 0), _rw(5, 2),
    *(_rw(major, None) for major in range(136, 144)),
)


def box_device_rules(extra: tuple[str, ...] = ()) -> tuple[DeviceRule, ...]:
    """The standard rules plus, for each extra path, its own node read and write.

    The standard part is a constant; each extra path costs one stat (not cached: a node
    can be made again with other numbers). A path that is missing or is not a character or
    block device raises ValueError naming it. Duplicates are dropped, order is kept.
    """
    if not extra:
        return STANDARD_RULES
    rules = list(STANDARD_RULES)
    for path in extra:
        try:
            mode = os.stat(path)
        except OSError as exc:
            raise ValueError(f"device {path}: {exc.strerror or exc}") from exc
        if stat.S_ISCHR(mode.st_mode):
            kind = "c"
        elif stat.S_ISBLK(mode.st_mode):
            kind = "b"
        else:
            raise ValueError(f"device {path}: not a character or block device node")
        rule = DeviceRule(kind, os.major(mode.st_rdev), os.minor(mode.st_rdev), "rw")
        if rule not in rules:
            rules.append(rule)
    return tuple(rules)


def _number(number: int | None) -> str:
    return "*" if number is None else str(number)


def v1_rules(rules: tuple[DeviceRule, ...]) -> tuple[bytes, ...]:
    """One ``devices.allow`` line per rule, e.g. ``b"c 1:3 rw"`` or ``b"c 136:* rw"``.

    Write each line on its own (the kernel takes one rule per write), after ``b"a"`` to
    ``devices.deny``.
    """
    return tuple(
        f"{r.kind} {_number(r.major)}:{_number(r.minor)} "
        f"{''.join(c for c in 'rwm' if c in r.access)}".encode()
        for r in rules
    )


# --- eBPF (cgroup v2) ---------------------------------------------------------------------

_BPF_SYSCALL = {"x86_64": 321, "aarch64": 280}
_BPF_PROG_LOAD = 5
_BPF_PROG_ATTACH = 8
_PROG_TYPE_CGROUP_DEVICE = 15
_ATTACH_CGROUP_DEVICE = 6
_F_ALLOW_MULTI = 2
_ATTR_SIZE = 128  # larger than the fields used; the kernel accepts a zero tail
_LOG_SIZE = 1 << 16
_NAME = b"nsbox_devices"

_DEV_BLOCK, _DEV_CHAR = 1, 2
_ACCESS_BITS = {"m": 1, "r": 2, "w": 4}

# Instruction opcodes (class | size/source | operation).
_LDX_W = 0x61  # dst = *(u32 *)(src + off)
_MOV64_REG = 0xBF  # dst = src
_MOV64_IMM = 0xB7  # dst = imm
_AND64_IMM = 0x57  # dst &= imm
_RSH64_IMM = 0x77  # dst >>= imm
_JNE_IMM = 0x55  # if dst != imm: pc += off
_EXIT = 0x95

_libc: ctypes.CDLL | None = None


def _insn(opcode: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    return struct.pack("<BBhi", opcode, (src << 4) | dst, off, imm)


def _compile(rules: tuple[DeviceRule, ...]) -> bytes:
    """The program: r2 type, r3 asked access, r4 major, r5 minor; a block per rule."""
    code = [
        _insn(_LDX_W, dst=2, src=1, off=0),  # r2 = access_type
        _insn(_MOV64_REG, dst=3, src=2),  # r3 = access_type
        _insn(_RSH64_IMM, dst=3, imm=16),  # r3 = access bits asked
        _insn(_AND64_IMM, dst=2, imm=0xFFFF),  # r2 = device type
        _insn(_LDX_W, dst=4, src=1, off=4),  # r4 = major
        _insn(_LDX_W, dst=5, src=1, off=8),  # r5 = minor
    ]
    for rule in rules:
        # (opcode, dst, src, imm, jump): a jump goes to the next rule's block on a mismatch.
        block = [(_JNE_IMM, 2, 0, _DEV_CHAR if rule.kind == "c" else _DEV_BLOCK, True)]
        if rule.major is not None:
            block.append((_JNE_IMM, 4, 0, rule.major, True))
        if rule.minor is not None:
            block.append((_JNE_IMM, 5, 0, rule.minor, True))
        refused = 0xFFFF & ~sum(bit for c, bit in _ACCESS_BITS.items() if c in rule.access)
        if refused & 0b111:  # "rwm" needs no test; else: if asked & ~granted: next rule
            block += [(_MOV64_REG, 6, 3, 0, False), (_AND64_IMM, 6, 0, refused, False),
                      (_JNE_IMM, 6, 0, 0, True)]
        block += [(_MOV64_IMM, 0, 0, 1, False), (_EXIT, 0, 0, 0, False)]
        for i, (opcode, dst, src, imm, jump) in enumerate(block):
            off = len(block) - i - 1 if jump else 0
            code.append(_insn(opcode, dst=dst, src=src, off=off, imm=imm))
    code.append(_insn(_MOV64_IMM, dst=0, imm=0))
    code.append(_insn(_EXIT))
    return b"".join(code)


def _bpf(cmd: int, attr: ctypes.Array[ctypes.c_char]) -> int:
    """The bpf(2) system call; OSError with the kernel's errno when it fails."""
    global _libc
    nr = _BPF_SYSCALL.get(platform.machine()) if ctypes.sizeof(ctypes.c_void_p) == 8 else None
    if nr is None:
        raise OSError(errno.ENOSYS, f"bpf: no syscall number known for {platform.machine()} "
                      f"({ctypes.sizeof(ctypes.c_void_p) * 8}-bit)")
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    ret: int = _libc.syscall(ctypes.c_long(nr), ctypes.c_int(cmd), attr,
                             ctypes.c_uint(len(attr)))
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"bpf: {os.strerror(err)}")
    return ret


def _load(insns: bytes) -> int:
    """Load a cgroup device program; OSError carrying the verifier's log when refused."""
    code = ctypes.create_string_buffer(insns, len(insns))
    license_ = ctypes.create_string_buffer(b"GPL")

    def attr(log: ctypes.Array[ctypes.c_char] | None) -> ctypes.Array[ctypes.c_char]:
        buf = ctypes.create_string_buffer(_ATTR_SIZE)
        struct.pack_into("<IIQQ", buf, 0, _PROG_TYPE_CGROUP_DEVICE, len(insns) // 8,
                         ctypes.addressof(code), ctypes.addressof(license_))
        if log is not None:
            struct.pack_into("<IIQ", buf, 24, 1, len(log), ctypes.addressof(log))
        struct.pack_into("16s", buf, 48, _NAME)
        return buf

    try:
        return _bpf(_BPF_PROG_LOAD, attr(None))
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.EACCES):  # the verifier refused: ask it why
            raise
        log = ctypes.create_string_buffer(_LOG_SIZE)
        try:
            fd = _bpf(_BPF_PROG_LOAD, attr(log))
        except OSError:
            text = log.value.decode(errors="replace").strip()
            raise OSError(exc.errno, f"bpf: the kernel refused the device filter "
                          f"({os.strerror(exc.errno)}); verifier log:\n{text}") from None
        return fd  # refused once, loaded with a log: keep it


# Program fds by rules, for the process that loaded them. A forked child inherits the fds,
# but may close its fds (a box's init does) and reuse their numbers; so the cache is
# forgotten (not closed: the numbers may be someone else's now) in any other process, which
# loads its own. The kernel makes program fds close-on-exec.
_programs: dict[tuple[DeviceRule, ...], int] = {}
_programs_pid = 0


def program_fd(rules: tuple[DeviceRule, ...]) -> int:
    """The fd of the program allowing exactly `rules`, loaded once per process."""
    global _programs_pid
    pid = os.getpid()
    if pid != _programs_pid:
        _programs.clear()
        _programs_pid = pid
    fd = _programs.get(rules)
    if fd is None:
        fd = _programs[rules] = _load(_compile(rules))
    return fd


def program_fds() -> tuple[int, ...]:
    """This process's loaded programs, for the box's init to close."""
    return tuple(_programs.values()) if _programs_pid == os.getpid() else ()


def forget_inherited() -> object:
    """In a box: drop the parent's programs unclosed (the pid alone cannot tell, since a
    box inside a box has the same pid 2 as its outer box's test process). Returns them,
    for the caller to keep (see `inside._inherited`)."""
    global _programs, _programs_pid, _available
    forgotten, _programs = _programs, {}
    _programs_pid = os.getpid()
    _available = None
    return forgotten


def clear_cache() -> None:
    """Close this process's cached programs (attached ones stay attached)."""
    if _programs_pid == os.getpid():
        for fd in _programs.values():
            os.close(fd)
    _programs.clear()


def attach_filter(cgroup_dir: str, rules: tuple[DeviceRule, ...]) -> None:
    """Allow the processes of the v2 cgroup `cgroup_dir` exactly `rules` of all devices.

    Attached with BPF_F_ALLOW_MULTI: filters of ancestors still apply, and a cgroup below
    may add its own. The program lives as long as the cgroup (rmdir releases it).
    OSError with the kernel's errno when it refuses (EPERM without CAP_SYS_ADMIN, ENOSYS
    without bpf, EINVAL when this very program is attached there already).
    """
    prog = program_fd(rules)
    target = os.open(cgroup_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        attr = ctypes.create_string_buffer(_ATTR_SIZE)
        struct.pack_into("<IIII", attr, 0, target, prog, _ATTACH_CGROUP_DEVICE, _F_ALLOW_MULTI)
        try:
            _bpf(_BPF_PROG_ATTACH, attr)
        except OSError as exc:
            raise OSError(exc.errno, f"bpf: attach the device filter to {cgroup_dir}: "
                          f"{os.strerror(exc.errno or 0)}") from None
    finally:
        os.close(target)


_available: bool | None = None


def filter_available() -> bool:
    """Whether this process can load a device filter (the doctor's question), cached."""
    global _available
    if _available is None:
        try:
            program_fd(STANDARD_RULES)
            _available = True
        except OSError:
            _available = False
    return _available
