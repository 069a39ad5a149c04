"""Hostile tests: boxed tests that try to break the box, pytest or the host.

Each case runs as an inner pytest session (or through `Box().run` for the library), then
asserts the outcome and message its test gets, that the session went on, and (fixture
`host`, tests/hostcheck.py) that nothing is left on the host: processes, cgroups, mounts,
IPC objects, interfaces, files under /tmp, pytest's children, fds and hostname.

What a user should see, case by case, is in each test's docstring. Cases already covered
elsewhere (tests/test_box.py, test_plugin.py, test_limits.py) are not repeated here.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import sys
import time

import pytest
from hostcheck import Host, cgroups_writable, run_inner_session
from hostcheck import host as host  # the fixture

from pytest_nsbox import Box, BoxTimeout, RemoteError

CGROUPS = cgroups_writable()
needs_cgroups = pytest.mark.skipif(not CGROUPS, reason="lacks: a writable cgroup (limits)")


def run(pytester: pytest.Pytester, host: Host, source: str, *args: str, timeout: float = 60):
    """The inner session's RunResult and {test name: Result}; --nsbox on by default."""
    return run_inner_session(pytester, host, source, "--nsbox", *args, timeout=timeout)


# --- memory, tasks, time -------------------------------------------------------------------


@pytest.mark.nsbox(enabled=False)  # examines the host itself: unboxed under --nsbox
@needs_cgroups
def test_memory_bombs_in_threads_and_in_a_daemon(pytester: pytest.Pytester, host: Host) -> None:
    """Threads eating memory: the box is killed, reported as over its limit. A double-forked
    daemon eating memory: the kernel kills the daemon, the test goes on and passes."""
    _, results = run(pytester, host, """
        import os, threading, time, pytest

        def eat(hold):
            while True:
                block = bytearray(1 << 20)
                block[::4096] = b"x" * 256
                hold.append(block)

        @pytest.mark.nsbox(memory="64M")
        def test_threads():
            hold = []
            threads = [threading.Thread(target=eat, args=(hold,), daemon=True) for _ in range(4)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()

        @pytest.mark.nsbox(memory="64M", timeout=20)
        def test_daemon():
            read, write = os.pipe()
            if os.fork() == 0:
                os.setsid()
                if os.fork() == 0:
                    os.close(read)
                    os.write(write, b"go")
                    eat([])
                os._exit(0)
            os.wait()
            assert os.read(read, 2) == b"go"
            os.close(write)
            assert os.read(read, 1) == b""   # the daemon's end closes when the kernel kills it

        def test_after():
            pass
    """)
    assert results["test_threads"].outcome == "failed"
    assert "[nsbox] exceeded its memory limit of 64 MiB (peak 64 MiB)" in results[
        "test_threads"].text
    assert results["test_daemon"].outcome == "passed", results["test_daemon"].text
    assert results["test_after"].outcome == "passed"


@pytest.mark.nsbox(enabled=False)  # examines the host itself: unboxed under --nsbox
@needs_cgroups
def test_fork_bomb_and_thread_bomb(pytester: pytest.Pytester, host: Host) -> None:
    """A fork bomb whose every process forks forever ends by the timeout, all of it killed;
    a thread bomb under pids gets "can't start new thread"; 2000 threads just work."""
    _, results = run(pytester, host, """
        import os, threading, pytest

        @pytest.mark.nsbox(pids=32, timeout=1.5)
        def test_fork_bomb():
            while True:
                try:
                    os.fork()
                except OSError:
                    pass

        @pytest.mark.nsbox(pids=64)
        def test_thread_bomb():
            stop = threading.Event()
            threads = []
            with pytest.raises(RuntimeError, match="can't start new thread"):
                while True:
                    thread = threading.Thread(target=stop.wait)
                    thread.start()
                    threads.append(thread)
            stop.set()
            for thread in threads:
                thread.join()
            assert 50 <= len(threads) < 64

        @pytest.mark.nsbox(pids=4096)
        def test_2000_threads():
            stop = threading.Event()
            threads = [threading.Thread(target=stop.wait) for _ in range(2000)]
            for thread in threads:
                thread.start()
            stop.set()
            for thread in threads:
                thread.join()

        def test_after():
            pass
    """)
    assert results["test_fork_bomb"].outcome == "failed"
    assert "[nsbox] box timed out after 1.5 s and was killed" in results["test_fork_bomb"].text
    for name in ("test_thread_bomb", "test_2000_threads", "test_after"):
        assert results[name].outcome == "passed", (name, results[name].text)


