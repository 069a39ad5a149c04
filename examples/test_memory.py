"""A memory limit covers the whole box and ends a test that goes over it."""

from __future__ import annotations

import pytest

from pytest_nsbox import BoxContext

MiB = 1 << 20


@pytest.mark.nsbox(memory="64M")
def test_allocating_1_gib_under_a_64_mib_limit() -> None:
    """Meant to fail: the kernel kills the box when it passes 64 MiB.

    The report reads "[nsbox] exceeded its memory limit of 64 MiB (peak ...)", and the
    session goes on with the next test.
    """
    data = b"x" * (1024 * MiB)  # writes every page, so all of it is charged
    assert len(data) == 1024 * MiB


@pytest.mark.nsbox(memory="256M")
def test_staying_under_the_limit(nsbox: BoxContext) -> None:
    """Passes: 32 MiB under a 256 MiB limit. Prints what the box has used so far."""
    data = b"x" * (32 * MiB)
    assert len(data) == 32 * MiB
    print("limit:", nsbox.options.memory, "bytes; usage so far:", nsbox.usage())
