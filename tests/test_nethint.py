"""The box's network is named when it is why a boxed test failed (issue 24, item 4).

End to end: inner sessions whose boxed tests really connect and look up names in their
box; the hint's section is in the terminal and in JUnit XML for a refused connect, an
unreachable network and a failed lookup, and nowhere else. Unit tests: the chain walk
(every link kind, cycles, its bound, broken exceptions), the port, and the docs' quotes.
"""

from __future__ import annotations

import builtins
import errno
import re
import socket
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path
from types import SimpleNamespace

import pytest

from pytest_nsbox.box import context
from pytest_nsbox.box.options import parse_options
from pytest_nsbox.plugin import nethint
from pytest_nsbox.plugin.nethint import Finding, chain, find, hint, short_hint

DOCS = Path(__file__).resolve().parent.parent / "docs" / "troubleshooting.md"
REFUSED_5432 = hint(Finding("refused", 5432), "isolated")
LOOKUP = hint(Finding("lookup"), "isolated")


def closed_port() -> int:
    """A loopback port of this host that nothing listens on (just freed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


SUITE = """
    import socket
    import pytest

    pytestmark = pytest.mark.nsbox

    class NewConnectionError(Exception):  # urllib3's shapes, raised and chained as it does
        pass

    class MaxRetryError(Exception):
        def __init__(self, reason):
            super().__init__("HTTPConnectionPool(host='localhost', port=6379): Max retries "
                             f"exceeded with url: / (Caused by {{reason!r}})")
            self.reason = reason

    class RequestsConnectionError(OSError):  # requests': an OSError with no errno
        pass

    def test_refused():
        socket.create_connection(("127.0.0.1", 5432), timeout=5)

    def test_wrapped():
        sock = socket.socket()
        try:
            try:
                sock.connect(("127.0.0.1", 6379))
            except OSError as exc:
                raise NewConnectionError("HTTPConnection(host='localhost', port=6379): Failed "
                                         f"to establish a new connection: {{exc}}") from exc
        except NewConnectionError as exc:
            try:
                raise MaxRetryError(exc) from exc
            except MaxRetryError as error:
                raise RequestsConnectionError(error) from None
        finally:
            sock.close()

    def test_lookup():
        socket.getaddrinfo("nsbox-hint.example.com", 80)

    @pytest.mark.nsbox(net="none")
    def test_none():
        socket.create_connection(("127.0.0.1", 5432), timeout=5)

    @pytest.fixture
    def database():
        return socket.create_connection(("127.0.0.1", 5432), timeout=5)

    def test_setup_error(database):
        pass

    def test_assert():
        assert 1 == 2

    def test_value_error():
        raise ValueError("not a network error")

    @pytest.mark.nsbox(net="host")
    def test_host_net():
        socket.create_connection(("127.0.0.1", {port}), timeout=5)

    @pytest.mark.nsbox(enabled=False)
    def test_unboxed():
        socket.create_connection(("127.0.0.1", {port}), timeout=5)
"""
HINTED = {
    "test_refused": REFUSED_5432,
    "test_wrapped": hint(Finding("refused", 6379), "isolated"),
    "test_lookup": LOOKUP,
    "test_none": hint(Finding("unreachable", 5432, "127.0.0.1"), "none"),
    "test_setup_error": REFUSED_5432,
}
PLAIN = ("test_assert", "test_value_error", "test_host_net", "test_unboxed")


def failure_texts(path: Path) -> dict[str, str]:
    """Each test case's failure or error text in a JUnit XML file."""
    texts = {}
    for case in ET.parse(path).iter("testcase"):
        element = case.find("failure")
        if element is None:
            element = case.find("error")
        texts[case.get("name", "")] = "" if element is None else (element.text or "")
    return texts


def test_a_boxed_network_failure_is_named_and_nothing_else_is(
        pytester: pytest.Pytester, run_inner) -> None:
    pytester.makepyfile(test_net=textwrap.dedent(SUITE.format(port=closed_port())))
    result = run_inner("-p", "no:randomly", "--junitxml=junit.xml")
    result.assert_outcomes(failed=8, errors=1)
    texts = failure_texts(pytester.path / "junit.xml")
    assert set(texts) == {*HINTED, *PLAIN}
    for name, text in HINTED.items():
        assert text in texts[name], name  # in JUnit XML, whole
        assert texts[name].count("[nsbox]") == 1, name
    for name in PLAIN:
        assert texts[name], name  # it failed ...
        assert "[nsbox]" not in texts[name], name  # ... with no hint
    assert "ConnectionRefusedError" in texts["test_host_net"]  # the same error, unhinted
    assert "ConnectionRefusedError" in texts["test_unboxed"]
    out = result.stdout.str()
    assert out.count("- nsbox network -") == len(HINTED)  # a section after each traceback
    for text in HINTED.values():
        assert text in out


