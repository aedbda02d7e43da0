"""compress is the bottom layer: no module in it imports trainables, tune, Ray or Optuna."""

import ast
from pathlib import Path

import pytest

COMPRESS = Path(__file__).resolve().parents[2] / "compress"
BANNED = {"trainables", "tune", "ray", "optuna", "search_spaces"}


def _imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


@pytest.mark.parametrize("path", sorted(COMPRESS.rglob("*.py")), ids=lambda p: str(p.relative_to(COMPRESS)))
def test_compress_module_imports_nothing_above_it(path):
    assert not _imported_roots(path) & BANNED
