"""The Box library against the real kernel: namespaces, mounts, outcomes, cleanup."""

from __future__ import annotations

import errno
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time

import pytest
from helpers import processes_with, spawn_daemon, token, wait_gone

import pytest_nsbox
from pytest_nsbox import (
    Box,
    BoxError,
    BoxExited,
    BoxKilled,
    BoxTimeout,
    BoxUnavailable,
    RemoteError,
    current_box,
)


def test_returns_the_value() -> None:
    assert Box().run(lambda x, y=1: x + y, 41) == 42


def test_pid_namespace_test_is_pid_2_under_a_private_init() -> None:
    pid, visible = Box().run(lambda: (os.getpid(), sorted(
        int(p) for p in os.listdir("/proc") if p.isdigit())))
    assert pid == 2
    assert visible == [1, 2]


def test_hostname_is_the_box_s_own() -> None:
    host = socket.gethostname()
    assert Box().run(socket.gethostname) == "nsbox"
    assert Box(hostname="other").run(socket.gethostname) == "other"
    assert socket.gethostname() == host


def test_private_tmp(tmp_path_factory: pytest.TempPathFactory) -> None:
    name = f"/tmp/{token()}"

    def scribble() -> list[str]:
        with open(name, "w") as file:
            file.write("box")
        return os.listdir("/tmp")

    inside = Box().run(scribble)
    assert os.path.basename(name) in inside
    assert not os.path.exists(name)


def test_kept_path_under_tmp_stays_reachable_and_writable(tmp_path) -> None:
    target = tmp_path / "made-in-box"
    base = str(tmp_path)
    Box(writable_paths=[base]).run(lambda: target.write_text("ok"))
    assert target.read_text() == "ok"


def test_only_loopback_and_it_is_up() -> None:
    def probe() -> tuple[list[str], bytes]:
        names = [name for _, name in socket.if_nameindex()]
        with socket.create_server(("127.0.0.1", 0)) as server:
            port = server.getsockname()[1]
            with socket.create_connection(("127.0.0.1", port), timeout=2) as client:
                peer, _ = server.accept()
                client.sendall(b"ping")
                data = peer.recv(4)
                peer.close()
        return names, data

    names, data = Box().run(probe)
    assert names == ["lo"]
    assert data == b"ping"


def _connect_errno(address: str) -> int:
    with socket.socket() as sock:
        sock.settimeout(2)
        return sock.connect_ex((address, 9))


def test_isolated_box_has_no_route_out() -> None:
    assert Box().run(_connect_errno, "192.0.2.1") == errno.ENETUNREACH


def test_net_none_has_not_even_loopback() -> None:
    assert Box(net="none").run(_connect_errno, "127.0.0.1") == errno.ENETUNREACH


def test_two_boxes_bind_the_same_port_while_the_host_holds_it() -> None:
    """Without auto_forward (which relays this process's listeners into the box, so that
    the port is taken there, as unboxed), each box binds the port in its own network."""
    with socket.create_server(("127.0.0.1", 0)) as held:
        port = held.getsockname()[1]

        def bind() -> int:
            with socket.create_server(("127.0.0.1", port)) as server:
                return int(server.getsockname()[1])

        assert Box(auto_forward=False).run(bind) == port
        assert Box(auto_forward=False).run(bind) == port


def test_user_modes() -> None:
    uid = os.getuid()
    assert Box(user="self").run(os.getuid) == uid
    assert Box(user="root").run(os.getuid) == 0


def test_user_host_has_no_user_namespace() -> None:
    if os.geteuid() != 0:
        with pytest.raises(BoxUnavailable, match="needs pytest to run as root"):
            Box(user="host").run(os.getuid)
        return
    ours = os.stat("/proc/self/ns/user").st_ino
    assert Box(user="host").run(lambda: os.stat("/proc/self/ns/user").st_ino) == ours
    assert Box(user="self").run(lambda: os.stat("/proc/self/ns/user").st_ino) != ours


