"""sigmoid, binary_cross_entropy, binary_cross_entropy_grad (handgrad/sigmoid_bce.py): the
trial derivation added through the registry. Its mutants are proven killed in
test_mutants.py, its ledger in test_ledger.py, like every registered derivation's."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given

import handgrad as hg
from jax_ref.derivations import REGISTRY
from jax_ref.spec import implementation

D = REGISTRY["sigmoid_bce"]
IMPL = implementation(D)


@given(D.strategy())
def test_agrees_with_autodiff(case):
    D.properties["agrees"](IMPL, case)


@given(D.strategy())
def test_grad_bounds_and_symmetry(case):
    D.properties["grad_bounds"](IMPL, case)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_saturated_logits_stay_finite(dtype):
    z = jnp.array([1e4, -1e4, 0.0], dtype)
    t = jnp.array([0.0, 1.0, 0.5], dtype)
    assert float(hg.binary_cross_entropy(z, t)) == pytest.approx((1e4 + 1e4 + np.log(2)) / 3)
    np.testing.assert_allclose(hg.binary_cross_entropy_grad(z, t), [1 / 3, -1 / 3, 0.0])
    assert hg.sigmoid(z).dtype == dtype


def test_bad_targets():
    with pytest.raises(ValueError, match=r"t must hold targets in \[0, 1\]; got t\[1\] = 2.0"):
        hg.binary_cross_entropy(jnp.zeros(3), jnp.array([0.0, 2.0, 1.0]))
    with pytest.raises(ValueError, match=r"t must be \(N,\) = \(3,\) to match z"):
        hg.binary_cross_entropy_grad(jnp.zeros(3), jnp.zeros(2))
    bad = jax.jit(hg.binary_cross_entropy_grad)(jnp.zeros(3), jnp.array([0.0, 2.0, 1.0]))
    assert np.isnan(np.asarray(bad)[1]) and np.isfinite(np.asarray(bad)[[0, 2]]).all()