@pytest.mark.nsbox(enabled=False)  # examines the host itself: unboxed under --nsbox
@needs_cgroups
def test_moving_itself_out_of_its_cgroup_does_not_lift_the_limit(pytester, host: Host) -> None:
    """A test that writes its pid into the root cgroup's cgroup.procs (same uid as pytest:
    the file is writable to it) must stay under its memory limit: the write is refused or
    the limit still holds (found: as root the write succeeded and a 64 MiB test held
    200 MiB; fixed by a read-only view of the box's own cgroups)."""
    _, results = run(pytester, host, """
        import glob, os, pytest

        @pytest.mark.nsbox(memory="64M")
        def test_escape():
            for procs in glob.glob("/sys/fs/cgroup/*/cgroup.procs"):
                try:
                    with open(procs, "w") as file:
                        file.write(str(os.getpid()))
                except OSError:
                    pass
            hog = bytearray(200 << 20)
            hog[::4096] = b"x" * (len(hog) // 4096)
    """)
    assert results["test_escape"].outcome == "failed", "the box left its memory cgroup"
    assert "exceeded its memory limit of 64 MiB" in results["test_escape"].text


def test_loops_that_ignore_or_block_every_signal(pytester: pytest.Pytester, host: Host) -> None:
    """Ignoring and blocking every catchable signal does not outlive the timeout; a test
    that blocks the dump signal is still reported as timed out (without a stack)."""
    _, results = run(pytester, host, """
        import signal, threading, time, pytest

        def deaf():
            for signum in signal.valid_signals():
                try:
                    signal.signal(signum, signal.SIG_IGN)
                except (OSError, ValueError, RuntimeError):
                    pass
            signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())

        @pytest.mark.nsbox(timeout=0.5)
        def test_ignores_and_blocks_all():
            deaf()
            while True:
                pass

        @pytest.mark.nsbox(timeout=0.5)
        def test_every_thread_deaf_and_asleep():
            deaf()
            for _ in range(4):
                threading.Thread(target=time.sleep, args=(100,), daemon=True).start()
            while True:
                time.sleep(0.01)

        @pytest.mark.nsbox(timeout=0.5)
        def test_sigterm_handler_refuses():
            signal.signal(signal.SIGTERM, lambda *_: None)
            signal.signal(signal.SIGINT, lambda *_: None)
            while True:
                pass

        def test_after():
            pass
    """)
    for name in ("test_ignores_and_blocks_all", "test_every_thread_deaf_and_asleep",
                 "test_sigterm_handler_refuses"):
        assert results[name].outcome == "failed", name
        assert "[nsbox] box timed out after 0.5 s and was killed" in results[name].text, name
    assert "in test_sigterm_handler_refuses" in results["test_sigterm_handler_refuses"].text
    assert results["test_after"].outcome == "passed"


def test_a_test_that_stops_itself_under_a_timeout(pytester: pytest.Pytester, host: Host) -> None:
    """SIGSTOP to itself with a timeout: the timeout ends it and says so; a stopped child
    left behind by a passing test dies with the box."""
    _, results = run(pytester, host, """
        import os, signal, subprocess, sys, pytest

        @pytest.mark.nsbox(timeout=0.5)
        def test_stops_itself():
            os.kill(os.getpid(), signal.SIGSTOP)

        def test_stopped_child_left_behind():
            child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(100)"])
            os.kill(child.pid, signal.SIGSTOP)

        def test_after():
            pass
    """)
    assert results["test_stops_itself"].outcome == "failed"
    # nothing in the box can continue it, so it ends at once rather than at the timeout
    assert "stopped itself with SIGSTOP" in results["test_stops_itself"].text
    assert results["test_stopped_child_left_behind"].outcome == "passed"
    assert results["test_after"].outcome == "passed"


