"""pytest hooks: the nsbox marker, --nsbox and its defaults, and the boxed runtest protocol.

This module is the plugin pytest loads (the ``pytest11`` entry point ``nsbox``, or
``-p pytest_nsbox.plugin``); its hooks live here and nowhere else, so they register once.
The rest of the pytest side: `state` (per-session state and stash keys), `protocol` (the
boxed runtest protocol), `hookspecs` (hooks for other plugins) and `usage` (usage
baselines, comparisons and the HTML report).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Generator, Iterator
from typing import Any

import pytest

from ..box.options import OPTIONS, BoxOptions, OptionError, parse_options, parse_text
from .state import SessionState, options_key, state_key, timeout_key

MARKER_HELP = (
    "nsbox(**options): run this test in an isolated box (fresh user, pid, net, mount, uts and "
    "ipc namespaces, with limits). Options: " + ", ".join(spec.name for spec in OPTIONS)
    + "; e.g. @pytest.mark.nsbox(memory='256M', net='isolated', timeout=10). "
    "nsbox(enabled=False) opts out under --nsbox."
)


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    from . import hookspecs

    pluginmanager.add_hookspecs(hookspecs)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("nsbox", "isolated test boxes (pytest-nsbox)")
    group.addoption("--nsbox", action="store_true", default=None,
                    help="run every test in a box (opt out with @pytest.mark.nsbox(enabled=False))")
    parser.addini("nsbox", type="bool", default=False, help="run every test in a box")
    parser.addini("nsbox_unavailable", default="fail",
                  help="what a boxed test does where its box cannot be made: "
                       "fail (default), skip, or run (unboxed, with a warning)")
    parser.addini("nsbox_best_effort", type="bool", default=False,
                  help="where cgroups cannot hold a limit, use rlimits and say so in the "
                       "report, instead of failing the test")
    group.addoption("--nsbox-keep-failed", action="store_true", default=None,
                    help="keep what a failed boxed test wrote to its private paths (/tmp): "
                         "its report says where; the next session without this flag "
                         "removes them, as does `pytest-nsbox clean`")
    parser.addini("nsbox_keep_failed", type="bool", default=False,
                  help="keep what a failed boxed test wrote to its private paths (/tmp)")
    group.addoption("--nsbox-storage", default=None, metavar="DIR",
                    help="where boxes keep what they write to their private paths, on disk "
                         "(default: /var/tmp/pytest-nsbox-UID)")
    parser.addini("nsbox_storage", default=None,
                  help="where boxes keep what they write to their private paths, on disk "
                       "(default: /var/tmp/pytest-nsbox-UID)")
    group.addoption("--nsbox-usage", type=int, default=0, metavar="N",
                    help="show the N boxed tests that used the most memory and CPU")
    group.addoption("--nsbox-doctor", action="store_true", default=False,
                    help="print what this machine gives boxes (namespaces, mounts, cgroups, "
                         "netem) with a fix for each missing piece, and exit (0 PASS, "
                         "1 DEGRADED, 2 FAIL)")
    from .usage import add_options as add_usage_options

    add_usage_options(parser, group)  # --nsbox-usage-save, -compare, -fail, -report
    for spec in OPTIONS:
        if spec.name == "enabled":
            continue
        flag = f"--nsbox-{spec.name.replace('_', '-')}"
        group.addoption(flag, dest=f"nsbox_{spec.name}", metavar=spec.metavar,
                        default=None,
                        help=f"default box {spec.name}: {spec.help}".replace("%", "%%"))
        parser.addini(f"nsbox_{spec.name}", default=None,
                      help=f"default box {spec.name}: {spec.help}")


def _defaults(config: pytest.Config) -> BoxOptions:
    values: dict[str, object] = {}
    for spec in OPTIONS:
        if spec.name == "enabled":
            continue
        cli = config.getoption(f"nsbox_{spec.name}")
        text = cli if cli is not None else config.getini(f"nsbox_{spec.name}")
        if text is None or text == "":
            continue
        try:
            values[spec.name] = parse_text(spec.name, str(text))
            parse_options({spec.name: values[spec.name]})
        except OptionError as exc:
            source = (f"--nsbox-{spec.name.replace('_', '-')}" if cli is not None
                      else f"ini nsbox_{spec.name}")
            raise pytest.UsageError(f"{source}: {exc}") from None
    return parse_options(values)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", MARKER_HELP)
    box_all = config.getoption("nsbox")
    if box_all is None:
        box_all = bool(config.getini("nsbox"))
    unavailable = str(config.getini("nsbox_unavailable")).strip().lower()
    if unavailable not in ("fail", "skip", "run"):
        raise pytest.UsageError(f"ini nsbox_unavailable={unavailable!r} is not valid; "
                                "accepted: fail, skip or run")
    state = SessionState(_defaults(config), bool(box_all), unavailable)
    keep_failed = config.getoption("nsbox_keep_failed")
    state.keep_failed = bool(config.getini("nsbox_keep_failed") if keep_failed is None
                             else keep_failed)
    storage_root = config.getoption("nsbox_storage") or config.getini("nsbox_storage")
    state.storage_root = os.path.abspath(os.path.expanduser(storage_root)) if storage_root \
        else None
    if config.getoption("usepdb", False) or config.getoption("trace", False):
        state.disabled = "--pdb and --trace need the terminal"
    config.stash[state_key] = state
    if config.getini("nsbox_best_effort"):
        from ..resources import cgroups

        cgroups.BEST_EFFORT = True
    _box_reruns(config)
    from .usage import configure as configure_usage

    configure_usage(config)  # registers the usage hooks only when a usage flag is given


def _box_reruns(config: pytest.Config) -> None:
    """pytest-rerunfailures runs its own protocol loop: make each of its runs a fresh box."""
    from .pytest_internals import RunProtocol, rerunfailures_protocol_replaced

    def boxing(original: RunProtocol) -> RunProtocol:
        def runtestprotocol(item: pytest.Item, log: bool = True,
                            nextitem: pytest.Item | None = None) -> list[pytest.TestReport]:
            options = item.stash.get(options_key, None)
            if options is None:
                return original(item, log=log, nextitem=nextitem)
            from .protocol import boxed_runtestprotocol

            return boxed_runtestprotocol(item, nextitem, options, _prepared(item), log=log)

        return runtestprotocol

    rerunfailures_protocol_replaced(config, boxing)


def _reruns_handle(item: pytest.Item) -> bool:
    """True when pytest-rerunfailures will run this item (through our boxed protocol)."""
    from .pytest_internals import rerunfailures_will_run

    return rerunfailures_will_run(item)


@pytest.hookimpl(tryfirst=True)
def pytest_cmdline_main(config: pytest.Config) -> int | None:
    if config.getoption("nsbox_doctor"):
        from ..doctor import run_from_pytest

        return run_from_pytest(config)
    return None


def pytest_report_header(config: pytest.Config) -> str | None:
    state = config.stash[state_key]
    if not (state.box_all or config.getoption("verbose") > 0):
        return None  # only when boxing is on for every test, or asked with -v
    from ..doctor import boxing_available, header_line

    defaults = state.defaults
    line = header_line(defaults.tmpfs_mode, tuple(defaults.tmpfs))
    if config.getini("nsbox_best_effort"):
        line += "; best-effort limits: rlimits where cgroups cannot hold a limit"
    if state.box_all and not state.disabled:
        available, why = boxing_available()
        if not available:
            line += (f"\nnsbox: boxing is unavailable here: {why}; boxed tests will "
                     f"{state.unavailable} (ini nsbox_unavailable)")
    return line


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    count = config.getoption("nsbox_usage")
    usage = config.stash[state_key].usage if state_key in config.stash else {}
    if not count or not usage:
        return
    from ..box.units import format_size

    write = terminalreporter.write_line
    for key, title in (("nsbox_memory_peak", "memory peak"), ("nsbox_cpu_seconds", "CPU")):
        ranked = sorted((row for row in usage.items() if row[1].get(key) is not None),
                        key=lambda row: row[1][key], reverse=True)[:count]
        if not ranked:
            continue
        terminalreporter.write_sep("=", f"nsbox: top {len(ranked)} boxed tests by {title}")
        for nodeid, row in ranked:
            value = (format_size(row[key]) if key == "nsbox_memory_peak"
                     else f"{row[key]:.3f} s")
            extra = f" (throttled {row['nsbox_cpu_throttled_seconds']:.3f} s)" if (
                key == "nsbox_cpu_seconds" and row.get("nsbox_cpu_throttled_seconds")) else ""
            write(f"{value:>12}{extra}  {nodeid}")


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session: pytest.Session) -> None:
    protocol = sys.modules.get("pytest_nsbox.plugin.protocol")
    if protocol is not None:
        protocol.forget_boxes()  # the session's Box per distinct options


def pytest_unconfigure(config: pytest.Config) -> None:
    spawn = sys.modules.get("pytest_nsbox.box.spawn")
    if spawn is not None:
        spawn.close()  # the box made ahead, the inits and cgroups of the last boxes
    cgroups = sys.modules.get("pytest_nsbox.resources.cgroups")
    if cgroups is None and _in_a_leaf():
        from ..resources import cgroups  # an xdist controller moved into a v2 leaf with its workers
    if cgroups is not None:
        cgroups.session_cleanup()  # this process's session cgroup, once no box is left


def _in_a_leaf() -> bool:
    try:
        with open("/proc/self/cgroup") as file:
            return "nsbox-leaf-" in file.read()
    except OSError:
        return False


def item_options(item: pytest.Item, state: SessionState) -> BoxOptions | None:
    """The options of `item`'s box (nearest marker wins), or None when it is not boxed."""
    marks = list(item.iter_markers("nsbox"))
    if not marks and not state.box_all and not state.disabled:
        return None
    values: dict[str, object] = {}
    for mark in reversed(marks):
        if mark.args:
            raise OptionError("nsbox", mark.args,
                              "keyword options only, e.g. nsbox(memory='64M')")
        values.update(mark.kwargs)
    # parsed once per distinct set of values: the items that share it share one
    # BoxOptions (and so one Box in the protocol)
    key = repr(sorted(values.items()))
    options = _parsed.get(key)
    if options is None or _parsed_defaults[0] is not state.defaults:
        if _parsed_defaults[0] is not state.defaults:
            _parsed.clear()
            _parsed_defaults[0] = state.defaults
        options = _parsed[key] = parse_options(values, base=state.defaults)
    return options if options.enabled and not state.disabled else None


