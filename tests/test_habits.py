"""Habits of the source, checked: short functions (about 60 lines in the checker, 80 at
most anywhere outside the tests) and short docstrings (ten lines at most, the first
saying what the thing is; measurement stories belong in docs/ or a benchmark's report)."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SOURCES = sorted(
    p
    for package in ("handgrad", "handgrad_cli", "jax_ref", "benchmarks", "examples")
    for p in (ROOT / package).rglob("*.py")
)
LIMIT = {"jax_ref": 60}  # lines per function; elsewhere 80


def _defs(tree):
    return [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_functions_are_short(path):
    limit = LIMIT.get(path.relative_to(ROOT).parts[0], 80)
    long = [
        f"{n.name}: {n.end_lineno - n.lineno + 1} lines"
        for n in _defs(ast.parse(path.read_text()))
        if n.end_lineno - n.lineno + 1 > limit
    ]
    assert not long, f"over {limit} lines: {long}"


# examples/ aside: an example file's docstring is the user's documentation of its form
@pytest.mark.parametrize(
    "path", [p for p in SOURCES if "examples" not in p.parts], ids=lambda p: p.name
)
def test_docstrings_are_short_and_say_what_first(path):
    tree = ast.parse(path.read_text())
    bad = []
    for node in [tree, *_defs(tree), *[n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)]]:
        doc = ast.get_docstring(node)
        name = getattr(node, "name", "<module>")
        if doc is not None and (len(doc.splitlines()) > 10 or not doc.splitlines()[0].strip()):
            bad.append(f"{name}: {len(doc.splitlines())} lines")
    assert not bad, bad
