"""softmax, softmax_jacobian, cross_entropy, cross_entropy_grad (handgrad/softmax_ce.py).

Which wrong gradient each property catches is proven in test_mutants.py."""

import jax.numpy as jnp
import numpy as np
import pytest
from helpers import HAND, SOFTMAX_CE
from hypothesis import given

import handgrad as hg
import jax_ref as jr

IMPL, PROPS, CASES = HAND["softmax_ce"], SOFTMAX_CE.properties, SOFTMAX_CE.strategy()


@given(CASES)
def test_agrees_with_autodiff(case):
    PROPS["agrees"](IMPL, case)


@given(CASES)
def test_softmax_invariants(case):
    PROPS["softmax_invariants"](IMPL, case)


@given(CASES)
def test_cross_entropy_grad_rows(case):
    PROPS["ce_grad_bounds"](IMPL, case)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_extreme_logits_stay_finite(dtype):
    z = jnp.array([[1e4, -1e4, 0.0], [-1e4, -1e4, 1e4]], dtype)
    y = jnp.array([1, 0])
    for value in (
        hg.softmax(z),
        hg.softmax_jacobian(z),
        hg.cross_entropy(z, y),
        hg.cross_entropy_grad(z, y),
    ):
        assert bool(jnp.all(jnp.isfinite(value)))
        assert value.dtype == dtype
    # row 0 picks a logit 2e4 below the max: the loss is exactly that gap, not inf
    assert float(hg.cross_entropy(z, y)) == pytest.approx((2e4 + 2e4) / 2, rel=1e-6)


def test_cross_entropy_one_class():
    z = jnp.array([[3.0], [-7.0]])
    y = jnp.array([0, 0])
    assert float(hg.cross_entropy(z, y)) == 0.0
    assert np.all(np.asarray(hg.cross_entropy_grad(z, y)) == 0.0)
    assert np.all(np.asarray(hg.softmax_jacobian(z)) == 0.0)


def test_cross_entropy_single_row_is_unscaled():
    z = jnp.array([[0.2, -1.0, 2.0]])
    y = jnp.array([2])
    a = np.asarray(hg.softmax(z))
    np.testing.assert_allclose(hg.cross_entropy_grad(z, y), a - np.eye(3)[[2]], rtol=1e-12)


def test_jacobian_matches_the_seed_entrywise():
    z = jnp.array([[0.5, -0.3, 1.2, 0.0]])
    a = np.asarray(hg.softmax(z))[0]
    J = np.asarray(hg.softmax_jacobian(z))[0]
    for j in range(4):
        for k in range(4):
            assert J[j, k] == pytest.approx(a[j] * ((j == k) - a[k]), abs=1e-15)
    np.testing.assert_allclose(J, jr.softmax_jacobian(z)[0], atol=1e-15)


def test_a_swapped_piece_changes_only_that_piece():
    """`pieces=` runs the shipped functions with one piece replaced (how mutants are made)."""
    from handgrad.softmax_ce import PIECES

    z, y = jnp.array([[0.5, -0.3, 1.2]]), jnp.array([1])
    doubled = PIECES._replace(ce_backward=lambda cache: 2 * (cache.a - cache.onehot))
    np.testing.assert_array_equal(
        hg.cross_entropy_grad(z, y, pieces=doubled), 2 * hg.cross_entropy_grad(z, y)
    )
    np.testing.assert_array_equal(hg.softmax(z, pieces=doubled), hg.softmax(z))
