#!/usr/bin/env python3
"""Real suites, boxed against unboxed: run real projects' own test suites with and
without ``--nsbox`` and compare every test's outcome.

For each project below: a venv (``python3 -m venv``, the machine's pyenv Python 3.11 when
there is one), the project's **sdist** of a pinned version from PyPI, its test
requirements (pinned, transitive ones too), this checkout (``pip install -e``); the sdist
is unpacked and its own tests are run from there, once unboxed and once with
``--nsbox``, each under ``nice -n 10`` with ``-p no:randomly -p no:cacheprovider``, a
JUnit XML file, and ``nsreal_plugin`` (beside this file) recording every test's outcome
as pytest's terminal classifies it (passed, failed, skipped, xfailed, xpassed, error;
``passed+error`` when a passing test's teardown errors). Then the two are compared test
by test.

Prints a table (tests, differences, wall time of each run) and every differing test id
with both outcomes and the first line of the failure message, then the boxed run's whole
failure text from its JUnit XML (``<project>-boxed.xml``), up to 60 lines: a timed-out
box's stack dump is in it (a CI log has nothing else to show); exits 1 when any test
differs (or a run could not be made), 0 otherwise. Everything is made under
``benchmarks/.work/real-suites/`` (``--workdir``); nothing is cached outside it, and
``--reuse`` keeps venvs and unpacked sdists from an earlier run of the same pins.

    python3 benchmarks/real_suites.py                 # every project
    python3 benchmarks/real_suites.py -p requests -p httpx --reuse
    python3 benchmarks/real_suites.py --json out.json # also write the full comparison
    # both runs under pytest-xdist, installed into the venvs for this run only
    python3 benchmarks/real_suites.py -p requests --reuse \
        --pip pytest-xdist==3.8.0 --pip execnet==2.1.2 --both-arg=-n --both-arg=2

Nothing is deselected unless noted at the project (``deselect``), with the reason.
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import time
import xml.etree.ElementTree as ET
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
CHECKOUT = HERE.parent
RUN_TIMEOUT = 900  # seconds for one pytest run; a run past it is killed and reported
FAILURE_LINES = 60  # most lines of a differing test's boxed failure text printed


@dataclasses.dataclass(frozen=True)
class Project:
    name: str
    version: str
    build: tuple[str, ...]  # the sdist's build backend (pinned): built without isolation
    extras: str  # "[socks]" etc.
    requires: tuple[str, ...]  # test requirements and every transitive pin
    args: tuple[str, ...] = ()  # pytest arguments (run from the unpacked sdist's root)
    deselect: tuple[tuple[str, str], ...] = ()  # (node id, why it cannot run here)
    apt: tuple[str, ...] = ()  # Debian packages the suite needs (a server)
    server: str = ""  # a command nsreal_plugin runs as a child of pytest
    server_port: int = 0
    lane_args: tuple[str, ...] = ()  # added to args unless --full (CI's time budget)
    ini: str = ""  # a pytest.ini written into the unpacked sdist (when it lacks its own)
    mkdirs: tuple[str, ...] = ()  # directories made in the unpacked sdist
    why: str = ""  # what this suite exercises


PROJECTS = [
    Project(
        name="requests",
        version="2.32.3",
        build=("setuptools==75.6.0", "wheel==0.45.1"),
        extras="[socks]",
        why="pytest-httpbin's session servers (HTTP and HTTPS, threads of pytest), wrapped "
        "by same-name function fixtures in its conftest; trustme certificates",
        requires=(
            # requirements-dev.txt of 2.32.3: pytest<9, pytest-httpbin==2.0.0,
            # httpbin~=0.10.0, trustme
            "pytest==8.3.4", "pytest-httpbin==2.0.0", "httpbin==0.10.2", "trustme==1.2.0",
            # the rest of what they pulled in, pinned as resolved on 2026-12-01
            "attrs==26.1.0", "blinker==1.9.0", "brotlicffi==1.2.1.0", "certifi==2026.10.19.post1",
            "cffi==2.1.1", "charset-normalizer==3.5.3", "click==8.5.1", "cryptography==50.0.2",
            "decorator==5.3.1", "flasgger==0.9.7.1", "Flask==3.1.3", "greenlet==2.0.2",
            "idna==3.20", "iniconfig==2.3.1", "itsdangerous==2.2.0", "Jinja2==3.1.6",
            "jsonschema==4.26.0", "jsonschema-specifications==2025.9.1", "MarkupSafe==3.0.4",
            "mistune==3.4.0", "packaging==26.4", "pluggy==1.7.0", "pycparser==3.12",
            "PySocks==1.7.1", "PyYAML==6.0.4", "referencing==0.37.0", "rpds-py==2026.9.1",
            "six==1.17.0", "typing_extensions==4.16.0", "urllib3==2.8.0", "Werkzeug==3.1.9",
        ),
        deselect=(
            *((f"tests/test_requests.py::TestTimeout::{t}[timeout{i}]",
               "connects to 10.255.255.1 expecting no answer (a time-out); this machine's "
               "network refuses it at once, so it fails in both modes")
              for t in ("test_connect_timeout", "test_total_timeout_connect") for i in (0, 1)),
            ("tests/test_requests.py::TestPreparingURLs::"
             "test_different_connection_pool_for_mtls_settings",
             "the sdist's tests/certs/mtls client certificate has expired: fails in both modes"),
        ),
    ),
    Project(
        name="httpx",
        version="0.28.1",
        build=("hatchling==1.27.0", "hatch-fancy-pypi-readme==24.1.0"),
        extras="[brotli,cli,http2,socks,zstd]",
        why="uvicorn servers in session fixtures (threads of pytest), trustme certificates "
        "and keys written with tempfile to /tmp in session fixtures",
        requires=(
            # requirements.txt of 0.28.1 (not in the sdist): the test part of it
            "pytest==8.3.4", "trustme==1.2.0", "uvicorn==0.32.1", "trio==0.27.0",
            "cryptography==44.0.0", "chardet==5.2.0",
            # click of then: 8.2+ deprecates isolated_filesystem, which test_main.py uses
            "click==8.1.8",
            # the rest, pinned as resolved on 2026-12-01
            "anyio==4.16.0", "attrs==26.1.0", "brotli==1.2.1", "certifi==2026.10.19.post1",
            "cffi==2.1.1", "h11==0.16.0", "h2==4.4.1", "hpack==4.2.0", "httpcore==1.0.9",
            "hyperframe==6.1.0", "idna==3.20", "iniconfig==2.3.1", "markdown-it-py==4.3.0",
            "mdurl==0.1.2", "outcome==1.3.0.post0", "packaging==26.4", "pluggy==1.7.0",
            "pycparser==3.12", "Pygments==2.21.0", "rich==13.9.4", "sniffio==1.3.1",
            "socksio==1.0.0", "sortedcontainers==2.4.0", "typing_extensions==4.16.0",
            "zstandard==0.25.0",
        ),
        deselect=(
            *((f"tests/client/test_proxies.py::{t}",
               "requests a public host through a proxy: needs DNS and the Internet, which "
               "this machine does not reach (fails in both modes)")
              for t in ("test_async_proxy_close[asyncio]", "test_async_proxy_close[trio]",
                        "test_sync_proxy_close")),
            ("tests/test_timeouts.py::test_write_timeout[trio]",
             "flaky here in both modes (unboxed 4 of 5 runs failed, boxed 2 of 6): whether "
             "the write times out, and a PytestUnraisableExceptionWarning from an async "
             "generator finalized during the test, depend on timing"),
        ),
        args=("tests",),
    ),
    Project(
        name="werkzeug",
        version="3.1.3",
        build=("flit_core==3.10.1",),
        extras="",
        why="dev servers started as subprocesses by fixtures, on TCP and unix sockets in "
        "tmp_path; the reloader; watchdog",
        requires=(
            # requirements/tests.txt of 3.1.3
            "cffi==1.17.1", "cryptography==43.0.3", "ephemeral-port-reserve==1.1.4",
            "iniconfig==2.0.0", "packaging==24.1", "pluggy==1.5.0", "pycparser==2.22",
            "pytest==8.3.3", "pytest-timeout==2.3.1", "watchdog==5.0.3",
        ),
        args=("tests",),
    ),
    Project(
        name="redis",
        version="5.2.1",
        build=("setuptools==75.6.0", "wheel==0.45.1"),
        extras="",
        why="a redis-server (Debian's) started as a child of pytest before the session, "
        "its session fixtures and per-test clients; sync and asyncio",
        requires=(
            "pytest==8.3.4", "pytest-asyncio==0.23.8", "pytest-timeout==2.3.1",
            "packaging==24.2", "ujson==5.10.0", "numpy==2.2.0", "uvloop==0.21.0",
            "iniconfig==2.3.1", "pluggy==1.7.0",
        ),
        # the repository's pytest.ini (not in the sdist): markers, asyncio_mode, timeout
        ini="""[pytest]
