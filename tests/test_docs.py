"""The docs and the example suite cannot drift from the code.

The options reference (docs/options.md) is generated from the code by
`docs/gen_options.py --write`; these tests check the page in the repository is what the
generator makes now, and that every option and every run-wide ini key is in it. Every
message the docs quote in a ```text block is marked `<!-- quoted: KEY -->` and produced
here by running the code (QUOTES); the README's set-up and fix commands are the ones the
code prints. The example suite must collect cleanly.
"""

from __future__ import annotations

import errno
import importlib.util
import os
import re
import subprocess
import sys
from collections.abc import Callable
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


def test_options_md_in_the_repository_is_what_the_code_generates() -> None:
    gen = load_generator()
    page = (DOCS / "options.md").read_text()
    assert gen.render_page(page) == page, (
        f"docs/options.md is stale (an option, flag or ini key changed): run "
        f"`{gen.REGENERATE}` and commit docs/options.md")
    assert gen.render_table() in page


def test_every_run_wide_ini_key_the_plugin_registers_is_documented(
    pytester: pytest.Pytester,
) -> None:
    """Read from pytest itself, not from the generator's recorder: a key added any way."""
    config = pytester.parseconfig()
    per_option = {f"nsbox_{spec.name}" for spec in OPTIONS}
    keys = {name for name in config._parser._inidict if name.startswith("nsbox")}
    run_wide = keys - per_option
    assert {"nsbox", "nsbox_best_effort", "nsbox_unavailable", "nsbox_usage_fail",
            "nsbox_usage_warn_only"} <= run_wide
    page = (DOCS / "options.md").read_text()
    for name in sorted(run_wide):
        assert f"| `{name}` |" in page, name
    flags = [opt for opt in config._parser._anonymous.options + [
        o for g in config._parser._groups for o in g.options]
        if any(n.startswith("--nsbox") for n in opt.names())]
    for opt in flags:
        assert f"`{opt.names()[0]}" in page, opt.names()


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


def test_the_readme_sets_up_in_a_venv_and_prints_the_codes_fix() -> None:
    from pytest_nsbox.resources.cgroups.userfix import fix_commands

    readme = (ROOT / "README.md").read_text()
    set_up = readme[readme.index("## Set up"):readme.index("## Usage")]
    venv = "~/.venvs/nsbox"
    assert f"python3 -m venv {venv} && . {venv}/bin/activate" in set_up
    assert "pip install . && pytest --nsbox examples/" in set_up
    assert "pip install -e '.[test]' && pytest\n" in set_up
    assert "pip install -e '.[docs]' && mkdocs build --strict" in set_up
    # the fix: root's command as the code words it (README adds sudo), and the prefix
    setup, _ = fix_commands('"$USER"', f"{venv}/bin/pytest-nsbox")
    _, prefix = fix_commands("x", "pytest-nsbox")
    assert f"sudo {setup}   # as root, once per boot" in set_up
    assert f"{prefix} pytest --nsbox examples/" in set_up
    for text in ("cgcreate", "cgexec", "systemd-run", "BoxUnavailable`"):
        assert text not in set_up, text
    index = (DOCS / "index.md").read_text()
    assert "pip install pytest-nsbox" not in index  # no release serves it yet


def test_no_internal_names_in_user_facing_text() -> None:
    """The project's VM, CI user and lanes mean nothing to users."""
    internal = re.compile(r"vmlab|nsboxci|run-in-vm|shared/vmlab|dev VM")
    pages = [ROOT / "README.md", *DOCS.glob("*.md"), *DOCS.glob("recipes/*.md")]
    skip = {"performance.md", "changelog.md"}  # measurements name the machines they ran on
    for page in pages:
        if page.name not in skip:
            assert not internal.search(page.read_text()), page
    for module in (ROOT / "pytest_nsbox").rglob("*.py"):
        for literal in re.findall(r'"[^"\n]*"', module.read_text()):
            assert not internal.search(literal), (module, literal)


# --- every message the docs quote is the code's ------------------------------------------

def quoted_blocks() -> list[tuple[Path, str, str]]:
    """(page, key, text) of each ```text block; key is its `<!-- quoted: KEY -->` mark,
    `-` for a block marked `<!-- not a message -->`, `` for an unmarked one."""
    found = []
    for page in [ROOT / "README.md", *DOCS.glob("*.md"), *DOCS.glob("recipes/*.md")]:
        text = page.read_text()
        for match in re.finditer(r"(?:<!-- (quoted: (\S+)|not a message) -->\n)?```text\n"
                                 r"(.*?)```", text, re.S):
            key = match.group(2) or ("-" if match.group(1) else "")
            found.append((page, key, match.group(3)))
    return found


# blocks of the connection hint (tests/test_nethint.py runs them) and of the usage pages
# (tests/test_usage_recipe.py): other sections', checked by their own tests
OTHERS = ("-------------------------------- nsbox network", "[nsbox] name lookup failed",
          "FAILED test_db.py::test_query - ConnectionRefusedError")
OTHER_PAGES = ("usage-",)  # usage-regressions.md, usage-across-shards.md, ...


