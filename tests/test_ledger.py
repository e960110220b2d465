"""The derivation ledger (each derivation's CHAINS, jax_ref/ledger.py)."""

from helpers import MLP, SOFTMAX_CE

from handgrad.ledger import Step
from jax_ref.derivations import REGISTRY
from jax_ref.ledger import first_wrong, run_ledger


def test_every_step_of_every_derivation_holds():
    entries = run_ledger(seed=0)
    assert len(entries) == sum(len(s) for d in REGISTRY.values() for s in d.module.CHAINS.values())
    assert first_wrong(entries) is None
    assert all(e.shape_ok for e in entries)


def test_every_chain_ends_on_the_shipped_function():
    for d in REGISTRY.values():
        for chain, steps in d.module.CHAINS.items():
            assert steps[-1].name == "shipped", (d.name, chain)
            assert "handgrad." in steps[-1].equation, (d.name, chain)


def test_the_one_over_a_form_breaks_at_extreme_logits():
    entries = {(e.chain, e.step): e for e in run_ledger(seed=1, derivations=[SOFTMAX_CE])}
    assert not entries[("cross_entropy_per_observation", "chain through 1/a")].extreme_finite
    assert entries[("cross_entropy_per_observation", "shipped")].extreme_finite
    assert all(e.extreme_finite for k, e in entries.items() if k[1] != "chain through 1/a")


def test_a_wrong_step_is_named_first():
    steps = list(SOFTMAX_CE.module.CHAINS["softmax_jacobian"])
    right = steps[3]
    steps[3] = Step(
        right.name, right.equation, right.shape, lambda x: -right.fn(x)
    )  # a sign slip in the factored form
    entries = run_ledger(derivations=[SOFTMAX_CE], chains={"softmax_jacobian": steps})
    wrong = first_wrong(entries)
    assert (wrong.chain, wrong.step) == ("softmax_jacobian", "factored")
    assert entries[2].passed and not entries[4].passed  # the shipped form disagrees with it


def test_a_wrong_shape_line_is_caught():
    steps = list(MLP.module.CHAINS["mlp"])
    dW2 = steps[1]
    steps[1] = Step(dW2.name, dW2.equation, "(C, H) = (C, N)·(N, H)", dW2.fn)
    last = steps[-1]
    steps[-1] = Step(last.name, last.equation, "(D, H), (H,), (C, H), (C,)", last.fn)
    entries = run_ledger(derivations=[MLP], chains={"mlp": steps})
    assert not entries[1].shape_ok and first_wrong(entries).step == "dW2"
    assert not entries[-1].shape_ok


def test_mlp_ledger_on_square_shapes():
    entries = run_ledger(derivations=[MLP], dims=(3, 3, 3, 3))
    assert first_wrong(entries) is None
