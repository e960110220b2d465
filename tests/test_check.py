"""check_gradients / assert_gradients (jax_ref/check.py): the generic checker."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import handgrad as hg
import jax_ref as jr
from jax_ref.derivations.mlp import mlp_case


def quad_loss(p, A):
    return jnp.sum((A @ p["w"]) ** 2) + jnp.sum(jnp.sin(p["b"]))


def quad_grad(p, A):
    return {"w": 2 * A.T @ (A @ p["w"]), "b": jnp.cos(p["b"])}


P = {"w": jnp.arange(1.0, 4.0), "b": jnp.array([0.3, -1.2])}
A = jnp.array([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]])


def test_a_correct_gradient_passes_both_oracles_per_leaf():
    results = jr.assert_gradients(quad_loss, quad_grad, P, A)
    assert {(r.parameter, r.oracle) for r in results} == {
        ("w", "autodiff"),
        ("b", "autodiff"),
        ("w", "finite_difference"),
        ("b", "finite_difference"),
    }
    assert all(r.passed and r.max_rel_err <= r.tolerance for r in results)


def test_a_wrong_leaf_is_named_with_its_worst_element():
    def wrong(p, A):
        g = quad_grad(p, A)
        return {**g, "b": g["b"].at[1].multiply(1.01)}

    with pytest.raises(AssertionError) as e:
        jr.assert_gradients(quad_loss, wrong, P, A)
    msg = str(e.value)
    assert "b [autodiff" in msg and "b [finite_difference" in msg
    assert "w [" not in msg
    assert "worst at element [1]" in msg and f"{float(jnp.cos(-1.2)) * 1.01!r}"[:8] in msg
    assert "worst at direction [" in msg


def test_lists_and_nested_pytrees():
    params = [jnp.array([1.0, 2.0]), {"inner": jnp.array(0.5)}]

    def loss(p):
        return jnp.sum(p[0] ** 3) * p[1]["inner"]

    def grad(p):
        return [3 * p[0] ** 2 * p[1]["inner"], {"inner": jnp.sum(p[0] ** 3)}]

    results = jr.check_gradients(loss, grad, params)
    assert {r.parameter for r in results} == {"0", "1.inner"}
    assert all(r.passed for r in results)


def test_tree_and_shape_mismatches_are_clear():
    with pytest.raises(ValueError, match="pytree shaped like params"):
        jr.check_gradients(quad_loss, lambda p, A: [p["w"], p["b"]], P, A)
    with pytest.raises(ValueError, match=r"gradient for b must have the parameter's shape \(2,\)"):
        jr.check_gradients(quad_loss, lambda p, A: {"w": p["w"], "b": p["b"][:1]}, P, A)
    with pytest.raises(ValueError, match="must return \\(loss, grads\\)"):
        jr.check_gradients(quad_loss, quad_grad, P, A, returns_loss=True)
    with pytest.raises(ValueError, match="oracles must be among"):
        jr.check_gradients(quad_loss, quad_grad, P, A, oracles=["symbolic"])


def test_float32_precision_gradient_fails_at_float64():
    """A gradient computed in float32 inside a float64 call: rtol-1e-3 tools miss it."""

    def sloppy(p, A):
        g = quad_grad(jax.tree.map(lambda x: x.astype(jnp.float32), p), A.astype(jnp.float32))
        return jax.tree.map(lambda x: x.astype(jnp.float64), g)

    results = jr.check_gradients(quad_loss, sloppy, P, A, oracles=("autodiff",))
    assert not all(r.passed for r in results)


def test_relu_kinks_do_not_cry_wolf():
    """Exact zero pre-activations: finite differences never fail there; where every
    direction crosses the kink at the point they say they cannot judge, and autodiff does."""
    case = mlp_case(0, 6, 4, 8, 3, np.float64, kinks=True, reg=1.0)
    results = jr.check_gradients(jr.mlp_loss, hg.mlp_grads, *case, returns_loss=True)
    assert not [r.describe() for r in results if r.status == "failed"]
    fd = {r.parameter: r for r in results if r.oracle == "finite_difference"}
    assert fd["W1"].status == "inconclusive" and "on a kink" in fd["W1"].note
    assert fd["W2"].passed and fd["b2"].passed
    assert all(r.passed for r in results if r.oracle == "autodiff")
    jr.assert_gradients(jr.mlp_loss, hg.mlp_grads, *case, returns_loss=True)  # autodiff judged


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_the_seed_mlp_passes(dtype):
    case = mlp_case(1, 5, 3, 4, 3, dtype, reg=0.1)
    jr.assert_gradients(jr.mlp_loss, hg.mlp_grads, *case, returns_loss=True)


def test_large_relu_mlp_814k_params():
    """784-1024-10, N = 64, float64: passes; the same gradient rounded to float32 fails."""
    key = jax.random.PRNGKey(0)
    params = hg.init_params(key, 784, 1024, 10, dtype=jnp.float64)
    X = jax.random.normal(jax.random.PRNGKey(1), (64, 784), jnp.float64)
    y = jax.random.randint(jax.random.PRNGKey(2), (64,), 0, 10)
    assert sum(p.size for p in params) == 814090
    grads = jax.jit(hg.mlp_grads)
    results = jr.check_gradients(jr.mlp_loss, grads, params, X, y, returns_loss=True)
    assert all(r.passed for r in results), [r.describe() for r in results if not r.passed]

    def float32_grads(p, X, y):
        loss, g = grads(p, X, y)
        return loss, jax.tree.map(lambda t: t.astype(jnp.float32).astype(jnp.float64), g)

    results = jr.check_gradients(
        jr.mlp_loss, float32_grads, params, X, y, returns_loss=True, oracles=("autodiff",)
    )
    assert [r.parameter for r in results if not r.passed] == ["W1", "b1", "W2", "b2"]
