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