addopts = -s
markers =
    redismod: run only the redis module tests
    pipeline: pipeline tests
    onlycluster: marks tests to be run only with cluster mode redis
    onlynoncluster: marks tests to be run only with standalone redis
    ssl: marker for only the ssl tests
    asyncio: marker for async tests
    replica: replica tests
    experimental: run only experimental tests
asyncio_mode = auto
timeout = 30
filterwarnings =
    always
    ignore:RedisGraph support is deprecated as of Redis Stack 7.2:DeprecationWarning
""",
        # modules that look for the repository's dockers/*/tls at import (only isdir)
        mkdirs=("dockers/standalone/tls", "dockers/cluster/tls"),
        apt=("redis-server",),
        server="redis-server --port 6379 --bind 127.0.0.1 --save '' --appendonly no "
        "--enable-debug-command yes",
        server_port=6379,
        # as upstream's CI runs the standalone suite, without the parts that need servers
        # Debian does not package or this lane does not start: a six-node cluster
        # (onlycluster), Redis Stack's modules (redismod), a TLS server and the
        # repository's certificates (ssl)
        # RedisGraph (test_graph.py, a module server on :6480) is not packaged either
        args=("-m", "not onlycluster and not redismod and not ssl",
              "--ignore=tests/test_graph.py", "--ignore=tests/test_asyncio/test_graph.py",
              "tests"),
        # CI's time: the whole selection takes ~3 min unboxed here (its session fixture
        # runs tracemalloc), so the lane leaves out the command suites (1021 tests) and
        # pubsub/cwe_404 (sleep-bound); --full runs them
        lane_args=("--ignore=tests/test_commands.py",
                   "--ignore=tests/test_asyncio/test_commands.py",
                   "--ignore=tests/test_pubsub.py", "--ignore=tests/test_asyncio/test_pubsub.py",
                   "--ignore=tests/test_asyncio/test_cwe_404.py"),
    ),
]


def python311() -> str:
    found = sorted(glob.glob("/root/.pyenv/versions/3.11*/bin/python3"))
    return found[-1] if found else sys.executable


def run(cmd: list[str], **kw: object) -> None:
    subprocess.run(cmd, check=True, **kw)  # type: ignore[call-overload]


def ensure_apt(packages: tuple[str, ...]) -> None:
    missing = [p for p in packages
               if subprocess.run(["dpkg", "-s", p], capture_output=True).returncode != 0]
    if not missing:
        return
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    run(["apt-get", "update", "-qq"], env=env)
    run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing], env=env)
    # the Debian package starts its own server on the default port: this lane runs its own
    subprocess.run(["service", "redis-server", "stop"], capture_output=True)


def installed(py: Path) -> dict[str, str]:
    """The venv's distributions, {normalized name: version}."""
    listed = subprocess.run([str(py), "-m", "pip", "list", "--format=json",
                             "--disable-pip-version-check"],
                            check=True, capture_output=True, text=True).stdout
    return {d["name"].lower().replace("_", "-"): d["version"] for d in json.loads(listed)}


