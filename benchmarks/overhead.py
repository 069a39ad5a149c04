#!/usr/bin/env python3
"""Per-test overhead of pytest-nsbox against plain pytest, pytest-forked and a bare floor.

    python benchmarks/overhead.py            # full run: N=500 tests, 5 rounds (~15 min)
    python benchmarks/overhead.py --quick    # smoke run: N=100, 2 rounds, short extras
    python benchmarks/overhead.py --user nsboxci   # and as that user, side by side (root;
                                                   # ~40 min)

Everything is measured in one run on one machine, interleaved: every round runs every
mode once, in a shuffled order, and a mode's overhead in a round is
``(wall(mode) - wall(its plain-pytest baseline in the same round)) / N``; the reported
figure is the median over rounds. Each pytest run gets only the plugins it needs
(``PYTEST_DISABLE_PLUGIN_AUTOLOAD=1`` plus ``-p``), so no other installed plugin is
timed. Results go to benchmarks/results.json and to the generated section of
docs/performance.md. Run it with the dev venv's python (the one pytest-nsbox is
installed in); pytest-forked runs in benchmarks/.venv-forked, made on first use.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from nsbench_docs import HERE, ROOT, machine_facts, replace_section  # noqa: E402
from nsbench_user import User, dev_pins, prepare  # noqa: E402

FORKED_VENV = HERE / ".venv-forked"
FORKED_PINS = ("pytest==9.1.1", "pytest-forked==1.7.5")
WORK = HERE / ".work"
LOADS: list[float] = []  # 1-minute load average after each round: other work on the machine
#: CPU seconds the whole machine spent during the last run_pytest (every process and the
#: kernel's own work, such as namespace teardown in its workqueues): /proc/stat
LAST_CPU: list[float] = [0.0]


def machine_cpu_seconds() -> float:
    """Busy CPU time of the whole machine so far (user, nice, system, irq, softirq, steal)."""
    with open("/proc/stat") as stat:
        fields = stat.readline().split()[1:]
    busy = sum(int(fields[i]) for i in (0, 1, 2, 5, 6, 7) if i < len(fields))
    return busy / os.sysconf("SC_CLK_TCK")
NSBOX_SRC: str | None = None  # a directory put first on PYTHONPATH (see --nsbox-src)

NSBOX = ["-p", "pytest_nsbox.plugin", "--nsbox"]
FULL = [*NSBOX, "--nsbox-memory=256M", "--nsbox-pids=64"]
# Lightest boxes: no user namespace, the host's network, no tmpfs (nsbench_light marks
# every test tmpfs=(), which no CLI flag can say). pid, mount, uts and ipc namespaces,
# /proc and /dev/shm are always there.
LIGHT = [*NSBOX, "-p", "nsbench_light", "--nsbox-net=host", "--nsbox-user=host"]
FLOOR = ["-p", "nsbench_floor", "--floor"]
SERVER = ["-p", "nsbench_server"]  # the session runs a server (see nsbench_server.py)
FORKED = ["-p", "pytest_forked", "--forked"]

#: issue 13's targets (ratios of per-test overheads; start-up in ms); xdist_speedup is
#: issue 7's
TARGETS = {
    "full_vs_forked": 1.0,
    "full_vs_floor": 1.3,
    "full_vs_floor@hold": 1.2,
    "xdist_full_vs_floor": 1.3,
    "xdist_speedup": 1.8,
    "startup_ms": 30.0,
}


@dataclass
class Mode:
    name: str
    label: str
    python: str
    args: list[str]
    baseline: str | None  # the mode whose wall is subtracted (None: this is a baseline)
    hold_mb: int = 0
    user: User | None = None  # run as this unprivileged user (in its own copy of the suite)
    cwd: Path | None = None
    walls: list[float] = field(default_factory=list)
    cpus: list[float] = field(default_factory=list)  # machine CPU seconds of each run


def run_pytest(python: str, args: list[str], cwd: Path, hold_mb: int = 0,
               expect: str | None = None, extra_env: dict[str, str] | None = None,
               autoload: bool = False, user: User | None = None) -> tuple[float, str]:
    env = dict(os.environ) if user is None else user.env(dict(os.environ))
    env.pop("PYTEST_ADDOPTS", None)
    # a user's pytest finds its bytecode cached (and assertion-rewritten) after the first
    # run: without it, each run compiles nsbox's modules again (+80 ms a start-up)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    # the user's venv has no editable install: it imports its own copy of the package
    src = user.nsbox_src if user else NSBOX_SRC
    env["PYTHONPATH"] = str(HERE) + (os.pathsep + src if src else "")
    env["NSBENCH_HOLD_MB"] = str(hold_mb)
    if not autoload:
        env["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    env.update(extra_env or {})
    cmd = [python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "nsbench_hold", *args]
    start, cpu = time.perf_counter(), machine_cpu_seconds()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, check=False,
                          preexec_fn=user.preexec() if user else None)
    wall = time.perf_counter() - start
    LAST_CPU[0] = machine_cpu_seconds() - cpu
    out = proc.stdout + proc.stderr
    if expect is not None and (proc.returncode != 0 or not re.search(expect, out)):
        tail = "\n".join(out.splitlines()[-30:])
        who = f" as {user.name}" if user else ""
        raise SystemExit(f"benchmark run failed{who}: {' '.join(cmd)} (in {cwd})\n{tail}")
    return wall, out


def ensure_forked_venv(python: str) -> str | None:
    """benchmarks/.venv-forked with pytest 9.1.1 + pytest-forked 1.7.5 (made once, cached)."""
    vpy = FORKED_VENV / "bin" / "python"
    check = ("import importlib.metadata as m; "
             "print(m.version('pytest'), m.version('pytest-forked'))")
    want = " ".join(p.split("==")[1] for p in FORKED_PINS)
    if vpy.exists():
        got = subprocess.run([str(vpy), "-c", check], capture_output=True, text=True).stdout
        if got.strip() == want:
            return str(vpy)
        shutil.rmtree(FORKED_VENV)
    print(f"making {FORKED_VENV} ({', '.join(FORKED_PINS)}) ...", flush=True)
    try:
        subprocess.run([python, "-m", "venv", str(FORKED_VENV)], check=True)
        subprocess.run([str(vpy), "-m", "pip", "install", "-q", *FORKED_PINS], check=True)
    except subprocess.CalledProcessError as exc:
        print(f"  could not make the pytest-forked venv ({exc}); skipping pytest-forked")
        return None
    return str(vpy)


def write_suite(path: Path, count: int, body: str = "pass", header: str = "",
                per_module: int = 100) -> None:
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    (path / "pytest.ini").write_text("[pytest]\n")  # rootdir here: no outer ini, no addopts
    index = 0
    module = 0
    while index < count:
        lines = [header] if header else []
        for _ in range(min(per_module, count - index)):
            lines.append(f"def test_{index}():\n    {body}\n")
            index += 1
        (path / f"test_m{module:03d}.py").write_text("\n".join(lines))
        module += 1


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


# -- the main comparison --------------------------------------------------------------


def build_modes(python: str, forked_python: str | None, hold_mb: int) -> list[Mode]:
    modes = [
        Mode("plain", "plain pytest (baseline)", python, [], None),
        Mode("full", "nsbox, full boxes (6 namespaces, memory=256M, pids=64)", python, FULL,
             "plain"),
        Mode("light", "nsbox, lightest options (no userns, net=host, no tmpfs)", python, LIGHT,
             "plain"),
        Mode("floor", "floor: bare fork + pipe + pickle", python, FLOOR, "plain"),
        # what the session-fixture features cost a box: the overlay on /tmp (full boxes
        # have it; this mode has an empty tmpfs), and the relay of a session's server
        Mode("full-empty", "nsbox full boxes, tmpfs_mode=empty (no overlay)", python,
             [*FULL, "--nsbox-tmpfs-mode=empty"], "plain"),
        # ... and its layer on disk (the default) against a tmpfs (tmpfs_storage=ram)
        Mode("full-ram", "nsbox full boxes, tmpfs_storage=ram (the /tmp layer a tmpfs)",
             python, [*FULL, "--nsbox-tmpfs-storage=ram"], "plain"),
        Mode("plain+server", "plain pytest, a session server listening", python, SERVER,
             None),
        Mode("full+server", "nsbox full boxes, the session's server relayed (auto_forward)",
             python, [*FULL, *SERVER], "plain+server"),
        Mode("full+server-off", "nsbox full boxes, a session server, auto_forward=False",
             python, [*FULL, *SERVER, "--nsbox-auto-forward=false"], "plain+server"),
    ]
    if forked_python:
        modes += [
            Mode("fplain", "plain pytest 9.1.1 (pytest-forked's baseline)", forked_python, [],
                 None),
            Mode("forked", "pytest-forked 1.7.5 (pytest 9.1.1)", forked_python, FORKED,
                 "fplain"),
        ]
    if hold_mb:
        held = [
            Mode("plain@hold", f"plain pytest, {hold_mb} MB held", python, [], None, hold_mb),
            Mode("full@hold", f"nsbox full boxes, {hold_mb} MB held", python, FULL,
                 "plain@hold", hold_mb),
            Mode("light@hold", f"nsbox lightest, {hold_mb} MB held", python, LIGHT,
                 "plain@hold", hold_mb),
            Mode("floor@hold", f"floor, {hold_mb} MB held", python, FLOOR, "plain@hold",
                 hold_mb),
        ]
        if forked_python:
            held += [
                Mode("fplain@hold", f"plain pytest 9.1.1, {hold_mb} MB held", forked_python, [],
                     None, hold_mb),
                Mode("forked@hold", f"pytest-forked 1.7.5, {hold_mb} MB held", forked_python,
                     FORKED, "fplain@hold", hold_mb),
            ]
        modes += held
    return modes


#: the modes repeated with --user, as the unprivileged user (``user:``) and, for a fair
#: comparison with it, as root on the user's Python (``sys:``): what issue 13 compares
USER_MODES = ("plain", "full", "floor", "fplain", "forked",
              "plain@hold", "full@hold", "floor@hold", "fplain@hold", "forked@hold")
#: the twins' prefixes and what they are ({user}: the user's name), in the order of the
#: ratio table's columns
TWINS = {"sys:": "root on the system's Python", "user:": "as {user}"}


def twin_modes(modes: list[Mode], prefix: str, pythons: dict[str, str],
               user: User | None = None, suite: Path | None = None) -> list[Mode]:
    """`modes`' USER_MODES again with the pythons `pythons` maps theirs to, as `user` in
    `suite` when given; named and based on ``<prefix><root's name>``, labelled by TWINS."""
    what = TWINS[prefix].format(user=user.name if user else "")
    return [Mode(f"{prefix}{m.name}", f"{m.label}, {what}", pythons[m.python], m.args,
                 m.baseline and f"{prefix}{m.baseline}", m.hold_mb, user, suite)
            for m in modes if m.name in USER_MODES]


