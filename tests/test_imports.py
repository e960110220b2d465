"""The layers, enforced on the source: handgrad <- jax_ref's checker <- jax_ref's referee
<- handgrad_cli. handgrad imports neither (its __main__, the program's entry point,
aside); the checker imports nothing of the referee nor of handgrad, and `import jax_ref`
loads neither; no module imports another's private name; nothing imports the CLI."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FIRST_PARTY = ("handgrad", "handgrad_cli", "jax_ref")
# jax_ref's two layers (docs/architecture.md): every module is in exactly one
CHECKER = {
    "__init__",
    "affine",
    "autodiff",
    "check",  # an alias of the gradient checks' former module
    "contracts",
    "declared",
    "finite_difference",
    "gradients",
    "record",  # every check call told to a listener (the pytest plugin)
    "report",
    "rules",
    "runtime",
    "session",  # a test session's report
    "tangents",
    "tolerances",
    "trees",
    "verdict",
}
NAMEDTUPLE_API = {"_replace", "_fields", "_asdict", "_make"}  # public, underscore or not
REFEREE = {
    "audit",  # handgrad audit: above the checker, beside the referee
    "derivations",
    "ledger",
    "mutants",
    "properties",
    "spec",
    "strategies",
    "sweep",
}


def imports(path: Path) -> list[tuple[str, list[str]]]:
    """(module, names imported from it) for every import in a file, lazy ones included."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(a.name, []) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.append((node.module, [a.name for a in node.names]))
    return out


def private_uses(path: Path) -> list[str]:
    """Private names of first-party modules a file uses: imported by name, or read as an
    attribute of a first-party module it imported (`from jax_ref import check; check._H`)."""
    tree = ast.parse(path.read_text())
    bad, aliases = [], set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in FIRST_PARTY:
            for a in node.names:
                if a.name.startswith("_"):
                    bad.append(f"from {node.module} import {a.name}")
                aliases.add(a.asname or a.name)
            bad += [f"import {node.module}" for p in node.module.split(".") if p.startswith("_")]
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] in FIRST_PARTY:
                    aliases.add(a.asname or a.name.split(".")[0])
                    bad += [f"import {a.name}" for p in a.name.split(".") if p.startswith("_")]
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in aliases
            and node.attr.startswith("_")
            and not node.attr.startswith("__")
            and node.attr not in NAMEDTUPLE_API
        ):
            bad.append(f"{node.value.id}.{node.attr}")
    return bad


def _files(*packages: str):
    return sorted(p for package in packages for p in (ROOT / package).rglob("*.py"))


def _layer(path: Path) -> str:
    part = path.relative_to(ROOT / "jax_ref").parts[0]
    return "checker" if part.removesuffix(".py") in CHECKER else "referee"


def test_the_scanner_sees_lazy_imports_and_private_names(tmp_path):
    f = tmp_path / "m.py"
    f.write_text(
        "import jax_ref.check as c\nfrom jax_ref import check\n"
        "def f():\n    from jax_ref.check import _x\n    return check._H + c._y\n"
    )
    assert ("jax_ref.check", ["_x"]) in imports(f)
    assert sorted(private_uses(f)) == ["c._y", "check._H", "from jax_ref.check import _x"]


def test_every_jax_ref_module_has_a_layer():
    names = {
        p.name.removesuffix(".py") for p in (ROOT / "jax_ref").iterdir() if p.name != "__pycache__"
    }
    assert names == CHECKER | REFEREE, names ^ (CHECKER | REFEREE)


@pytest.mark.parametrize("path", _files("handgrad"), ids=lambda p: p.name)
def test_handgrad_imports_neither_jax_ref_nor_the_cli(path):
    bad = [m for m, _ in imports(path) if m.split(".")[0] in ("jax_ref", "handgrad_cli")]
    if path.name == "__main__.py":
        bad = [m for m in bad if m != "handgrad_cli"]
    assert not bad, bad


@pytest.mark.parametrize("path", _files("jax_ref"), ids=lambda p: str(p.relative_to(ROOT)))
def test_the_checker_imports_nothing_of_the_referee_and_nobody_the_cli(path):
    for module, names in imports(path):
        parts = module.split(".")
        assert parts[0] != "handgrad_cli", module
        if _layer(path) == "checker":
            referee = parts[0] == "jax_ref" and len(parts) > 1 and parts[1] in REFEREE
            referee |= module == "jax_ref" and bool(set(names) & REFEREE)
            assert parts[0] != "handgrad" and not referee, f"{path.name} imports {module}"


@pytest.mark.parametrize(
    "path",
    _files("handgrad", "handgrad_cli", "jax_ref", "tests", "benchmarks", "examples"),
    ids=lambda p: str(p.relative_to(ROOT)),
)
def test_no_module_uses_another_modules_private_names(path):
    assert not private_uses(path)


def test_import_jax_ref_loads_no_derivation_and_no_handgrad():
    code = (
        "import sys, jax_ref\n"
        "print(sorted(m for m in sys.modules if m.startswith('handgrad')))\n"
        f"print(sorted(m for m in sys.modules if m.split('.')[:2][-1] in {sorted(REFEREE)!r}))\n"
        "jax_ref.mlp_loss  # the referee loads on first use\n"
        "print('jax_ref.derivations.mlp' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["[]", "[]", "True"], out.stdout


def test_names_that_moved_are_still_importable_from_their_old_modules():
    import jax_ref
    from jax_ref.check import CheckResult, assert_gradients, check_gradients, enable_x64
    from jax_ref.rules import RuleCheck, load_checks, run_rule_checks

    assert check_gradients is jax_ref.check_gradients and RuleCheck is jax_ref.RuleCheck
    assert CheckResult is jax_ref.CheckResult and callable(enable_x64)
    assert all(map(callable, (assert_gradients, load_checks, run_rule_checks)))
