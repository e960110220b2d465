"""`handgrad check`: the seed's functions over a deterministic sweep, every oracle, plus
the derivation ledger, as one report (a dict shaped like gradcheck.json)."""

from __future__ import annotations

import dataclasses
import platform
from typing import Any

import jax
import numpy as np

import handgrad as hg
import jax_ref.reference as ref
from handgrad import _validate as v
from jax_ref.cases import sweep
from jax_ref.check import CheckResult, check_gradients, compare
from jax_ref.ledger import run_ledger
from jax_ref.scales import logits_scales, mlp_scales
from jax_ref.tolerances import tolerance

__all__ = ["run_check", "versions"]


def versions() -> dict[str, str]:
    import jaxlib

    return {
        "handgrad": hg.__version__,
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


def _row(function: str, case: str, r: CheckResult) -> dict[str, Any]:
    return {"function": function, "case": case, **r.to_dict()}


@jax.jit
def _logits_outputs(z, y):
    """Every logits function, hand and referee, in one compilation per shape."""
    hand = (hg.softmax(z), hg.softmax_jacobian(z), hg.cross_entropy(z, y),
            hg.cross_entropy_grad(z, y))
    want = (ref.softmax(z), ref.softmax_jacobian(z), ref.cross_entropy(z, y),
            ref.cross_entropy_grad(z, y))
    return hand, want


@jax.jit
def _mlp_outputs(p, X, y, reg):
    """Hand and referee forward, loss and gradients, in one compilation per shape."""
    hand = (hg.mlp_forward(p, X), hg.mlp_loss(p, X, y, reg), hg.mlp_grads(p, X, y, reg))
    want = (ref.mlp_forward(p, X), ref.mlp_loss(p, X, y, reg), ref.mlp_grads(p, X, y, reg))
    return hand, want


_LOGITS = (("softmax", "a", "referee"), ("softmax_jacobian", "J", "autodiff"),
           ("cross_entropy", "L", "referee"), ("cross_entropy_grad", "z", "autodiff"))


def _logits_checks(case, tag):
    z, y = case
    v.check_labels(y, *v.check_logits(z).shape, against="z")  # validate eagerly, once
    dt = z.dtype
    s = logits_scales(z, y)
    tol = tolerance(dt)
    hand, want = _logits_outputs(z, y)
    rows = [_row(f, tag, compare(p, o, got, w, dt, tol, scale=s[f]))
            for (f, p, o), got, w in zip(_LOGITS, hand, want)]
    fd = check_gradients(ref.cross_entropy, lambda *_: hand[3], z, y,
                         oracles=("finite_difference",), scales=s["cross_entropy_grad"])
    rows += [_row("cross_entropy_grad", tag, dataclasses.replace(r, parameter="z")) for r in fd]
    return rows




def _mlp_checks(case, tag):
    p, X, y, reg = case
    params, X = v.check_mlp(p, X)  # validate eagerly, once
    v.check_labels(y, X.shape[0], params[2].shape[1], against="X")
    v.check_reg(reg, X.dtype)
    dt = X.dtype
    s = mlp_scales(p, X, y, reg)
    tol = tolerance(dt)
    (fwd, loss, (gl, g)), (want_fwd, want_loss, (wl, w)) = _mlp_outputs(p, X, y, reg)
    rows = [
        _row("mlp_forward", tag, compare("z2", "referee", fwd, want_fwd, dt, tol,
                                          scale=s["mlp_forward"])),
        _row("mlp_loss", tag, compare("L", "referee", loss, want_loss, dt, tol,
                                       scale=s["mlp_loss"])),
        _row("mlp_grads", tag, compare("loss", "autodiff", gl, wl, dt, tol,
                                        scale=s["mlp_loss"])),
    ]
    rows += [_row("mlp_grads", tag, compare(name, "autodiff", a, b, dt, tol, scale=sc))
             for name, a, b, sc in zip(g._fields, g, w, s["grads"])]
    results = check_gradients(ref.mlp_loss, lambda *_: g, p, X, y, reg,
                              oracles=("finite_difference",), scales=s["grads"])
    return rows + [_row("mlp_grads", tag, r) for r in results]


def run_check(seed: int = 0, dtypes=(np.float64, np.float32), examples: int = 4) -> dict:
    """Every public function over `sweep(seed)` (edge shapes, `examples` random shapes,
    reg = 0 and > 0, kinks, extreme logits), then the ledger."""
    checks: list[dict] = []
    for kind, case, tag in sweep(seed, dtypes=dtypes, random_cases=examples):
        checks += _logits_checks(case, tag) if kind == "logits" else _mlp_checks(case, tag)
    ledger = [e.to_dict() for e in run_ledger(seed)]
    passed = all(c["passed"] for c in checks) and all(e["passed"] for e in ledger)
    return {"passed": passed, "seed": seed, "versions": versions(), "checks": checks,
            "ledger": ledger}
