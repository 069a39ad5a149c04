"""cpu_weight: a box's share of contended CPU, as cpu.weight (v2) or cpu.shares (v1).

The kernel tests run natively (cgroup v1, root) and, marked `vm`, in the cgroup v2 VM
lane (tests/vm/run_vm_lane.sh: root and delegated enforce it, undelegated refuses it).
"""

from __future__ import annotations

import os
import time
from typing import Any

import pytest

from pytest_nsbox import Box, BoxUnavailable
from pytest_nsbox.box.options import OptionError, parse_options, parse_text
from pytest_nsbox.resources import cgroups
from pytest_nsbox.resources.cgroups import v1 as cgroup_v1
from pytest_nsbox.resources.cgroups import v2 as cgroup_v2

# These tests examine the host's own cgroups: under --nsbox they run unboxed.
pytestmark = pytest.mark.nsbox(enabled=False)

VM_MODE = os.environ.get("NSBOX_VM_MODE", "")  # root | delegated | undelegated (VM lane)
V2 = cgroups.detect()["version"] == "v2"
SPIN = 1.5  # seconds both boxes spin at once


def _cpu_writable() -> bool:
    try:
        box = cgroups.box_cgroup(parse_options({"cpu_weight": 100}))
    except cgroups.CgroupUnavailable:
        return False
    if box is not None:
        box.remove()
    cgroups.session_cleanup()
    return box is not None


CPU_WRITABLE = _cpu_writable()
needs_cpu = pytest.mark.skipif(not CPU_WRITABLE,
                               reason="lacks: a writable cgroup with the cpu controller")


@pytest.fixture(autouse=True)
def _clean_session() -> Any:
    yield
    cgroups.session_cleanup()


def _value(path: str) -> str:
    with open(path) as file:
        return file.read().strip()


def _weight_file(box: cgroups.BoxCgroup) -> str:
    return f"{box.dirs['']}/cpu.weight" if V2 else f"{box.dirs['cpu']}/cpu.shares"


# --- the option ---------------------------------------------------------------------------

@pytest.mark.parametrize("bad", [0, 10001, 1.5, "lots", True, "1.5", -100])
def test_bad_values_name_the_option_and_what_is_accepted(bad: object) -> None:
    with pytest.raises(OptionError) as info:
        parse_options({"cpu_weight": bad})
    assert f"nsbox option cpu_weight={bad!r} is not valid" in str(info.value)
    assert "a whole number from 1 to 10000" in str(info.value)


def test_good_values() -> None:
    assert parse_options({}).cpu_weight is None
    assert parse_options({"cpu_weight": 1}).cpu_weight == 1
    assert parse_options({"cpu_weight": 10000.0}).cpu_weight == 10000
    assert parse_options({"cpu_weight": parse_text("cpu_weight", "400")}).cpu_weight == 400
    assert parse_text("cpu_weight", "none") is None  # the ini/CLI spelling of unset


