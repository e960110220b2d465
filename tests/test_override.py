"""A tolerance set per call (rtol=, atol=, tolerance_factor=) does what it says, is stamped on
every result and message, and never turns a powerless check into a pass; declared checks
(GradientCheck, RuleCheck in `handgrad check FILE.py`) pass on every option."""

import jax.numpy as jnp
import numpy as np
import pytest

import jax_ref
from handgrad_cli.main import main
from jax_ref.tolerances import tolerance

X = jnp.linspace(-1.0, 1.0, 5)


def off_by(rel=0.0, abs_=0.0):
    """sin's VJP, wrong by a relative and an absolute error in each element."""
    return lambda x, ct: (ct * jnp.cos(x) * (1 + rel) + abs_,)


def statuses(results, oracles=("autodiff", "finite_difference")):
    return {r.oracle: r.status for r in results if r.oracle in oracles}


def test_rtol_accepts_an_error_below_it_and_fails_one_above():
    """A 1e-3 relative error fails the default float64 table (1e-10); rtol=1e-2 passes it,
    rtol=1e-4 still fails it: the override replaces the tolerance, it does not waive it."""
    wrong = off_by(rel=1e-3)
    assert set(statuses(jax_ref.check_vjp(jnp.sin, X, vjp=wrong)).values()) == {"failed"}
    loose = jax_ref.check_vjp(jnp.sin, X, vjp=wrong, rtol=1e-2)
    assert set(statuses(loose).values()) == {"passed"}
    assert set(statuses(jax_ref.check_vjp(jnp.sin, X, vjp=wrong, rtol=1e-4)).values()) == {"failed"}
    assert all(r.tolerance_set == "set by the caller: rtol=0.01" for r in loose)
    assert "(tolerance set by the caller: rtol=0.01)" in loose[0].describe()


def test_atol_is_absolute_and_factor_scales_the_budget():
    wrong = off_by(abs_=1e-6)  # in every element, against entries of order 0.5
    assert set(statuses(jax_ref.check_vjp(jnp.sin, X, vjp=wrong, atol=1e-5)).values()) == {"passed"}
    assert "failed" in statuses(jax_ref.check_vjp(jnp.sin, X, vjp=wrong, atol=1e-8)).values()
    # float32 is judged by the precision budget: a factor multiplies it, stamped
    x32 = X.astype(jnp.float32)
    base = jax_ref.check_vjp(jnp.sin, x32, contracts=())
    wide = jax_ref.check_vjp(jnp.sin, x32, contracts=(), tolerance_factor=10)
    for b, w in zip(base, wide):
        assert w.tolerance == pytest.approx(10 * b.tolerance, rel=1e-6), (b, w)
        assert w.tolerance_set == "set by the caller: tolerance_factor=10"


def test_too_loose_a_tolerance_judges_nothing():
    """atol far above the values: a 100 % error would pass, so nothing is judged, said so;
    a rule wrong by a factor 2 is not passed."""
    results = jax_ref.check_vjp(jnp.sin, X, vjp=off_by(rel=1.0), contracts=(), atol=10)
    assert set(statuses(results).values()) == {"inconclusive"}
    auto = next(r for r in results if r.oracle == "autodiff")
    assert "too loose to judge" in auto.note
    with pytest.raises(AssertionError, match="no oracle could judge"):
        jax_ref.assert_vjp(jnp.sin, X, vjp=off_by(rel=1.0), contracts=(), atol=10)


def test_the_override_ends_with_the_call_and_bad_values_are_named():
    jax_ref.check_vjp(jnp.sin, X, rtol=0.5, contracts=())
    assert tolerance(np.float64) == 1e-10  # nothing left behind
    for kw, word in (
        ({"rtol": -1}, "rtol"),
        ({"atol": "x"}, "atol"),
        ({"tolerance_factor": 0}, "tolerance_factor"),
    ):
        with pytest.raises(ValueError, match=word):
            jax_ref.check_vjp(jnp.sin, X, **kw)
    with pytest.raises(ValueError, match="rtol"):
        jax_ref.assert_gradients(lambda p: jnp.sum(p**2), lambda p: 2 * p, X, rtol=np.nan)


def test_gradient_checks_take_the_override_too():
    def loss(p):
        return jnp.sum(jnp.sin(p))

    results = jax_ref.check_gradients(loss, lambda p: jnp.cos(p) * (1 + 1e-4), X, rtol=1e-3)
    assert {r.status for r in results} == {"passed"}
    assert all("rtol=0.001" in r.tolerance_set for r in results)


CHECKS_FILE = """
import jax, jax.numpy as jnp
from jax_ref import GradientCheck, RuleCheck

jax.config.update("jax_enable_x64", True)
x = jnp.linspace(-1.0, 1.0, 4)


def loss(p, x):
    return jnp.sum(p["a"] * jnp.sin(x) ** 2)


def grad(p, x):
    return {"a": jnp.sum(jnp.sin(x) ** 2)}


def forgot_square(p, x):
    return {"a": jnp.sum(jnp.sin(x))}


CHECKS = [
    GradientCheck("right", loss, grad, lambda: {"a": jnp.array(0.7)}, args=(x,)),
    GradientCheck("wrong", loss, forgot_square, {"a": jnp.array(0.7)}, args=x),
    GradientCheck("loosened", loss, grad, {"a": jnp.array(0.7)}, args=(x,), rtol=1e-6,
                  oracles=("finite_difference",)),
    RuleCheck("sin, differences only", jnp.sin, (x,), oracles=("finite_difference",),
              contracts=("jit",), atol=1e-9),
]
"""


def test_a_checks_file_declares_gradient_checks_with_every_option(tmp_path):
    target = tmp_path / "my_checks.py"
    target.write_text(CHECKS_FILE)
    out = tmp_path / "out"
    assert main(["check", str(target), "--out", str(out)]) == 1  # "wrong" fails
    report = jax_ref.report.from_json((out / "gradcheck.json").read_text())
    by = {}
    for r in report["checks"]:
        by.setdefault(r["function"], []).append(r)
    assert {r["status"] for r in by["right"]} == {"passed"}
    assert {r["status"] for r in by["wrong"]} == {"failed"}
    assert {r["oracle"] for r in by["loosened"]} == {"finite_difference"}
    assert all(r["tolerance_set"] == "set by the caller: rtol=1e-06" for r in by["loosened"])
    rule = by["sin, differences only"]
    assert {r["oracle"] for r in rule} == {"finite_difference", "jit"}
    assert all("atol=1e-09" in r["tolerance_set"] for r in rule)
    md = (out / "gradcheck.md").read_text()
    assert "⚠️ set by the caller: rtol=1e-06" in md and "## What failed, and why" in md


def test_declared_checks_name_what_is_wrong():
    with pytest.raises(ValueError, match="GradientCheck 'g': grad_fn must be a callable"):
        jax_ref.GradientCheck("g", jnp.sum, None, X)
    with pytest.raises(ValueError, match="scales= is check_vjp's only"):
        jax_ref.RuleCheck("r", jnp.sin, (X,), kind="jvp", scales={"x": 1.0})