def measure_overhead(modes: list[Mode], suite: Path, count: int, rounds: int,
                     seed: int) -> dict[str, dict[str, float]]:
    expect = rf"\b{count} passed\b"
    print(f"warm-up: each mode once on {count} tests", flush=True)
    for mode in modes:
        run_pytest(mode.python, mode.args, mode.cwd or suite, mode.hold_mb, expect,
                   user=mode.user)
    rng = random.Random(seed)
    for r in range(rounds):
        order = modes[:]
        rng.shuffle(order)
        for mode in order:
            wall, _ = run_pytest(mode.python, mode.args, mode.cwd or suite, mode.hold_mb,
                                 expect, user=mode.user)
            mode.walls.append(wall)
            mode.cpus.append(LAST_CPU[0])
        LOADS.append(os.getloadavg()[0])
        print(f"round {r + 1}/{rounds} (load {LOADS[-1]:.1f}): " + ", ".join(
            f"{m.name}={m.walls[-1]:.2f}s" for m in modes), flush=True)
    by_name = {m.name: m for m in modes}
    results: dict[str, dict[str, float]] = {}
    for mode in modes:
        entry = {"label": mode.label, "wall_median_s": median(mode.walls),
                 "walls_s": mode.walls, "hold_mb": mode.hold_mb}
        if mode.baseline:
            base = by_name[mode.baseline]
            per_round = [(w - b) / count * 1000 for w, b in zip(mode.walls, base.walls)]
            entry["overhead_ms"] = median(per_round)
            entry["overhead_ms_rounds"] = per_round
            entry["overhead_ms_min"] = min(per_round)
            entry["overhead_ms_max"] = max(per_round)
            entry["baseline"] = mode.baseline
            entry["cpu_ms"] = median([(c - b) / count * 1000
                                      for c, b in zip(mode.cpus, base.cpus)])
        results[mode.name] = entry  # type: ignore[assignment]
    return results