def test_a_test_that_stops_itself_without_a_timeout(pytester: pytest.Pytester,
                                                    host: Host) -> None:
    """SIGSTOP to itself and no timeout: unboxed this stops pytest; boxed, the user
    expects a failure that names the stop (the test process can never go on: nothing in
    the box is left to continue it). Found hanging for ever (the init waited without
    WUNTRACED); guarded here by a 12 s limit."""
    try:
        _, results = run(pytester, host, """
            import os, signal

            def test_stops_itself():
                os.kill(os.getpid(), signal.SIGSTOP)

            def test_after():
                pass
        """, timeout=12)
    except pytester.TimeoutExpired:
        pytest.fail("pytest hung on a boxed test that sent itself SIGSTOP (no timeout set)")
    assert results["test_stops_itself"].outcome == "failed"
    assert "SIGSTOP" in results["test_stops_itself"].text
    assert results["test_after"].outcome == "passed"


def test_library_box_that_stops_itself_without_a_timeout(host: Host) -> None:
    """Box().run of a function that stops itself: a BoxError naming SIGSTOP, not a hang.
    Found hanging; run in a subprocess killed after 8 s."""
    import subprocess

    code = ("import os, signal\nfrom pytest_nsbox import Box\n"
            "try:\n    Box().run(os.kill, 2, signal.SIGSTOP)\n"
            "except Exception as exc:\n    print(type(exc).__name__, exc)\n")
    proc = subprocess.Popen([sys.executable, "-c", code, host.marker], stdout=subprocess.PIPE,
                            text=True)
    try:
        out, _ = proc.communicate(timeout=8)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        pytest.fail("Box().run hung on a function that sent itself SIGSTOP")
    assert "SIGSTOP" in out


# --- crashes in every phase ----------------------------------------------------------------


def test_crashes_in_every_phase(pytester: pytest.Pytester, host: Host) -> None:
    """Abort, segfaults (in a fixture, a thread, a subprocess) and os._exit in setup, call
    and teardown: each fails only its own test, in the phase it died in, saying how."""
    _, results = run(pytester, host, """
        import ctypes, os, subprocess, sys, threading, pytest

        @pytest.fixture
        def segfault_in_setup():
            ctypes.string_at(0)

        @pytest.fixture
        def exit_in_teardown():
            yield
            os._exit(0)

        def test_abort():
            os.abort()

        def test_setup_crash(segfault_in_setup):
            pass

        def test_teardown_exit(exit_in_teardown):
            pass

        def test_exit_zero_in_call():
            os._exit(0)

        def test_segfault_in_a_thread():
            def crash_here():
                ctypes.string_at(0)
            thread = threading.Thread(target=crash_here)
            thread.start()
            thread.join()

        def test_segfault_in_a_subprocess():
            code = "import ctypes; ctypes.string_at(0)"
            assert subprocess.run([sys.executable, "-c", code]).returncode == -11

        def test_after():
            pass
    """)
    assert results["test_abort"].outcome == "failed"
    assert "[nsbox] box was killed by SIGABRT" in results["test_abort"].text
    assert results["test_setup_crash"].outcome == "error"
    assert "box was killed by SIGSEGV" in results["test_setup_crash"].text
    assert "segfault_in_setup" in results["test_setup_crash"].text
    assert results["test_teardown_exit"].phases == ["setup:passed", "call:passed",
                                                    "teardown:failed"]
    assert "box exited with code 0 during teardown" in results["test_teardown_exit"].text
    assert "box exited with code 0 during call" in results["test_exit_zero_in_call"].text
    assert "box was killed by SIGSEGV" in results["test_segfault_in_a_thread"].text
    assert "crash_here" in results["test_segfault_in_a_thread"].text
    assert results["test_segfault_in_a_subprocess"].outcome == "passed"
    assert results["test_after"].outcome == "passed"


def test_closing_every_file_descriptor(pytester: pytest.Pytester, host: Host) -> None:
    """os.closerange over every fd, the result pipe included. A user expects the test's
    own outcome (its assertion) or, failing that, a message that says the box closed its
    result pipe (the box opens the pipe again through its init's copy)."""
    _, results = run(pytester, host, """
        import os

        def test_close_all_but_stdio_then_fail():
            os.closerange(3, os.sysconf("SC_OPEN_MAX"))
            assert 0, "after closing"

        def test_close_everything():
            os.closerange(0, os.sysconf("SC_OPEN_MAX"))

        def test_after():
            pass
    """)
    assert results["test_after"].outcome == "passed"
    closing = results["test_close_everything"]
    # pytest's own capture files were among the fds: the report is pytest's error about
    # them (unboxed this ends the whole session), and the box itself still reports
    assert closing.outcome == "passed" or "Bad file descriptor" in closing.text, closing.text
    failing = results["test_close_all_but_stdio_then_fail"]
    assert failing.outcome in ("failed", "error"), failing  # capture's fds are gone too
    assert "after closing" in failing.text, failing.text


