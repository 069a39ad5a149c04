"""benchmarks/overhead.py --user: the user's runs are that user's, in cgroups it owns."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import needs

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import nsbench_user
import overhead

USER = "nsbox-bench-test"
PROBE = """
import os, sys
print(os.getuid(), os.getgid(), os.getgroups())
print(open('/proc/self/cgroup').read())
for d in sys.argv[1:]:  # what nsbox does in a cgroup it is given: a directory of its own
    os.mkdir(f'{d}/probe')
    os.rmdir(f'{d}/probe')
"""


# it makes host cgroups and becomes another user, as the benchmark does on the host: under
# --nsbox it runs unboxed
@pytest.mark.nsbox(enabled=False)
def test_a_benchmark_user_runs_as_itself_in_cgroups_it_owns(tmp_path: Path) -> None:
    needs(os.geteuid() == 0, "lacks: root (to become another user)")
    needs(shutil.which("useradd") is not None, "lacks: useradd")
    existed = subprocess.run(["id", USER], capture_output=True).returncode == 0
    try:
        user = nsbench_user.prepare(USER, tmp_path)
        made = list(user.cgroups)
        try:
            assert made, "no cgroup was made for the user"
            out = subprocess.run([nsbench_user.SYSTEM_PYTHON, "-c", PROBE, *made],
                                 preexec_fn=user.preexec(), env=user.env({}), cwd="/",
                                 capture_output=True, text=True, check=True).stdout
            ids, _, cgroup_file = out.partition("\n")
            assert ids == f"{user.uid} {user.gid} []"
            joined = [line.split(":", 2)[2] for line in cgroup_file.splitlines() if line]
            leaf = f"/nsbench-{USER}"
            assert all(d.endswith(leaf) for d in made)
            # one of ours in every hierarchy the user was given (v1: one a controller set)
            assert sum(path.endswith(leaf) for path in joined) == len(made), joined
            os.mkdir(f"{made[0]}/left-behind")  # what a run that died would leave
        finally:
            user.remove_cgroups()
        assert not any(os.path.exists(d) for d in made)
    finally:
        if not existed:
            subprocess.run(["userdel", "-r", USER], capture_output=True)


def user_and_modes(tmp_path: Path) -> tuple[nsbench_user.User, list[overhead.Mode]]:
    modes = overhead.build_modes("root-python", "root-forked", 300)
    user = nsbench_user.User(USER, tmp_path, 4242, 4242, "/home/them")
    user.nsbox_src = str(tmp_path / "src")
    pythons = {"root-python": "user-python", "root-forked": "user-forked"}
    return user, [*overhead.twin_modes(modes, "sys:", pythons),
                  *overhead.twin_modes(modes, "user:", pythons, user, tmp_path)]


def test_twin_modes_are_root_modes_on_the_users_python(tmp_path: Path) -> None:
    root_modes = {m.name: m for m in overhead.build_modes("root-python", "root-forked", 300)}
    user, twins = user_and_modes(tmp_path)
    for prefix, who, cwd in (("sys:", None, None), ("user:", user, tmp_path)):
        mine = [m for m in twins if m.name.startswith(prefix)]
        assert sorted(m.name for m in mine) == sorted(prefix + n for n in overhead.USER_MODES)
        for mode in mine:
            root = root_modes[mode.name.removeprefix(prefix)]
            assert (mode.args, mode.hold_mb, mode.user, mode.cwd) == (
                root.args, root.hold_mb, who, cwd)
            assert mode.python == {"root-python": "user-python",
                                   "root-forked": "user-forked"}[root.python]
            assert mode.baseline == (root.baseline and prefix + root.baseline)
    # every twin's ratio is of its own modes: give each a distinct overhead
    results = {m.name: {"overhead_ms": float(i + 1)} for i, m in enumerate(twins)
               if m.baseline}
    results |= {m.name: {} for m in twins if not m.baseline}
    ratios = overhead.ratios(results)
    for prefix in ("sys:", "user:"):
        for key, over, under in (("full_vs_forked", "full", "forked"),
                                 ("full_vs_floor", "full", "floor"),
                                 ("forked_vs_floor", "forked", "floor"),
                                 ("full_vs_forked@hold", "full@hold", "forked@hold"),
                                 ("full_vs_floor@hold", "full@hold", "floor@hold")):
            want = (results[prefix + over]["overhead_ms"]
                    / results[prefix + under]["overhead_ms"])
            assert ratios[prefix + key] == want, prefix + key
    assert not any(k.startswith("user:") for k in overhead.ratios({"plain": {}}))


def test_a_users_run_is_made_as_that_user(tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    user, twins = user_and_modes(tmp_path)
    calls: list[dict[str, object]] = []

    def fake_run(cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        calls.append({"cmd": cmd, **kwargs})
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(overhead.subprocess, "run", fake_run)
    monkeypatch.setenv("PYTHONDONTWRITEBYTECODE", "1")
    mode = next(m for m in twins if m.name == "user:full")
    overhead.run_pytest(mode.python, mode.args, tmp_path / "elsewhere", user=mode.user)
    overhead.run_pytest("root-python", [], tmp_path)
    as_user, as_root = calls
    assert as_user["cmd"][0] == "user-python" and as_user["preexec_fn"] is not None
    env = as_user["env"]
    assert isinstance(env, dict)
    assert (env["HOME"], env["USER"]) == ("/home/them", USER)
    assert env["PYTHONPATH"].split(os.pathsep)[-1] == user.nsbox_src
    assert "PYTHONDONTWRITEBYTECODE" not in env and "VIRTUAL_ENV" not in env
    assert as_root["preexec_fn"] is None

    # the xdist figure: each twin's runs are its own, in the same rounds as root's
    seen: list[tuple[str, Path, str | None]] = []

    def fake_pytest(python: str, args: list[str], cwd: Path, *_: object,
                    user: object = None, **__: object) -> tuple[float, str]:
        seen.append((python, cwd, getattr(user, "name", None)))
        return {"user-python": 2.0}.get(python, 1.0) + (0.5 if "--floor" in args else 0), ""

    monkeypatch.setattr(overhead, "run_pytest", fake_pytest)
    plains = {p: m for p in overhead.TWINS for m in twins if m.name == f"{p}plain"}
    result = overhead.measure_xdist_overhead("root-python", tmp_path / "root", 10, 1, 1,
                                             plains)
    assert set(seen) == {("root-python", tmp_path / "root", None),
                         ("user-python", tmp_path / "root", None),
                         ("user-python", tmp_path, USER)}
    assert {"full_vs_floor", "sys:full_vs_floor", "user:full_vs_floor"} <= set(result)


def test_the_report_puts_the_users_column_beside_roots() -> None:
    rat = {"full_vs_forked": 1.5, "sys:full_vs_forked": 1.25, "user:full_vs_forked": 0.5}
    table = overhead.ratio_table(rat, {"user": USER, "hold_mb": 300})
    assert table[0].startswith("| ratio of per-test overheads | ")
    assert f"| root on the system's Python | as {USER} |" in table[0]
    row = next(line for line in table if line.startswith("| full boxes / pytest-forked |"))
    assert "| 1.50 | 1.25 | 0.50 | <= 1.0 |" in row
    assert row.endswith(f"root on the system's Python: **not met**; as {USER}: met |")
    alone = overhead.ratio_table({"full_vs_forked": 0.9}, {"user": None, "hold_mb": 300})
    assert "system's Python" not in alone[0]