#: each ratio: (the mode over, the mode under)
RATIOS = {
    "full_vs_forked": ("full", "forked"),
    "full_vs_floor": ("full", "floor"),
    "light_vs_forked": ("light", "forked"),
    "light_vs_floor": ("light", "floor"),
    "forked_vs_floor": ("forked", "floor"),
    "full_vs_forked@hold": ("full@hold", "forked@hold"),
    "full_vs_floor@hold": ("full@hold", "floor@hold"),
    "light_vs_floor@hold": ("light@hold", "floor@hold"),
}
#: the ratios the twins (USER_MODES) have
TWIN_RATIOS = ("full_vs_forked", "full_vs_floor", "forked_vs_floor", "full_vs_forked@hold",
               "full_vs_floor@hold")


def ratios(results: dict[str, dict[str, float]]) -> dict[str, float | None]:
    def ratio(a: str, b: str) -> float | None:
        if a in results and b in results and "overhead_ms" in results[a]:
            return results[a]["overhead_ms"] / results[b]["overhead_ms"]
        return None

    found = {key: ratio(a, b) for key, (a, b) in RATIOS.items()}
    for prefix in TWINS:
        if f"{prefix}plain" in results:
            found |= {prefix + key: ratio(prefix + RATIOS[key][0], prefix + RATIOS[key][1])
                      for key in TWIN_RATIOS}
    return found


def feature_costs(results: dict[str, dict[str, float]]) -> dict[str, float | None]:
    """ms per box of the overlay on /tmp and of relaying a session's server."""

    def diff(a: str, b: str) -> float | None:
        if a in results and b in results and "overhead_ms" in results[a]:
            return results[a]["overhead_ms"] - results[b]["overhead_ms"]
        return None

    return {"tmp_overlay_ms": diff("full", "full-empty"),
            "tmp_on_disk_ms": diff("full", "full-ram"),
            "auto_forward_ms": diff("full+server", "full+server-off"),
            "auto_forward_no_server_ms": diff("full", "full+server-off")}


# -- start-up and imports -------------------------------------------------------------


