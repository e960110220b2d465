"""The derivation ledger (handgrad/derivation.py, jax_ref/ledger.py)."""

import jax.numpy as jnp

from handgrad.derivation import CHAINS, Step
from jax_ref.ledger import first_wrong, run_ledger


def test_every_step_of_the_seed_holds():
    entries = run_ledger(seed=0)
    assert len(entries) == sum(len(s) for s in CHAINS.values()) == 19
    assert first_wrong(entries) is None
    assert all(e.shape_ok for e in entries)


def test_the_one_over_a_form_breaks_at_extreme_logits():
    entries = {(e.chain, e.step): e for e in run_ledger(seed=1)}
    assert not entries[("cross_entropy_per_observation", "chain through 1/a")].extreme_finite
    assert entries[("cross_entropy_per_observation", "final")].extreme_finite
    assert all(e.extreme_finite for k, e in entries.items() if k[1] != "chain through 1/a")


def test_a_wrong_step_is_named_first():
    steps = list(CHAINS["softmax_jacobian"])
    right = steps[3]
    steps[3] = Step(right.name, right.equation, right.shape,
                    lambda x: -right.fn(x))  # a sign slip in the factored form
    entries = run_ledger(chains={"softmax_jacobian": steps})
    wrong = first_wrong(entries)
    assert (wrong.chain, wrong.step) == ("softmax_jacobian", "factored")
    assert entries[2].passed and not entries[4].passed  # the final form disagrees with it


def test_a_wrong_shape_line_is_caught():
    steps = list(CHAINS["mlp"])
    dW2 = steps[1]
    steps[1] = Step(dW2.name, dW2.equation, "(C, H) = (C, N)·(N, H)", dW2.fn)
    entries = run_ledger(chains={"mlp": steps})
    assert not entries[1].shape_ok and first_wrong(entries).step == "dW2"


def test_mlp_ledger_on_square_shapes():
    entries = run_ledger(chains={"mlp": CHAINS["mlp"]}, dims=(3, 3, 3, 3))
    assert first_wrong(entries) is None
    assert jnp.all(jnp.array([e.shape_ok for e in entries]))
