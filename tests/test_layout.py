"""The package's layout: no import cycles, and the layers import downwards only.

The graph has one node per module of ``pytest_nsbox`` and an edge for every ``import``
and ``from ... import`` statement in it, wherever it is: at module level, inside a
function, or under ``if TYPE_CHECKING:``. Relative imports are resolved; ``from package
import name`` is an edge to ``package.name`` when that is a module, else to
``package``. Importing a submodule also runs its packages' ``__init__``; that implicit
import is not an edge (else every package that re-exports its submodules would be a
cycle).

The layers, bottom to top:

1. ``box`` base: ``box.errors``, ``box.units``, ``box.options``, ``box.outcome``,
   ``box.channel``, ``box.remote``, ``box.fixes`` and ``box.namespaces.*``. They import
   only each other.
2. ``resources`` (``cgroups``, ``devices``, ``net``): the kernel resources a box holds.
   They import each other and the box base, never the box machinery below, the
   doctor or the plugin.
3. ``box`` machinery: ``box.api``, ``box.context``, ``box.supervise``, ``box.inside``
   (and the ``box`` package). They may import the box base and the resources.
4. ``doctor`` (the ``doctor/`` package and ``cgroup_setup``): anything but the plugin.
5. ``plugin`` (the pytest side: hooks, protocol, hookspecs, usage): anything.
6. ``__main__`` (the ``pytest-nsbox`` console script): anything; its commands live in
   every layer (the doctor, the usage files, the box storage).

So: ``box`` and ``resources`` never import ``plugin`` (or the doctor);
``resources`` imports of ``box`` only the base modules of layer 1.
"""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import pytest

import pytest_nsbox

PACKAGE = "pytest_nsbox"
ROOT = Path(pytest_nsbox.__file__).parent

BOX_BASE = {
    f"{PACKAGE}.box.{name}"
    for name in ("errors", "units", "options", "outcome", "channel", "remote", "fixes",
                 "namespaces")
}


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = [PACKAGE, *path.relative_to(ROOT).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


MODULES = _modules()


def _is_package(module: str) -> bool:
    return MODULES[module].name == "__init__.py"


def _imports(module: str) -> set[str]:
    """The package's modules that `module` imports, by any import statement in it."""
    tree = ast.parse(MODULES[module].read_text(), str(MODULES[module]))
    here = module if _is_package(module) else module.rpartition(".")[0]
    targets: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here.split(".")
                base = base[:len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for alias in node.names:
                sub = f"{source}.{alias.name}"
                targets.add(sub if sub in MODULES else source)
    return {t for t in targets if t in MODULES and t != module}


GRAPH = {module: _imports(module) for module in MODULES}


def _layer_of(module: str) -> str:
    if module == f"{PACKAGE}.__main__":
        return "cli"  # the console script: its commands live in every layer
    if module == PACKAGE:
        return "top"
    if module == f"{PACKAGE}.cgroup_setup":  # a command line, as the doctor's
        return "doctor"
    if any(module == base or module.startswith(base + ".") for base in BOX_BASE):
        return "box-base"
    for layer in ("resources", "box", "plugin", "doctor"):
        if module == f"{PACKAGE}.{layer}" or module.startswith(f"{PACKAGE}.{layer}."):
            return layer
    raise AssertionError(f"{module}: in no layer")


def _cycle_from(start: str) -> list[str] | None:
    """A cycle through `start`, as a path of modules, or None."""
    stack = [(start, [start])]
    seen = set()
    while stack:
        node, path = stack.pop()
        for target in sorted(GRAPH[node]):
            if target == start:
                return [*path, start]
            if target not in seen:
                seen.add(target)
                stack.append((target, [*path, target]))
    return None


def test_the_graph_sees_the_package() -> None:
    assert f"{PACKAGE}.plugin" in MODULES
    assert f"{PACKAGE}.box.namespaces.clone" in GRAPH[f"{PACKAGE}.box.namespaces"]
    # a function-level import counts: Box.execute imports supervise when it runs
    assert f"{PACKAGE}.box.supervise" in GRAPH[f"{PACKAGE}.box.api"]


def test_no_import_cycles() -> None:
    cycles = {" -> ".join(cycle) for module in MODULES if (cycle := _cycle_from(module))}
    assert not cycles, "\n".join(sorted(cycles))


ALLOWED = {
    "box-base": {"box-base"},
    "resources": {"box-base", "resources"},
    "box": {"box-base", "resources", "box"},
    "doctor": {"box-base", "resources", "box", "doctor"},
    "plugin": {"box-base", "resources", "box", "doctor", "plugin", "top"},
    "top": {"box-base", "box", "doctor"},
    "cli": {"box-base", "resources", "box", "doctor", "plugin", "top"},
}


@pytest.mark.parametrize("module", sorted(MODULES))
def test_layers_import_downwards(module: str) -> None:
    layer = _layer_of(module)
    wrong = sorted(t for t in GRAPH[module] if _layer_of(t) not in ALLOWED[layer])
    assert not wrong, f"{module} ({layer}) imports {wrong}"


def _resolves(name: str) -> bool:
    """Whether the dotted `name` is a module of the package, or an attribute of one."""
    module, _, attribute = name.rpartition(".")
    if name in MODULES:
        return True
    if module not in MODULES:
        return False
    return hasattr(importlib.import_module(module), attribute)


def test_module_names_in_strings_exist() -> None:
    """Modules looked up by name at run time (sys.modules.get, -p, -W) exist."""
    missing = []
    for module, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Constant) and isinstance(node.value, str)
                    and node.value.startswith(f"{PACKAGE}.") and " " not in node.value
                    and not _resolves(node.value)):
                missing.append(f"{module}: {node.value!r}")
    assert not missing, missing
