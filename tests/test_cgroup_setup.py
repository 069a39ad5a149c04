"""The fix printed for limits as a normal user works as printed (`pytest-nsbox cgroup-setup`).

A fresh user (useradd) runs a boxed test with a memory limit and gets the error; the
test runs the two commands the error prints exactly (root's, then the user's prefix),
and the same test then fails for its memory limit, under a header that says limits are
available. Natively on cgroup v1 (no systemd) and, marked `vm`, as root in the pure
cgroup v2 VM lane (tests/vm/run_vm_lane.sh), where the user's runs go through the
spawner. The user and its cgroups are removed afterwards.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import needs
from pytest_nsbox import cgroup_setup
from pytest_nsbox.resources.cgroups.userfix import command, fix_commands

USER = "nsbox-fix-test"
SYSTEM_PYTHON = "/usr/bin/python3"  # root's Python may live under /root, which users cannot read
SUITE = '''
import pytest

@pytest.mark.nsbox(memory="32M")
def test_allocating_past_the_limit():
    block = bytearray(256 * 2**20)
    block[::4096] = b"x" * len(block[::4096])
'''
FIX = re.compile(r"Fix: run `(?P<setup>[^`]+)` as root \(once per boot[^)]*\), then run "
                 r"pytest under `(?P<prefix>[^`]+)`")


def _user_venv(home: Path) -> Path:
    """A venv of the system's Python that imports this checkout and the dev venv's packages
    (a `pip install` would cost the test tens of seconds), with the two console scripts."""
    venv = home / "venv"
    subprocess.run([SYSTEM_PYTHON, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = next(venv.glob("lib/python3*/site-packages"))
    dev_site = next(p for p in sys.path if p.endswith("site-packages") and "venv" in p)
    root = Path(__file__).resolve().parent.parent
    (site / "nsbox_dev.pth").write_text(f"{root}\n{dev_site}\n")
    for script in ("pytest", "pytest-nsbox"):
        text = (Path(sys.executable).parent / script).read_text().split("\n", 1)[1]
        (venv / "bin" / script).write_text(f"#!{venv}/bin/python\n{text}")
        (venv / "bin" / script).chmod(0o755)
    return venv


def _as_user(home: Path, argv: list[str]) -> subprocess.CompletedProcess[str]:
    # the dev venv's other plugins stay out (each costs start-up, seconds in the VM); the
    # runs put their base temp in the user's home (`_basetemp`)
    env = {"HOME": str(home), "PATH": "/usr/bin:/bin", "USER": USER, "LANG": "C.UTF-8",
           "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}
    return subprocess.run(["setpriv", f"--reuid={USER}", f"--regid={USER}", "--init-groups",
                           *argv], cwd=home / "suite", env=env, capture_output=True, text=True,
                          timeout=300)


PYTEST_ARGS = ["-p", "pytest_nsbox.plugin", "-p", "no:cacheprovider", "--nsbox", "-rfE"]


def _basetemp(home: Path) -> str:
    """In the user's home: a /tmp/pytest-of-USER left by an earlier user of this name (a
    uid since deleted; in the VM, the host's /tmp shows through) is refused by pytest."""
    return f"--basetemp={home}/basetemp"


VM_MODE = os.environ.get("NSBOX_VM_MODE", "")  # set by tests/vm/run_vm_lane.sh


# it makes a user and host cgroups and becomes that user: under --nsbox it runs unboxed
@pytest.mark.vm  # also as root in the cgroup v2 VM lane (the spawner's path)
@pytest.mark.nsbox(enabled=False)
def test_the_printed_fix_gives_a_new_user_limits() -> None:
    needs(os.geteuid() == 0, "lacks: root (to make a user)")
    needs(shutil.which("useradd") is not None and shutil.which("setpriv") is not None,
          "lacks: useradd and setpriv")
    needs(os.access(SYSTEM_PYTHON, os.X_OK), f"lacks: {SYSTEM_PYTHON}")
    existed = subprocess.run(["id", USER], capture_output=True).returncode == 0
    if not existed:
        subprocess.run(["useradd", "-m", USER], check=True, capture_output=True)
    home = Path(os.path.expanduser(f"~{USER}"))
    setup = ""
    try:
        (home / "suite").mkdir(exist_ok=True)
        (home / "suite" / "test_memory.py").write_text(SUITE)
        venv = _user_venv(home)
        subprocess.run(["chown", "-R", f"{USER}:", str(home)], check=True)

        # 1. without cgroups of its own, the box cannot have its limit: the error says why
        # (natively; in the emulated VM each run costs half a minute, and the commands are
        # the ones the error prints there, from the same function)
        if VM_MODE:
            setup, prefix = fix_commands(USER, f"{venv}/bin/pytest-nsbox")
        else:
            first = _as_user(home, [f"{venv}/bin/pytest", *PYTEST_ARGS, _basetemp(home)])
            output = first.stdout + first.stderr
            needs("cannot enforce" in output,
                  f"lacks: a machine where a user's cgroups are not writable: {output}")
            found = FIX.search(output.replace("\n", ""))
            assert found, output
            setup, prefix = found["setup"], found["prefix"]
        assert setup == f"{venv}/bin/pytest-nsbox cgroup-setup --user {USER}"

        # 2. root's part, exactly as printed; it prints the same prefix
        made = subprocess.run(shlex.split(setup), capture_output=True, text=True, timeout=60)
        assert made.returncode == 0, made.stdout + made.stderr
        assert f"{USER} now runs pytest under: {prefix}\n" in made.stdout

        # 3. the user's part: the same run, under the prefix
        run = _as_user(home, [*shlex.split(prefix), "pytest", *PYTEST_ARGS, _basetemp(home)])
        output = run.stdout + run.stderr
        assert run.returncode == 1, output
        assert "[nsbox] exceeded its memory limit of 32 MiB" in output, output
        header = next(line for line in output.splitlines() if line.startswith("nsbox: "))
        assert "(limits available)" in header, header
    finally:
        if setup:
            subprocess.run([*shlex.split(setup), "--remove"], capture_output=True, timeout=60)
        if not existed:
            subprocess.run(["userdel", "-r", USER], capture_output=True)
    left = subprocess.run(["find", "/sys/fs/cgroup", "-maxdepth", "2", "-name",
                           f"nsbox-user-{USER}"], capture_output=True, text=True).stdout
    assert left == ""


def test_cgroup_exec_without_the_set_up_names_roots_command(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    from pytest_nsbox.resources.cgroups import userfix

    monkeypatch.setattr(userfix, "_user_name", lambda: "nobody-here")
    assert cgroup_setup.main_exec(["--", "true"]) == 1
    err = capsys.readouterr().err
    assert "no cgroups for nobody-here" in err
    assert f"`{command()} cgroup-setup --user nobody-here`" in err


def test_cgroup_setup_refuses_a_user_that_does_not_exist(
        capsys: pytest.CaptureFixture[str]) -> None:
    needs(os.geteuid() == 0, "lacks: root")
    assert cgroup_setup.main_setup(["--user", "no-such-user-nsbox"]) == 1
    assert "no user named 'no-such-user-nsbox'" in capsys.readouterr().err
