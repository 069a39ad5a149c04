"""Shared helpers of the benchmarks: machine facts and generated sections of the docs."""

from __future__ import annotations

import datetime
import os
import platform
import re
import subprocess
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DOC = ROOT / "docs" / "performance.md"

_SKELETON = """# Performance

<!-- BEGIN overhead -->
(run `python benchmarks/overhead.py` to fill this section)
<!-- END overhead -->

<!-- BEGIN profile -->
(run `python benchmarks/profile_box.py --write-docs` to fill this section)
<!-- END profile -->
"""


def replace_section(name: str, text: str, path: Path = DOC) -> None:
    """Put `text` between the ``<!-- BEGIN name -->`` / ``<!-- END name -->`` markers."""
    content = path.read_text() if path.exists() else _SKELETON
    begin, end = f"<!-- BEGIN {name} -->", f"<!-- END {name} -->"
    block = f"{begin}\n{text.rstrip()}\n{end}"
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
    if pattern.search(content):
        content = pattern.sub(lambda _: block, content)
    else:
        content = content.rstrip() + "\n\n" + block + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content)


def _first_line(cmd: list[str]) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, check=False,
                              timeout=30).stdout.strip().splitlines()[0]
    except (OSError, IndexError, subprocess.SubprocessError):
        return "?"


def cgroup_layout() -> str:
    try:
        mounts = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return "?"
    v1 = sorted({opt for line in mounts if line.split()[2] == "cgroup"
                 for opt in line.split()[3].split(",")
                 if opt in ("memory", "pids", "cpu", "cpuset", "freezer")})
    v2 = any(line.split()[2] == "cgroup2" for line in mounts)
    if v1:
        return "v1 (" + ", ".join(v1) + ")" + (" + cgroup2" if v2 else "")
    return "v2" if v2 else "none"


def machine_facts(python: str) -> dict[str, str]:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cores": str(os.cpu_count()),
        "cpu": cpu,
        "kernel": platform.release(),
        "python": _first_line([python, "-c", "import platform; print(platform.python_version())"]),
        "pytest": _first_line([python, "-c", "import pytest; print(pytest.__version__)"]),
        "cgroups": cgroup_layout(),
        "memory": _meminfo(),
    }


def _meminfo() -> str:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return f"{int(line.split()[1]) // (1 << 20)} GiB"
    except OSError:
        pass
    return "?"
