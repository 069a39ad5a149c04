"""Length-prefixed cloudpickle frames over a pipe, bounded and robust to junk.

A frame is ``b"NSBX"``, a 4-byte big-endian payload length, and the payload (a pickle).
The reader never trusts the writer: a wrong magic, a length over the bound, a stream that
ends mid-frame or a payload that does not unpickle is a `ChannelError` with a message
saying which, never a crash or an unbounded read.
"""

from __future__ import annotations

import os
import pickle
import struct
from typing import Any

__all__ = ["DEFAULT_FRAME_LIMIT", "ChannelError", "FrameDecoder", "encode_frame", "write_frame"]

MAGIC = b"NSBX"
HEADER = struct.Struct(">4sI")
DEFAULT_FRAME_LIMIT = 256 << 20


#: The frames Box itself reads: kind -> tuple length (other kinds are the caller's own).
FRAME_SIZES = {"return": 2, "raise": 5, "unavailable": 2}


def check_shape(obj: object) -> None:
    """ChannelError unless `obj` is a (kind, ...) tuple of its kind's size."""
    if isinstance(obj, tuple) and obj and isinstance(obj[0], str):
        if len(obj) == FRAME_SIZES.get(obj[0], len(obj)):
            return
        raise ChannelError(f"a frame of the wrong shape: {obj[0]!r} with {len(obj)} items")
    raise ChannelError(f"a frame of the wrong shape: {type(obj).__name__}")


class ChannelError(Exception):
    """The byte stream from a box was not a sequence of valid frames.

    `frames` holds the objects decoded in the same `feed` call before the bad bytes.
    """

    frames: list[Any] = []


def encode_frame(obj: Any, limit: int = DEFAULT_FRAME_LIMIT) -> bytes:
    """Pickle `obj` into one frame; ValueError if over `limit`.

    Plain pickle first (two to three times faster, and what the parent loads by reference
    exists there: the box is its fork); cloudpickle for lambdas, local classes and the like.
    """
    try:
        payload = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:
        import cloudpickle

        payload = cloudpickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    if len(payload) > limit:
        raise ValueError(f"frame of {len(payload)} bytes exceeds the limit of {limit} bytes")
    return HEADER.pack(MAGIC, len(payload)) + payload


def write_frame(fd: int, frame: bytes) -> None:
    """Write all of `frame` to `fd` (os.write may write less than asked on a pipe)."""
    view = memoryview(frame)
    while view:
        view = view[os.write(fd, view) :]


class FrameDecoder:
    """Incremental decoder: feed it bytes as they arrive, take whole payloads out."""

    def __init__(self, limit: int = DEFAULT_FRAME_LIMIT) -> None:
        self.limit = limit
        self._buffer = bytearray()
        self._need: int | None = None

    def feed(self, data: bytes) -> list[Any]:
        """Add `data`; return the objects of every frame now complete."""
        objects: list[Any] = []
        try:
            self._decode(data, objects)
        except ChannelError as exc:
            exc.frames = objects
            raise
        return objects

    def _decode(self, data: bytes, objects: list[Any]) -> None:
        self._buffer += data
        while True:
            if self._need is None:
                if len(self._buffer) < HEADER.size:
                    return
                magic, length = HEADER.unpack_from(self._buffer)
                if magic != MAGIC:
                    start = bytes(self._buffer[:16])
                    raise ChannelError(
                        f"junk on the result pipe: expected a frame header, got {start!r}"
                    )
                if length > self.limit:
                    raise ChannelError(
                        f"frame of {length} bytes exceeds the limit of {self.limit} bytes"
                    )
                del self._buffer[: HEADER.size]
                self._need = length
            if len(self._buffer) < self._need:
                return
            payload = bytes(self._buffer[: self._need])
            del self._buffer[: self._need]
            self._need = None
            try:
                objects.append(pickle.loads(payload))
            except Exception as exc:
                raise ChannelError(
                    f"a frame did not unpickle: {type(exc).__name__}: {exc}"
                ) from exc

    def close(self) -> None:
        """Declare the end of the stream; ChannelError if it ended inside a frame."""
        if self._need is not None:
            raise ChannelError(
                f"truncated frame: got {len(self._buffer)} of {self._need} payload bytes"
            )
        if self._buffer:
            raise ChannelError(
                f"truncated frame: got {len(self._buffer)} of {HEADER.size} header bytes"
            )
