"""Render docs/options.md's tables from the code: the box options
(`pytest_nsbox.box.options.OPTIONS`) and every run-wide ini key and flag the plugin
registers.

``python docs/gen_options.py --write`` rewrites the tables in docs/options.md (between
the markers below), so the page in the repository is the page users read;
tests/test_docs.py fails, naming that command, when the page is stale. Without
``--write`` it prints the tables.

The CLI flag and ini key of each option, and the run-wide keys and flags, are read from
what the plugin really registers (its ``pytest_addoption`` is called with a recording
parser), and the accepted values from what each option's validator says when it refuses
a value, so none of the columns is written by hand and a new key appears by itself.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

PAGE = Path(__file__).resolve().parent / "options.md"
REGENERATE = "python docs/gen_options.py --write"
MARKERS = {  # table -> (start, end) markers in docs/options.md
    "options": ("<!-- nsbox-options-table -->", "<!-- end nsbox-options-table -->"),
    "run-wide": ("<!-- nsbox-run-wide-table -->", "<!-- end nsbox-run-wide-table -->"),
}


class _Recorder:
    """Stands in for pytest's parser and option group; records what the plugin adds."""

    def __init__(self) -> None:
        self.flags: dict[str, str] = {}  # dest -> first flag
        self.flag_info: dict[str, dict[str, Any]] = {}  # dest -> addoption's keywords
        self.ini: set[str] = set()
        self.ini_info: dict[str, dict[str, Any]] = {}  # name -> help, type, default

    def getgroup(self, *args: Any, **kwargs: Any) -> _Recorder:
        return self

    def addoption(self, *names: str, **kwargs: Any) -> None:
        dest = kwargs.get("dest") or names[0].lstrip("-").replace("-", "_")
        self.flags[dest] = names[0]
        self.flag_info[dest] = kwargs

    def addini(self, name: str, help: str = "", type: str | None = None,
               default: Any = None, **kwargs: Any) -> None:
        self.ini.add(name)
        self.ini_info[name] = {"help": help, "type": type or "string", "default": default}


def _registered() -> _Recorder:
    from pytest_nsbox import plugin

    recorder = _Recorder()
    plugin.pytest_addoption(recorder)  # type: ignore[arg-type]
    return recorder


def format_default(value: object) -> str:
    """A default as Python spells it in a marker: None, 'isolated', ('/tmp',), False."""
    return repr(value)


def accepted_values(spec: Any) -> str:
    """What the option's validator says it accepts, from the message of a refusal."""
    from pytest_nsbox.box.options import OptionError

    try:
        spec.parse(object())
    except OptionError as exc:
        return exc.accepted
    except Exception:  # a validator that fails differently: say nothing
        return ""
    return ""


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _code(text: str) -> str:
    return f"`{text}`" if text else "—"


def render_table() -> str:
    """The options as a Markdown table: option, default, CLI flag, ini key, meaning."""
    from pytest_nsbox.box.options import OPTIONS

    registered = _registered()
    lines = [
        "| option | default | CLI flag | ini key | meaning | accepted |",
        "|---|---|---|---|---|---|",
    ]
    for spec in OPTIONS:
        dest = f"nsbox_{spec.name}"
        flag = registered.flags.get(dest, "")
        if flag:
            flag += f" {spec.metavar}"
        ini = dest if dest in registered.ini else ""
        lines.append(
            "| "
            + " | ".join(
                _cell(cell)
                for cell in (
                    f"`{spec.name}`",
                    f"`{format_default(spec.default)}`",
                    _code(flag),
                    _code(ini),
                    spec.help,
                    accepted_values(spec),
                )
            )
            + " |"
        )
    return "\n".join(lines) + "\n"


def _per_option() -> set[str]:
    from pytest_nsbox.box.options import OPTIONS

    return {f"nsbox_{spec.name}" for spec in OPTIONS}


def render_run_wide() -> str:
    """The run-wide ini keys and command-line flags: those that are not a box option's."""
    registered = _registered()
    per_option = _per_option()
    lines = ["| ini key | type | default | meaning |", "|---|---|---|---|"]
    for name in sorted(registered.ini - per_option):
        info = registered.ini_info[name]
        lines.append("| " + " | ".join(_cell(cell) for cell in (
            f"`{name}`", info["type"], _code(repr(info["default"])), info["help"])) + " |")
    lines += ["", "| command-line flag | meaning |", "|---|---|"]
    for dest, flag in sorted(registered.flags.items(), key=lambda item: item[1]):
        if dest in per_option:
            continue
        info = registered.flag_info[dest]
        shown = f"{flag} {info['metavar']}" if info.get("metavar") else flag
        text = str(info.get("help", "")).replace("%%", "%")
        lines.append(f"| {_cell(_code(shown))} | {_cell(text)} |")
    return "\n".join(lines) + "\n"


def render_page(page: str) -> str:
    """`page` with each table between its markers rendered anew."""
    for kind, (start, end) in MARKERS.items():
        head, found, rest = page.partition(start)
        _, found_end, tail = rest.partition(end)
        if not (found and found_end):
            raise ValueError(f"{PAGE.name} lacks the markers {start} ... {end}")
        table = render_table() if kind == "options" else render_run_wide()
        page = f"{head}{start}\n{table}{end}{tail}"
    return page


def main(argv: list[str]) -> int:
    """Print the tables, or with --write, put them into docs/options.md."""
    if argv[:1] == ["--write"]:
        old = PAGE.read_text()
        new = render_page(old)
        if new != old:
            PAGE.write_text(new)
        print(f"{PAGE}: {'rewritten' if new != old else 'up to date'}")
        return 0
    print(render_table() + "\n" + render_run_wide(), end="")
    return 0


if __name__ == "__main__":
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    sys.exit(main(sys.argv[1:]))
