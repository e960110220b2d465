"""Bad input: a ValueError naming the argument, the expected shape in N, D, H, C, and what
came; under jit, where values cannot raise, NaN instead of a plausible number."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import handgrad as hg
import jax_ref as jr
from jax_ref.derivations.mlp import mlp_case

CASE = mlp_case(0, 5, 4, 6, 3, np.float64, reg=0.1)
P, X, Y = CASE.params, CASE.X, CASE.y


def raises(match):
    return pytest.raises(ValueError, match=re.escape(match))


@pytest.mark.parametrize("module", [hg, jr])
def test_shape_mismatches_name_the_argument(module):
    with raises("W1 must be (D, H) = (4, H) to match X (N, D) = (5, 4); got (6, 4)"):
        module.mlp_grads(P._replace(W1=P.W1.T), X, Y)
    with raises("b1 must be (H,) = (6,) to match W1 (D, H) = (4, 6); got (3,)"):
        module.mlp_loss(P._replace(b1=P.b2), X, Y)
    with raises("W2 must be (H, C) = (6, C) to match W1 (D, H) = (4, 6); got (3, 6)"):
        module.mlp_forward(P._replace(W2=P.W2.T), X)
    with raises("b2 must be (C,) = (3,) to match W2 (H, C) = (6, 3); got (6,)"):
        module.mlp_grads(P._replace(b2=P.b1), X, Y)
    with raises("y must be (N,) = (5,) to match X (N, D) = (5, 4); got (4,)"):
        module.mlp_grads(P, X, Y[:4])


@pytest.mark.parametrize("module", [hg, jr])
def test_wrong_rank(module):
    with raises("X must be (N, D), a 2-D array; got shape (4,)"):
        module.mlp_forward(P, X[0])
    with raises("z must be (N, C), a 2-D array; got shape (3,)"):
        module.softmax(jnp.ones(3))
    with raises("y must be (N,) = (2,) to match z (N, C) = (2, 3); got (2, 1)"):
        module.cross_entropy(jnp.ones((2, 3)), jnp.zeros((2, 1), int))


def test_labels_must_be_integers_in_range():
    with raises("y must hold integer class labels (N,); got dtype float64"):
        hg.mlp_grads(P, X, Y.astype(float))
    with raises("y must hold labels in [0, C) = [0, 3); got y[2] = 3"):
        hg.mlp_grads(P, X, np.array([0, 1, 3, 0, 1]))
    with raises("y must hold labels in [0, C) = [0, 3); got y[0] = -1"):
        hg.cross_entropy_grad(jnp.ones((2, 3)), jnp.array([-1, 0]))
    with raises("got dtype bool"):
        hg.cross_entropy(jnp.ones((2, 3)), jnp.array([True, False]))


def test_non_finite_values():
    with raises("X must be finite; got nan at index [1, 2]"):
        hg.mlp_grads(P, _with(X, (1, 2), np.nan), Y)
    with raises("W2 must be finite; got inf at index [0, 1]"):
        hg.mlp_loss(P._replace(W2=_with(P.W2, (0, 1), np.inf)), X, Y)
    with raises("z must be finite; got -inf at index [0, 0]"):
        hg.softmax(jnp.array([[-jnp.inf, 0.0]]))


def _with(a, idx, value):
    a = np.array(a)
    a[idx] = value
    return a


def test_empty_batch_and_no_classes():
    with raises("X must have at least one row (N >= 1); got (N, D) = (0, 4)"):
        hg.mlp_grads(P, X[:0], Y[:0])
    with raises("z must have at least one row (N >= 1)"):
        hg.softmax(jnp.ones((0, 3)))
    with raises("z must have at least one class (C >= 1)"):
        hg.softmax(jnp.ones((2, 0)))


def test_negative_reg_and_mixed_dtypes():
    with raises("reg must be a finite number >= 0; got -0.1"):
        hg.mlp_grads(P, X, Y, -0.1)
    with raises("W1 must have the dtype of X (float32); got float64"):
        hg.mlp_grads(P, X.astype(np.float32), Y)
    with raises("X must be a floating-point array (N, D); got dtype int64"):
        hg.mlp_forward(P, X.astype(np.int64))
    with raises("params must be Params(W1, b1, W2, b2); got tuple of length 3"):
        hg.mlp_forward(tuple(P)[:3], X)


@pytest.mark.parametrize("bad", [3, -1, 1000])
def test_out_of_range_label_under_jit_is_nan(bad):
    """JAX clamps an out-of-range gather; handgrad must not return that plausible number."""
    y = jnp.asarray(Y).at[2].set(bad)
    loss, g = jax.jit(hg.mlp_grads)(P, X, y, 0.1)
    assert np.isnan(float(loss))
    assert all(np.isnan(np.asarray(leaf)).any() for leaf in (g.W1, g.b1, g.W2, g.b2))
    assert np.isnan(float(jax.jit(hg.mlp_loss)(P, X, y)))
    z = jnp.asarray(X[:, :3])
    dz = np.asarray(jax.jit(hg.cross_entropy_grad)(z, y))
    assert np.isnan(dz[2]).all() and np.isfinite(np.delete(dz, 2, axis=0)).all()
    assert np.isnan(float(jax.jit(hg.cross_entropy)(z, y)))
    assert np.isnan(float(jax.jit(jr.mlp_loss)(P, X, y)))  # the referee agrees


def test_negative_reg_under_jit_is_nan():
    loss, g = jax.jit(hg.mlp_grads)(P, X, Y, -1.0)
    assert np.isnan(float(loss)) and np.isnan(np.asarray(g.W1)).all()
