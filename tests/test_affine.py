"""jax_ref.affine: the loss along a big leaf's line, with the polynomial part done once.

What would be wrong: a rule that treats an operation as linear when it is not (a narrowing
cast, a product of two values that depend on the leaf, x·yᵀ taken as symmetric), a
constant summand given a slope, a parameter (indices, a predicate) zeroed. Each shows as
φ values that differ from the loss evaluated point by point, which these tests compare
to rounding. The end-to-end tests check that the finite-difference oracle takes this path
for a big leaf, still fails a wrong gradient there, and falls back when it cannot."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jax_ref as jr
from jax_ref.affine import line_values
from jax_ref.derivations.mlp import Params, mlp_loss
from jax_ref.finite_difference import probe

jax.config.update("jax_enable_x64", True)

RNG = np.random.default_rng(0)
X = jnp.asarray(RNG.normal(size=(6, 5)))
IMG = jnp.asarray(RNG.normal(size=(2, 3, 6, 6)))
KER = jnp.asarray(RNG.normal(size=(4, 3, 3, 3)))
MLP = Params(*(jnp.asarray(RNG.normal(size=s)) for s in ((5, 4), (4,), (4, 3), (3,))))
Y = jnp.array([0, 1, 2, 0, 1, 2])


def _conv(img, ker):
    return jax.lax.conv_general_dilated(img, ker, (1, 1), "SAME")


# (name, function of x, x): each exercises rules that could go wrong
CASES = [
    # dot with a constant, add of a broadcast bias, deferred ReLU, |W|² (degree 2)
    ("mlp first layer, weight decay", lambda w: mlp_loss(MLP._replace(W1=w), X, Y, 0.1), MLP.W1),
    # a narrowing cast is not linear: deferred
    ("float32 cast", lambda x: jnp.sum(jnp.sin(x.astype(jnp.float32))).astype(jnp.float64), X),
    # x·xᵀ has a free dimension: not symmetric; x·x·x is degree 3: deferred
    (
        "x xT and a cube",
        lambda x: (
            jnp.sum(jnp.sin(jax.lax.dot_general(x, x, (((1,), (1,)), ((), ()))) @ jnp.arange(6.0)))
            + jnp.sum(x * x * x)
        ),
        X,
    ),
]
SLOW_CASES = [
    # a predicate that depends on x (where), division by a constant, a loss linear in x
    (
        "where, divide, linear",
        lambda x: jnp.sum(jnp.where(x > 0, x, 0.1 * x) ** 3) + jnp.sum(x / 3.0),
        X,
    ),
    # conv linear in the kernel, deferred tanh
    ("conv kernel", lambda k: jnp.sum(jnp.tanh(_conv(IMG, k))), KER),
    # gather / pad (constant padding value: a summand) / concatenate with a constant
    (
        "gather, pad, concatenate",
        lambda x: jnp.sum(
            jnp.exp(
                jnp.pad(jnp.concatenate([x[jnp.array([0, 2, 2])], 2 * x]), 1, constant_values=3.0)
                / 9
            )
        ),
        X,
    ),
    ("conv image", lambda im: jnp.sum(jnp.tanh(_conv(im, KER)) ** 2), IMG),
    (
        "dynamic_update_slice",
        lambda x: jnp.sum(jnp.cos(jax.lax.dynamic_update_slice(x, x[:2, :2] * 2, (1, 1)))),
        X,
    ),
    (
        "scatter-add",
        lambda x: jnp.sum(jnp.tanh(jnp.zeros(10).at[jnp.array([1, 1, 3])].add(x[0, :3]))),
        X,
    ),
    ("cumsum, reverse", lambda x: jnp.sum(jnp.sin(jnp.cumsum(x[::-1], axis=0))), X),
    (
        "squares and <x, x>",
        lambda x: (
            jnp.sum(x**2) + 0.3 * jnp.vdot(x, x) + jnp.sum(jnp.square(x - 1)) + jnp.sum(jnp.sin(x))
        ),
        X,
    ),
    (
        "batched <x, x>",
        lambda x: jnp.sum(jnp.sin(jax.lax.dot_general(x, x, (((1,), (1,)), ((0,), (0,)))))),
        X,
    ),
    ("mlp output bias", lambda b: mlp_loss(MLP._replace(b2=b), X, Y), MLP.b2),
]


def _direct(fun, x, B, ts, ks):
    return jax.lax.map(lambda p: fun(x + p[0] * B[p[1]]), (ts, ks))


def _compare(fun, x):
    B = jnp.asarray(RNG.choice([-1.0, 1.0], size=(2, *x.shape))) * 0.01
    ts, ks = jnp.asarray(RNG.normal(size=5)), jnp.asarray(RNG.integers(0, 2, 5))
    got = jax.jit(lambda *a: line_values(fun, *a))(x, B, ts, ks)
    want = jax.jit(_direct, static_argnums=0)(fun, x, B, ts, ks)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name, fun, x", CASES, ids=[c[0] for c in CASES])
def test_line_values_equal_the_loss_point_by_point(name, fun, x):
    _compare(fun, x)


@pytest.mark.slow
@pytest.mark.parametrize("name, fun, x", SLOW_CASES, ids=[c[0] for c in SLOW_CASES])
def test_line_values_equal_the_loss_point_by_point_more_rules(name, fun, x):
    _compare(fun, x)


# --- end to end: a big leaf (over 65,536 elements) ------------------------------------

N_IN, N_OUT = 600, 200  # 120,000 weights


def _big_case():
    rng = np.random.default_rng(1)
    p = {
        "W": jnp.asarray(rng.normal(size=(N_IN, N_OUT)) / np.sqrt(N_IN)),
        "c": jnp.asarray(rng.normal(size=N_OUT)),
    }
    A = jnp.asarray(rng.normal(size=(8, N_IN)))

    def loss(p, A):
        h = jnp.tanh(A @ p["W"])
        return jnp.mean((h @ p["c"]) ** 2) + 1e-3 * jnp.vdot(p["W"], p["W"])

    def grad(p, A):
        h = jnp.tanh(A @ p["W"])
        r = 2 * (h @ p["c"]) / A.shape[0]
        dh = r[:, None] * p["c"][None, :] * (1 - h**2)
        return {"W": A.T @ dh + 2e-3 * p["W"], "c": h.T @ r}

    return loss, grad, p, A


def test_a_big_leaf_is_judged_along_its_line(monkeypatch):
    calls = []

    def spy(*a):
        calls.append(1)
        return line_values(*a)

    monkeypatch.setattr(probe, "line_values", spy)
    loss, grad, p, A = _big_case()
    ok = jr.check_gradients(loss, grad, p, A, oracles=("finite_difference",))
    assert calls, "the big leaf was not evaluated along its line"
    assert [r.status for r in ok] == ["passed", "passed"], [r.describe() for r in ok]
    w = next(r for r in ok if r.parameter == "W")
    assert w.detectable_rel_err < 1e-5

    def wrong(p, A):  # the weight-decay term forgotten: about 1e-4 of the leaf's gradient
        g = grad(p, A)
        return {**g, "W": g["W"] - 2e-3 * p["W"]}

    bad = jr.check_gradients(loss, wrong, p, A, oracles=("finite_difference",))
    assert {r.parameter: r.status for r in bad} == {"W": "failed", "c": "passed"}


@pytest.mark.slow
def test_without_the_line_the_verdicts_are_the_same(monkeypatch):
    """Where the walk cannot trace the loss, the probe evaluates it the plain way."""

    def broken(*a):
        raise NotImplementedError("an operation the walk does not know")

    loss, grad, p, A = _big_case()
    monkeypatch.setattr(probe, "line_values", broken)
    plain = jr.check_gradients(loss, grad, p, A, oracles=("finite_difference",))
    assert [r.status for r in plain] == ["passed", "passed"]
