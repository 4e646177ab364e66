"""The package's layout holds: no import cycle, a core that imports none of the operator tools or the
testing toolkit, no module over 600 lines, no module named like one of the standard library.

Imports are read from the source, every one of them: at module level, inside functions and under
``TYPE_CHECKING`` (a cycle only the type checker sees still ties two modules together).  Pure: no
Redis, nothing imported.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

from .support import ROOT

PACKAGE = "dramatiq_tracker"
#: What users and workers import: the core is every module these import, transitively.
CORE_ROOTS = (PACKAGE, PACKAGE + ".middleware")
#: What the core must never import: the operator tools, the testing toolkit and the pytest plugin.
NOT_CORE = (PACKAGE + ".ops", PACKAGE + ".testing", PACKAGE + ".pytest_plugin")
#: The most lines a module may have.
MAX_LINES = 600
#: The modules over it today, and only these (none).  The test fails once a listed module is within the
#: limit, so that the list cannot go stale.
OVERSIZED: set[str] = set()
#: The import cycles the core has today, and only these.  The core's re-layout removes them; then the
#: test fails until they are taken off this list, so that it never allows a cycle that came back.
KNOWN_CYCLES: set[frozenset[str]] = set()


def module_files() -> dict[str, Path]:
    """Every module of the package, by dotted name."""
    found = {}
    for path in sorted((ROOT / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


MODULES = module_files()


def imported(name: str, path: Path) -> set[str]:
    """The package's modules that a module imports, each as the most precise module an import names:
    ``from .reads import X`` is ``...ops.reads``, ``from . import read`` the submodule ``read``."""
    is_package = path.name == "__init__.py"
    targets = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")[: len(name.split(".")) - node.level + int(is_package)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            targets.update(
                module + "." + alias.name if module + "." + alias.name in MODULES else module for alias in node.names
            )
    found = set()
    for target in targets:
        while target not in MODULES and "." in target:
            target = target.rpartition(".")[0]
        if target in MODULES and target != name:
            found.add(target)
    return found


GRAPH = {name: imported(name, path) for name, path in MODULES.items()}


def cycles(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        for other in sorted(graph[module]):
            if other not in index:
                visit(other)
                low[module] = min(low[module], low[other])
            elif other in stack:
                low[module] = min(low[module], index[other])
        if low[module] == index[module]:
            component = set()
            while True:
                other = stack.pop()
                component.add(other)
                if other == module:
                    break
            if len(component) > 1:
                found.append(frozenset(component))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return found


def path_between(graph: dict[str, set[str]], start: str, goal: str, within: frozenset[str] | None = None) -> list[str]:
    """The modules of a shortest import chain from ``start`` to ``goal``."""
    came_from: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for module in frontier:
            for other in sorted(graph[module]):
                if (within is None or other in within) and other not in came_from:
                    came_from[other] = module
                    following.append(other)
        if goal in came_from:
            chain = [goal]
            while chain[-1] != start or len(chain) == 1:
                chain.append(came_from[chain[-1]])
            return list(reversed(chain))
        frontier = following
    return []


def core() -> set[str]:
    """Every module the core roots import, transitively, themselves included."""
    found: set[str] = set()
    todo = list(CORE_ROOTS)
    while todo:
        module = todo.pop()
        if module not in found:
            found.add(module)
            todo += GRAPH[module]
    return found


def test_the_import_graph_is_read_from_the_package() -> None:
    # Given the package as it is, Then the graph sees the edges this test relies on
    assert {PACKAGE + ".middleware", PACKAGE + ".ops.cli", PACKAGE + ".ops.cli.read"} <= set(MODULES)
    assert PACKAGE + ".ops.cli.read" in GRAPH[PACKAGE + ".ops.cli"]  # from . import read
    assert PACKAGE + ".ops.reads" in GRAPH[PACKAGE + ".ops.inspection"]  # from .reads import ...
    assert PACKAGE + ".ops.inspection" in GRAPH[PACKAGE + ".ops"]  # under TYPE_CHECKING
    assert PACKAGE + ".ops.formatting" in GRAPH[PACKAGE + ".ops.cli.common"]  # inside a function
    assert PACKAGE + ".store" in GRAPH[PACKAGE + ".middleware"]


def test_no_module_imports_itself_through_others_but_the_listed_core_cycles() -> None:
    found = set(cycles(GRAPH))
    new = [
        " -> ".join(path_between(GRAPH, min(cycle), min(cycle), cycle))
        for cycle in sorted(found - KNOWN_CYCLES, key=min)
    ]
    assert not new, "import cycles: %s" % "; ".join(new)
    gone = sorted(" <-> ".join(sorted(cycle)) for cycle in KNOWN_CYCLES - found)
    assert not gone, "these cycles no longer exist: take them off KNOWN_CYCLES: %s" % "; ".join(gone)


def test_the_core_imports_neither_the_operator_tools_nor_the_testing_toolkit() -> None:
    the_core = core()
    assert {PACKAGE + ".store", PACKAGE + ".recovery", PACKAGE + ".broker_store"} <= the_core
    forbidden = [module for module in sorted(the_core) if any(_within(module, outside) for outside in NOT_CORE)]
    chains = [" -> ".join(next(filter(None, (path_between(GRAPH, r, m) for r in CORE_ROOTS)))) for m in forbidden]
    assert not chains, "the core imports what it must not: %s" % "; ".join(chains)


def _within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def test_no_module_is_over_600_lines_but_the_listed_ones() -> None:
    sizes = {name: len(path.read_text(encoding="utf-8").splitlines()) for name, path in MODULES.items()}
    too_long = [
        "%s (%d lines)" % (name, size)
        for name, size in sorted(sizes.items())
        if size > MAX_LINES and name not in OVERSIZED
    ]
    assert not too_long, "split these modules: %s" % ", ".join(too_long)
    within = sorted(name for name in OVERSIZED if sizes.get(name, 0) <= MAX_LINES)
    assert not within, "within %d lines now: take them off OVERSIZED: %s" % (MAX_LINES, ", ".join(within))


def named_like_the_standard_library() -> Iterator[str]:
    for name in MODULES:
        for part in name.split("."):
            if part in sys.stdlib_module_names:
                yield "%s (%s)" % (name, part)


def test_no_module_is_named_like_one_of_the_standard_library() -> None:
    found = sorted(set(named_like_the_standard_library()))
    assert not found, "named like a standard library module: %s" % ", ".join(found)
