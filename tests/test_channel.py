"""Frames: round trips, and a clean ChannelError for junk, truncation and oversize."""

from __future__ import annotations

import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pytest_nsbox.box.channel import (
    HEADER,
    MAGIC,
    ChannelError,
    FrameDecoder,
    encode_frame,
    write_frame,
)


def test_round_trip_in_pieces() -> None:
    objects = [("report", {"a": 1}), list(range(1000)), "x" * 100_000, None]
    stream = b"".join(encode_frame(obj) for obj in objects)
    decoder = FrameDecoder()
    got = []
    for start in range(0, len(stream), 7):
        got += decoder.feed(stream[start:start + 7])
    decoder.close()
    assert got == objects


def test_lambdas_travel_by_value() -> None:
    secret = 41
    (fn,) = FrameDecoder().feed(encode_frame(lambda: secret + 1))
    assert fn() == 42


def test_junk_is_an_error() -> None:
    with pytest.raises(ChannelError, match="junk"):
        FrameDecoder().feed(b"hello world, not a frame")


def test_oversized_frame_is_refused_before_it_is_read() -> None:
    decoder = FrameDecoder(limit=1000)
    with pytest.raises(ChannelError, match="exceeds the limit of 1000"):
        decoder.feed(HEADER.pack(MAGIC, 10**9))


def test_encode_refuses_oversized() -> None:
    with pytest.raises(ValueError, match="exceeds the limit"):
        encode_frame(b"x" * 5000, limit=1000)


def test_truncated_frame_is_an_error() -> None:
    frame = encode_frame("hello")
    decoder = FrameDecoder()
    assert decoder.feed(frame[:-2]) == []
    with pytest.raises(ChannelError, match="truncated frame"):
        decoder.close()


def test_truncated_header_is_an_error() -> None:
    decoder = FrameDecoder()
    decoder.feed(MAGIC)
    with pytest.raises(ChannelError, match="header bytes"):
        decoder.close()


def test_undecodable_payload_is_an_error() -> None:
    payload = b"\x80\x05not a pickle"
    with pytest.raises(ChannelError, match="did not unpickle"):
        FrameDecoder().feed(HEADER.pack(MAGIC, len(payload)) + payload)


def test_write_frame_writes_everything_through_a_pipe() -> None:
    read, write = os.pipe()
    frame = encode_frame(b"y" * (1 << 20))
    if os.fork() == 0:
        os.close(read)
        write_frame(write, frame)
        os._exit(0)
    os.close(write)
    data = b""
    while chunk := os.read(read, 1 << 16):
        data += chunk
    os.close(read)
    os.wait()
    assert data == frame


@given(st.binary(max_size=200))
def test_garbage_never_crashes_the_decoder(data: bytes) -> None:
    decoder = FrameDecoder(limit=100)
    try:
        decoder.feed(data)
        decoder.close()
    except ChannelError:
        pass


@given(st.lists(st.integers() | st.text(max_size=20), max_size=5), st.integers(0, 200))
def test_any_cut_of_a_valid_stream_is_clean(objects: list[object], cut: int) -> None:
    frames = [encode_frame(obj) for obj in objects]
    boundaries = {sum(len(f) for f in frames[:i]) for i in range(len(frames) + 1)}
    stream = b"".join(frames)
    decoder = FrameDecoder()
    got = decoder.feed(stream[:cut])
    assert got == objects[: len(got)]
    if min(cut, len(stream)) in boundaries:
        decoder.close()
        assert len(got) == sum(1 for b in boundaries if 0 < b <= cut)
    else:
        with pytest.raises(ChannelError, match="truncated"):
            decoder.close()
