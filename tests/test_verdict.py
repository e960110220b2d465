"""The one verdict policy (jax_ref/verdict.py): what counts as judged, failed, unjudged.

Each test names the wrong policy it catches: counting nothing as a pass, ignoring contract
checks, letting one oracle's inconclusive result hide another's failure."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jax_ref as jr
from jax_ref.report import assemble_report
from jax_ref.verdict import (
    CheckResult,
    assert_verdict,
    compare,
    failed_check,
    inconclusive_check,
    passed_check,
    verdict,
)


def ok(leaf, oracle="autodiff"):
    return compare(leaf, oracle, np.ones(3), np.ones(3), np.float64, 1e-10)


def test_nothing_judged_is_refused_not_passed():
    """Wrong policy caught: `all(r.passed for r in [])` is True."""
    with pytest.raises(ValueError, match="nothing judged is never a pass"):
        verdict([])
    with pytest.raises(ValueError, match="oracles must be a non-empty selection"):
        jr.check_gradients(lambda p: jnp.sum(p**2), lambda p: 2 * p, jnp.ones(2), oracles=())


def test_a_leaf_is_judged_if_any_oracle_judged_it():
    v = verdict([ok("w"), inconclusive_check("w", "finite_difference", "kink at the point")])
    assert v.passed and v.judged == ("w",) and v.unjudged == ()


def test_a_leaf_every_oracle_left_inconclusive_is_unjudged():
    v = verdict([ok("w"), inconclusive_check("b", "autodiff", "kink")])
    assert not v.passed and v.ok(allow_inconclusive=True) and v.unjudged == ("b",)
    with pytest.raises(AssertionError, match=r"1 no oracle could judge \(b;"):
        assert_verdict(list(v.results), "gradient")
    assert assert_verdict(list(v.results), "gradient", allow_inconclusive=True)


def test_an_inconclusive_contract_check_is_unjudged():
    """Wrong policy caught (the one before this module): only oracle results counted, so a
    second-order check that judged nothing passed."""
    results = [ok("x"), ok("x", "finite_difference"), inconclusive_check("x", "second_order", "")]
    v = verdict(results)
    assert not v.passed and v.unjudged == ("x [second_order]",)


def test_a_failure_is_never_hidden_by_other_results():
    """Wrong policy caught: judging a leaf by its best oracle."""
    bad = compare("w", "finite_difference", np.ones(3), 2 * np.ones(3), np.float64, 1e-10)
    v = verdict([ok("w"), bad])
    assert not v.ok(allow_inconclusive=True) and v.failed == (bad,)
    with pytest.raises(AssertionError, match=r"1 of 2 gradient checks failed"):
        assert_verdict([ok("w"), bad], "gradient", allow_inconclusive=True)


def test_report_rows_use_the_same_policy():
    rows = [
        {"derivation": "d", "function": "f", "case": "c", **ok("x").to_dict()},
        {
            "derivation": "d",
            "function": "f",
            "case": "c",
            **inconclusive_check("x", "composed", "kink").to_dict(),
        },
    ]
    report = assemble_report(0, ["d"], rows, [])
    assert not report["passed"] and report["unjudged"] == ["d: f x (c) [composed]"]
    assert report["counts"] == {"passed": 1, "failed": 0, "inconclusive": 1}
    rows[1]["status"] = "passed"
    assert assemble_report(0, ["d"], rows, [])["passed"]


def test_named_constructors_and_keywords():
    p, f, i = passed_check("c", "jit", "same"), failed_check("c", "jit", "raised"), None
    i = inconclusive_check("c", "vmap", "why")
    assert (p.status, f.status, i.status) == ("passed", "failed", "inconclusive")
    assert math.isinf(f.max_rel_err) and math.isinf(i.detectable_rel_err)
    with pytest.raises(TypeError):  # keyword construction only
        CheckResult("w", "autodiff", "passed")
    with pytest.raises(ValueError, match="status must be one of"):
        CheckResult(parameter="w", oracle="autodiff", status="ok")


@jax.custom_vjp
def _cube_by_callback(x):
    return x**3


def _cube_fwd(x):
    return x**3, x


def _cube_bwd(x, g):  # computed on the host: differentiable once, not twice
    dx = jax.pure_callback(
        lambda a: 3 * np.asarray(a) ** 2, jax.ShapeDtypeStruct(x.shape, x.dtype), x
    )
    return (g * dx,)


_cube_by_callback.defvjp(_cube_fwd, _cube_bwd)


@jax.custom_vjp
def cube(x):
    return x**3


cube.defvjp(lambda x: (x**3, x), lambda x, g: (3 * g * x**2,))


def test_a_second_order_the_reference_cannot_judge_is_judged_by_differences():
    """order=2, and the reference cannot be differentiated twice: its result is
    inconclusive and says why; central differences of the rule's VJP judge instead (before
    the integrity issue nothing did, and the contract went unjudged)."""
    x = jnp.linspace(0.5, 1.5, 4)
    results = jr.check_vjp(cube, x, reference=_cube_by_callback, order=2)
    second = [r for r in results if r.oracle == "second_order"]
    assert sorted(r.status for r in second) == ["inconclusive", "passed"], second
    assert any("could not be differentiated twice" in r.note for r in second)
    jr.assert_vjp(cube, x, reference=_cube_by_callback, order=2)


def test_nan_is_never_agreement():
    """Wrong policy caught: rel_error(NaN, NaN) = 0, so NaN against NaN passed."""
    r = compare(
        "w", "autodiff", np.array([1.0, np.nan]), np.array([1.0, np.nan]), np.float64, 1e-10
    )
    assert r.status == "inconclusive" and "not finite" in r.note, r.describe()
    r = compare("w", "autodiff", np.array([1.0, np.nan]), np.array([1.0, 2.0]), np.float64, 1e-10)
    assert r.status == "failed"  # a NaN hand value where the oracle is finite


def test_a_wrong_gradient_at_a_nan_point_is_not_passed():
    """One data entry is NaN, so the loss and its gradient are NaN everywhere; a gradient
    that forgot its 2/N, NaN as well, used to pass as "rel err 0, hand nan, autodiff nan"."""
    X = jnp.asarray(np.random.default_rng(0).normal(size=(4, 3)))
    y = jnp.array([1.0, np.nan, 0.5, 2.0])

    def loss(w):
        return jnp.mean((X @ w - y) ** 2)

    def forgot_2_over_n(w):
        return X.T @ (X @ w - y)

    p = jnp.array([0.5, -1.0, 2.0])
    results = jr.check_gradients(loss, forgot_2_over_n, p)
    assert not any(r.passed for r in results), [r.describe() for r in results]
    with pytest.raises(AssertionError, match="no oracle could judge"):
        jr.assert_gradients(loss, forgot_2_over_n, p)


def test_a_nan_hand_value_where_the_loss_is_finite_fails():
    """Finite differences used to call it "not smooth" (inconclusive)."""

    def loss(p):
        return jnp.sum(jnp.sin(p))

    p = jnp.linspace(0.1, 1.0, 5)
    bad = jnp.cos(p).at[2].set(jnp.nan)
    (r,) = jr.check_gradients(loss, lambda p: bad, p, oracles=("finite_difference",))
    assert r.status == "failed", r.describe()


def test_a_fault_of_the_oracle_is_not_blamed_on_the_reference(monkeypatch):
    """Only the reference's own code is guarded: an error inside the autodiff oracle used
    to come back as "the reference could not be differentiated" (inconclusive)."""
    from jax_ref import autodiff

    def broken_judge(*args, **kwargs):
        raise RuntimeError("a bug in the checker")

    monkeypatch.setattr(autodiff, "judge", broken_judge)
    with pytest.raises(RuntimeError, match="a bug in the checker"):
        jr.check_vjp(cube, jnp.linspace(0.5, 1.5, 4), contracts=())