# where the terminal shows a failure as its crash line alone (pytest 9 shows sections with
# --tb=line too, as the session above shows them with the default style)
CRASH_LINE_ONLY = ["no", *(["line"] if pytest.version_tuple < (9,) else [])]


@pytest.mark.parametrize("style", CRASH_LINE_ONLY)
def test_the_hint_is_one_line_where_only_the_crash_line_shows(
        pytester: pytest.Pytester, run_inner, style: str) -> None:
    pytester.makepyfile(test_net=textwrap.dedent(SUITE.format(port=closed_port())))
    result = run_inner("-p", "no:randomly", f"--tb={style}", "-rf", "-vv",
                       "test_net.py::test_refused", "test_net.py::test_assert")
    result.assert_outcomes(failed=2)
    out = result.stdout.str()
    one_line = short_hint(Finding("refused", 5432), "isolated")
    assert ("FAILED test_net.py::test_refused - ConnectionRefusedError: [Errno 111] "
            f"Connection refused {one_line}") in out
    assert out.count("[nsbox]") == 1  # not on the assertion's line
    assert REFUSED_5432 not in out  # the section is not shown in this style


# -- the chain walk ---------------------------------------------------------------------


def refused() -> ConnectionRefusedError:
    return ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused")


class Wrapper(Exception):
    """A library's error that holds the cause somewhere of its own."""


def test_every_kind_of_link_is_followed() -> None:
    cause, context_, reason, os_error = Wrapper(), Wrapper(), Wrapper(), Wrapper()
    cause.__cause__ = refused()
    context_.__context__ = refused()
    reason.reason = refused()  # urllib3's MaxRetryError, urllib's URLError
    os_error.os_error = refused()  # aiohttp's ClientConnectorError
    in_args = Wrapper("message", refused())  # requests' ConnectionError(MaxRetryError(...))
    wrapped: list[BaseException] = [cause, context_, reason, os_error, in_args]
    group_type = getattr(builtins, "ExceptionGroup", None)  # Python 3.11+
    if group_type is not None:
        wrapped.append(group_type("all", [ValueError("x"), refused()]))
    for exc in wrapped:
        assert find(exc) == Finding("refused"), exc
    assert find(Wrapper("nothing")) is None


def test_kinds_from_errno_type_and_words() -> None:
    assert find(OSError(errno.ENETUNREACH, "Network is unreachable")) == Finding("unreachable")
    assert find(OSError(errno.EHOSTUNREACH, "No route to host")) == Finding("unreachable")
    assert find(socket.gaierror(socket.EAI_NONAME, "Name or service not known")) == Finding(
        "lookup")
    dns = OSError(socket.EAI_AGAIN, "Temporary failure")  # aiohttp's DNS error: not a gaierror
    assert find(dns) == Finding("lookup")
    libpq = Exception('connection to server at "127.0.0.1", port 5432 failed: Connection '
                      "refused\n\tIs the server running on that host?")  # a C driver: words only
    assert find(libpq) == Finding("refused", 5432, "127.0.0.1")
    assert find(AssertionError("assert 'Connection refused' == ''")) is None
    assert find(OSError(errno.ENOENT, "No such file")) is None
    assert find(ValueError("bad")) is None
    both = Wrapper()  # a lookup explains the rest: it comes first
    both.__cause__ = refused()
    both.__context__ = socket.gaierror(socket.EAI_AGAIN, "Temporary failure")
    assert find(both) == Finding("lookup")


def test_cycles_end() -> None:
    a, b = Wrapper("a"), Wrapper("b")
    a.__context__, b.__cause__ = b, a
    a.reason = a
    assert [str(e) for e in chain(a)] == ["a", "b"]
    assert find(a) is None
    b.__context__ = refused()
    assert find(a) == Finding("refused")
    c, d = Wrapper("c"), Wrapper("d")  # `raise C from d` inside `except`: cause and context
    c.__cause__ = c.__context__ = d
    c.reason = d
    assert [str(e) for e in chain(c)] == ["c", "d"]


