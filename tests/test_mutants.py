"""The tests can fail: every property kills the wrong gradients it is meant to catch, and
every catalogued mutant is killed by some property (jax_ref/mutants.py)."""

import numpy as np
import pytest

import handgrad
from jax_ref.cases import sweep
from jax_ref.mutants import MUTANTS, build, kill_matrix
from jax_ref.properties import LOGITS_PROPERTIES, MLP_PROPERTIES, impl_of
from jax_ref.tolerances import rel_error

BY_NAME = {m.name: m for m in MUTANTS}

# property -> mutants it must kill: the wrong gradients each test exists to catch.
MUST_KILL = {
    "agrees_on_logits": ["ce_grad_no_mean", "ce_grad_sign", "jacobian_a_ij_twice",
                         "ce_grad_one_over_a", "softmax_no_max_shift", "log_of_softmax"],
    "softmax_invariants": ["jacobian_no_indicator", "jacobian_a_ij_twice",
                           "softmax_no_max_shift"],
    "ce_grad_bounds": ["ce_grad_no_mean", "ce_grad_over_C", "ce_grad_one_over_a"],
    "agrees_on_mlp": ["relu_grad_at_zero_one", "reg_grad_no_factor_2", "reg_on_biases",
                      "loss_missing_reg", "db_sum_wrong_axis", "da1_no_transpose",
                      "float32_inside", "relu_grad_missing"],
    "finite_differences": ["ce_grad_sign", "relu_grad_missing", "reg_grad_no_factor_2",
                           "float32_inside"],
    "jit_matches_eager": ["softmax_numpy_inside"],
    "vmap_per_example": ["ce_grad_no_mean", "softmax_numpy_inside"],
    "loss_near_log_c": ["loss_sum_not_mean"],
}


def test_every_property_has_a_mutant_it_must_kill():
    assert set(MUST_KILL) == set(LOGITS_PROPERTIES) | set(MLP_PROPERTIES)
    assert all(MUST_KILL.values())


@pytest.mark.parametrize("prop", sorted(MUST_KILL))
def test_property_kills_its_mutants(prop):
    matrix = kill_matrix([BY_NAME[n] for n in MUST_KILL[prop]], properties={prop},
                         random_cases=0)
    survivors = [name for name, row in matrix.items() if row[prop] is None]
    assert not survivors, f"{prop} no longer catches {survivors}"


def test_every_mutant_is_killed():
    matrix = kill_matrix(MUTANTS, random_cases=0, stop_at_first=True)
    survivors = [name for name, row in matrix.items() if not any(row.values())]
    assert not survivors
    assert len(MUTANTS) >= 12


def test_unmutated_build_is_handgrad():
    """The mutant harness with no swap computes exactly what handgrad does."""
    plain, hand = build(), impl_of(handgrad)
    for kind, case, _ in sweep(0, dtypes=(np.float64,), random_cases=0):
        if kind == "logits":
            pairs = [(plain.softmax(case.z), hand.softmax(case.z)),
                     (plain.softmax_jacobian(case.z), hand.softmax_jacobian(case.z))]
            pairs.append((plain.cross_entropy_grad(*case), hand.cross_entropy_grad(*case)))
        else:
            pairs = list(zip(_leaves(plain.mlp_grads(*case)), _leaves(hand.mlp_grads(*case))))
        for a, b in pairs:
            # same math; only XLA's fusion differs (jitted core vs op by op): a few ulps
            eps = np.finfo(np.asarray(b).dtype).eps
            assert rel_error(a, b)[1] <= 8 * eps


def _leaves(out):
    loss, grads = out
    return [loss, *grads]