def test_bad_markers_are_collection_errors(pytester: pytest.Pytester) -> None:
    """In-process: nothing is boxed (a subprocess costs 1-2 s here)."""
    pytester.makepyfile("""
        import pytest

        @pytest.mark.nsbox(cpu_weight=0)
        def test_zero(): pass

        @pytest.mark.nsbox(cpu_weight="lots")
        def test_lots(): pass
    """)
    result = pytester.runpytest("-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.INTERRUPTED
    for line in ("*test_zero: nsbox option cpu_weight=0 is not valid; accepted: a whole "
                 "number from 1 to 10000*", "*test_lots: nsbox option cpu_weight='lots' is not "
                 "valid*"):
        result.stdout.fnmatch_lines([line])
    result = pytester.runpytest("-p", "no:cacheprovider", "--nsbox-cpu-weight=10001")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--nsbox-cpu-weight: nsbox option cpu_weight=*10001*"])


# --- against the kernel ---------------------------------------------------------------------

@pytest.mark.vm
@needs_cpu
def test_weight_is_written_and_unset_writes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    for weight, expected in ((400, "400" if V2 else "4096"), (1, "1" if V2 else "10"),
                             (10000, "10000" if V2 else "102400")):
        box = cgroups.box_cgroup(parse_options({"cpu_weight": weight}))
        assert box is not None
        try:
            assert _value(_weight_file(box)) == expected
        finally:
            box.remove()
    written: list[str] = []
    backend = cgroup_v2 if V2 else cgroup_v1
    real = backend._write

    def record(path: str, data: bytes) -> None:
        written.append(path)
        real(path, data)

    monkeypatch.setattr(backend, "_write", record)
    box = cgroups.box_cgroup(parse_options({"memory": "64M", "pids": 64}))
    assert box is not None
    box.remove()
    assert written and not [p for p in written if os.path.basename(p).startswith("cpu.")]
    if not V2:
        assert "cpu" not in box.dirs  # no cpu cgroup at all for a box without cpu options


@pytest.mark.vm
@needs_cpu
def test_two_boxes_on_one_cpu_split_it_by_weight() -> None:
    """Weights 100 and 400, both pinned to CPU 0 and spinning at once: about 1 : 4."""
    boxes = [cgroups.box_cgroup(parse_options({"cpu_weight": w, "cpuset": "0"}))
             for w in (100, 400)]
    go_r, go_w = os.pipe()
    pids = []
    for box in boxes:
        assert box is not None
        pid = os.fork()
        if pid == 0:
            try:
                for fd in box.join_fds:
                    os.write(fd, b"0")
                os.read(go_r, 1)
                end = time.monotonic() + SPIN
                while time.monotonic() < end:
                    pass
            finally:
                os._exit(0)
        box.close_join_fds()
        pids.append(pid)
    os.write(go_w, b"gg")
    for pid in pids:
        assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
    os.close(go_r)
    os.close(go_w)
    light, heavy = (box.usage().cpu_seconds for box in boxes if box is not None)
    for box in boxes:
        assert box is not None
        box.remove()
    print(f"cpu seconds: weight 100 {light:.3f}, weight 400 {heavy:.3f}, "
          f"ratio {heavy / light:.2f}")
    assert light > 0.05 and heavy + light > 0.5 * SPIN
    assert 2.5 < heavy / light < 6


def _own_weight() -> str:
    """Inside a box: the weight on the box's cgroup (its processes live in delegated/)."""
    with open("/proc/self/cgroup") as file:
        lines = [line.strip().split(":", 2) for line in file]
    own = next(path for _, ctrls, path in lines
               if (ctrls == "" if V2 else "cpu" in ctrls.split(",")))
    base = "/sys/fs/cgroup" if V2 else "/sys/fs/cgroup/cpu"
    name = "cpu.weight" if V2 else "cpu.shares"
    with open(f"{base}{os.path.dirname(own)}/{name}") as file:
        return file.read().strip()


@pytest.mark.vm
@needs_cpu
def test_a_box_and_a_box_inside_it_run_under_their_weights() -> None:
    """cpu_weight nests as cpu does: an inner box may have one where its outer box has the
    cpu controller (a cpu or cpu_weight of its own), and gets BoxUnavailable where not."""
    def inner(weight: int) -> str:
        return str(Box(cpu_weight=weight).run(_own_weight))

    shares = {100: "1024", 400: "4096", 50: "512"}
    expect = (lambda w: str(w)) if V2 else shares.__getitem__
    assert Box(cpu_weight=400).run(_own_weight) == expect(400)
    assert Box(cpu_weight=400).run(inner, 50) == expect(50)
    if not V2:  # v2: a box may pass on the cpu controller its session enabled before
        with pytest.raises(BoxUnavailable,
                           match=r"cannot have cpu_weight=50.*kinds its outer box"):
            Box().run(inner, 50)


@pytest.mark.vm
def test_the_doctor_says_whether_cpu_weight_is_available() -> None:
    from pytest_nsbox import doctor

    check = next(c for c in doctor._cgroup_checks(doctor.PROBE_TIMEOUT) if c.name == "cpu weight")
    if CPU_WRITABLE:
        assert check.status == "PASS", check
        assert ("cpu.weight" if V2 else "cpu.shares") in check.detail
    else:
        assert check.status == "DEGRADED", check
        assert "BoxUnavailable" in check.detail and check.fix