def install_extra(py: Path, pdir: Path, extra: tuple[str, ...]) -> None:
    """``--pip``: packages added to the venv for this run only. What an earlier run added
    (recorded in ``extra.json``) is undone first when this run asks for something else
    (nothing, by default): what it installed is uninstalled and what it up- or downgraded
    is put back, so a ``--reuse`` run without ``--pip`` runs the venv as the lane made it."""
    record = pdir / "extra.json"
    prev = json.loads(record.read_text()) if record.exists() else None
    if prev is not None and prev["asked"] == list(extra):
        return
    pip = [str(py), "-m", "pip", "-q", "--disable-pip-version-check"]
    if prev is not None:
        if prev["added"]:
            run([*pip, "uninstall", "-y", *prev["added"]])
        if prev["changed"]:
            run([*pip, "install", "--no-deps", *(f"{n}=={v}" for n, v in prev["changed"])])
        record.unlink()
    if not extra:
        return
    before = installed(py)
    run([*pip, "install", *extra])
    after = installed(py)
    record.write_text(json.dumps({
        "asked": list(extra),
        "added": sorted(n for n in after if n not in before),
        "changed": sorted([n, v] for n, v in before.items() if after.get(n, v) != v),
    }))


def prepare(project: Project, work: Path, reuse: bool,
            extra: tuple[str, ...] = ()) -> tuple[Path, Path]:
    """The venv's python and the unpacked sdist's root."""
    pdir = work / f"{project.name}-{project.version}"
    stamp = pdir / "ready.json"
    pins = {"build": project.build, "requires": project.requires, "extras": project.extras,
            "ini": project.ini, "mkdirs": project.mkdirs}
    pins = json.loads(json.dumps(pins))  # tuples as lists, as read back
    venv = pdir / "venv"
    py = venv / "bin" / "python"
    src = pdir / "src"
    if reuse and stamp.exists() and json.loads(stamp.read_text()) == pins:
        run([str(py), "-m", "pip", "install", "-q", "--no-deps", "-e", str(CHECKOUT)])
        install_extra(py, pdir, extra)
        return py, src
    if pdir.exists():
        shutil.rmtree(pdir)
    pdir.mkdir(parents=True)
    ensure_apt(project.apt)
    run([python311(), "-m", "venv", str(venv)])
    pip = [str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    run([*pip, *project.build])
    dl = pdir / "sdist"
    run([str(py), "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
         "--no-build-isolation", "-d", str(dl), f"{project.name}=={project.version}"])
    (sdist,) = dl.glob("*.tar.gz")
    run([*pip, "--no-build-isolation", f"{sdist}{project.extras}", *project.requires])
    # this checkout (its own backend, hatchling, in an isolated build); its dependencies
    # (pytest-nsbox's: pluggy, pyroute2, cloudpickle) from PyPI, the suite's pytest kept
    run([*pip, "-e", str(CHECKOUT)])
    with tarfile.open(sdist) as tar:
        tar.extractall(pdir / "unpacked", filter="data")
    (root,) = (pdir / "unpacked").iterdir()
    root.rename(src)
    if project.ini:
        (src / "pytest.ini").write_text(project.ini)
    for d in project.mkdirs:
        (src / d).mkdir(parents=True, exist_ok=True)
    stamp.write_text(json.dumps(pins))
    install_extra(py, pdir, extra)
    return py, src


@dataclasses.dataclass
class RunResult:
    outcomes: dict[str, dict[str, str]]
    wall: float
    exitcode: int
    summary: str
    wide_in_box: list[tuple[str, str, str]]  # (fixture, scope, test) set up in a box


def pytest_run(project: Project, py: Path, src: Path, out: Path, boxed: bool,
               full: bool, boxed_args: tuple[str, ...] = (),
               both_args: tuple[str, ...] = ()) -> RunResult:
    mode = "boxed" if boxed else "unboxed"
    outcomes_path = out / f"{project.name}-{mode}.json"
    outcomes_path.unlink(missing_ok=True)
    log = out / f"{project.name}-{mode}.log"
    # -p no:cacheprovider: nothing written into the sdist; also as many CI configs run
    # (it leaves pytest's `cache` fixture out, which redis-py's skipped TestCache asks for)
    cmd = ["nice", "-n", "10", str(py), "-m", "pytest", "-p", "nsreal_plugin",
           "-p", "no:randomly", "-p", "no:cacheprovider", "-q", "-rN",
           f"--junitxml={out / f'{project.name}-{mode}.xml'}",
           *(() if full else project.lane_args), *both_args, *project.args]
    for nodeid, _why in project.deselect:
        cmd.append(f"--deselect={nodeid}")
    if boxed:
        # a box that hangs is killed and reported as that test's failure, so one hang
        # does not cost the rest of the run; no test here takes a minute unboxed
        cmd += ["--nsbox", "--nsbox-timeout=120", *boxed_args]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "NSBOX_"))}
    env["PYTHONPATH"] = str(HERE)
    env["NSREAL_OUTCOMES"] = str(outcomes_path)
    wide_path = out / f"{project.name}-{mode}-wide.jsonl"
    wide_path.unlink(missing_ok=True)
    env["NSREAL_WIDE"] = str(wide_path)
    if project.server:
        env["NSREAL_SERVER"] = project.server
        env["NSREAL_SERVER_PORT"] = str(project.server_port)
    start = time.monotonic()
    with open(log, "wb") as f:
        proc = subprocess.Popen(cmd, cwd=src, env=env, stdout=f, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            code = proc.wait(RUN_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            code = proc.wait()
            f.write(f"\nreal_suites: killed after {RUN_TIMEOUT} s\n".encode())
    wall = time.monotonic() - start
    lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    summary = lines[-1] if lines else ""
    outcomes = json.loads(outcomes_path.read_text()) if outcomes_path.exists() else {}
    wide = ([tuple(json.loads(ln)) for ln in wide_path.read_text().splitlines()]
            if wide_path.exists() else [])
    return RunResult(outcomes, wall, code, summary, wide)


def compare(a: RunResult, b: RunResult) -> list[tuple[str, str, str, str]]:
    diffs = []
    for nodeid in sorted(set(a.outcomes) | set(b.outcomes)):
        oa = a.outcomes.get(nodeid, {}).get("outcome", "missing")
        ob = b.outcomes.get(nodeid, {}).get("outcome", "missing")
        if oa != ob:
            msg = b.outcomes.get(nodeid, {}).get("message", "") or \
                a.outcomes.get(nodeid, {}).get("message", "")
            diffs.append((nodeid, oa, ob, msg))
    return diffs


def junit_name(nodeid: str) -> tuple[str, str]:
    """(classname, name) of a node id's <testcase> in pytest's JUnit XML (as its
    junitxml plugin mangles it: the path dotted, without .py; the parameters kept)."""
    path, bracket, params = nodeid.partition("[")
    names = path.split("::")
    names[0] = re.sub(r"\.py$", "", names[0].replace("/", "."))
    names[-1] += bracket + params
    return ".".join(names[:-1]), names[-1]


def failure_texts(xml_path: Path) -> dict[tuple[str, str], str]:
    """{(classname, name): the text of every <failure> and <error> of that test}, from a
    JUnit XML file ({} when there is none or it cannot be read: a run killed half-way)."""
    try:
        root = ET.parse(xml_path).getroot()
    except (OSError, ET.ParseError):
        return {}
    texts: dict[tuple[str, str], str] = {}
    for case in root.iter("testcase"):
        parts = []
        for element in case:
            if element.tag in ("failure", "error"):
                # the body is the whole report (its message attribute is a part of it)
                body = (element.text or "").strip("\n") or element.get("message", "")
                parts.append(f"<{element.tag}>\n{body}")
        if parts:
            key = (case.get("classname", ""), case.get("name", ""))
            texts[key] = "\n".join(filter(None, (texts.get(key), *parts)))
    return texts


def truncated(text: str, limit: int = FAILURE_LINES) -> list[str]:
    lines = text.splitlines()
    if len(lines) <= limit:
        return lines
    return [*lines[:limit], f"[... {len(lines) - limit} more lines in the JUnit XML]"]


def counts(r: RunResult) -> str:
    c = Counter(v["outcome"] for v in r.outcomes.values())
    return ", ".join(f"{n} {k}" for k, n in c.most_common())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-p", "--project", action="append", choices=[p.name for p in PROJECTS],
                    help="only this project (repeatable); default: all")
    ap.add_argument("--workdir", type=Path, default=HERE / ".work" / "real-suites")
    ap.add_argument("--reuse", action="store_true",
                    help="keep venvs and sdists made by an earlier run with the same pins")
    ap.add_argument("--json", type=Path, help="write the full comparison here")
    ap.add_argument("--boxed-arg", action="append", default=[], metavar="ARG",
                    help="one more pytest argument for the boxed runs, e.g. "
                         "--boxed-arg=--nsbox-tmpfs-mode=empty (to see the lane catch it)")
    ap.add_argument("--both-arg", action="append", default=[], metavar="ARG",
                    help="one more pytest argument for both runs, e.g. --both-arg=-n "
                         "--both-arg=2 (with --pip pytest-xdist==...)")
    ap.add_argument("--pip", action="append", default=[], metavar="PKG",
                    help="one more requirement installed into the venvs for this run "
                         "(e.g. pytest-xdist==3.8.0); a later run without it removes it")
    ap.add_argument("--full", action="store_true",
                    help="run the parts of the suites the CI lane leaves out for time")
    ap.add_argument("--serial", action="store_true",
                    help="install each project only after the previous one ran (by default "
                         "the next one installs while the current one's tests run)")
    args = ap.parse_args()
    projects = [p for p in PROJECTS if not args.project or p.name in args.project]
    work = args.workdir.resolve()
    out = work / "out"
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    report: dict[str, object] = {}
    failed = False
    pool = ThreadPoolExecutor(1)  # installs, one at a time, ahead of the runs

    def timed_prepare(project: Project) -> tuple[Path, Path, float]:
        t0 = time.monotonic()
        py, src = prepare(project, work, args.reuse, tuple(args.pip))
        return py, src, time.monotonic() - t0

    pending = {} if args.serial else {p.name: pool.submit(timed_prepare, p) for p in projects}
    for project in projects:
        print(f"--- {project.name} {project.version}: install", flush=True)
        future = pending.get(project.name) or pool.submit(timed_prepare, project)
        try:
            py, src, setup = future.result()
        except subprocess.CalledProcessError as e:
            print(f"    install failed: {e}", flush=True)
            rows.append((project, None, None, None, 0.0))
            failed = True
            continue
        print(f"    {setup:.0f} s; unboxed run", flush=True)
        plain = pytest_run(project, py, src, out, boxed=False, full=args.full,
                           both_args=tuple(args.both_arg))
        print(f"    {plain.wall:.1f} s: {plain.summary}\n    boxed run", flush=True)
        boxed = pytest_run(project, py, src, out, boxed=True, full=args.full,
                           boxed_args=tuple(args.boxed_arg), both_args=tuple(args.both_arg))
        print(f"    {boxed.wall:.1f} s: {boxed.summary}", flush=True)
        diffs = compare(plain, boxed)
        rows.append((project, plain, boxed, diffs, setup))
        if diffs or boxed.wide_in_box or not plain.outcomes or not boxed.outcomes:
            failed = True
        report[project.name] = {
            "version": project.version, "install_seconds": round(setup, 1),
            "unboxed": {"wall": round(plain.wall, 2), "exitcode": plain.exitcode,
                        "counts": counts(plain), "summary": plain.summary},
            "boxed": {"wall": round(boxed.wall, 2), "exitcode": boxed.exitcode,
                      "counts": counts(boxed), "summary": boxed.summary},
            "differences": [{"test": n, "unboxed": a, "boxed": b, "message": m}
                            for n, a, b, m in diffs],
            "wider_fixtures_set_up_in_a_box": [list(w) for w in boxed.wide_in_box],
        }

    print("\n===== real suites, boxed against unboxed =====")
    print(f"{'project':<18} {'tests':>6} {'differ':>6} {'unboxed s':>10} {'boxed s':>8} "
          f"{'install s':>9} {'wide in box':>11}")
    for project, plain, boxed, diffs, setup in rows:
        label = f"{project.name} {project.version}"
        if plain is None or boxed is None or diffs is None:
            print(f"{label:<18} {'install failed':>24}")
            continue
        tests = len(set(plain.outcomes) | set(boxed.outcomes))
        print(f"{label:<18} {tests:>6} {len(diffs):>6} {plain.wall:>10.1f} "
              f"{boxed.wall:>8.1f} {setup:>9.0f} {len(boxed.wide_in_box):>11}")
    for project, plain, boxed, diffs, _ in rows:
        if plain is None or boxed is None:
            continue
        print(f"\n{project.name}: unboxed {counts(plain)}\n{' ' * len(project.name)}  "
              f"boxed   {counts(boxed)}")
        if not plain.outcomes or not boxed.outcomes:
            print(f"  a run recorded no test: see {out}/{project.name}-*.log")
        boxed_xml = out / f"{project.name}-boxed.xml"
        texts = failure_texts(boxed_xml) if diffs else {}
        for nodeid, a, b, msg in diffs or []:
            print(f"  {nodeid}\n      unboxed {a}, boxed {b}: {msg}")
            # the whole failure of the boxed run (a timed-out box's stack dump is in it)
            text = texts.get(junit_name(nodeid))
            if text:
                print(f"      --- the boxed run's failure ({boxed_xml.name}):")
                print("\n".join(f"      | {line}" for line in truncated(text)))
        wide = Counter((name, scope) for name, scope, _ in boxed.wide_in_box)
        for (name, scope), n in sorted(wide.items()):
            first = next(t for f, s, t in boxed.wide_in_box if (f, s) == (name, scope))
            print(f"  {scope} fixture {name!r} set up in a box {n} time(s), first for {first}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    print(f"\nlogs, JUnit XML and outcomes: {out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
