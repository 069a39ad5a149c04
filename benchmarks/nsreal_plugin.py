"""pytest plugin used by real_suites.py: records every test's outcome, and can run a server.

Loaded with ``-p nsreal_plugin`` (this directory on PYTHONPATH). Two jobs:

- **Outcomes.** Every report pytest logs is classified by pytest's own
  ``pytest_report_teststatus`` (so xfailed/xpassed/error are told apart as the terminal
  does) and, at the end of the session, written as JSON to ``$NSREAL_OUTCOMES``:
  ``{nodeid: {"outcome": "passed" | "failed" | "error" | "failed+error" | ...,
  "message": first line of the first failure}}``. Under ``--nsbox`` the reports come
  back from the boxes and are logged in the pytest process, where this plugin records
  them; the file is written there only (a box never runs ``pytest_sessionfinish``).
  Under pytest-xdist the workers' reports are logged again in the controller, which
  records and writes them; a worker (``config.workerinput``) records nothing and writes
  nothing (else each would write its own part to the same file).
- **A server of the session.** With ``$NSREAL_SERVER`` (a command line) and
  ``$NSREAL_SERVER_PORT``, the command is started as a child of the pytest process at
  configure time (before any conftest's ``pytest_sessionstart`` asks it for its version),
  waited for until it accepts connections on 127.0.0.1, and stopped at unconfigure: as a
  session fixture starting a database as a subprocess would. Under pytest-xdist only the
  controller starts it; the workers use that one.
- **Wider fixtures set up in a box.** A fixture of class scope or wider whose set-up runs
  in another process than the pytest process (a box) is appended to ``$NSREAL_WIDE``, one
  JSON line ``[argname, scope, nodeid]`` each: under ``--nsbox`` there should be none.
"""

from __future__ import annotations

import json
import os
import shlex
import socket
import subprocess
import time
from typing import Any

import pytest

_outcomes: dict[str, dict[str, Any]] = {}
_server: subprocess.Popen[bytes] | None = None


def _first_line(report: pytest.TestReport | pytest.CollectReport) -> str:
    longrepr = report.longrepr
    crash = getattr(longrepr, "reprcrash", None)
    if crash is not None and getattr(crash, "message", None):
        text = str(crash.message)
    elif isinstance(longrepr, tuple) and len(longrepr) == 3:  # a skip: (path, line, reason)
        text = str(longrepr[2])
    else:
        text = str(longrepr) if longrepr is not None else ""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    # a fixture lookup error's text starts with "file ..., line N": its "E" line says it
    told = [ln[1:].strip() for ln in lines if ln.startswith("E ")]
    return (told or lines or [""])[0][:300]


def _record(nodeid: str, category: str, report: pytest.TestReport | pytest.CollectReport,
            phase: str) -> None:
    entry = _outcomes.setdefault(nodeid, {"outcomes": [], "message": ""})
    entry["outcomes"].append(category)
    if category in ("failed", "error") and not entry["message"]:
        entry["message"] = f"[{phase}] {_first_line(report)}"


@pytest.hookimpl(trylast=True)
def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    config = _config
    if config is None or _is_worker(config):
        return
    category, _, _ = config.hook.pytest_report_teststatus(report=report, config=config)
    if not category:  # a passing setup or teardown
        _outcomes.setdefault(report.nodeid, {"outcomes": [], "message": ""})
        return
    _record(report.nodeid, str(category), report, report.when)


def pytest_collectreport(report: pytest.CollectReport) -> None:
    if report.failed and not (_config is not None and _is_worker(_config)):
        _record(report.nodeid or "<collection>", "collect-error", report, "collect")


_config: pytest.Config | None = None
_pytest_pid = os.getpid()


def _is_worker(config: pytest.Config) -> bool:
    """A pytest-xdist worker: its reports reach the controller, which records them."""
    return hasattr(config, "workerinput")


@pytest.hookimpl(hookwrapper=True)
def pytest_fixture_setup(fixturedef: Any, request: pytest.FixtureRequest) -> Any:
    path = os.environ.get("NSREAL_WIDE")
    if path and fixturedef.scope != "function" and os.getpid() != _pytest_pid:
        try:
            with open(path, "a") as f:
                f.write(json.dumps([fixturedef.argname, fixturedef.scope,
                                    request.node.nodeid]) + "\n")
        except OSError:
            pass
    yield


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    global _config, _server
    _config = config
    command = os.environ.get("NSREAL_SERVER")
    if not command or _server is not None or _is_worker(config):
        return
    port = int(os.environ["NSREAL_SERVER_PORT"])
    _server = subprocess.Popen(shlex.split(command), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline or _server.poll() is not None:
                raise pytest.UsageError(f"nsreal: server {command!r} did not listen on "
                                        f"127.0.0.1:{port}") from None
            time.sleep(0.05)


def pytest_sessionfinish(session: pytest.Session) -> None:
    path = os.environ.get("NSREAL_OUTCOMES")
    if not path or _is_worker(session.config):
        return
    result = {}
    for nodeid, entry in _outcomes.items():
        outcomes = entry["outcomes"] or ["passed"]  # only passing setup/teardown seen
        # "passed" of the call and "error" of the teardown: pytest counts both
        result[nodeid] = {"outcome": "+".join(outcomes), "message": entry["message"]}
    with open(path, "w") as f:
        json.dump(result, f, indent=0, sort_keys=True)


def pytest_unconfigure(config: pytest.Config) -> None:
    global _server
    if _server is not None:
        _server.terminate()
        try:
            _server.wait(10)
        except subprocess.TimeoutExpired:
            _server.kill()
            _server.wait()
        _server = None
