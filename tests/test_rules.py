"""check_vjp / check_jvp: right rules pass (JAX's own, the project's), every wrong rule of the
catalogue is rejected by the checks that must reject it. The whole catalogue runs in the
thorough profile; the default one keeps a few of each kind."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from rule_catalogue import right_rules, wrong_rules

import handgrad
import jax_ref
from jax_ref import RuleCheck
from jax_ref.rules import CONTRACTS, assert_jvp, assert_vjp, check_jvp, check_vjp

QUICK_RIGHT: set[str] = set()  # the default profile checks right rules in the tests below
QUICK_WRONG = {"right alone, wrong when composed"}  # a JVP: test_a_wrong_jvp_fails below


def _marks(name, quick):
    return () if name in quick else (pytest.mark.slow,)


@pytest.mark.parametrize(
    "check",
    [pytest.param(c, id=c.name, marks=_marks(c.name, QUICK_RIGHT)) for c in right_rules()],
)
def test_right_rules_raise_no_false_alarm(check):
    results = check.run()
    failed = [r.describe() for r in results if r.status == "failed"]
    assert not failed, "\n".join(failed)
    assert {r.oracle for r in results} >= {"finite_difference", "structure", "jit", "vmap"}


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [np.float32, jnp.bfloat16], ids=["float32", "bfloat16"])
def test_right_rules_pass_in_low_precision(dtype):
    """Precision budgets: the float64 golden value, autodiff at the rule's dtype as baseline."""
    bad = []
    for check in right_rules(dtype):
        bad += [f"{check.name}: {r.describe()}" for r in check.run() if r.status == "failed"]
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize(
    "wrong",
    [
        pytest.param(w, id=w.check.name, marks=_marks(w.check.name, QUICK_WRONG))
        for w in wrong_rules()
    ],
)
def test_wrong_rules_are_rejected(wrong):
    c = wrong.check
    kw = {"vjp": c.rule, "order": c.order} if c.kind == "vjp" else {"jvp": c.rule}
    with pytest.raises(AssertionError) as e:
        (assert_vjp if c.kind == "vjp" else assert_jvp)(c.f, *c.args(), seed=c.seed, **kw)
    msg = str(e.value)
    assert any(f"[{k}," in msg for k in wrong.killers), (
        f"{c.name} ({wrong.mistake}) was not failed by any of {wrong.killers}:\n{msg}"
    )


def test_the_catalogue_covers_the_mistakes_the_issue_names():
    names = {w.check.name for w in wrong_rules()}
    assert len(names) >= 10
    for must in (
        "cotangent ignored",
        "cotangent dropped for one input",
        "transposed on square shapes",
        "right alone, wrong under vmap",
        "right alone, wrong when composed",
        "float32 inside a float64 call",
        "wrong second order",
        "custom JVP with a wrong tangent scale",
    ):
        assert must in names
    killers = {k for w in wrong_rules() for k in w.killers}
    assert killers >= {"autodiff", "finite_difference", *CONTRACTS}


def _tanh_scaled(eps):
    f = jax.custom_vjp(lambda x: jnp.tanh(x))
    f.defvjp(lambda x: (jnp.tanh(x), jnp.tanh(x)), lambda y, g: (g * (1 - y**2) * (1 + eps),))
    return f


def test_a_float32_rule_1e_5_wrong_fails_and_the_right_one_passes():
    x = jnp.asarray(np.random.default_rng(0).normal(size=(5, 7)), jnp.float32)
    assert_vjp(_tanh_scaled(0.0), x, contracts=())
    results = check_vjp(_tanh_scaled(1e-5), x, contracts=(), oracles=("autodiff",))
    (r,) = results
    assert r.status == "failed" and r.baseline_err is not None and r.baseline_err < 1e-6