def as_pattern(quote: str) -> re.Pattern[str]:
    """A quote as a pattern: `...` stands for anything, a thread's address for any address,
    and line breaks for any white space (the docs wrap long lines)."""
    parts = []
    for piece in re.split(r"(\.\.\.|0x[0-9a-f]{8,})", " ".join(quote.split())):
        if piece == "...":
            parts.append(".*?")
        elif piece.startswith("0x"):
            parts.append("0x[0-9a-f]+")
        else:
            parts.append(r"\s+".join(re.escape(word) for word in piece.split(" ")))
    return re.compile("".join(parts).replace(r"\s+.*?", r"\s*.*?"), re.S)


def run_pytest(cwd: Path, *args: str) -> str:
    env = {**os.environ, "COLUMNS": "400"}  # summary lines whole
    result = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider",
                             "-p", "no:randomly", "-rfE", *args], cwd=cwd, env=env,
                            capture_output=True, text=True, timeout=180)
    return " ".join((result.stdout + result.stderr).split())


@pytest.fixture(scope="module")
def examples_output() -> str:
    """The example suite's output, as the README runs it (timeout and memory tests)."""
    return run_pytest(ROOT, "--nsbox", "examples/test_memory.py", "examples/test_timeout.py")


def produce_bad_option(tmp_path: Path) -> str:
    (tmp_path / "test_bad.py").write_text(
        "import pytest\n@pytest.mark.nsbox(memory='lots')\ndef test_a():\n    pass\n")
    return run_pytest(tmp_path)


def produce_netem_missing(tmp_path: Path) -> str:
    from conftest import needs
    from pytest_nsbox import doctor

    needs("netem missing" in doctor.header_line(), "lacks: a kernel without sch_netem")
    (tmp_path / "test_netem.py").write_text(
        "import pytest\n@pytest.mark.nsbox(netem={'delay': '50ms'})\n"
        "def test_a():\n    pass\n")
    return run_pytest(tmp_path)


def produce_header(tmp_path: Path) -> str:
    from conftest import needs
    from pytest_nsbox import current_box, doctor
    from pytest_nsbox.resources import cgroups

    needs(os.geteuid() == 0 and cgroups.detect()["version"] in ("v1", "hybrid")
          and current_box() is None,
          "lacks: cgroup v1 as root, outside a box (the machine the quote describes)")
    return doctor.header_line()


def produce_userns(tmp_path: Path) -> str:
    from pytest_nsbox.box.fixes import explain_setup_failure

    return explain_setup_failure("clone", errno.EPERM)


def produce_cgroup_fix(tmp_path: Path) -> str:
    """The README's example: a user 'you' with a venv in ~/.venvs/nsbox, on cgroup v1."""
    from unittest import mock

    from pytest_nsbox.resources import cgroups
    from pytest_nsbox.resources.cgroups import userfix

    session = mock.Mock(v2=False)
    session.layout.version = "v1"
    problems = {"memory": "cannot create a cgroup in /sys/fs/cgroup/memory: Permission denied"}
    with mock.patch.object(userfix, "_user_name", lambda: "you"), \
            mock.patch.object(userfix, "command",
                              lambda: "/home/you/.venvs/nsbox/bin/pytest-nsbox"):
        message = cgroups._explain(session, problems, {"memory": "memory=64 MiB"})
    return f"[nsbox] {message}"


def produce_keep_failed(tmp_path: Path) -> str:
    """A failed box's kept /tmp, in the default storage (removed again here)."""
    from pytest_nsbox.resources.storage import remove_tree

    (tmp_path / "test_x.py").write_text(
        "import pytest\n@pytest.mark.nsbox\ndef test_y():\n"
        "    open('/tmp/evidence', 'w').close()\n    assert False\n")
    output = run_pytest(tmp_path, "--nsbox-keep-failed")
    for kept in re.findall(r"/tmp is kept at (\S+)", output):
        remove_tree(os.path.dirname(kept))
    return output


QUOTES: dict[str, Callable[[Path], str] | None] = {
    "timeout-stack": None,  # None: from the example suite's output
    "memory-failure": None,
    "memory-summary": None,
    "bad-option": produce_bad_option,
    "netem-missing": produce_netem_missing,
    "header-line": produce_header,
    "userns": produce_userns,
    "cgroup-fix": produce_cgroup_fix,
    "keep-failed": produce_keep_failed,
}


def test_every_quoted_block_is_marked() -> None:
    unmarked = [(page.name, text.splitlines()[0]) for page, key, text in quoted_blocks()
                if not key and not text.startswith(OTHERS)
                and not page.name.startswith(OTHER_PAGES)]
    assert unmarked == [], "mark each ```text block `<!-- quoted: KEY -->` (a producer in " \
                           "QUOTES) or `<!-- not a message -->`"
    keys = {key for _, key, _ in quoted_blocks()} - {"", "-"}
    assert keys == set(QUOTES)


@pytest.mark.parametrize("key", sorted(QUOTES))
def test_the_quoted_message_is_what_the_code_says(key: str, tmp_path: Path,
                                                  request: pytest.FixtureRequest) -> None:
    produce = QUOTES[key]
    if key.startswith("memory-"):  # the example's memory limit needs a cgroup
        from hostcheck import cgroups_writable

        from conftest import needs

        needs(cgroups_writable(), "lacks: a writable cgroup (the example's memory limit)")
    output = (request.getfixturevalue("examples_output") if produce is None
              else " ".join(produce(tmp_path).split()))
    quotes = [(page, text) for page, k, text in quoted_blocks() if k == key]
    assert quotes
    for page, text in quotes:
        assert as_pattern(text).search(output), f"{page.name}: {text!r} not in {output!r}"