def test_fork_and_forget(pytester: pytest.Pytester, host: Host) -> None:
    """A child forked by the test that returns into pytest's code (instead of _exit) does
    not give the test a second report, and dies with the box."""
    _, results = run(pytester, host, """
        import os, time

        def test_forgets():
            if os.fork() == 0:
                return
            time.sleep(0.3)

        def test_after():
            pass
    """)
    assert results["test_forgets"].phases == ["setup:passed", "call:passed", "teardown:passed"]
    assert results["test_after"].outcome == "passed"


# --- output and messages -------------------------------------------------------------------


def test_megabytes_of_output(pytester: pytest.Pytester, host: Host) -> None:
    """8 MB on each of stdout and stderr, 16 MB from a subprocess on fd 1, 4 MB before a
    crash: all captured in the test's own report, none in the next test's."""
    _, results = run(pytester, host, """
        import os, subprocess, sys

        def test_loud():
            sys.stdout.write("o" * (8 << 20))
            sys.stderr.write("e" * (8 << 20))
            subprocess.run([sys.executable, "-c",
                            "import os; os.write(1, b'p' * (16 << 20))"], check=True)
            assert 0

        def test_loud_then_crash():
            os.write(1, b"c" * (4 << 20))
            os.abort()

        def test_after():
            print("quiet")
    """, "--tb=no")
    loud = results["test_loud"]
    assert loud.outcome == "failed"
    assert loud.sections["Captured stdout call"] == 24 << 20
    assert loud.sections["Captured stderr call"] == 8 << 20
    crash = results["test_loud_then_crash"]
    assert "box was killed by SIGABRT" in crash.text
    assert crash.sections.get("Captured stdout call", 0) >= 4 << 20
    assert results["test_after"].outcome == "passed"
    assert results["test_after"].sections == {"Captured stdout call": len("quiet\n")}


@pytest.mark.parametrize("megabytes", [
    5, pytest.param(50, marks=pytest.mark.slow),  # 50 MB: ~15 s, 2/3 of it pytest's own
])
def test_a_huge_assertion_message(pytester: pytest.Pytester, host: Host, megabytes: int) -> None:
    """assert 0, <5 or 50 MB>: an ordinary failure carrying the whole message."""
    _, results = run(pytester, host, f"""
        def test_huge():
            assert 0, "m" * ({megabytes} << 20)

        def test_after():
            pass
    """, "--tb=no")
    assert results["test_huge"].outcome == "failed"
    assert results["test_huge"].length > megabytes << 20
    assert results["test_after"].outcome == "passed"


def test_unpicklable_things_in_a_test(pytester: pytest.Pytester, host: Host) -> None:
    """Exceptions that do not pickle, or whose str() raises, fail their test as unboxed.
    A user property that does not pickle (record_property(name, lock)) passes unboxed; boxed
    a user expects the test to pass (the value as its repr) or a failure that names the
    property. Found as "box exited with code 1 during call before it sent a report
    (os._exit, a crash, or sys.exit outside the test)"."""
    _, results = run(pytester, host, """
        import threading

        class Unpicklable(Exception):
            def __reduce__(self):
                raise TypeError("no pickling")

        class BadStr(Exception):
            def __str__(self):
                raise RuntimeError("no str")

        def test_unpicklable_exception():
            raise Unpicklable("odd")

        def test_exception_holding_a_lock():
            raise ValueError(threading.Lock())

        def test_exception_whose_str_raises():
            raise BadStr()

        def test_unpicklable_property(record_property):
            record_property("lock", threading.Lock())

        def test_after():
            pass
    """)
    assert "Unpicklable: odd" in results["test_unpicklable_exception"].text
    assert "ValueError" in results["test_exception_holding_a_lock"].text
    assert "BadStr" in results["test_exception_whose_str_raises"].text
    for name in ("test_unpicklable_exception", "test_exception_holding_a_lock",
                 "test_exception_whose_str_raises"):
        assert results[name].outcome == "failed", name
    assert results["test_after"].outcome == "passed"
    prop = results["test_unpicklable_property"]
    assert prop.outcome == "passed" or "lock" in prop.text.split("Traceback")[0], prop.text


