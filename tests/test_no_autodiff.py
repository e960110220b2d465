"""handgrad/ is the derivation: it must never call autodiff (that is what makes it worth
checking). Scans every module's syntax tree for the forbidden names."""

import ast
from pathlib import Path

import handgrad

FORBIDDEN = {
    "grad",
    "vjp",
    "jvp",
    "jacfwd",
    "jacrev",
    "value_and_grad",
    "hessian",
    "linearize",
    "stop_gradient",
    "linear_transpose",
}


def autodiff_uses(source: str) -> list[str]:
    hits = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute) and node.attr in FORBIDDEN:
            hits.append(f"line {node.lineno}: .{node.attr}")
        elif isinstance(node, ast.Name) and node.id in FORBIDDEN:
            hits.append(f"line {node.lineno}: {node.id}")
        elif isinstance(node, ast.ImportFrom):
            hits += [
                f"line {node.lineno}: import {a.name}" for a in node.names if a.name in FORBIDDEN
            ]
    return hits


def test_the_detector_can_fail():
    assert autodiff_uses("import jax\ng = jax.grad(f)")
    assert autodiff_uses("from jax import value_and_grad")
    # registering a hand-derived rule (custom_vjp/custom_jvp) is not differentiating
    assert not autodiff_uses("@jax.custom_vjp\ndef f(x): return x")
    assert autodiff_uses("f.defvjp(fwd, lambda r, g: jax.vjp(h, r)[1](g))")
    assert not autodiff_uses("def mlp_grads(p): return cross_entropy_grad(p)")


def test_handgrad_calls_no_autodiff():
    root = Path(handgrad.__file__).parent
    found = {
        str(p.relative_to(root)): autodiff_uses(p.read_text()) for p in sorted(root.glob("*.py"))
    }
    found = {k: v for k, v in found.items() if v}
    assert not found, found
    assert len(list(root.glob("*.py"))) >= 8
