"""The docs and the example suite cannot drift from the code.

The options reference is generated from `pytest_nsbox.box.options.OPTIONS` by
`docs/gen_options.py`; these tests run that generator and check every option is in the
table with its default, its help and the CLI flag and ini key pytest really registers.
The example suite must collect cleanly, and the README must keep its two commands.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from pytest_nsbox.box.options import OPTIONS

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
EXAMPLES = ROOT / "examples"


def load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_options", DOCS / "gen_options.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def table_rows(table: str) -> dict[str, str]:
    """Rows of the generated table by option name."""
    rows = {}
    for line in table.splitlines()[2:]:
        name = line.split("|")[1].strip().strip("`")
        rows[name] = line
    return rows


def test_every_option_is_in_the_table_with_its_default_and_help() -> None:
    gen = load_generator()
    rows = table_rows(gen.render_table())
    assert list(rows) == [spec.name for spec in OPTIONS]
    for spec in OPTIONS:
        row = rows[spec.name]
        cells = [cell.strip() for cell in row.split("|")[1:-1]]
        assert cells[1] == f"`{spec.default!r}`", spec.name
        assert cells[4] == spec.help.replace("|", "\\|"), spec.name


def test_the_table_names_the_flags_and_ini_keys_pytest_registers(
    pytester: pytest.Pytester,
) -> None:
    rows = table_rows(load_generator().render_table())
    config = pytester.parseconfig()
    for spec in OPTIONS:
        cells = [cell.strip() for cell in rows[spec.name].split("|")[1:-1]]
        flag, ini = cells[2], cells[3]
        if spec.name == "enabled":  # a marker option only
            assert (flag, ini) == ("—", "—")
            continue
        assert flag == f"`--nsbox-{spec.name.replace('_', '-')} {spec.metavar}`"
        assert hasattr(config.option, f"nsbox_{spec.name}")
        assert ini == f"`nsbox_{spec.name}`"
        config.getini(f"nsbox_{spec.name}")  # ValueError if pytest does not know the key


def test_the_accepted_column_is_what_the_validator_says() -> None:
    rows = table_rows(load_generator().render_table())
    assert "'isolated' or 'none' or 'host'" in rows["net"]
    assert "binary units" in rows["memory"]


def test_the_hook_puts_the_table_into_the_options_page() -> None:
    gen = load_generator()
    page = (DOCS / "options.md").read_text()
    assert gen.MARKER in page
    rendered = gen.on_page_markdown(page, page=None, config=None, files=None)
    assert gen.MARKER not in rendered
    assert gen.render_table() in rendered
    assert gen.on_page_markdown("no marker here") == "no marker here"


def test_the_examples_collect_without_errors() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "--nsbox", "examples/"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "error" not in output.lower(), output
    for name in (
        "test_memory.py::test_allocating_1_gib_under_a_64_mib_limit",
        "test_network.py::test_binding_the_port_the_host_holds[2]",
        "test_timeout.py::test_waiting_for_a_reply_that_never_comes",
        "test_leaks.py::test_no_daemon_is_left_on_the_host",
    ):
        assert name in output, output


def test_the_readme_keeps_its_two_set_up_commands() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "pip install . && pytest --nsbox examples/" in readme
    assert "pip install -e '.[test]' && pytest\n" in readme