def measure_startup(python: str, repeats: int) -> dict[str, object]:
    """``pytest --co -q`` in an empty dir with and without nsbox, interleaved, medians.

    Two settings: every installed plugin auto-loaded (``-p no:nsbox`` blocks nsbox's
    entry point), and no auto-loading (nsbox added with ``-p pytest_nsbox.plugin``),
    which has far less noise around the difference.
    """
    empty = Path(tempfile.mkdtemp(prefix="nsbench-empty-"))
    settings = {
        "all_plugins": (True, [], ["-p", "no:nsbox"]),
        "no_autoload": (False, ["-p", "pytest_nsbox.plugin"], []),
    }
    result: dict[str, object] = {"repeats": repeats}
    try:
        for name, (autoload, with_args, without_args) in settings.items():
            with_nsbox: list[float] = []
            without: list[float] = []
            for i in range(repeats + 2):
                pair = [(with_nsbox, with_args), (without, without_args)]
                if i % 2:
                    pair.reverse()
                for sink, extra in pair:
                    wall, _ = run_pytest(python, ["--co", *extra], empty, autoload=autoload)
                    if i >= 2:  # two warm-up pairs
                        sink.append(wall)
            diffs = [(a - b) * 1000 for a, b in zip(with_nsbox, without)]
            result[name] = {
                "with_nsbox_ms": median(with_nsbox) * 1000,
                "without_nsbox_ms": median(without) * 1000,
                "added_ms": (median(with_nsbox) - median(without)) * 1000,
                "added_ms_paired_median": median(diffs),
            }
    finally:
        shutil.rmtree(empty, ignore_errors=True)
    return result


def measure_imports(python: str) -> dict[str, object]:
    """What importing the plugin costs and pulls in (pytest itself imported first)."""
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    if NSBOX_SRC:
        env["PYTHONPATH"] = NSBOX_SRC
    proc = subprocess.run([python, "-X", "importtime", "-c",
                           "import pytest; import pytest_nsbox.plugin"],
                          capture_output=True, text=True, check=True, env=env, cwd="/")
    lines = [line for line in proc.stderr.splitlines() if line.startswith("import time:")]
    start = next((i for i, line in enumerate(lines) if line.rstrip().endswith("| pytest")), 0)
    modules: list[tuple[str, int]] = []
    for line in lines[start + 1:]:
        parts = [p.strip() for p in line.split("|")]
        if len(parts) == 3 and parts[1].isdigit():
            modules.append((parts[2], int(parts[1])))
    plugin_us = next((us for name, us in modules if name == "pytest_nsbox.plugin"), None)
    names = [name for name, _ in modules]
    return {
        "plugin_import_cumulative_us": plugin_us,
        "modules_imported_by_plugin": names,
        "pyroute2_imported": any(n.startswith("pyroute2") for n in names),
        "cloudpickle_imported": any(n.startswith("cloudpickle") for n in names),
    }


def check_pyroute2_in_session(python: str) -> dict[str, object]:
    """A boxed session (default options: net=isolated, lo up) must not import pyroute2."""
    suite = WORK / "modules"
    write_suite(suite, 0)
    (suite / "test_modules.py").write_text(
        "import sys\n\n"
        "def test_box_side():\n"
        "    assert 'pyroute2' not in sys.modules, sorted(m for m in sys.modules if 'pyroute2' in m)\n"
    )
    out_file = WORK / "modules.json"
    out_file.unlink(missing_ok=True)
    _, out = run_pytest(python, [*FULL, "-p", "nsbench_modules"], suite,
                        extra_env={"NSBENCH_MODULES_OUT": str(out_file)})
    parent = json.loads(out_file.read_text()) if out_file.exists() else {}
    return {
        "pytest_process": {k: v for k, v in parent.items()},
        "box_side_test_passed": bool(re.search(r"\b1 passed\b", out)),
        "pyroute2_imported": bool(parent.get("pyroute2")) or not re.search(r"\b1 passed\b", out),
    }


# -- xdist ----------------------------------------------------------------------------


