"""Faults of the pytest side: Ctrl-C and SIGKILL to pytest, full tmpfs, EMFILE, and a
frame decoder fed garbage (also live, by a box that writes junk and dies mid-frame).

Every case ends with a clean report (or a clean interrupted session) and the host as it
was (fixture `host`, tests/hostcheck.py).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from hostcheck import (
    Host,
    _owner,
    cgroups_writable,
    nsbox_cgroups,
    processes_with,
    run_inner_session,
)
from hostcheck import host as host  # the fixture
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pytest_nsbox import Box, BoxError
from pytest_nsbox.box.channel import HEADER, MAGIC, ChannelError, FrameDecoder, encode_frame

CGROUPS = cgroups_writable()

SLEEPER = """
    import os, time

    def test_sleeps():
        open({ready!r}, "w").close()
        time.sleep(60)

    def test_never_reached():
        pass
"""


def _start_inner(pytester: pytest.Pytester, host: Host) -> tuple[subprocess.Popen[str], str]:
    """An inner boxed session (a subprocess we hold) whose first test sleeps in its box."""
    ready = str(pytester.path / "ready")
    pytester.makepyfile(test_sleeper=textwrap.dedent(SLEEPER.format(ready=ready)))
    command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "no:rerunfailures",
               "--nsbox", f"--basetemp={pytester.path / ('bt-' + host.marker)}", "test_sleeper.py"]
    proc = subprocess.Popen(command, cwd=pytester.path, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    host.owners.add(proc.pid)
    deadline = time.monotonic() + 30
    while not os.path.exists(ready):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            out = proc.communicate()[0]
            pytest.fail(f"the inner session did not start its box:\n{out}")
        time.sleep(0.02)
    return proc, ready


def _box_processes(host: Host, pytest_pid: int) -> list[int]:
    return [pid for pid in processes_with(host.marker) if pid != pytest_pid]


def test_ctrl_c_to_pytest_while_a_box_runs(pytester: pytest.Pytester, host: Host) -> None:
    """SIGINT to pytest (Ctrl-C) while its box sleeps: an interrupted session within 5 s,
    with no box, cgroup or mount left."""
    proc, _ = _start_inner(pytester, host)
    assert _box_processes(host, proc.pid)
    started = time.monotonic()
    proc.send_signal(signal.SIGINT)
    try:
        out, _ = proc.communicate(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        out = proc.communicate()[0]
        pytest.fail(f"pytest did not end within 5 s of SIGINT:\n{out[-3000:]}")
    assert time.monotonic() - started < 5
    assert proc.returncode == pytest.ExitCode.INTERRUPTED, out[-3000:]
    assert "KeyboardInterrupt" in out
    assert not [path for path in nsbox_cgroups() if _owner(path) == proc.pid]


@pytest.mark.nsbox(enabled=False)  # examines the host itself: unboxed under --nsbox
def test_sigkill_to_pytest_kills_the_box_and_the_next_run_cleans_up(pytester, host: Host) -> None:
    """SIGKILL to pytest: its box dies within a second (PR_SET_PDEATHSIG), its session
    cgroup is left (nobody could remove it), and the next session removes it."""
    proc, _ = _start_inner(pytester, host)
    boxed = _box_processes(host, proc.pid)
    assert boxed
    proc.kill()
    proc.communicate()
    deadline = time.monotonic() + 1.0
    while (left := _box_processes(host, proc.pid)) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert left == [], "the box outlived its pytest by more than a second"
    stale = [path for path in nsbox_cgroups() if _owner(path) == proc.pid]
    if CGROUPS:
        assert stale, "expected the killed session's cgroup to be left for the next run"
    (pytester.path / "test_sleeper.py").unlink()
    result, results = run_inner_session(pytester, host, "def test_next(): pass", "--nsbox")
    assert results["test_next"].outcome == "passed", result.stdout.str()
    assert [path for path in nsbox_cgroups() if _owner(path) == proc.pid] == []


@pytest.mark.nsbox(enabled=False)  # examines the host itself: unboxed under --nsbox
def test_full_tmpfs_and_emfile_are_clean_failures(pytester: pytest.Pytester, host: Host) -> None:
    """ENOSPC filling a small tmpfs over the box's /tmp, a RAM /tmp filled under a memory
    limit (ENOSPC/ENOMEM or the memory limit, said so; without cgroups, a RAM /tmp of 8 MiB),
    and EMFILE under a low RLIMIT_NOFILE (the report still gets out through the open pipe):
    each a clean report; the next test runs. (A /tmp on disk, the default, would fill the
    disk: a box's /tmp is the machine's.)"""
    memory = ("@pytest.mark.nsbox(memory='64M', tmpfs_storage='ram')" if CGROUPS else
              "@pytest.mark.nsbox(tmpfs_storage='ram', tmpfs_size='8M')")
    _, results = run_inner_session(pytester, host, f"""
        import ctypes, errno, os, resource, pytest

        libc = ctypes.CDLL(None, use_errno=True)

        def fill(directory):
            block = b"x" * (1 << 20)
            n = 0
            with pytest.raises(OSError) as info:
                while True:
                    with open(os.path.join(directory, f"fill-{{n}}"), "wb") as file:
                        file.write(block)
                    n += 1
            return info.value.errno, n

        def test_enospc_on_a_small_tmpfs():
            assert libc.mount(b"tmpfs", b"/tmp", b"tmpfs", 0, b"size=4m") == 0
            err, n = fill("/tmp")
            assert err == errno.ENOSPC and n <= 4
            assert 0, "full tmpfs seen"

        {memory}
        def test_tmp_filled_under_a_memory_limit():
            err, n = fill("/tmp")
            assert err in (errno.ENOSPC, errno.ENOMEM)

        def test_emfile():
            resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
            held = []
            with pytest.raises(OSError) as info:
                while True:
                    held.append(open("/dev/null"))
            assert info.value.errno == errno.EMFILE
            assert 0, f"EMFILE after {{len(held)}} files"

        def test_after():
            assert not os.path.exists("/tmp/fill-0")
    """, "--nsbox")
    enospc = results["test_enospc_on_a_small_tmpfs"]
    assert enospc.outcome == "failed" and "full tmpfs seen" in enospc.text, enospc.text
    under_limit = results["test_tmp_filled_under_a_memory_limit"]
    assert under_limit.outcome == "passed" or (
        "exceeded its memory limit of 64 MiB" in under_limit.text), under_limit.text
    emfile = results["test_emfile"]
    assert emfile.outcome == "failed" and "EMFILE after" in emfile.text, emfile.text
    assert results["test_after"].outcome == "passed"


# --- the frame decoder, fuzzed --------------------------------------------------------------

objects = st.recursive(st.none() | st.integers() | st.text(max_size=30) | st.binary(max_size=64),
                       lambda inner: st.lists(inner, max_size=4) | st.tuples(inner, inner),
                       max_leaves=10)


@given(st.lists(objects, max_size=6), st.lists(st.integers(1, 64), min_size=1, max_size=20))
def test_any_chunking_of_a_valid_stream_gives_the_same_objects(items, sizes) -> None:
    stream = b"".join(encode_frame(obj) for obj in items)
    decoder = FrameDecoder()
    got, position, index = [], 0, 0
    while position < len(stream):
        size = sizes[index % len(sizes)]
        got += decoder.feed(stream[position:position + size])
        position += size
        index += 1
    decoder.close()
    assert got == items


@given(st.lists(objects, max_size=4), st.binary(min_size=1, max_size=64),
       st.integers(0, 2**32 - 1))
def test_junk_or_an_oversized_header_after_valid_frames(items, junk, length) -> None:
    """Valid frames come out; what follows is a ChannelError, never another exception."""
    stream = b"".join(encode_frame(obj) for obj in items)
    for tail in (junk, HEADER.pack(MAGIC, length) + junk):
        decoder = FrameDecoder(limit=1 << 16)
        got = decoder.feed(stream)
        assert got == items
        try:
            got += decoder.feed(tail)
            decoder.close()
        except ChannelError:
            pass


kinds = st.tuples(st.sampled_from(["report", "warnings", "note"]), objects)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(kinds, max_size=3), st.binary(max_size=300), st.integers(0, 400),
       st.booleans())
def test_live_box_writes_junk_and_dies_mid_frame(items, junk, cut, crash) -> None:
    """A box writes valid frames, then random bytes or a cut frame, then dies (exit or
    SIGKILL): the parent gets every frame before the junk and a clean error, every time.
    FAILS today when the frames and the junk arrive in one read: FrameDecoder.feed raises
    ChannelError and the objects it decoded earlier in the same call are lost."""
    frames = b"".join(encode_frame(obj) for obj in items)
    tail = junk if junk else encode_frame(b"z" * 500)[:cut]

    def target(send) -> None:  # type: ignore[no-untyped-def]
        os.write(send.fd, frames + tail)
        if crash:
            os.kill(os.getpid(), signal.SIGKILL)
        os._exit(0)

    outcome = Box(frame_limit=1 << 16).execute(target)
    assert outcome.frames[:len(items)] == items
    error = outcome.error(Box().options)
    if crash:
        assert isinstance(error, BoxError)
    if tail and outcome.channel_error is None:
        # the tail happened to decode as whole frames: only then may there be no error
        assert len(outcome.frames) > len(items)
    if outcome.channel_error is not None:
        assert isinstance(error, BoxError)
        assert "could not be read" in str(error)


@pytest.mark.parametrize("frame", [None, [], (), 42, ("return",), ("raise", None)])
def test_frames_of_the_wrong_shape_are_a_clean_error(frame, host: Host) -> None:
    """A well-formed frame holding something that is not a (kind, ...) tuple, or a short
    one: Box.run and Outcome.error give a BoxError, never TypeError/IndexError/ValueError
    in the parent. FAILS today: Outcome.error, Box.run and protocol._reports_from index
    frame[0], frame[1] unchecked."""

    def target(send) -> None:  # type: ignore[no-untyped-def]
        send(frame)

    outcome = Box().execute(target)
    try:
        error = outcome.error(Box().options)
    except Exception as exc:
        pytest.fail(f"Outcome.error crashed on frame {frame!r}: {exc!r}")
    assert error is None or isinstance(error, BoxError)

    def run_target(send) -> None:  # type: ignore[no-untyped-def]
        send(frame)
        os._exit(0)

    box = Box()
    box.execute = lambda target: Box.execute(box, run_target)  # type: ignore[method-assign]
    try:
        box.run(int)
    except BoxError:
        pass
    except Exception as exc:
        pytest.fail(f"Box.run crashed on frame {frame!r}: {exc!r}")


def test_live_box_flooding_the_pipe_after_an_oversized_header(host: Host) -> None:
    """A header over the limit, then the box keeps writing: the parent stops reading at the
    header, kills the box and reports, without buffering the flood."""

    def target(send) -> None:  # type: ignore[no-untyped-def]
        os.write(send.fd, HEADER.pack(MAGIC, (1 << 20) + 1))
        chunk = b"f" * (1 << 16)
        while True:
            os.write(send.fd, chunk)

    started = time.monotonic()
    outcome = Box(frame_limit=1 << 20, timeout=20).execute(target)
    assert "exceeds the limit" in (outcome.channel_error or "")
    assert not outcome.timed_out
    assert time.monotonic() - started < 10


def test_ctrl_c_while_the_supervisor_follows_a_clone_vm_test_process() -> None:
    """Ctrl-C right while the supervisor swaps the forked process for the clone_vm test
    process it made waits until the swap is done: the forked process is killed and
    reaped and the caller holds the new pidfd (half-way, the old pidfd was closed twice:
    an INTERNALERROR, and the session did not end within 5 s)."""
    import select
    import threading

    from pytest_nsbox.box import supervise
    from pytest_nsbox.box.namespaces.join import pidfd_open

    pids = []
    for _ in range(2):
        pid = os.fork()
        if pid == 0:
            time.sleep(60)
            os._exit(0)
        pids.append(pid)
    forked, test = pids
    pidfd = pidfd_open(forked)
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    swapped: list[tuple[int, int]] = []

    def swap(pid: int, fd: int) -> None:
        swapped.append((pid, fd))
        # Ctrl-C in the middle of the swap, to this thread (the one that blocks it)
        signal.pthread_kill(threading.get_ident(), signal.SIGINT)

    try:
        with pytest.raises(KeyboardInterrupt):
            supervise._follow(poller, pidfd, forked, test, swap)
        assert [pid for pid, _ in swapped] == [test]
        with pytest.raises(ChildProcessError):  # killed and reaped all the same
            os.waitpid(forked, os.WNOHANG)
        os.fstat(swapped[0][1])  # the new pidfd is open, the caller's to close
    finally:
        for fd in [fd for _, fd in swapped]:
            os.close(fd)
        os.kill(test, signal.SIGKILL)
        os.waitpid(test, 0)


def test_ctrl_c_before_the_supervisor_read_a_clone_vm_test_process_pid(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C after the clone_vm test process started but before the supervisor followed
    it: the box's children of pytest are killed and reaped all the same (a zombie test
    process kept the box's init from ending; the session's last tidy-up waited 10 s)."""
    from pytest_nsbox.box import spawn, supervise
    from pytest_nsbox.resources.net.listeners import _children

    def interrupted(*args: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(spawn, "_may_set_pid", False)  # the clone_vm path, as non-root
    assert Box().run(int) == 0  # the box maker (a child of pytest) is running
    monkeypatch.setattr(supervise, "_follow", interrupted)
    before = set(_children(os.getpid()))
    with pytest.raises(KeyboardInterrupt):
        Box().run(time.sleep, 30)
    assert set(_children(os.getpid())) - before == set()
    started = time.monotonic()
    spawn.tidy(block=True)  # the box's init ends: nothing of it waits to be reaped
    assert time.monotonic() - started < 5