class BadStr(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no str")


class NeedsTwo(Exception):
    def __init__(self, a: int, b: int) -> None:
        super().__init__(a)


def _raise(exc: BaseException) -> None:
    raise exc


def _deep() -> list[object]:
    value: list[object] = []
    for _ in range(100_000):
        value = [value]
    return value


def test_library_exceptions_that_do_not_travel(host: Host) -> None:
    """Box.run: an exception that pickles but does not unpickle, and a return value too
    deep to pickle, are RemoteErrors naming the type."""
    with pytest.raises(RemoteError, match="NeedsTwo: 1"):
        Box().run(_raise, NeedsTwo(1, 2))
    with pytest.raises(RemoteError, match=r"return value could not be sent.*recursion"):
        Box().run(_deep)


def test_library_exception_whose_str_raises(host: Host) -> None:
    """Box.run of a function raising an exception whose str() fails: the exception comes
    back (it pickles) or a RemoteError naming BadStr. Found as BoxExited "box exited
    with code 1 before sending a result" (box._raised called str(exc) unguarded)."""
    with pytest.raises((BadStr, RemoteError)) as info:
        Box().run(_raise, BadStr())
    assert info.type is BadStr or "BadStr" in str(info.value)


def test_library_keyboard_interrupt_and_system_exit_come_back_as_themselves(host: Host) -> None:
    """As the contract says, what fn raises is re-raised as itself: a SystemExit in the box
    is a SystemExit in the parent (a library user must expect that), same for Ctrl-C."""
    with pytest.raises(SystemExit) as info:
        Box().run(sys.exit, 3)
    assert info.value.code == 3
    with pytest.raises(KeyboardInterrupt):
        Box().run(_raise, KeyboardInterrupt())


class _Planted:
    """A value whose unpickling runs code: it writes a file, in whoever unpickles it."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (_touch, (self.path,))


def _touch(path: str) -> str:
    with open(path, "w") as file:
        file.write(str(os.getpid()))
    return path


def test_unpickling_runs_box_code_in_the_parent_as_documented(tmp_path, host: Host) -> None:
    """Not a security boundary (docs/security.md): a return value's unpickling runs code
    of the box's choosing in the pytest process. This test pins that down so the docs stay
    true; if the channel ever stops unpickling arbitrary objects, update both."""
    planted = tmp_path / "planted"
    Box(writable_paths=[str(tmp_path)]).run(_Planted, str(planted))
    assert planted.read_text() == str(os.getpid())


# --- signals, daemons ----------------------------------------------------------------------


def test_signals_to_parent_group_and_everyone(pytester: pytest.Pytester, host: Host) -> None:
    """Signals to the box's init, to the real pytest pid, to the process group
    and to -1 from the test or its child never reach pytest; what the test does to its own
    box is reported as such."""
    _, results = run(pytester, host, """
        import errno, os, signal, subprocess, sys, time, pytest

        PYTEST = int(os.environ["NSBOX_OUTER_PYTEST_PID"])

        def test_kill_parent():
            assert os.getppid() == 0   # its parent (pytest) is outside its pid namespace
            os.kill(1, signal.SIGKILL)   # the box's init: ignored
            os.kill(1, signal.SIGTERM)

        def test_kill_real_pytest_pid():
            for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGKILL):
                try:
                    os.kill(PYTEST, signum)
                except ProcessLookupError:
                    pass

        def test_sigint_to_the_group():
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGHUP, signal.SIG_DFL)  # pytest may ignore it (nohup)
            os.killpg(0, signal.SIGINT)
            os.killpg(0, signal.SIGHUP)   # kills this test (default action)

        def test_minus_one_from_a_child():
            subprocess.run([sys.executable, "-c",
                            "import os, signal; os.kill(-1, signal.SIGKILL)"])
            time.sleep(5)

        def test_after():
            pass
    """)
    assert results["test_kill_parent"].outcome == "passed"
    assert results["test_kill_real_pytest_pid"].outcome == "passed"
    assert "[nsbox] box was killed by SIGHUP" in results["test_sigint_to_the_group"].text
    assert "[nsbox] box was killed by SIGKILL" in results["test_minus_one_from_a_child"].text
    assert results["test_after"].outcome == "passed"


def test_daemons_that_double_fork_and_setsid(pytester: pytest.Pytester, host: Host) -> None:
    """Daemons (double fork, setsid, SIGHUP/SIGTERM ignored, new process group) of a
    passing test die with its box; the host check finds none (they carry the marker)."""
    _, results = run(pytester, host, f"""
        import os, signal, subprocess, sys

        CODE = ("import os, signal, time\\n"
                "if os.fork(): os._exit(0)\\n"
                "os.setsid()\\n"
                "if os.fork(): os._exit(0)\\n"
                "for s in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT):\\n"
                "    signal.signal(s, signal.SIG_IGN)\\n"
                "time.sleep(1000)\\n")

        def test_spawns_daemons():
            for _ in range(5):
                subprocess.run([sys.executable, "-c", CODE, {host.marker!r}], check=True)

        def test_after():
            pass
    """)
    assert results["test_spawns_daemons"].outcome == "passed"
    assert results["test_after"].outcome == "passed"


# --- the host's names: hostname, mounts, IPC, ports, /tmp -----------------------------------


def test_hostname_mounts_ipc_port_and_tmp(pytester: pytest.Pytester, host: Host) -> None:
    """Everything a test may change in its namespaces stays there: hostname, a tmpfs over
    /etc, SysV shm/sem/msg objects, POSIX shm and message queues, a port the host holds,
    files under /tmp. Each inner test checks the change took inside the box."""
    with socket.create_server(("127.0.0.1", 0)) as held:
        port = held.getsockname()[1]
        _, results = run(pytester, host, f"""
            import ctypes, os, socket

            MARKER = {host.marker!r}
            KEY = {host.key}
            libc = ctypes.CDLL(None, use_errno=True)

            def test_hostname():
                socket.sethostname("evil-" + MARKER[-8:])
                assert socket.gethostname() == "evil-" + MARKER[-8:]

            def test_tmpfs_over_etc():
                assert libc.mount(b"tmpfs", b"/etc", b"tmpfs", 0, None) == 0, ctypes.get_errno()
                with open("/etc/" + MARKER, "w") as file:
                    file.write("x")
                assert os.listdir("/etc") == [MARKER]

            def test_sysv_ipc():
                IPC_CREAT = 0o1000
                assert libc.shmget(KEY, 4096, IPC_CREAT | 0o600) >= 0
                assert libc.semget(KEY, 1, IPC_CREAT | 0o600) >= 0
                assert libc.msgget(KEY, IPC_CREAT | 0o600) >= 0
                with open("/proc/sysvipc/shm") as file:
                    assert str(KEY) in file.read()

            def test_posix_shm_and_mqueue():
                with open("/dev/shm/" + MARKER, "w") as file:
                    file.write("x")
                rt = ctypes.CDLL("librt.so.1", use_errno=True)
                rt.mq_open.restype = ctypes.c_int
                fd = rt.mq_open(("/" + MARKER).encode(), os.O_CREAT | os.O_RDWR, 0o600, None)
                assert fd >= 0, ctypes.get_errno()

            def test_bind_a_port_the_host_holds():
                with socket.create_server(("127.0.0.1", {port})):
                    pass

            def test_write_under_tmp():
                with open("/tmp/" + MARKER, "w") as file:
                    file.write("x")
                os.makedirs("/tmp/dir-" + MARKER + "/deeper")

            def test_after():
                assert socket.gethostname() == "nsbox"
                assert not os.path.exists("/tmp/" + MARKER)
        """)
    for name, result in results.items():
        assert result.outcome == "passed", (name, result.text)
    assert len(results) == 7
    assert not os.path.exists(f"/etc/{host.marker}")
    rt = ctypes.CDLL("librt.so.1", use_errno=True)
    assert rt.mq_open(f"/{host.marker}".encode(), os.O_RDONLY) == -1, "mqueue left on host"
    assert ctypes.get_errno() == 2


def test_deleting_the_working_directory(pytester: pytest.Pytester, host: Host) -> None:
    """Deleting its cwd (a tmp_path) is the test's business: it passes and the session goes
    on. Under readonly=True the rootdir cannot be emptied: the files are still on the host.
    (Without readonly the rootdir is the host's, writable: see docs/security.md.)"""
    sentinel = pytester.path / "sentinel.txt"
    sentinel.write_text("still here")
    _, results = run(pytester, host, """
        import os, shutil, pytest

        def test_delete_own_cwd(tmp_path):
            os.chdir(tmp_path)
            shutil.rmtree(tmp_path)
            assert not os.path.exists(tmp_path)

        @pytest.mark.nsbox(readonly=True)
        def test_delete_rootdir_readonly():
            with pytest.raises(OSError):
                shutil.rmtree(os.getcwd())

        def test_after():
            assert os.path.exists("sentinel.txt")
    """)
    for name, result in results.items():
        assert result.outcome == "passed", (name, result.text)
    assert sentinel.read_text() == "still here"


def test_keyboard_interrupt_and_system_exit_in_every_phase(pytester, host: Host) -> None:
    """KeyboardInterrupt in a fixture's setup or teardown or in the test, SystemExit(0)
    and (3) in a test, sys.exit in a fixture teardown: each fails or errors only its own
    test (unboxed, a KeyboardInterrupt would end the whole session), with the exception in
    its report. The message must not claim the box died ("exited with code 1 ... before it
    sent a report (os._exit, a crash, ...)"): the test raised, pytest-side code caught it.
    Found so for KeyboardInterrupt in every phase (call_and_report re-raised it in the
    box, test_main turned it into exit code 1)."""
    _, results = run(pytester, host, """
        import sys, pytest

        @pytest.fixture
        def interrupt_setup():
            raise KeyboardInterrupt

        @pytest.fixture
        def interrupt_teardown():
            yield
            raise KeyboardInterrupt

        @pytest.fixture
        def exit_teardown():
            yield
            sys.exit(5)

        def test_setup_interrupt(interrupt_setup):
            pass

        def test_call_interrupt():
            raise KeyboardInterrupt

        def test_teardown_interrupt(interrupt_teardown):
            pass

        def test_system_exit_zero():
            sys.exit(0)

        def test_system_exit_three():
            raise SystemExit(3)

        def test_exit_in_teardown(exit_teardown):
            pass

        def test_after():
            pass
    """)
    assert results["test_setup_interrupt"].outcome == "error"
    assert results["test_call_interrupt"].outcome == "failed"
    assert results["test_teardown_interrupt"].phases[-1] == "teardown:failed"
    for name in ("test_setup_interrupt", "test_call_interrupt", "test_teardown_interrupt"):
        assert "KeyboardInterrupt" in results[name].text, name
        assert "before it sent a report" not in results[name].text, (name, results[name].text)
    assert results["test_system_exit_zero"].outcome == "failed"
    assert "SystemExit: 0" in results["test_system_exit_zero"].text
    assert "SystemExit: 3" in results["test_system_exit_three"].text
    assert results["test_exit_in_teardown"].phases[-1] == "teardown:failed"
    assert "SystemExit" in results["test_exit_in_teardown"].text
    assert results["test_after"].outcome == "passed"


def test_timeout_of_a_library_box_kills_a_deaf_tree(host: Host) -> None:
    """Box.run: a process tree where every process ignores and blocks all signals and
    sleeps in the kernel is gone within a second of the timeout."""

    def deaf_tree(marker: str) -> None:
        import subprocess

        code = ("import signal, time\nfor s in signal.valid_signals():\n"
                "    try: signal.signal(s, signal.SIG_IGN)\n    except Exception: pass\n"
                "signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())\n"
                "time.sleep(1000)\n")
        for _ in range(3):
            subprocess.Popen([sys.executable, "-c", code, marker], start_new_session=True)
        signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
        time.sleep(1000)

    started = time.monotonic()
    with pytest.raises(BoxTimeout, match=r"timed out after 0\.5 s"):
        Box(timeout=0.5).run(deaf_tree, host.marker)
    assert time.monotonic() - started < 3


def test_host_check_sees_a_leftover(host: Host) -> None:
    """The checker itself: a process carrying the marker, left on purpose, is found (and
    then removed by the test so it passes)."""
    import subprocess

    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(100)", host.marker])
    try:
        while host.marker not in open(f"/proc/{proc.pid}/cmdline").read():
            time.sleep(0.01)  # until it has exec'd
        found = host.leftovers(patience=0.1)
        assert str(proc.pid) in found.get("processes", [])
        assert str(proc.pid) in found.get("children of pytest", [])
    finally:
        proc.kill()
        proc.wait()
