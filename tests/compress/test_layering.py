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


def test_the_plan_and_its_name_tables_load_without_torch():
    import subprocess
    import sys

    code = ("import sys; from compress import CompressionPlan, TokenPlan, PENALTY_KINDS, QUANT_MODES; "
            "CompressionPlan(tau_mlp=0.9); print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          cwd=COMPRESS.parent)
    assert proc.stdout.strip() == "[]", proc.stderr[-2000:]


def test_every_public_name_resolves():
    import compress

    assert [name for name in compress.__all__ if getattr(compress, name, None) is None] == []
    assert set(compress.__all__) <= set(dir(compress))
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        compress.nope  # noqa: B018
