"""Write the names of selected modules present in sys.modules at the end of a session.

``NSBENCH_MODULES_OUT=path`` turns it on; the file gets one JSON object
``{"pyroute2": false, ...}`` for the pytest process.
"""

from __future__ import annotations

import json
import os
import sys

WATCHED = ("pyroute2", "pytest_nsbox.plugin", "pytest_nsbox.box.api", "cloudpickle")


def pytest_unconfigure(config: object) -> None:
    path = os.environ.get("NSBENCH_MODULES_OUT")
    if not path:
        return
    with open(path, "w") as f:
        json.dump({name: name in sys.modules for name in WATCHED}, f)
