"""Dependencies between the packages go one way: ``services/common`` is shared by the
gateway, the admin tool and the local cluster, so it imports none of them.

Found with :mod:`ast` (``import`` and ``from ... import`` anywhere in a module,
including inside functions), so a lazy import cannot hide a wrong-way dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
COMMON = REPO / "services" / "common"
ABOVE_COMMON = ("services.gateway", "services.admin", "services.cluster")


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
    return found


@pytest.mark.parametrize("path", sorted(COMMON.rglob("*.py")), ids=lambda p: p.name)
def test_common_does_not_import_the_services_above_it(path: Path) -> None:
    wrong = [
        f"{path.relative_to(REPO)}:{line} imports {module}"
        for line, module in _imports(path)
        if module.startswith(ABOVE_COMMON)
    ]
    assert not wrong, wrong


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_no_import_cycles_between_modules() -> None:
    """No module imports one that (directly or not) imports it back, counting
    ``TYPE_CHECKING`` imports too: the parts meet at narrow seams instead."""
    modules = {_module_name(p): p for p in (REPO / "services").rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        deps: set[str] = set()
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                deps.add(node.module)
                deps.update(f"{node.module}.{alias.name}" for alias in node.names)
            elif isinstance(node, ast.Import):
                deps.update(alias.name for alias in node.names)
        # A package's own __init__ re-exporting its modules is not a cycle.
        graph[name] = {d for d in deps if d in modules and d != name and not d.startswith(name + ".")}
    cycles: set[tuple[str, ...]] = set()

    def visit(node: str, path: list[str]) -> None:
        for dep in graph[node]:
            if dep in path:
                cycle = path[path.index(dep):]
                turn = cycle.index(min(cycle))
                cycles.add(tuple(cycle[turn:] + cycle[:turn]))
            elif len(path) < 12:
                visit(dep, [*path, dep])

    for name in graph:
        visit(name, [name])
    assert not cycles, sorted(cycles)
