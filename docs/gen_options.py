"""Render the box options table from the code's own table, `pytest_nsbox.box.options.OPTIONS`.

Two uses:

* an MkDocs hook (``hooks: [docs/gen_options.py]`` in mkdocs.yml): the marker
  ``<!-- nsbox-options-table -->`` in any page is replaced by the table at build time;
* a script: ``python docs/gen_options.py`` prints the table.

The CLI flag and ini key of each option are read from what the plugin really registers
(its ``pytest_addoption`` is called with a recording parser), and the accepted values
from what each option's validator says when it refuses a value, so none of the columns
is written by hand.
"""

from __future__ import annotations

from typing import Any

MARKER = "<!-- nsbox-options-table -->"


class _Recorder:
    """Stands in for pytest's parser and option group; records what the plugin adds."""

    def __init__(self) -> None:
        self.flags: dict[str, str] = {}  # dest -> first flag
        self.ini: set[str] = set()

    def getgroup(self, *args: Any, **kwargs: Any) -> _Recorder:
        return self

    def addoption(self, *names: str, **kwargs: Any) -> None:
        dest = kwargs.get("dest") or names[0].lstrip("-").replace("-", "_")
        self.flags[dest] = names[0]

    def addini(self, name: str, *args: Any, **kwargs: Any) -> None:
        self.ini.add(name)


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


def on_page_markdown(markdown: str, **kwargs: Any) -> str:
    """MkDocs hook: put the generated table where a page has the marker."""
    if MARKER not in markdown:
        return markdown
    return markdown.replace(MARKER, render_table())


if __name__ == "__main__":
    print(render_table(), end="")
