"""The doctor's verdict on real machines: here as root, here as a user, and in the VM lane.

Nothing of the kernel is mocked: each test runs the doctor's probes and compares its lines
with facts read independently (the cgroup layout, /sys/module, the sysctls). The VM
verdicts run through tests/vm_doctor/run.sh (NSBOX_DOCTOR_VM_MODE names the mode).
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

from conftest import needs
from pytest_nsbox import doctor
from pytest_nsbox.resources import cgroups

# These tests examine the host's own cgroups (and probes): under --nsbox they run unboxed.
pytestmark = pytest.mark.nsbox(enabled=False)

ROOT = Path(__file__).resolve().parent.parent
USER = "nsbox-doctor-test"
VM_MODE = os.environ.get("NSBOX_DOCTOR_VM_MODE", "")


def run_cli(*args: str, python: str = sys.executable, env: dict[str, str] | None = None,
            prefix: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*prefix, python, "-m", "pytest_nsbox", *args], capture_output=True,
                          text=True, timeout=300, env=env, cwd="/")


def by_name(data: dict[str, Any]) -> dict[str, dict[str, str]]:
    return {c["name"]: c for c in data["checks"]}


def netem_in_kernel() -> bool:
    """Independent of the doctor: is sch_netem loaded or loadable here?"""
    if os.path.exists("/sys/module/sch_netem"):
        return True
    base = Path("/lib/modules") / os.uname().release
    return any("sch_netem" in (base / f).read_text() for f in ("modules.builtin", "modules.dep")
               if (base / f).exists())


def assert_consistent(data: dict[str, Any], returncode: int) -> None:
    ranks = [doctor.RANK[c["status"]] for c in data["checks"]]
    assert data["exit_status"] == max(ranks) == returncode
    assert data["verdict"] == ("PASS", "DEGRADED", "FAIL")[returncode]
    for c in data["checks"]:
        assert c["status"] == "PASS" or c["fix"], c  # every non-PASS line says how to fix it


@pytest.fixture(scope="module")
def here_json() -> tuple[dict[str, Any], int]:
    result = run_cli("doctor", "--json", env={**os.environ, "PYTHONPATH": str(ROOT)})
    return json.loads(result.stdout), result.returncode


# --- this machine, as root (the native lane) --------------------------------------------

def test_root_verdict_here(here_json: tuple[dict[str, Any], int]) -> None:
    needs(os.geteuid() == 0, "lacks: root")
    needs(cgroups.detect()["version"] in ("v1", "hybrid"), "lacks: cgroup v1 (native lane)")
    data, code = here_json
    checks = by_name(data)
    assert_consistent(data, code)
    for name in ("user namespace", "pid namespace", "net namespace", "mount namespace",
                 "uts namespace", "ipc namespace", "/proc mount", "tmpfs mount", "loopback",
                 "default box"):
        assert checks[name]["status"] == "PASS", checks[name]
    assert checks["cgroup version"]["detail"].startswith("v1")
    assert checks["cgroup writable"]["status"] == "PASS"
    assert checks["cgroup controllers"]["status"] == "PASS"
    assert checks["cgroup.kill"]["status"] == "DEGRADED"  # v1 has none
    assert checks["device control"]["status"] == "PASS"
    assert "v1 devices cgroup" in checks["device control"]["detail"]
    if not netem_in_kernel():
        assert checks["netem"]["status"] in ("FAIL", "DEGRADED")
        assert "modprobe" in checks["netem"]["fix"]
        assert "netem missing" in doctor.header_line()
    assert code == 1 if not netem_in_kernel() else code in (0, 1)


def test_text_output_and_exit_status_match_json(here_json: tuple[dict[str, Any], int]) -> None:
    data, code = here_json
    result = run_cli("doctor", env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == code
    lines = [line for line in result.stdout.splitlines() if line[:4] in ("PASS", "DEGR", "FAIL")]
    assert [line.split()[0] for line in lines] == [c["status"] for c in data["checks"]]
    assert result.stdout.rstrip().splitlines()[-1].startswith(f"verdict: {data['verdict']}")


def test_cli_usage() -> None:
    assert run_cli().returncode == 2
    bad = run_cli("bogus")
    assert bad.returncode == 2 and "unknown command" in bad.stderr
    assert "doctor" in run_cli("--help").stdout


# --- this machine, as a user that is not root --------------------------------------------

@pytest.fixture(scope="module")
def user_run() -> dict[str, Any]:
    """The doctor run by an unprivileged user with the system Python (no pyroute2, no
    cloudpickle, no pytest), from a copy of the package that user can read."""
    needs(os.geteuid() == 0, "lacks: root (to become another user)")
    python = shutil.which("python3", path="/usr/bin:/usr/local/bin")
    needs(python is not None, "lacks: a system python3")
    try:
        pwd.getpwnam(USER)
    except KeyError:
        subprocess.run(["useradd", "-m", USER], check=True)
    tmp = tempfile.mkdtemp(prefix="nsbox-doctor-")
    try:
        os.chmod(tmp, 0o755)
        shutil.copytree(ROOT / "pytest_nsbox", f"{tmp}/pytest_nsbox",
                        ignore=shutil.ignore_patterns("__pycache__"))
        cache = f"{tmp}/cache"
        os.mkdir(cache)
        shutil.chown(cache, USER)
        env = ["env", "-i", f"PYTHONPATH={tmp}", f"XDG_CACHE_HOME={cache}",
               "PYTHONDONTWRITEBYTECODE=1", "PATH=/usr/sbin:/usr/bin:/sbin:/bin"]
        prefix = ("runuser", "-u", USER, "--", *env)
        assert python is not None
        result = run_cli("doctor", "--json", python=python, prefix=prefix)
        code = ("from pytest_nsbox import doctor; import json, sys; "
                "print(json.dumps([doctor.header_line(), doctor.boxing_available(), "
                "sorted(m for m in ('cloudpickle', 'pyroute2', 'pytest') if m in sys.modules)]))")
        cheap = subprocess.run([*prefix, python, "-c", code], capture_output=True, text=True,
                               timeout=120, cwd="/")
        assert cheap.returncode == 0, cheap.stderr
        assert result.stdout, result.stderr
        return {"data": json.loads(result.stdout), "code": result.returncode,
                "cheap": json.loads(cheap.stdout),
                "cache": os.listdir(f"{cache}/pytest-nsbox")}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def test_user_verdict_here(user_run: dict[str, Any]) -> None:
    needs(cgroups.detect()["version"] in ("v1", "hybrid"), "lacks: cgroup v1 (native lane)")
    data, code = user_run["data"], user_run["code"]
    checks = by_name(data)
    assert_consistent(data, code)
    assert data["machine"]["uid"] != 0
    userns_on = Path("/proc/sys/user/max_user_namespaces").read_text().strip() != "0"
    assert checks["user namespace"]["status"] == ("PASS" if userns_on else "FAIL")
    if userns_on:
        assert checks["default box"]["status"] == "PASS"
        assert checks["loopback"]["status"] == "PASS"
    # no cgroup is writable by a user here: boxes run, limits don't, and the fix says how
    writable = checks["cgroup writable"]
    assert writable["status"] == "DEGRADED"
    assert "Permission denied" in writable["detail"]
    assert f" cgroup-setup --user {USER}`" in writable["fix"]
    assert checks["device control"]["status"] == "PASS"
    assert "refuses mknod" in checks["device control"]["detail"]
    assert code == 1


def test_user_cheap_answers(user_run: dict[str, Any]) -> None:
    header, (available, why), imported = user_run["cheap"]
    assert imported == []  # the doctor needs neither cloudpickle nor pyroute2 nor pytest
    assert available is True and why == ""
    assert header.startswith("nsbox: user+pid+net+mount+uts+ipc namespaces; cgroup v1")
    assert "not writable" in header
    uid = pwd.getpwnam(USER).pw_uid
    assert [f.startswith(f"doctor-{uid}-") for f in user_run["cache"]] == [True]


# --- the cheap functions and the probe runner -------------------------------------------

def test_header_line_is_cheap_and_agrees_with_the_doctor(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    report = doctor.run_doctor()
    assert next((tmp_path / "pytest-nsbox").iterdir()).name.startswith(
        f"doctor-{os.geteuid()}-")
    header = doctor.header_line()
    times = []
    for _ in range(20):
        start = time.perf_counter()
        assert doctor.header_line() == header
        times.append(time.perf_counter() - start)
    assert min(times) < 0.005, times
    statuses = {c.name: c.status for c in report.checks}
    assert ("netem missing" in header) == (statuses["netem"] != "PASS")
    assert ("namespaces;" in header) == (statuses["default box"] == "PASS")
    assert ("/tmp: the host's files" in header) == (statuses["tmpfs overlay"] == "PASS")
    assert doctor.boxing_available() == (statuses["default box"] == "PASS", "") or (
        statuses["default box"] != "PASS")


def test_header_line_says_what_tmp_shows_under_the_session_options(
        pytester: pytest.Pytester, run_inner, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """--nsbox-tmpfs-mode=empty (or the ini key) empties /tmp wherever overlays work: the
    header says so, not "the host's files"; without it, the header follows the probe."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    available, why = doctor.boxing_available()
    needs(available, f"lacks: a default box here ({why})")
    overlay = doctor._box_result().get("tmpfs") == "overlay"
    probed = ("/tmp: the host's files below the box's" if overlay
              else "/tmp: empty (no overlay here; see the doctor)")
    empty = "/tmp: empty (tmpfs_mode='empty')"
    assert doctor.header_line().endswith(probed)
    assert doctor.header_line("overlay").endswith(probed)
    assert doctor.header_line("empty").endswith(empty)
    assert doctor.header_line("overlay", ("/var/tmp",)).endswith(
        "/tmp: the host's own (not a tmpfs path)")

    pytester.makepyfile("def test_nothing():\n    pass\n")

    def header(*args: str) -> str:
        result = run_inner("-v", *args)
        assert result.ret == 0, result.stdout.str()
        lines = [line for line in result.stdout.lines if line.startswith("nsbox: ")]
        assert len(lines) == 1, result.stdout.str()
        return lines[0]

    assert header().endswith(probed)
    assert header("--nsbox-tmpfs-mode=overlay").endswith(probed)
    for args in (("--nsbox-tmpfs-mode=empty",), ("--nsbox", "--nsbox-tmpfs-mode", "empty")):
        line = header(*args)
        assert line.endswith(empty), line
        assert "the host's files" not in line
    assert header("--nsbox-tmpfs=/var/tmp").endswith("/tmp: the host's own (not a tmpfs path)")
    pytester.makeini("[pytest]\nnsbox_tmpfs_mode = empty\n")
    assert header().endswith(empty)
    assert header("--nsbox-tmpfs-mode=overlay").endswith(probed)  # the flag wins over the ini