def test_readonly_root_with_writable_tmp_and_basetemp(tmp_path) -> None:
    def probe() -> tuple[int, str]:
        try:
            open(os.path.join(os.path.dirname(__file__), "ro-probe"), "w")
        except OSError as exc:
            err = exc.errno or 0
        else:
            err = 0
        with open("/tmp/scratch", "w") as file:
            file.write("x")
        (tmp_path / "kept").write_text("kept")
        return err, "ok"

    err, _ = Box(readonly=True, writable_paths=[str(tmp_path)]).run(probe)
    assert err == errno.EROFS
    assert (tmp_path / "kept").read_text() == "kept"
    assert not os.path.exists(os.path.join(os.path.dirname(__file__), "ro-probe"))


def test_more_tmpfs_paths(tmp_path) -> None:
    (tmp_path / "seen").write_text("host")

    def scribble() -> list[str]:
        (tmp_path / "seen").write_text("box")
        (tmp_path / "new").write_text("box")
        return sorted(os.listdir(tmp_path))

    assert Box(tmpfs=(str(tmp_path),)).run(scribble) == ["new", "seen"]
    assert Box(tmpfs=(str(tmp_path),), tmpfs_mode="empty").run(os.listdir, tmp_path) == []
    assert sorted(os.listdir(tmp_path)) == ["seen"]
    assert (tmp_path / "seen").read_text() == "host"


def test_missing_tmpfs_path_is_unavailable() -> None:
    with pytest.raises(BoxUnavailable, match="tmpfs path /nonexistent-nsbox does not exist"):
        Box(tmpfs=("/nonexistent-nsbox",)).run(int)


def test_posix_shared_memory_stays_in_the_box() -> None:
    name = token()

    def make() -> bool:
        with open(f"/dev/shm/{name}", "w") as file:
            file.write("x")
        return os.path.exists(f"/dev/shm/{name}")

    assert Box().run(make)
    assert not os.path.exists(f"/dev/shm/{name}")


def test_exception_comes_back_as_itself_with_the_box_traceback() -> None:
    def boom() -> None:
        raise ValueError("boom in box")

    with pytest.raises(ValueError, match="boom in box") as info:
        Box().run(boom)
    assert "in boom" in info.value.box_traceback  # type: ignore[attr-defined]
    assert "box-side traceback" in str(info.value.__cause__)


class Unpicklable(Exception):
    def __reduce__(self):  # type: ignore[no-untyped-def]
        raise TypeError("no pickling")


def test_unpicklable_exception_is_a_remote_error() -> None:
    def boom() -> None:
        raise Unpicklable("odd")

    with pytest.raises(RemoteError, match="Unpicklable: odd") as info:
        Box().run(boom)
    assert "in boom" in info.value.traceback


def test_unpicklable_return_value_is_a_remote_error() -> None:
    import threading

    with pytest.raises(RemoteError, match="return value could not be sent"):
        Box().run(threading.Lock)


def test_exit_code() -> None:
    with pytest.raises(BoxExited) as info:
        Box().run(os._exit, 3)
    assert info.value.exitcode == 3


@pytest.mark.parametrize(
    ("action", "signum"),
    [
        (lambda: os.kill(os.getpid(), signal.SIGKILL), signal.SIGKILL),
        (lambda: os.kill(os.getpid(), signal.SIGTERM), signal.SIGTERM),
        (os.abort, signal.SIGABRT),
    ],
)
def test_killed_by_a_signal_it_sent_itself(action, signum) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(BoxKilled) as info:
        Box().run(action)
    assert info.value.signal == signum
    assert signal.Signals(signum).name in str(info.value)


def test_segfault_report_has_the_python_stack() -> None:
    import ctypes

    def crash() -> None:
        ctypes.string_at(0)

    with pytest.raises(BoxKilled, match="SIGSEGV") as info:
        Box().run(crash)
    assert "in crash" in info.value.detail


def test_timeout_kills_everything_and_says_where_it_was_stuck() -> None:
    marker = token()

    def hang() -> None:
        spawn_daemon(marker)
        time.sleep(60)

    started = time.monotonic()
    with pytest.raises(BoxTimeout) as info:
        Box(timeout=0.5).run(hang)
    assert time.monotonic() - started < 5
    assert "in hang" in str(info.value)
    assert wait_gone(marker, 1) == []


_held = threading.Lock()  # held by the test while a fork handler waits on it
_wait_at_fork = False


def _at_fork_in_child() -> None:
    if _wait_at_fork:
        _held.acquire()  # never released in the child: a lock another thread held


os.register_at_fork(after_in_child=_at_fork_in_child)


