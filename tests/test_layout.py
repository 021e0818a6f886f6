"""agent/ and collector/ never import each other; the wire contract is protos/."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _imports(package: str) -> set[tuple[str, str]]:
    found = set()
    for path in (ROOT / package).rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            else:
                continue
            for n in names:
                found.add((str(path.relative_to(ROOT)), n.split(".")[0]))
    return found


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [
        ("agent", {"collector", "analyst"}),
        ("collector", {"agent", "analyst"}),
        ("analyst", {"agent", "collector"}),
        ("common", {"agent", "collector", "analyst"}),
    ],
)
def test_no_cross_imports(package: str, forbidden: set[str]) -> None:
    bad = sorted(f"{f} imports {m}" for f, m in _imports(package) if m in forbidden)
    assert not bad, bad