def test_cold_cache_probes_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    available, why = doctor.boxing_available()
    files = list((tmp_path / "pytest-nsbox").iterdir())
    assert len(files) == 1 and "box" in json.loads(files[0].read_text())
    assert available == (why == "")


def test_import_needs_nothing_linux_only() -> None:
    """macOS and Windows import it: no ctypes, no namespaces module at import time."""
    code = ("import sys; import pytest_nsbox.doctor; "
            "bad = [m for m in ('ctypes', 'pytest_nsbox.box.namespaces', "
            "'pytest_nsbox.resources.cgroups') if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_elsewhere_answers() -> None:
    """On a platform without namespaces: header, availability and the report say so."""
    code = ("import sys; sys.platform = 'darwin'; import platform; "
            "platform.system = lambda: 'Darwin'; from pytest_nsbox import doctor; "
            "ok, why = doctor.boxing_available(); r = doctor.run_doctor(); "
            "print(doctor.header_line()); print(ok, why); print(r.exit_status)")
    out = subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, capture_output=True,
                         text=True).stdout.splitlines()
    assert out[0] == "nsbox: unavailable (boxes need Linux; this is Darwin)"
    assert out[1].startswith("False boxes need Linux namespaces")
    assert out[2] == "2"


def _gone(pid: int, seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().split(") ")[1].startswith("Z"):
                    return True
        except FileNotFoundError:
            return True
        time.sleep(0.02)
    return False


def test_a_hanging_probe_is_killed_with_its_children(tmp_path: Path) -> None:
    pids = tmp_path / "pids"

    def hang() -> dict[str, Any]:
        with open(pids, "a") as f:
            f.write(f"{os.getpid()}\n")

        def inner() -> dict[str, Any]:
            with open(pids, "a") as f:
                f.write(f"{os.getpid()}\n")
            time.sleep(600)
            return {"ok": True}

        return doctor.run_probe(inner, 600)

    start = time.monotonic()
    result = doctor.run_probe(hang, timeout=1.0)
    assert time.monotonic() - start < 5
    assert result["ok"] is False and result["timeout"] and "timed out" in result["step"]
    written = [int(p) for p in pids.read_text().split()]
    assert len(written) == 2
    assert all(_gone(pid) for pid in written)


def test_a_crashing_probe_is_a_result() -> None:
    def boom() -> dict[str, Any]:
        raise ValueError("boom")

    assert doctor.run_probe(boom)["step"] == "ValueError('boom')"
    died = doctor.run_probe(lambda: os._exit(3))  # type: ignore[func-returns-value]
    assert died["ok"] is False and "died" in died["step"]


# --- pytest --nsbox-doctor ----------------------------------------------------------------

def test_run_from_pytest(pytester: pytest.Pytester) -> None:
    pytester.makeconftest("""
        def pytest_cmdline_main(config):
            from pytest_nsbox.doctor import run_from_pytest
            return run_from_pytest(config)
    """)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    assert "pytest-nsbox doctor:" in result.stdout.str()
    verdict = next(line for line in result.outlines if line.startswith("verdict: "))
    assert result.ret == {"PASS": 0, "DEGRADED": 1, "FAIL": 2}[verdict.split()[1]]


def test_nsbox_doctor_option(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--nsbox-doctor")
    if "unrecognized arguments: --nsbox-doctor" in result.stderr.str():
        pytest.skip("lacks: the plugin does not wire --nsbox-doctor yet")
    assert "pytest-nsbox doctor:" in result.stdout.str()
    assert "collected" not in result.stdout.str()  # it printed the report and exited
    verdict = next(line for line in result.outlines if line.startswith("verdict: "))
    assert result.ret == {"PASS": 0, "DEGRADED": 1, "FAIL": 2}[verdict.split()[1]]


# --- the VM lane (tests/vm_doctor/run.sh) -------------------------------------------------

@pytest.mark.vm
def test_vm_verdict() -> None:
    """The verdict for the VM mode the lane booted: root, delegated, undelegated, nouserns."""
    needs(bool(VM_MODE), "lacks: the VM lane (tests/vm_doctor/run.sh)")
    report = doctor.run_doctor()
    print(f"\n--- doctor in the VM, mode {VM_MODE} ---\n{report.render()}")
    checks = {c.name: c for c in report.checks}
    assert cgroups.detect()["version"] == "v2"
    if VM_MODE.startswith("nouserns"):
        user = checks["user namespace"]
        assert user.status == "FAIL" and "user.max_user_namespaces is 0" in user.detail
        assert "max_user_namespaces" in user.fix
        assert checks["default box"].status == "FAIL"
        assert report.exit_status == 2
        available, why = doctor.boxing_available()
        assert not available and "ENOSPC" in why
        assert doctor.header_line().startswith("nsbox: boxes unavailable")
        return
    for name in ("user namespace", "pid namespace", "/proc mount", "loopback", "default box",
                 "netem", "tbf", "veth", "bridge", "cgroup.kill", "memory peak",
                 "tmpfs overlay"):
        assert checks[name].status == "PASS", checks[name]
    assert doctor.boxing_available() == (True, "")
    device = checks["device control"]
    assert device.status == "PASS"
    assert ("eBPF" if VM_MODE.startswith("root") else "refuses mknod") in device.detail, device
    if VM_MODE in ("root", "delegated"):
        assert checks["cgroup writable"].status == checks["cgroup delegation"].status == "PASS"
        assert report.exit_status == 0
        assert doctor.header_line().endswith(
            "delegated (limits available); netem; /tmp: the host's files below the box's")
    else:
        assert checks["cgroup writable"].status == "DEGRADED"
        delegation = checks["cgroup delegation"]
        assert delegation.status == "DEGRADED"
        assert "cgroup-setup --user" in delegation.fix
        assert report.exit_status == 1
        assert "not writable (no limits); netem" in doctor.header_line()


def test_the_doctor_says_where_a_boxs_files_live(tmp_path) -> None:
    from pytest_nsbox import doctor
    from pytest_nsbox.resources.storage import default_root

    here = doctor._storage_check()
    assert here.name == "box storage" and default_root() in here.detail
    assert here.status == (doctor.PASS if doctor._fs_type("/var/tmp") not in
                           ("overlay", "tmpfs") else doctor.DEGRADED)
    in_ram = doctor._storage_check("/dev/shm/nsbox-doctor-probe")
    assert "tmpfs" in in_ram.detail
    if doctor._fs_type("/tmp") in ("overlay", "tmpfs"):  # a box's /tmp in RAM, as the host's
        assert in_ram.status == doctor.PASS and "as this machine's /tmp is" in in_ram.detail
    else:
        assert in_ram.status == doctor.DEGRADED and "--nsbox-storage" in in_ram.fix
    assert any(c.name == "box storage" for c in doctor.run_doctor().checks)
