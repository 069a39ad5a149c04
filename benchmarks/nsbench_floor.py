"""The floor: the least a fork-per-test plugin must do (fork, pipe, pickle, waitpid).

Loaded with ``-p nsbench_floor`` and switched on by ``--floor``. For each test the
pytest process forks; the child runs pytest's own runtest protocol (setup, call,
teardown, unlogged), pickles the serialized reports into a pipe and leaves by
``os._exit``; the parent reads the pipe to its end, reaps the child and logs the
reports. No namespaces, no cgroup, no timeout, no crash handling: only what any box
must pay, so ``nsbox / floor`` says how close nsbox is to the physical limit.
"""

from __future__ import annotations

import os
import pickle

import pytest
from _pytest.runner import runtestprotocol


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--floor", action="store_true", default=False,
                     help="run each test in a bare forked child (benchmark floor)")


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> bool | None:
    config = item.config
    if not config.getoption("floor"):
        return None
    hook = item.ihook
    hook.pytest_runtest_logstart(nodeid=item.nodeid, location=item.location)
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        code = 0
        try:
            os.close(read_fd)
            reports = runtestprotocol(item, log=False, nextitem=nextitem)
            data = pickle.dumps(
                [config.hook.pytest_report_to_serializable(config=config, report=r)
                 for r in reports], protocol=pickle.HIGHEST_PROTOCOL)
            view = memoryview(data)
            while view:
                view = view[os.write(write_fd, view):]
        except BaseException:  # noqa: BLE001
            code = 1
        os._exit(code)
    os.close(write_fd)
    chunks = []
    while True:
        chunk = os.read(read_fd, 1 << 20)
        if not chunk:
            break
        chunks.append(chunk)
    os.close(read_fd)
    os.waitpid(pid, 0)
    for data in pickle.loads(b"".join(chunks)):
        report = config.hook.pytest_report_from_serializable(config=config, data=data)
        hook.pytest_runtest_logreport(report=report)
    hook.pytest_runtest_logfinish(nodeid=item.nodeid, location=item.location)
    return True
