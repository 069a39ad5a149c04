"""How sizes are spelled in messages: binary units, the shortest exact form."""

from __future__ import annotations

__all__ = ["format_size"]


def format_size(size: int) -> str:
    """The shortest exact binary-unit spelling of a size, for messages: 64 MiB, 1.5 GiB."""
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if size >= 1 << shift:
            value = size / (1 << shift)
            return f"{value:.1f} {unit}".replace(".0 ", " ")
    return f"{size} B"