def test_a_test_process_stuck_before_its_box_is_described_by_the_kernel() -> None:
    """A test process that waits on a lock right after the fork (one a thread of pytest
    held then) never runs its dump handler: the timeout says what the kernel sees."""
    global _wait_at_fork
    with _held:
        _wait_at_fork = True
        try:
            with pytest.raises(BoxTimeout) as info:
                Box(timeout=1).run(int)
        finally:
            _wait_at_fork = False
    text = str(info.value)
    assert "the test process (pid " in text and "gave no stack dump" in text, text
    assert "state S" in text, text  # asleep on the lock
    if Box().run(_box_has_cgroups):
        assert "it had not entered its box" in text, text


def _box_has_cgroups() -> bool:
    box = current_box()
    return box is not None and bool(getattr(box.cgroup, "paths", ()))


def test_double_forked_daemons_die_with_the_box() -> None:
    marker = token()
    Box().run(spawn_daemon, marker)
    assert processes_with(marker) == []


def test_box_cannot_signal_the_parent_or_its_group() -> None:
    parent = os.getpid()

    def attack() -> list[str]:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the box survives its own attack
        results = []
        for target in (parent, -os.getpgid(0), 1, -1):
            try:
                os.kill(target, signal.SIGTERM)
                results.append("sent")
            except OSError as exc:
                results.append(errno.errorcode[exc.errno or 0])
        return results

    previous = signal.signal(signal.SIGTERM, lambda *_: pytest.fail("the box reached us"))
    try:
        results = Box().run(attack)
    finally:
        signal.signal(signal.SIGTERM, previous)
    if parent > 2:  # (nested in a box, our pid 2 is the inner box's own test process)
        assert results[0] == "ESRCH"  # our pid does not exist in the box


