"""Params, init_params, mlp_forward, mlp_loss, mlp_grads (handgrad/mlp.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import HAND, MLP
from hypothesis import given, settings
from hypothesis import strategies as st

import handgrad as hg
import jax_ref as jr
from jax_ref import strategies as hs
from jax_ref.derivations.mlp import mlp_case

IMPL, PROPS = HAND["mlp"], MLP.properties


@given(MLP.strategy())
def test_agrees_with_autodiff(case):
    PROPS["agrees"](IMPL, case)


@given(MLP.strategy(dtypes=st.just(np.float64)))
def test_finite_differences_float64(case):
    PROPS["finite_differences"](IMPL, case)


# vmap compiles per shape: two shapes (one generic, one square N = H = C).
VMAP_DIMS = st.sampled_from([(6, 5, 7, 3), (3, 2, 3, 3)])


@given(hs.mlp_cases(dims=VMAP_DIMS))
def test_vmapped_per_example_grads_average_to_batch(case):
    PROPS["vmap_per_example"](IMPL, case)


@given(MLP.strategy())
def test_tiny_weights_give_log_c(case):
    PROPS["loss_near_log_c"](IMPL, case)


@pytest.mark.slow
@settings(max_examples=5)
@given(hs.mlp_cases(max_side=5))
def test_random_shapes_agree(case):
    """A few unbucketed shapes, beyond the edge list (each compiles: thorough profile)."""
    PROPS["agrees"](IMPL, case)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_relu_grad_at_exact_zero(dtype):
    """z1 == 0 exactly (zero weights and bias into unit 0): its gradient is 0, as jax.nn.relu's."""
    case = mlp_case(3, 4, 3, 5, 3, dtype, kinks=True)
    z1 = case.X @ case.params.W1 + case.params.b1
    assert np.all(z1[:, 0] == 0)
    _, g = hg.mlp_grads(*case)
    _, want = jr.mlp_grads(*case)
    assert np.all(np.asarray(g.W1)[:, 0] == 0) and float(g.b1[0]) == 0.0
    np.testing.assert_array_equal(np.asarray(g.W1)[:, 0], np.asarray(want.W1)[:, 0])


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_returns_input_dtype_and_shapes(dtype):
    p = hg.init_params(jax.random.PRNGKey(0), 4, 6, 3, dtype=dtype)
    X = jnp.ones((5, 4), dtype)
    loss, g = hg.mlp_grads(p, X, jnp.array([0, 1, 2, 0, 1]), 0.5)
    assert loss.dtype == dtype and hg.mlp_forward(p, X).shape == (5, 3)
    for grad, param in zip(g, p):
        assert grad.shape == param.shape and grad.dtype == dtype
    assert isinstance(g, hg.Params)


def test_init_params_shapes_and_scale():
    p = hg.init_params(jax.random.PRNGKey(1), 300, 200, 10)
    assert [x.shape for x in p] == [(300, 200), (200,), (200, 10), (10,)]
    assert float(jnp.std(p.W1)) == pytest.approx(np.sqrt(2 / 300), rel=0.05)  # He
    assert not np.any(np.asarray(p.b1)) and not np.any(np.asarray(p.b2))
    with pytest.raises(ValueError, match="H must be a positive integer"):
        hg.init_params(jax.random.PRNGKey(1), 3, 0, 2)


def test_regularisation_leaves_biases_alone():
    case = mlp_case(0, 4, 3, 5, 3, np.float64)
    _, g0 = hg.mlp_grads(case.params, case.X, case.y, 0.0)
    _, g1 = hg.mlp_grads(case.params, case.X, case.y, 0.5)
    np.testing.assert_array_equal(g0.b1, g1.b1)
    np.testing.assert_array_equal(g0.b2, g1.b2)
    np.testing.assert_allclose(g1.W2 - g0.W2, 2 * 0.5 * case.params.W2, rtol=1e-12)
