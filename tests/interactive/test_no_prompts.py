"""Nothing in the library or the notebooks prompts with input() or getpass(): a batch run would
hang on it. Destructive steps show what they would do and need `confirm: yes` in the parameters,
interactively as in batch."""

from __future__ import annotations

import ast
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[2]


def _prompts(tree: ast.AST) -> list[int]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            if (isinstance(f, ast.Name) and f.id in ("input", "raw_input")) or \
                    (isinstance(f, ast.Attribute) and f.attr == "getpass"):
                found.append(node.lineno)
    return found


def test_nothing_prompts_with_input():
    bad = []
    for py in (ROOT / "lib" / "mlplat").rglob("*.py"):
        bad += [f"{py.relative_to(ROOT)}:{n}" for n in _prompts(ast.parse(py.read_text()))]
    for nbp in (ROOT / "notebooks").glob("*.ipynb"):
        for i, cell in enumerate(nbformat.read(nbp, as_version=4).cells):
            if cell.cell_type == "code":
                src = "\n".join(ln for ln in cell.source.splitlines() if not ln.lstrip().startswith(("%", "!")))
                bad += [f"{nbp.name} cell {i}" for _ in _prompts(ast.parse(src))]
    assert not bad, f"input()/getpass() in {bad}"
