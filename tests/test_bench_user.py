"""benchmarks/overhead.py --user: the user's runs are that user's, in cgroups it owns."""

from __future__ import annotations

import os
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
    user = nsbench_user.prepare(USER, tmp_path)
    made = list(user.cgroups)
    try:
        assert user.cgroups, "no cgroup was made for the user"
        out = subprocess.run([nsbench_user.SYSTEM_PYTHON, "-c", PROBE, *user.cgroups],
                             preexec_fn=user.preexec(), env=user.env({}), cwd="/",
                             capture_output=True, text=True, check=True).stdout
        ids, _, cgroup_file = out.partition("\n")
        assert ids == f"{user.uid} {user.gid} []"
        joined = [line.split(":", 2)[2] for line in cgroup_file.splitlines() if line]
        leaf = f"/nsbench-{USER}"
        assert all(d.endswith(leaf) for d in user.cgroups)
        assert any(path.endswith(leaf) for path in joined), joined
        # one of ours in every hierarchy the user was given (v1: one a controller set)
        assert sum(path.endswith(leaf) for path in joined) == len(user.cgroups)
    finally:
        user.remove_cgroups()
    assert not any(os.path.exists(d) for d in made)


def test_user_modes_are_their_root_modes_as_the_user(tmp_path: Path) -> None:
    modes = overhead.build_modes("root-python", "root-forked", 300)
    user = nsbench_user.User(USER, tmp_path)
    pythons = {"root-python": "user-python", "root-forked": "user-forked"}
    mine = overhead.user_modes(modes, user, pythons, tmp_path)
    by_name = {m.name: m for m in modes}
    assert sorted(m.name for m in mine) == sorted(f"user:{n}" for n in overhead.USER_MODES)
    for mode in mine:
        root = by_name[mode.name.removeprefix("user:")]
        assert (mode.args, mode.hold_mb, mode.user, mode.cwd) == (
            root.args, root.hold_mb, user, tmp_path)
        assert mode.python == pythons[root.python]
        assert mode.baseline == (root.baseline and f"user:{root.baseline}")
    results = {m.name: {"overhead_ms": 2.0} for m in mine if m.baseline}
    results["user:floor"] = {"overhead_ms": 1.0}
    assert overhead.ratios(results)["user:full_vs_floor"] == 2.0