def test_death_of_the_parent_kills_the_box(tmp_path) -> None:
    marker = token()
    script = tmp_path / "parent.py"
    script.write_text(textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {os.path.dirname(__file__)!r})
        from helpers import spawn_daemon
        from pytest_nsbox import Box
        def work():
            spawn_daemon({marker!r})
            print("ready", flush=True)
            time.sleep(60)
        Box().run(work)
    """))
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == b"ready"
    assert processes_with(marker)
    proc.kill()
    proc.wait()
    assert wait_gone(marker, 1.0) == []


def test_ten_megabytes_cannot_deadlock_the_pipe() -> None:
    data = Box().run(lambda: b"x" * (10 << 20))
    assert len(data) == 10 << 20


def test_output_of_ten_megabytes_on_stdout(capfd: pytest.CaptureFixture[str]) -> None:
    Box().run(lambda: sys.stdout.write("y" * (10 << 20)))
    out, _ = capfd.readouterr()
    assert len(out) == 10 << 20


def test_junk_on_the_pipe_is_a_clean_error() -> None:
    def target(send) -> None:  # type: ignore[no-untyped-def]
        os.write(send.fd, b"this is not a frame at all")

    outcome = Box().execute(target)
    assert outcome.channel_error is not None and "junk" in outcome.channel_error
    error = outcome.error(Box().options)
    assert isinstance(error, BoxError) and "could not be read" in str(error)


def test_death_mid_frame_is_a_clean_error() -> None:
    from pytest_nsbox.box.channel import encode_frame

    def target(send) -> None:  # type: ignore[no-untyped-def]
        frame = encode_frame(b"z" * 100_000)
        os.write(send.fd, frame[:5000])
        os._exit(0)

    outcome = Box().execute(target)
    assert outcome.channel_error is not None
    assert "truncated frame" in outcome.channel_error


def test_oversized_frame_is_refused_in_the_parent() -> None:
    from pytest_nsbox.box.channel import HEADER, MAGIC

    def target(send) -> None:  # type: ignore[no-untyped-def]
        os.write(send.fd, HEADER.pack(MAGIC, 1 << 31))
        time.sleep(30)

    started = time.monotonic()
    outcome = Box(frame_limit=1 << 20).execute(target)
    assert "exceeds the limit" in (outcome.channel_error or "")
    assert time.monotonic() - started < 10


def test_result_over_the_frame_limit_is_a_remote_error() -> None:
    with pytest.raises(RemoteError, match="exceeds the limit"):
        Box(frame_limit=1000).run(lambda: b"x" * 5000)


def test_fork_fallback_still_isolates(monkeypatch: pytest.MonkeyPatch) -> None:
    """When other threads may hold libc locks, a forked child makes the clone instead."""
    from pytest_nsbox.box import namespaces

    monkeypatch.setattr(namespaces, "single_threaded", lambda: False)
    marker = token()
    import threading
    import warnings

    idle = threading.Event()
    other = threading.Thread(target=idle.wait)
    other.start()
    try:
        with warnings.catch_warnings():  # Python 3.12+ warns on fork with threads: not here
            warnings.simplefilter("error", DeprecationWarning)
            assert Box().run(os.getpid) == 2
    finally:
        idle.set()
        other.join()
    with pytest.raises(BoxTimeout):
        Box(timeout=0.3).run(lambda: (spawn_daemon(marker), time.sleep(30)))
    assert wait_gone(marker, 1) == []
    with pytest.raises(BoxKilled, match="SIGABRT"):
        Box().run(os.abort)
    with pytest.raises(BoxUnavailable, match="tmpfs path"):
        Box(tmpfs=("/nonexistent-nsbox",)).run(int)


def test_idle_threads_allow_the_raw_clone() -> None:
    import threading

    from pytest_nsbox.box import namespaces

    busy = threading.Event()
    worker = threading.Thread(target=busy.wait)
    worker.start()
    try:
        time.sleep(0.05)
        assert namespaces.single_threaded()
    finally:
        busy.set()
        worker.join()


def test_threaded_parent_still_isolates() -> None:
    import threading

    stop = threading.Event()
    thread = threading.Thread(target=stop.wait)
    thread.start()
    try:
        assert Box().run(os.getpid) == 2
        with pytest.raises(BoxTimeout):
            Box(timeout=0.3).run(time.sleep, 30)
        with pytest.raises(BoxKilled):
            Box().run(os.abort)
    finally:
        stop.set()
        thread.join()


def test_a_box_inside_a_box() -> None:
    def outer() -> tuple[int, str]:
        return Box(hostname="inner").run(lambda: (os.getpid(), socket.gethostname()))

    assert Box().run(outer) == (2, "inner")


def test_minimal_dev() -> None:
    def look() -> tuple[list[str], dict[str, str], str, bytes]:
        refused = {}
        for path in ("/dev/mem", "/dev/kmsg", "/dev/sda", "/dev/vda", "/dev/loop0"):
            try:
                open(path, "rb").close()
                refused[path] = "opened"
            except OSError as exc:
                refused[path] = errno.errorcode[exc.errno or 0]
        import pty

        _, follower = pty.openpty()
        with open("/dev/null", "w") as sink:
            sink.write("gone")
        with open("/dev/zero", "rb") as zero:
            zeros = zero.read(4)
        return sorted(os.listdir("/dev")), refused, os.ttyname(follower), zeros

    names, refused, tty, zeros = Box().run(look)
    assert names == ["fd", "full", "null", "ptmx", "pts", "random", "shm", "stderr", "stdin",
                     "stdout", "tty", "urandom", "zero"]
    assert set(refused.values()) == {"ENOENT"}
    assert tty.startswith("/dev/pts/")
    assert zeros == b"\0" * 4


@pytest.mark.nsbox(enabled=False)  # examines the host itself: unboxed under --nsbox
def test_extra_devices_and_host_dev() -> None:
    assert Box(devices=["/dev/kmsg"]).run(os.path.exists, "/dev/kmsg")
    assert not Box().run(os.path.exists, "/dev/kmsg")
    assert Box(devices="host").run(os.path.exists, "/dev/kmsg") == os.path.exists("/dev/kmsg")
    with pytest.raises(BoxUnavailable, match="/dev/no-such-device"):
        Box(devices=["/dev/no-such-device"]).run(int)


def test_boxes_nest() -> None:
    assert Box().run(lambda: Box(hostname="inner").run(socket.gethostname)) == "inner"


def test_the_interpreter_and_imports_stay_reachable_under_a_tmpfs(tmp_path) -> None:
    """A checkout or venv under a tmpfs path (CI often clones under /tmp): the box can still
    start subprocesses of this Python and import from sys.path."""
    import subprocess

    from pytest_nsbox.box.spawn import process_paths

    assert os.path.dirname(os.path.abspath(sys.executable)) in process_paths()
    here = os.path.dirname(os.path.abspath(__file__))

    def probe() -> tuple[int, bool]:
        done = subprocess.run([sys.executable, "-c", "pass"], check=False)
        return done.returncode, os.path.isdir(here)

    top = os.path.dirname(here)
    assert Box(tmpfs=("/tmp", top)).run(probe) == (0, True)  # top may be under /tmp too


def _is_mount_point(path: str) -> bool:
    """From the mount table: os.path.ismount cannot tell a bind of another directory of
    the same file system (a box's layers on disk, where no overlay could be mounted)."""
    with open("/proc/self/mountinfo") as mounts:
        return any(line.split()[4] == path for line in mounts)


def test_nested_tmpfs_paths() -> None:
    inner = f"/tmp/{token()}"
    assert Box(tmpfs=("/tmp", inner)).run(_is_mount_point, inner)
    assert not os.path.exists(inner)


def test_the_parents_garbage_collector_keeps_working_across_boxes() -> None:
    """Cyclic garbage the parent makes between boxes is collected by the automatic
    collections (found: freezing the parent's heap around each clone moved its young
    objects to the oldest generation every test, so no cycle was collected)."""
    import weakref

    class Node:
        other: object = None

    made = []
    box = Box()
    for _ in range(100):
        box.run(int)
        for _ in range(20):  # enough new objects between boxes for young collections
            first, second = Node(), Node()
            first.other, second.other = second, first
            made.append(weakref.ref(first))
            del first, second
    alive = sum(ref() is not None for ref in made)
    assert alive < len(made) // 2, f"{alive} of {len(made)} cycles not collected"


def test_a_process_with_a_native_thread_pool_boxes() -> None:
    """numpy starts OpenBLAS's thread pool on import (pytest-randomly imports numpy where
    it is installed). A raw clone beside that thread skipped the pool's fork handlers,
    and the box's init then waited for ever in its fork, joining a thread the clone had
    not copied. A thread Python does not know makes the box start through os.fork()."""
    pytest.importorskip("numpy", reason="lacks: numpy")
    code = ("import os, time, numpy\n"
            "time.sleep(0.3)  # the pool's thread settles into its futex wait\n"
            "from pytest_nsbox import Box\n"
            "print([Box().run(os.getpid) for _ in range(3)])\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert done.stdout.strip() == "[2, 2, 2]", done.stderr



def _write_lock_then_fork() -> tuple[int, int]:
    """A write lock of glibc's (a fresh rwlock, then setlocale's), then strerror() in a
    forked child: what a test process whose glibc lost its thread id gets wrong."""
    import ctypes
    import locale

    time.sleep(0.5)  # the forked process that made it is gone within milliseconds
    libc = ctypes.CDLL(None, use_errno=True)
    rwlock = ctypes.create_string_buffer(64)
    libc.pthread_rwlock_init(rwlock, None)
    took = int(libc.pthread_rwlock_wrlock(rwlock))
    libc.pthread_rwlock_unlock(rwlock)
    locale.setlocale(locale.LC_CTYPE, locale.setlocale(locale.LC_CTYPE))
    pid = os.fork()
    if pid == 0:
        os.strerror(errno.ENOENT)  # reads glibc's locale under its lock
        os._exit(0)
    return took, os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def test_a_clone_vm_test_process_keeps_its_thread_id_after_the_forked_process_dies(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The clone_vm path (every box of a non-root pytest): the forked process's exit
    wrote 0 over the glibc thread id the test process shares with it, so every rwlock
    write lock was EDEADLK, setlocale() left glibc's locale lock write-locked and a
    forked child's strerror() waited for ever (the user lane hung for an hour)."""
    from pytest_nsbox.box import spawn

    monkeypatch.setattr(spawn, "_may_set_pid", False)
    assert Box(timeout=20).run(_write_lock_then_fork) == (0, 0)


# Modules the box maker must not import: every box's init is a clone of it, and their
# memory (2.7 MB of anonymous pages, measured) is page tables each clone copies.
_HEAVY = ("typing", "dataclasses", "inspect", "difflib", "platform", "ast",
          "pytest_nsbox.box.options", "pytest_nsbox.box.maker")


def test_the_box_maker_imports_only_small_modules_and_reads_requests_as_sent() -> None:
    """A fresh `-S -E` Python, as the maker starts, imports the maker's and the init's
    modules and decodes real requests (one with a relay, whose box end it imports too):
    none of `_HEAVY` is loaded, and every option reads back as pytest sent it."""
    import dataclasses

    from pytest_nsbox.box.maker import Request, encode_request
    from pytest_nsbox.box.options import BoxOptions
    from pytest_nsbox.resources.net.listeners import AutoForward

    options = BoxOptions(memory="64M", net="isolated", tmpfs=("/tmp", "/var/tmp"))
    plain = {"options": options, "keep_paths": ("/k",), "writable_paths": (), "uid": 7,
             "gid": 8, "views": (("/sys/fs/cgroup/x", True),)}
    sent = encode_request(Request(**plain))  # type: ignore[arg-type]
    with_relay = encode_request(Request(**plain, relay=True,  # type: ignore[arg-type]
                                        auto_forward=(AutoForward("127.0.0.1", 80, "h", True),)))
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(pytest_nsbox.__file__)))
    code = textwrap.dedent(f"""
        import sys, json, pickle
        sys.path[:0] = [{package_root!r}]
        from pytest_nsbox.box.maker_process import decode_request
        from pytest_nsbox.box import init, namespaces
        request = decode_request(pickle.loads({sent!r}))
        heavy = [m for m in {_HEAVY!r} if m in sys.modules]
        print(json.dumps([heavy, vars(request.options), request.keep_paths, request.uid,
                          request.views, request.relay]))
        relayed = decode_request(pickle.loads({with_relay!r}))
        from pytest_nsbox.box.maker_process import _import_for
        _import_for(relayed)  # what a relay's box end needs, as the maker imports it
        heavy = [m for m in {_HEAVY!r} if m in sys.modules]
        print(json.dumps([heavy, relayed.relay, [vars(a) for a in relayed.auto_forward]]))
    """)
    out = subprocess.run([sys.executable, "-S", "-E", "-c", code], capture_output=True,
                         text=True, check=True).stdout.splitlines()
    import json

    heavy, got_options, keep, uid, views, relay = json.loads(out[0])
    assert heavy == [], f"the box maker imports {heavy}"
    want = json.loads(json.dumps({f.name: getattr(options, f.name)
                                  for f in dataclasses.fields(options)}))
    assert got_options == want
    assert (keep, uid, views, relay) == (["/k"], 7, [["/sys/fs/cgroup/x", True]], False)
    heavy, relay, auto = json.loads(out[1])
    assert heavy == [], f"the box maker imports {heavy} for a relay"
    assert (relay, auto) == (True, [{"address": "127.0.0.1", "port": 80, "target": "h",
                                      "required": True}])


def test_a_box_frees_nothing_it_inherited_from_pytest() -> None:
    """The test process keeps pytest's maker, boxes and cgroup session referenced (their fds
    closed): freeing them there copied dozens of shared pages for nothing, before every test.
    A finalizer on each, registered here, would run in the box if it freed them."""
    import weakref

    from pytest_nsbox.box import spawn
    from pytest_nsbox.resources.cgroups import session

    Box().run(int)  # the maker, and a cgroup session where cgroups are usable
    assert spawn._maker is not None
    watched = [spawn._maker, spawn._maker.process]
    if session._session is not None:
        watched.append(session._session)
    r, w = os.pipe()
    finalizers = [weakref.finalize(obj, os.write, w, type(obj).__name__.encode() + b" ")
                  for obj in watched]
    maker = weakref.ref(watched[0])
    del watched  # only pytest_nsbox's own references are left
    try:
        def inside() -> tuple[bool, int]:
            kept = maker()  # the box's copy of pytest's maker
            return spawn._maker is None, kept.channel.fileno() if kept is not None else 0

        assert Box().run(inside) == (True, -1)  # not its own, and its socket closed
        os.set_blocking(r, False)
        with pytest.raises(BlockingIOError):
            freed = os.read(r, 4096)
            pytest.fail(f"the box freed what it inherited: {freed!r}")
    finally:
        for finalizer in finalizers:
            finalizer.detach()
        os.close(r)
        os.close(w)
