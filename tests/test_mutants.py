"""The tests can fail: every property kills the wrong gradients it exists to catch (each
mutant's `must_kill`), every catalogued mutant is killed, and only a real failure counts
as a kill (jax_ref/mutants.py)."""

import dataclasses

import pytest

from jax_ref.derivations import REGISTRY
from jax_ref.mutants import kill_matrix
from jax_ref.spec import Mutant, implementation
from jax_ref.tolerances import rel_error


@pytest.mark.parametrize("name", list(REGISTRY))
def test_every_property_is_required_to_kill_something(name):
    d = REGISTRY[name]
    required = {p for m in d.mutants for p in m.must_kill}
    assert required == set(d.properties), set(d.properties) ^ required
    assert all(m.must_kill for m in d.mutants) and len(d.mutants) >= 2


# attention's ten mutants compile ten blocked backward passes (~35 s), linear_ce's six
# streamed ones (~16 s cold): thorough profile only (tests/test_linear_ce.py keeps two of
# linear_ce's mistakes failing check_vjp in the default profile)
SLOW_KILLS = {"attention", "linear_ce"}


@pytest.mark.parametrize(
    "name",
    [pytest.param(n, marks=[pytest.mark.slow] if n in SLOW_KILLS else []) for n in REGISTRY],
)
def test_each_property_kills_the_mutants_it_must(name):
    """Per (mutant, property) pair of the catalogue: that property kills that mutant."""
    rows = kill_matrix([REGISTRY[name]], must_kill_only=True)
    missed = [(r.mutant.name, p) for r in rows for p in r.mutant.must_kill if not r.kills[p]]
    assert not missed, f"properties no longer catch: {missed}"
    assert not any(r.errors for r in rows), [r.errors for r in rows if r.errors]


def test_an_unexpected_exception_is_a_harness_error_not_a_kill():
    d = REGISTRY["softmax_ce"]

    def broken_property(impl, case):
        raise KeyError("a bug in the property itself")

    mutant = d.mutants[0]
    probe = dataclasses.replace(
        d,
        properties={"broken": broken_property},
        mutants=(dataclasses.replace(mutant, must_kill=("broken",)),),
    )
    (row,) = kill_matrix([probe], properties=["broken"])
    assert not row.killed and "KeyError" in row.errors["broken"]
    assert list(probe.properties)[:2] == ["agrees", "finite_differences"]  # always given


def test_a_named_error_class_is_a_kill_only_for_its_mutant():
    d = REGISTRY["mlp"]
    transposed = next(m for m in d.mutants if m.name == "da1_no_transpose")
    unnamed = dataclasses.replace(transposed, raises=())
    probe = dataclasses.replace(d, mutants=(transposed, unnamed))
    named, plain = kill_matrix([probe], properties=["agrees"], stop_at_first=True)
    assert named.killed and "TypeError" in named.kills["agrees"]
    assert not plain.killed and "TypeError" in plain.errors["agrees"]


def test_swapping_no_piece_is_the_shipped_function():
    """A mutant is the shipped code with a piece swapped; swapping a piece for itself
    computes exactly what handgrad does (no copy of the math to drift)."""
    d = REGISTRY["mlp"]
    same = implementation(d, {"relu_backward": d.module.PIECES.relu_backward})
    case, _ = d.cases(0, random_cases=0)[0]
    a, b = same.mlp_grads(*case), implementation(d).mlp_grads(*case)
    assert max(rel_error(x, y)[1] for x, y in zip(a[1], b[1])) == 0.0
    with pytest.raises(ValueError, match="swaps must name pieces of mlp"):
        implementation(d, {"relu_bwd": None})


def test_mutant_fields():
    assert {f.name for f in dataclasses.fields(Mutant)} >= {"swaps", "must_kill", "raises"}