_parsed: dict[str, BoxOptions] = {}
_parsed_defaults: list[BoxOptions | None] = [None]


@pytest.hookimpl(trylast=True)  # after other plugins' own: the markers they add count
def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config,
                                  items: list[pytest.Item]) -> None:
    state = config.stash[state_key]
    if state.disabled and (config.getoption("nsbox") or config.getini("nsbox") or any(
            item.get_closest_marker("nsbox") for item in items)):
        config.issue_config_time_warning(pytest.PytestWarning(
            f"nsbox: boxing is off for this run: {state.disabled}; boxed tests run unboxed"),
            stacklevel=2)
    bad = []
    for item in items:
        try:
            item.stash[options_key] = item_options(item, state)
        except OptionError as exc:
            bad.append(item)
            report = pytest.CollectReport(item.nodeid, "failed", f"{item.nodeid}: {exc}", [])
            item.ihook.pytest_collectreport(report=report)
    if bad:
        items[:] = [item for item in items if item not in bad]
    from .usage import watch_budgets

    watch_budgets(config, items)  # memory_budget/cpu_budget: checked where boxes run


def _prepared(item: pytest.Item) -> SessionState:
    """The session state, with what every box shares fixed before the first fork."""
    state = item.config.stash[state_key]
    if state.prepared:
        return state
    config = item.config
    paths = {str(config.rootpath), str(config.invocation_params.dir), os.getcwd()}
    state.keep_paths = tuple(sorted(os.path.realpath(p) for p in paths))
    from .pytest_internals import tmp_path_base

    base = tmp_path_base(config)
    if base is not None:
        state.writable_paths = (os.path.realpath(base),)
    from ..box import spawn
    from . import nethint  # noqa: F401 - once here, not in every failed box (~2 ms)
    from .session_output import SessionOutput

    spawn.configure_storage(state.storage_root, keep_old=state.keep_failed)
    state.session_output = SessionOutput(config)  # made here: pytest's capture is off
    state.prepared = True
    return state


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> bool | None:
    options = item.stash.get(options_key, None)
    if options is None or _reruns_handle(item):
        return None
    from .protocol import boxed_runtestprotocol

    ihook = item.ihook
    ihook.pytest_runtest_logstart(nodeid=item.nodeid, location=item.location)
    boxed_runtestprotocol(item, nextitem, _with_plugin_timeout(item, options), _prepared(item))
    ihook.pytest_runtest_logfinish(nodeid=item.nodeid, location=item.location)
    return True


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None],
                              ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """A failure in a box with its own network that its network explains (a refused
    connect, no route, a failed lookup) says so in its report. Outermost (tryfirst), so it
    sees the report as final (an xfail already turned into a skip); a pass costs one check."""
    report = yield
    if call.excinfo is not None and report.failed:
        try:  # imported before the first box (`_prepared`): a box out of fds has it
            from .nethint import add_hint
        except Exception:
            return report  # the report matters more than its hint
        add_hint(item, call, report)
    return report


