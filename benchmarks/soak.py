"""Soak: 5000 boxed trivial tests in ONE pytest session; pytest must not grow.

    .venv/bin/python benchmarks/soak.py [--tests 5000] [--warmup 50] [--keep]

Generates a suite of trivial tests into a temp dir and runs pytest on it (a subprocess,
``--nsbox``) with a small plugin that samples the pytest process's RSS (/proc/self/statm)
and open file descriptors (/proc/self/fd) after the first `--warmup` tests and at the end.
Afterwards checks that no cgroup, mount or process of the session remains. Prints RSS
growth (target < 5 MB) and fd growth (target 0); exit status 1 when a target is missed.
Not a timed test: it takes a few minutes.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid

PLUGIN = '''
import json, os

_OUT = {out!r}
_WARMUP = {warmup}
_samples = {{}}
_done = 0


def _sample():
    with open("/proc/self/statm") as file:
        rss_pages = int(file.read().split()[1])
    return {{"rss": rss_pages * os.sysconf("SC_PAGE_SIZE"),
            "fds": len(os.listdir("/proc/self/fd")), "time": __import__("time").time()}}


def pytest_runtest_logfinish(nodeid, location):
    global _done
    _done += 1
    if _done == _WARMUP:
        _samples["start"] = _sample()
        _samples["start"]["tests"] = _done


def pytest_sessionfinish(session, exitstatus):
    _samples["end"] = _sample()
    _samples["end"]["tests"] = _done
    _samples["pid"] = os.getpid()
    with open(_OUT, "w") as file:
        json.dump(_samples, file)
'''

MODULE = '''
import pytest

@pytest.mark.parametrize("n", range({count}))
def test_trivial(n):
    assert n >= 0
'''


def nsbox_cgroups(owner: int) -> list[str]:
    return glob.glob(f"/sys/fs/cgroup/**/nsbox-{owner}-*", recursive=True)


def processes_with(marker: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as file:
                    if marker.encode() in file.read():
                        found.append(int(entry))
            except OSError:
                pass
    return found


def mounts() -> set[str]:
    with open("/proc/self/mountinfo") as file:
        return {line.split()[4] for line in file}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tests", type=int, default=5000)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--modules", type=int, default=10, help="spread the tests over N files")
    parser.add_argument("--keep", action="store_true", help="keep the generated suite")
    parser.add_argument("--unboxed", action="store_true",
                        help="baseline: the same session without --nsbox (pytest's own growth)")
    args = parser.parse_args()

    marker = f"nsbox-soak-{uuid.uuid4().hex[:10]}"
    work = tempfile.mkdtemp(prefix=f"{marker}-")
    out = os.path.join(work, "samples.json")
    with open(os.path.join(work, "soak_plugin.py"), "w") as file:
        file.write(PLUGIN.format(out=out, warmup=args.warmup))
    per_module = args.tests // args.modules
    for index in range(args.modules):
        count = per_module + (args.tests % args.modules if index == 0 else 0)
        with open(os.path.join(work, f"test_soak_{index}.py"), "w") as file:
            file.write(textwrap.dedent(MODULE.format(count=count)))
    with open(os.path.join(work, "pytest.ini"), "w") as file:
        file.write("[pytest]\n")

    mounts_before = mounts()
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
               "-p", "no:rerunfailures", "-p", "soak_plugin",
               *([] if args.unboxed else ["--nsbox"]), f"--basetemp={work}/basetemp",
               "-o", "console_output_style=count", work]
    env = dict(os.environ, PYTHONPATH=work + os.pathsep + os.environ.get("PYTHONPATH", ""))
    started = time.monotonic()
    proc = subprocess.run([*command, "--rootdir", work, "-W", f"ignore:{marker}"],
                          cwd=work, env=env, capture_output=True, text=True)
    wall = time.monotonic() - started
    tail = "\n".join(proc.stdout.strip().splitlines()[-3:])

    with open(out) as file:
        samples = json.load(file)
    start, end = samples["start"], samples["end"]
    rss_growth = end["rss"] - start["rss"]
    fd_growth = end["fds"] - start["fds"]
    time.sleep(0.5)
    left_cgroups = nsbox_cgroups(samples["pid"])
    left_processes = processes_with(marker)
    new_mounts = sorted(mounts() - mounts_before)

    mib = 1 << 20
    print("mode:", "unboxed baseline" if args.unboxed else "--nsbox")
    print(f"pytest: {tail.splitlines()[-1] if tail else '?'} (exit {proc.returncode})")
    print(f"tests: {end['tests']} in {wall:.1f} s ({wall / max(end['tests'], 1) * 1000:.1f} ms "
          f"per test, incl. pytest start)")
    print(f"RSS after {start['tests']} tests: {start['rss'] / mib:.1f} MiB; at the end: "
          f"{end['rss'] / mib:.1f} MiB; growth {rss_growth / mib:+.2f} MiB "
          f"over {end['tests'] - start['tests']} tests (target < 5 MB)")
    print(f"open fds after {start['tests']} tests: {start['fds']}; at the end: {end['fds']}; "
          f"growth {fd_growth:+d} (target 0)")
    print(f"left after the session: cgroups {left_cgroups or 'none'}, "
          f"processes {left_processes or 'none'}, mounts {new_mounts or 'none'}")
    ok = (proc.returncode == 0 and rss_growth < 5_000_000 and fd_growth <= 0
          and not left_cgroups and not left_processes and not new_mounts)
    print("SOAK", "OK" if ok else "FAILED")
    if not ok and proc.returncode != 0:
        print(proc.stdout[-3000:], proc.stderr[-3000:], sep="\n")
    if args.keep:
        print(f"suite kept in {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