def measure_xdist(python: str, count: int, rounds: int, seed: int) -> dict[str, object]:
    """Boxed tests that each sleep 20 ms: -n 2 against -n 0 (and the same unboxed).

    Run on `count` tests and on `count // 3` tests: the wall speed-up on `count` is the
    target's figure; the marginal speed-up (the difference between the two sizes) leaves
    out xdist's fixed cost of starting its workers.
    """
    small = max(1, count // 3)
    suites = {}
    for size in (small, count):
        suites[size] = WORK / f"sleep{size}"
        write_suite(suites[size], size, body="time.sleep(0.02)", header="import time\n")
    variants = {
        "boxed -n 0": ["-p", "xdist", *NSBOX, "-n", "0"],
        "boxed -n 2": ["-p", "xdist", *NSBOX, "-n", "2"],
        "plain -n 0": ["-p", "xdist", "-n", "0"],
        "plain -n 2": ["-p", "xdist", "-n", "2"],
    }
    runs = [(name, size) for name in variants for size in suites]
    walls: dict[str, list[float]] = {f"{name} @{size}": [] for name, size in runs}
    rng = random.Random(seed)
    for name, size in runs:  # warm-up
        run_pytest(python, variants[name], suites[size], expect=rf"\b{size} passed\b")
    for _ in range(rounds):
        order = runs[:]
        rng.shuffle(order)
        for name, size in order:
            walls[f"{name} @{size}"].append(run_pytest(
                python, variants[name], suites[size], expect=rf"\b{size} passed\b")[0])
    med = {k: median(v) for k, v in walls.items()}

    def wall(name: str) -> float:
        return med[f"{name} @{count}"]

    def marginal(name: str) -> float:
        return med[f"{name} @{count}"] - med[f"{name} @{small}"]

    return {
        "tests": count,
        "small_tests": small,
        "sleep_ms": 20,
        "walls_s": walls,
        "median_s": {name: wall(name) for name in variants},
        "boxed_speedup": wall("boxed -n 0") / wall("boxed -n 2"),
        "plain_speedup": wall("plain -n 0") / wall("plain -n 2"),
        "boxed_marginal_speedup": marginal("boxed -n 0") / marginal("boxed -n 2"),
        "plain_marginal_speedup": marginal("plain -n 0") / marginal("plain -n 2"),
    }


def measure_xdist_overhead(python: str, suite: Path, count: int, rounds: int, seed: int,
                           twins: dict[str, Mode] | None = None) -> dict[str, object]:
    """Per-test box overhead inside an xdist worker (a threaded process), and for each
    twin (prefix -> its plain mode: its python, suite and user) the same in the same
    rounds, under names with its prefix."""
    expect = rf"\b{count} passed\b"
    args = {
        "plain -n 1": ["-p", "xdist", "-n", "1"],
        "full -n 1": ["-p", "xdist", *FULL, "-n", "1"],
        "floor -n 1": ["-p", "xdist", *FLOOR, "-n", "1"],
    }
    runs: dict[str, tuple[str, Path, User | None, list[str]]] = {
        name: (python, suite, None, a) for name, a in args.items()}
    for prefix, twin in (twins or {}).items():
        runs |= {f"{prefix}{name}": (twin.python, twin.cwd or suite, twin.user, a)
                 for name, a in args.items()}
    walls: dict[str, list[float]] = {k: [] for k in runs}
    rng = random.Random(seed)
    for py, cwd, who, a in runs.values():
        run_pytest(py, a, cwd, expect=expect, user=who)
    for _ in range(rounds):
        order = list(runs)
        rng.shuffle(order)
        for name in order:
            py, cwd, who, a = runs[name]
            walls[name].append(run_pytest(py, a, cwd, expect=expect, user=who)[0])
    result: dict[str, object] = {"walls_s": walls}
    for prefix in ("", *(twins or {})):
        over = {}
        for name in ("full -n 1", "floor -n 1"):
            per_round = [(w - b) / count * 1000 for w, b in
                         zip(walls[prefix + name], walls[prefix + "plain -n 1"])]
            over[name] = median(per_round)
        result[f"{prefix}overhead_ms"] = over
        result[f"{prefix}full_vs_floor"] = over["full -n 1"] / over["floor -n 1"]
    return result


# -- report ---------------------------------------------------------------------------


def fmt(value: object, spec: str = ".2f") -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return format(value, spec)
    return str(value)


def verdict(value: float | None, target: float, higher_is_better: bool = False) -> str:
    if value is None:
        return "not measured"
    ok = value >= target if higher_is_better else value <= target
    return "met" if ok else "**not met**"


def ratio_table(rat: dict[str, float | None], cfg: dict[str, object]) -> list[str]:
    """The ratios against their targets: root's and, with --user, the twins' beside (root on
    the user's Python, the user), each verdict named by its column."""
    user = cfg.get("user")
    held = f", {cfg['hold_mb']} MB held"
    rows = [("full boxes / pytest-forked", "full_vs_forked"),
            ("full boxes / floor", "full_vs_floor"),
            ("lightest boxes / floor", "light_vs_floor"),
            ("lightest boxes / pytest-forked", "light_vs_forked"),
            ("pytest-forked / floor", "forked_vs_floor"),
            (f"full boxes / floor{held}", "full_vs_floor@hold"),
            (f"full boxes / pytest-forked{held}", "full_vs_forked@hold"),
            (f"lightest boxes / floor{held}", "light_vs_floor@hold")]
    columns = {"": "root" if os.geteuid() == 0 else "this user"}
    if user:
        columns |= {p: what.format(user=user) for p, what in TWINS.items()}
    lines = ["| ratio of per-test overheads | " + " | ".join(columns.values()) + " | target | |",
             "|---|" + "---:|" * len(columns) + "---:|---|"]
    for label, key in rows:
        target = TARGETS.get(key)
        cells = [fmt(rat[p + key]) if p + key in rat else "" for p in columns]
        met = "; ".join(f"{name}: {verdict(rat[p + key], target)}"
                        for p, name in columns.items()
                        if rat.get(p + key) is not None) if target else ""
        lines.append(f"| {label} | {' | '.join(cells)} | "
                     f"{f'<= {target}' if target else ''} | {met} |")
    return lines


def render(data: dict[str, object]) -> str:
    facts: dict[str, str] = data["machine"]  # type: ignore[assignment]
    res: dict[str, dict[str, float]] = data["overhead"]  # type: ignore[assignment]
    rat: dict[str, float | None] = data["ratios"]  # type: ignore[assignment]
    cfg: dict[str, object] = data["config"]  # type: ignore[assignment]
    lines = [
        f"Generated by `python benchmarks/overhead.py{' --quick' if cfg['quick'] else ''}` "
        f"on {facts['date']}.",
        "",
        f"Machine: {facts['cores']} cores ({facts['cpu']}), {facts['memory']} RAM, "
        f"Linux {facts['kernel']}, Python {facts['python']}, pytest {facts['pytest']} "
        f"(pytest-forked runs on pytest {facts.get('forked_pytest', 'n/a')}), "
        f"cgroups {facts['cgroups']}; running as {'root' if os.geteuid() == 0 else 'non-root'}.",
        f"pytest_nsbox measured: {cfg['nsbox_source']}; "
        f"cgroup limits wired: {'yes' if cfg['cgroups_wired'] else 'no (the memory and pids options are accepted, not enforced)'}.",
        *([f"Modes marked \"as {cfg['user']}\" run as that unprivileged user (`--user`), "
           f"with Python {facts.get('user_python')} (the system's) in venvs of its own, in "
           "cgroups root made and gave it as `cgcreate -a -t` would (nsbench_user.py); "
           "modes marked \"root on the system's Python\" run the same venvs as root: the "
           "user's figures compare with those (root's own Python is another build)."]
          if cfg.get("user") else []),
        "",
        f"Suite: {cfg['tests']} trivial tests (`def test_i(): pass`), {cfg['rounds']} "
        "interleaved rounds in shuffled order; overhead per test = (wall - wall of plain "
        "pytest in the same venv, same round, same memory held) / N, median over rounds "
        "(min-max in brackets).",
        "",
        "The last column is the CPU time the whole machine spent per test beyond plain "
        "pytest (every process, and the kernel's own work such as tearing namespaces down "
        "in its workqueues; /proc/stat): on these 2 cores a mode cannot take less wall "
        "than half its CPU.",
        "",
        "| mode | wall (median) | overhead per test | machine CPU per test |",
        "|---|---:|---:|---:|",
    ]
    for name, entry in res.items():
        over = ("baseline" if "overhead_ms" not in entry else
                f"{entry['overhead_ms']:.2f} ms ({entry['overhead_ms_min']:.2f}-"
                f"{entry['overhead_ms_max']:.2f})")
        cpu = f"{entry['cpu_ms']:.2f} ms" if "cpu_ms" in entry else ""
        lines.append(f"| {entry['label']} | {entry['wall_median_s']:.2f} s | {over} | {cpu} |")
    loads: list[float] = data.get("load_averages") or []  # type: ignore[assignment]
    if loads and max(loads) > 1.5:
        lines += ["", f"Note: 1-minute load average after each round: "
                  f"{', '.join(f'{x:.1f}' for x in loads)}. Boxed runs alone raise it (pytest's "
                  "test process, the box maker and the kernel's workers are runnable at once); "
                  "other work on the machine would too. Interleaving keeps the ratios fair; "
                  "absolute figures are higher under other work."]
    lines += ["", *ratio_table(rat, cfg)]
    fc = data.get("feature_costs")
    if isinstance(fc, dict):
        lines += [
            "",
            "What the session-fixture features add to a full box (differences of the "
            "overheads above): the overlay on `/tmp` (full vs `tmpfs_mode=empty`) "
            f"{fmt(fc['tmp_overlay_ms'])} ms; its layer on disk rather than a tmpfs (full vs "
            f"`tmpfs_storage=ram`) {fmt(fc.get('tmp_on_disk_ms'))} ms; relaying a session's "
            "server (auto_forward on "
            f"vs off, a server listening) {fmt(fc['auto_forward_ms'])} ms; finding no server "
            f"to relay {fmt(fc['auto_forward_no_server_ms'])} ms.",
        ]
    xd = data.get("xdist")
    if isinstance(xd, dict):
        med = xd["median_s"]
        lines += [
            "",
            f"**pytest-xdist**: {xd['tests']} boxed tests that each sleep 20 ms (default box "
            "options): "
            f"-n 0 {med['boxed -n 0']:.2f} s, -n 2 {med['boxed -n 2']:.2f} s: speed-up "
            f"**{xd['boxed_speedup']:.2f}x** (target >= 1.8x: "
            f"{verdict(xd['boxed_speedup'], TARGETS['xdist_speedup'], True)}). The same suite unboxed: "
            f"{med['plain -n 0']:.2f} s / {med['plain -n 2']:.2f} s = "
            f"{xd['plain_speedup']:.2f}x: what xdist itself reaches here, its workers' "
            "start-up included. Marginal speed-up, from the difference between "
            f"{xd['small_tests']} and {xd['tests']} tests (xdist's fixed start-up left out): "
            f"boxed {xd['boxed_marginal_speedup']:.2f}x, unboxed "
            f"{xd['plain_marginal_speedup']:.2f}x.",
        ]
    xo = data.get("xdist_overhead")
    if isinstance(xo, dict):
        ov = xo["overhead_ms"]
        lines += [
            "",
            f"Inside an xdist worker (`-n 1`, a process with an execnet thread): full boxes "
            f"{ov['full -n 1']:.2f} ms per test, floor {ov['floor -n 1']:.2f} ms: ratio "
            f"**{xo['full_vs_floor']:.2f}** (target <= {TARGETS['xdist_full_vs_floor']}: "
            f"{verdict(xo['full_vs_floor'], TARGETS['xdist_full_vs_floor'])})."
            + "".join(
                f" {what[0].upper()}{what[1:].format(user=cfg['user'])}: "
                f"{xo[p + 'overhead_ms']['full -n 1']:.2f} "
                f"vs {xo[p + 'overhead_ms']['floor -n 1']:.2f} ms, ratio "
                f"**{xo[p + 'full_vs_floor']:.2f}** "
                f"({verdict(xo[p + 'full_vs_floor'], TARGETS['xdist_full_vs_floor'])})."
                for p, what in TWINS.items() if p + "full_vs_floor" in xo),
        ]
    st = data.get("startup")
    if isinstance(st, dict):
        a, n = st["all_plugins"], st["no_autoload"]
        worst = max(a["added_ms"], n["added_ms"])
        lines += [
            "",
            f"**Start-up**: `pytest --co -q` in an empty directory, median of {st['repeats']} "
            f"interleaved pairs. Every installed plugin auto-loaded: {a['with_nsbox_ms']:.1f} ms "
            f"with nsbox, {a['without_nsbox_ms']:.1f} ms with `-p no:nsbox`: "
            f"**{a['added_ms']:+.1f} ms** (paired median {a['added_ms_paired_median']:+.1f} ms). "
            f"No auto-loading: {n['with_nsbox_ms']:.1f} ms with `-p pytest_nsbox.plugin`, "
            f"{n['without_nsbox_ms']:.1f} ms without: **{n['added_ms']:+.1f} ms** (paired "
            f"{n['added_ms_paired_median']:+.1f} ms). Target < {TARGETS['startup_ms']:.0f} ms: "
            f"{verdict(worst, TARGETS['startup_ms'])}.",
        ]
    im = data.get("imports")
    if isinstance(im, dict):
        cum = im["plugin_import_cumulative_us"]
        lines += [
            "",
            f"**Imports**: `import pytest_nsbox.plugin` after pytest costs "
            f"{fmt(cum / 1000 if cum else None, '.1f')} ms and imports "
            f"{len(im['modules_imported_by_plugin'])} modules; pyroute2 among them: "
            f"**{'yes' if im['pyroute2_imported'] else 'no'}**.",
        ]
    ss = data.get("session_modules")
    if isinstance(ss, dict):
        lines += [
            f"After a boxed session (full options, net=isolated, so lo is brought up): pyroute2 "
            f"in the pytest process: **{'yes' if ss['pytest_process'].get('pyroute2') else 'no'}**; "
            f"in the box (a test asserts it): "
            f"**{'no' if ss['box_side_test_passed'] else 'yes (or the check failed)'}**.",
        ]
    return "\n".join(lines)


def cgroups_wired(python: str) -> bool:
    """Whether the measured pytest_nsbox has a cgroups module its box uses."""
    env = dict(os.environ, PYTHONPATH=NSBOX_SRC or "")
    code = ("import importlib.util, pathlib, pytest_nsbox as p; "
            "d = pathlib.Path(p.__file__).parent; "
            "print(importlib.util.find_spec('pytest_nsbox.resources.cgroups') is not None and "
            "'cgroups' in ''.join(f.read_text() for n in ('supervise.py', 'inside.py') "
            "for f in d.rglob(n)))")
    out = subprocess.run([python, "-c", code], capture_output=True, text=True, env=env,
                         cwd="/", check=False).stdout
    return out.strip() == "True"


def resolve_source(spec: str) -> tuple[str | None, str]:
    """(directory for PYTHONPATH or None, a description) for --nsbox-src."""
    def git(*cmd: str) -> str:
        return subprocess.run(["git", "-C", str(ROOT), *cmd], capture_output=True, text=True,
                              check=False).stdout.strip()

    if spec == "worktree":
        dirty = " (uncommitted changes)" if git("status", "--porcelain", "pytest_nsbox") else ""
        return None, f"work tree at {git('rev-parse', '--short', 'HEAD')}{dirty}"
    if spec == "HEAD":
        target = WORK / "nsbox-head"
        if target.exists():
            shutil.rmtree(target)
        target.mkdir(parents=True)
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", "HEAD", "pytest_nsbox"],
                                 capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)
        return str(target), f"commit {git('rev-parse', '--short', 'HEAD')} ({git('log', '-1', '--format=%s')})"
    path = Path(spec).resolve()
    if not (path / "pytest_nsbox" / "__init__.py").exists():
        raise SystemExit(f"--nsbox-src {spec}: no pytest_nsbox package in it")
    return str(path), f"directory {path}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tests", "-N", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="N=100, 2 rounds, short extras")
    parser.add_argument("--hold-mb", type=int, default=300)
    parser.add_argument("--no-forked", action="store_true", help="skip pytest-forked")
    parser.add_argument("--xdist-tests", type=int, default=240)
    parser.add_argument("--startup-repeats", type=int, default=40)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--no-docs", action="store_true", help="do not touch docs/performance.md")
    parser.add_argument("--modes", default="", help="only these modes (comma-separated names; "
                        "their baselines come along), e.g. full,full-empty")
    parser.add_argument("--no-extras", action="store_true",
                        help="only the per-test overheads: no start-up, xdist or docs")
    parser.add_argument("--json", default=str(HERE / "results.json"))
    parser.add_argument("--user", metavar="NAME",
                        help="also run the main modes as this unprivileged user (root only; "
                             "made with useradd if missing), side by side: see nsbench_user")
    parser.add_argument(
        "--nsbox-src", default="HEAD", metavar="HEAD|worktree|DIR",
        help="which pytest_nsbox to measure: HEAD (default: `git archive` of the last commit, "
             "so a half-edited work tree cannot break a long run), worktree (the editable "
             "install as it is), or a directory that holds a pytest_nsbox package")
    args = parser.parse_args()
    global NSBOX_SRC
    NSBOX_SRC, source = resolve_source(args.nsbox_src)
    if args.quick:
        args.tests, args.rounds = 100, 2
        args.xdist_tests, args.startup_repeats = 60, 8

    python = sys.executable
    try:
        import pytest  # noqa: F401
    except ImportError:
        raise SystemExit(f"{python} cannot import pytest: run this with the dev venv's "
                         "python") from None

    forked_python = None if args.no_forked else ensure_forked_venv(python)
    facts = machine_facts(python)
    if forked_python:
        facts["forked_pytest"] = machine_facts(forked_python)["pytest"]
    WORK.mkdir(exist_ok=True)
    suite = WORK / "trivial"
    write_suite(suite, args.tests)
    modes = build_modes(python, forked_python, args.hold_mb)
    user = None
    if args.user:
        # the twins' venvs have no editable install: the work tree goes on their path
        NSBOX_SRC = NSBOX_SRC or str(ROOT)
        user = prepare(args.user, WORK)  # its cgroups go at exit: so does a SIGTERM
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
        pythons = {python: user.venv("venv", dev_pins())}
        if forked_python:
            pythons[forked_python] = user.venv("venv-forked", list(FORKED_PINS))
        facts["user_python"] = subprocess.run(
            [pythons[python], "-c", "import platform; print(platform.python_version())"],
            capture_output=True, text=True, check=True).stdout.strip()
        # its own copy of the package measured, where it can write bytecode as root can
        user.nsbox_src = str(user.copy(Path(NSBOX_SRC) / "pytest_nsbox").parent)
        modes += [*twin_modes(modes, "sys:", pythons),
                  *twin_modes(modes, "user:", pythons, user, user.copy(suite))]
    if args.modes:
        wanted = set(args.modes.split(","))
        modes = [m for m in modes if m.name in wanted or (m.baseline is None and any(
            n.baseline == m.name for n in modes if n.name in wanted))]
    print(f"{len(modes)} modes x {args.rounds} rounds on {args.tests} tests", flush=True)

    data: dict[str, object] = {
        "config": {"tests": args.tests, "rounds": args.rounds, "hold_mb": args.hold_mb,
                   "user": args.user,
                   "quick": args.quick, "seed": args.seed,
                   "cgroups_wired": cgroups_wired(python),
                   "args": {m.name: m.args for m in modes}},
        "machine": facts,
    }
    data["config"]["nsbox_source"] = source  # type: ignore[index]
    data["overhead"] = measure_overhead(modes, suite, args.tests, args.rounds, args.seed)
    data["ratios"] = ratios(data["overhead"])  # type: ignore[arg-type]
    data["feature_costs"] = feature_costs(data["overhead"])  # type: ignore[arg-type]
    if args.no_extras:
        print(json.dumps({"overhead_ms": {k: v.get("overhead_ms") for k, v in
                                          data["overhead"].items()},  # type: ignore[attr-defined]
                          "ratios": data["ratios"], "feature_costs": data["feature_costs"]},
                         indent=2))
        return
    print("start-up ...", flush=True)
    data["startup"] = measure_startup(python, args.startup_repeats)
    data["imports"] = measure_imports(python)
    data["session_modules"] = check_pyroute2_in_session(python)
    print("xdist ...", flush=True)
    data["xdist"] = measure_xdist(python, args.xdist_tests, max(2, args.rounds - 2), args.seed)
    data["xdist_overhead"] = measure_xdist_overhead(
        python, suite, args.tests, max(2, args.rounds - 2), args.seed,
        {p: m for p in TWINS for m in modes if m.name == f"{p}plain"})

    data["load_averages"] = LOADS
    Path(args.json).write_text(json.dumps(data, indent=2, default=str) + "\n")
    print(f"wrote {args.json}")  # before the report: a long run's figures survive its bugs
    text = render(data)
    print()
    print(text)
    if not args.no_docs:
        replace_section("overhead", text)
        print(f"wrote the overhead section of {ROOT / 'docs' / 'performance.md'}")


if __name__ == "__main__":
    main()
