"""An exception's way out of a box: the ``raise`` frame the box sends, rebuilt in the parent.

The frame carries the exception pickled (cloudpickle) where it pickles, its type name,
its message and the box-side traceback text; the parent re-raises it as itself, or as
`RemoteError` when it does not unpickle.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .errors import RemoteError

__all__ = ["raise_frame", "rebuild"]


def raise_frame(exc: BaseException) -> tuple[Any, ...]:
    import traceback

    try:
        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    except Exception:
        text = f"{type(exc).__qualname__} (its traceback could not be formatted)"
    try:
        message = str(exc)
    except Exception:
        message = "<exception str() failed>"
    try:
        import cloudpickle

        payload: bytes | None = cloudpickle.dumps(exc)
    except Exception:
        payload = None
    return ("raise", payload, type(exc).__qualname__, message, text)


class _RemoteTraceback(Exception):
    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return "\n\nbox-side traceback:\n" + self.text


def rebuild(frame: Sequence[Any]) -> BaseException:
    import pickle

    _, payload, type_name, message, text = frame
    if payload is not None:
        try:
            exc = pickle.loads(payload)
        except Exception:
            exc = None
        if isinstance(exc, BaseException):
            exc.__cause__ = _RemoteTraceback(text)
            exc.box_traceback = text  # type: ignore[attr-defined]
            return exc
    return RemoteError(type_name, message, text)