def test_the_walk_is_bounded() -> None:
    top = deep = Wrapper(0)
    for n in range(1, 100):
        deep.__cause__ = Wrapper(n)
        deep = deep.__cause__
    assert len(list(chain(top))) == nethint.MAX_NODES
    deep.__cause__ = refused()
    assert find(top) is None  # 100 deep: not looked for
    wide = Wrapper(*(Wrapper(n) for n in range(1000)))
    assert len(list(chain(wide))) <= nethint.MAX_NODES


class BrokenStr(Exception):
    def __str__(self) -> str:
        raise RuntimeError("broken __str__")


class BrokenReason(Exception):
    @property
    def reason(self) -> BaseException:
        raise RuntimeError("broken property")


class BrokenErrno(OSError):
    @property  # type: ignore[override]
    def errno(self) -> int:
        raise RuntimeError("broken errno")


def test_broken_exceptions_do_not_break_it() -> None:
    broken = BrokenStr()
    broken.__cause__ = BrokenReason()
    broken.__cause__.__cause__ = BrokenErrno()
    broken.__cause__.__cause__.__context__ = refused()
    assert find(broken) == Finding("refused")
    assert find(BrokenStr()) is None


def test_add_hint_never_raises_and_only_in_a_box(monkeypatch: pytest.MonkeyPatch) -> None:
    item = SimpleNamespace(fixturenames=[], config=SimpleNamespace(
        option=SimpleNamespace(tbstyle="auto")))
    call = SimpleNamespace(excinfo=SimpleNamespace(value=refused()))

    def report(longrepr: object) -> SimpleNamespace:
        return SimpleNamespace(failed=True, longrepr=longrepr)

    monkeypatch.setattr(context, "_current", None)  # this test may itself run in a box
    outside = report("text")
    nethint.add_hint(item, call, outside)
    assert outside.longrepr == "text"  # not in a box
    monkeypatch.setattr(context, "_current",
                        context.BoxContext(parse_options({"net": "isolated"})))
    inside = report("text")
    nethint.add_hint(item, call, inside)
    assert inside.longrepr == "text\n\n" + hint(Finding("refused"), "isolated")

    class Refusing:
        reprcrash = None

        def addsection(self, *args: object) -> None:
            raise RuntimeError("cannot")

    nethint.add_hint(item, call, report(Refusing()))  # no exception
    monkeypatch.setattr(context, "_current", context.BoxContext(parse_options({"net": "host"})))
    on_host = report("text")
    nethint.add_hint(item, call, on_host)
    assert on_host.longrepr == "text"


# -- the port -----------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "port", "host"), [
    ("HTTPConnectionPool(host='localhost', port=5432): Max retries exceeded", 5432, "localhost"),
    ("[Errno 111] Connect call failed ('127.0.0.1', 8080)", 8080, "127.0.0.1"),
    ("Cannot connect to host 127.0.0.1:6379 ssl:default", 6379, "127.0.0.1"),
    ("Cannot connect to host [::1]:6379 ssl:default", 6379, "::1"),
    ("Error 111 connecting to localhost:6379. Connection refused.", 6379, "localhost"),
    ("failed at test_db.py:42: Connection refused", None, None),
    ("port 99999 is 127.0.0.1:99999", None, None),
])
def test_the_port_from_the_messages(text: str, port: int | None, host: str | None) -> None:
    exc = Wrapper(text)
    exc.__cause__ = refused()
    assert find(exc) == Finding("refused", port, host)


def test_the_port_from_the_connecting_frame() -> None:
    port = closed_port()
    with pytest.raises(ConnectionRefusedError) as excinfo:
        socket.create_connection(("127.0.0.1", port), timeout=5)
    assert find(excinfo.value) == Finding("refused", port, "127.0.0.1")


def test_the_port_through_real_requests() -> None:
    requests = pytest.importorskip("requests", reason="lacks: requests")
    port = closed_port()
    with pytest.raises(requests.ConnectionError) as excinfo:
        requests.get(f"http://localhost:{port}/", timeout=5)
    assert find(excinfo.value) == Finding("refused", port, "localhost")


def test_the_docs_quote_the_hints() -> None:
    blocks = re.findall(r"```text\n(.*?)```", DOCS.read_text(), re.S)
    assert any(REFUSED_5432 in block for block in blocks)
    assert any(LOOKUP in block for block in blocks)
    summary = ("ConnectionRefusedError: [Errno 111] Connection refused "
               + short_hint(Finding("refused", 5432), "isolated"))
    assert any(summary in block for block in blocks)