def test_assert_vjp_names_the_input_oracle_and_values():
    def f(a, b):
        return a * jnp.sin(b)

    a = b = jnp.linspace(-1.0, 1.0, 6)
    with pytest.raises(AssertionError) as e:
        assert_vjp(  # the factor a is missing from b's cotangent
            f, a, b, vjp=lambda a, b, g: (g * jnp.sin(b), g * jnp.cos(b)), contracts=()
        )
    msg = str(e.value)
    assert "b [autodiff" in msg and "b [finite_difference" in msg and "worst at" in msg
    assert "a [autodiff" not in msg  # a's cotangent is right


def test_integer_inputs_take_no_cotangent_and_the_seed_rule_is_checked_by_its_rule():
    z = jnp.asarray(np.random.default_rng(1).normal(size=(3, 4)))
    y = jnp.array([0, 3, 1])
    results = assert_vjp(handgrad.softmax_cross_entropy, z, y, contracts=("structure",))
    assert {r.parameter for r in results if r.oracle == "autodiff"} == {"z"}  # y: an integer


@pytest.mark.slow
def test_an_mlp_trains_through_the_seed_rule():
    """jax.grad through softmax_cross_entropy runs the seed's backward at the loss: with
    autodiff for the layers, the gradients are the hand-derived MLP's."""
    key = jax.random.PRNGKey(0)
    params = handgrad.init_params(key, 5, 7, 3, dtype=jnp.float64)
    X = jax.random.normal(key, (8, 5), jnp.float64)
    y = jnp.arange(8) % 3

    def loss(p):
        return handgrad.softmax_cross_entropy(handgrad.mlp_forward(p, X), y)

    got = jax.jit(jax.grad(loss))(params)
    want = handgrad.mlp_grads(params, X, y)[1]
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(g, w, rtol=1e-10, atol=1e-14)


def test_bad_arguments_say_what_was_expected():
    x = jnp.ones(3)
    with pytest.raises(ValueError, match="f must be a callable"):
        check_vjp(3, x)
    with pytest.raises(ValueError, match="order must be 1 or 2"):
        check_vjp(jnp.sin, x, order=3)
    with pytest.raises(ValueError, match="no floating-point input"):
        check_vjp(lambda n: n * 2.0, jnp.arange(3))
    f = jax.custom_vjp(lambda x: x)
    f.defvjp(lambda x: (x, None), lambda r, g: (g,))
    with pytest.raises(ValueError, match="custom_vjp function: it has no forward-mode"):
        check_jvp(f, x)
    with pytest.raises(ValueError, match="scales must name float input leaves"):
        check_vjp(jnp.sin, x, scales={"y": 1.0})
    with pytest.raises(ValueError, match="kind must be"):
        RuleCheck("x", jnp.sin, (x,), kind="hvp")


def test_public_names():
    for name in ("check_vjp", "check_jvp", "assert_vjp", "assert_jvp", "RuleCheck"):
        assert hasattr(jax_ref, name)


def test_a_wrong_jvp_fails_and_a_right_one_passes():
    """check_jvp in the default profile: softplus' = σ, and a tangent scaled by 1/2."""
    x = jnp.linspace(-3.0, 3.0, 7)
    right = jax.custom_jvp(lambda x: jnp.logaddexp(x, 0.0))
    right.defjvp(lambda p, t: (right(p[0]), t[0] * jax.nn.sigmoid(p[0])))
    assert_jvp(right, x, contracts=())
    half = jax.custom_jvp(lambda x: jnp.logaddexp(x, 0.0))
    half.defjvp(lambda p, t: (half(p[0]), 0.5 * t[0] * jax.nn.sigmoid(p[0])))
    failed = {r.oracle for r in check_jvp(half, x, contracts=()) if r.status == "failed"}
    assert failed == {"autodiff", "finite_difference"}


def test_a_function_that_raises_is_named_by_both_rule_checks():
    def broken(x):
        raise RuntimeError("the user's bug")

    x = jnp.ones(3)
    for check in (check_vjp, check_jvp):
        with pytest.raises(
            ValueError, match="f raised at the given point: RuntimeError: the user's bug"
        ):
            check(broken, x)
