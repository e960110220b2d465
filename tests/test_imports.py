"""Imports run one way: handgrad <- jax_ref <- handgrad_cli. handgrad imports neither
(its __main__, the program's entry point, aside); jax_ref checks handgrad through public
names only; nothing imports the command line."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def imports(path: Path) -> list[tuple[str, list[str]]]:
    """(module, names imported from it) for every import in a file, lazy ones included."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(a.name, []) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.append((node.module, [a.name for a in node.names]))
    return out


def _files(package: str):
    return sorted((ROOT / package).rglob("*.py"))


def test_the_scanner_sees_lazy_imports(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("def f():\n    from jax_ref.check import x\n    import handgrad._private\n")
    assert imports(f) == [("jax_ref.check", ["x"]), ("handgrad._private", [])]


@pytest.mark.parametrize("path", _files("handgrad"), ids=lambda p: p.name)
def test_handgrad_imports_neither_jax_ref_nor_the_cli(path):
    bad = [m for m, _ in imports(path) if m.split(".")[0] in ("jax_ref", "handgrad_cli")]
    if path.name == "__main__.py":
        bad = [m for m in bad if m != "handgrad_cli"]
    assert not bad, bad


@pytest.mark.parametrize("path", _files("jax_ref"), ids=lambda p: p.name)
def test_jax_ref_uses_public_handgrad_names_and_not_the_cli(path):
    for module, names in imports(path):
        parts = module.split(".")
        assert parts[0] != "handgrad_cli", module
        if parts[0] == "handgrad":
            private = [p for p in parts[1:] + names if p.startswith("_")]
            assert not private, f"{path.name} imports private {private} from {module}"
