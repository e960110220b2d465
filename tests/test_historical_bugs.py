"""Real derivative bugs from public trackers (tests/historical_bugs.py), checked as a new
user would: `check_vjp` / `check_jvp` at default settings (the rule's `order`).

Each buggy rule must fail, each fixed one must never fail (no false alarm). The table
beside `jax.test_util.check_grads` is `python benchmarks/bench_historical_bugs.py` (written to
reports/historical_bugs.md). A few fast entries run in the quick profile, all in CI."""

import pytest
from historical_bugs import bugs

import jax_ref as jr
from jax_ref.verdict import verdict

# Visible to no oracle at default settings, with the reason (check_grads misses them too)
INVISIBLE = {
    # the wrong element is 4e-18 against entries ~1: under any norm-wise tolerance
    "expm1_grad_negative_tail": "an error 1e-18 of the leaf's largest entry",
}
QUICK = {"prod_grad_zero_input", "sinc_grad_at_zero", "mean_along_axis_vjp_wrong_count"}
BUGS = bugs()


def _check(bug, fn):
    check = jr.check_vjp if bug.kind == "vjp" else jr.check_jvp
    return check(fn, *bug.primals, order=bug.order)


def _params():
    return [
        pytest.param(b, id=b.name, marks=() if b.name in QUICK else pytest.mark.slow) for b in BUGS
    ]


def test_the_catalogue_is_real_and_large_enough():
    assert len(BUGS) >= 20
    assert len({b.name for b in BUGS}) == len(BUGS)
    assert all(b.source.startswith("https://github.com/") for b in BUGS)
    assert len({b.source.split("/")[3] for b in BUGS}) >= 5  # several trackers
    assert sum(b.order == 2 for b in BUGS) >= 2


@pytest.mark.parametrize("bug", _params())
def test_the_fixed_rule_is_never_failed(bug):
    res = _check(bug, bug.correct)
    assert not verdict(res).failed, [r.describe() for r in res if r.status == "failed"]


@pytest.mark.parametrize("bug", _params())
def test_the_buggy_rule_is_caught(bug):
    res = _check(bug, bug.buggy)
    if bug.name in INVISIBLE:
        pytest.skip(INVISIBLE[bug.name])
    assert verdict(res).failed, [r.describe() for r in res if r.status != "passed"]
