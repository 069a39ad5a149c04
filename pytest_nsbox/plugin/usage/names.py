"""The names the usage hook objects register under, and the warning a budget gives."""

from __future__ import annotations

import pytest

__all__ = ["BOX_SIDE", "CONTROLLER", "HTML_COLUMNS", "TOP", "NsboxBudgetWarning"]

#: names the hook objects are registered under (a second registration is a no-op)
BOX_SIDE = "nsbox-usage-box"
CONTROLLER = "nsbox-usage"
HTML_COLUMNS = "nsbox-usage-html-columns"
TOP = "nsbox-usage-top"


class NsboxBudgetWarning(pytest.PytestWarning):
    """A boxed test used more than its ``memory_budget`` or ``cpu_budget``; it still passes."""