@pytest.hookimpl(optionalhook=True, tryfirst=True)
def pytest_timeout_set_timer(item: pytest.Item, settings: Any) -> bool | None:
    """pytest-timeout on a boxed test: the box's own timeout kills the whole box instead
    of a signal in pytest (inside a box, with func_only, pytest-timeout arms its own)."""
    from ..box.context import current_box

    if current_box() is not None or item.stash.get(options_key, None) is None:
        return None
    item.stash[timeout_key] = float(settings.timeout)
    return True


@pytest.hookimpl(optionalhook=True, tryfirst=True)
def pytest_timeout_cancel_timer(item: pytest.Item) -> bool | None:
    from ..box.context import current_box

    if current_box() is not None or item.stash.get(options_key, None) is None:
        return None
    if timeout_key in item.stash:
        del item.stash[timeout_key]
    return True


def _with_plugin_timeout(item: pytest.Item, options: BoxOptions) -> BoxOptions:
    timeout = item.stash.get(timeout_key, None)
    if timeout is None or timeout <= 0 or (options.timeout and options.timeout <= timeout):
        return options
    return options.replace(timeout=timeout)


@pytest.fixture
def nsbox_network() -> Iterator[Any]:
    """Build test networks: ``net = nsbox_network("a", "b", "c")``; torn down after the test.

    Each host is its own network namespace on one switch (10.77.0.0/24 by default); its
    name resolves in every host; ``net.host("a").run(fn)`` runs a function there;
    ``net.link("a").faults(delay="20ms")``, ``net.partition(["a"], ["b"])`` and
    ``net.heal()`` change the network while the test runs. Works rootless.
    """
    from ..resources.net.topology import NetworkFactory

    factory = NetworkFactory()
    try:
        yield factory
    finally:
        factory.close()


@pytest.fixture
def nsbox() -> Any:
    """The running box: ``nsbox.options`` and ``nsbox.usage()`` (only in a boxed test)."""
    from ..box.context import current_box

    context = current_box()
    if context is None:
        raise pytest.UsageError(
            "the nsbox fixture works only in a boxed test: mark it @pytest.mark.nsbox "
            "or run pytest with --nsbox"
        )
    return context
