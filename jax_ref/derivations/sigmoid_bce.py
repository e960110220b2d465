"""Referee spec of `handgrad.sigmoid_bce`: sigmoid and binary cross-entropy with logits.

The reference uses `jax.nn.sigmoid` and `jax.nn.log_sigmoid` (a different formula from
handgrad's softplus form), differentiated by `jax.grad`.
"""

from __future__ import annotations

import sys
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

import handgrad.sigmoid_bce as hand
from handgrad import validate as v
from jax_ref.spec import Derivation, GradientCheck, Ledger, Mutant, Output
from jax_ref.tolerances import tolerance

__all__ = [
    "DERIVATION",
    "BCECase",
    "bce_case",
    "bce_cases",
    "binary_cross_entropy",
    "binary_cross_entropy_grad",
    "sigmoid",
]


# --- the reference ------------------------------------------------------------------


def sigmoid(z) -> jax.Array:
    """jax.nn.sigmoid"""
    return _sigmoid(v.float_array(z, "z", "(N,)", 1))


_sigmoid = jax.jit(jax.nn.sigmoid)


@jax.jit
def _bce(z, t):
    t = jnp.where((t >= 0) & (t <= 1), t, jnp.nan)  # an out-of-range target must not pass
    return -jnp.mean(t * jax.nn.log_sigmoid(z) + (1 - t) * jax.nn.log_sigmoid(-z))


def binary_cross_entropy(z, t) -> jax.Array:
    """-mean(t log_sigmoid(z) + (1 - t) log_sigmoid(-z))"""
    return _bce(v.float_array(z, "z", "(N,)", 1), v.float_array(t, "t", "(N,)", 1))


def binary_cross_entropy_grad(z, t) -> jax.Array:
    """jax.grad of binary_cross_entropy with respect to z   (N,)"""
    return _bce_grad(v.float_array(z, "z", "(N,)", 1), v.float_array(t, "t", "(N,)", 1))


_bce_grad = jax.jit(jax.grad(_bce))


# --- inputs -------------------------------------------------------------------------


class BCECase(NamedTuple):
    z: np.ndarray  # (N,)
    t: np.ndarray  # (N,)


# (N, logit scale, soft targets?), generic first: one entry, saturated, tiny logits
EDGE_CASES = ((6, 1.0, False), (1, 30.0, True), (5, 1e3, False), (4, 1e-6, True))


def bce_case(seed: int, N: int, dtype, scale: float, soft: bool) -> BCECase:
    """z ~ scale · normal; targets 0/1, or uniform in [0, 1] when `soft`."""
    rng = np.random.default_rng(seed)
    t = rng.uniform(size=N) if soft else rng.integers(0, 2, size=N)
    return BCECase((rng.standard_normal(N) * scale).astype(dtype), t.astype(dtype))


def cases(seed: int = 0, dtypes=(np.float64, np.float32), random_cases: int = 2):
    rng = np.random.default_rng(seed)
    edges = list(EDGE_CASES) + [
        (int(rng.integers(1, 9)), 10.0 ** int(rng.integers(-2, 4)), bool(k % 2))
        for k in range(random_cases)
    ]
    out = []
    for N, scale, soft in edges:
        for dtype in dtypes:
            tag = (
                f"{np.dtype(dtype).name} N={N} max abs z ~{scale:g} "
                f"{'soft' if soft else 'hard'} targets"
            )
            out.append((bce_case(int(rng.integers(0, 2**31)), N, dtype, scale, soft), tag))
    return out


def bce_cases(*, dtypes=None, ns=None):
    """Hypothesis strategy of BCECase over the edge sizes, scales and target kinds."""
    from hypothesis import strategies as st

    from jax_ref import strategies as hs

    @st.composite
    def draw_case(draw):
        N = draw(ns or st.sampled_from([n for n, _, _ in EDGE_CASES]))
        return bce_case(
            draw(hs.seeds()),
            N,
            draw(dtypes or hs.dtypes()),
            draw(st.sampled_from((1e-6, 1.0, 30.0, 1e3))),
            draw(st.booleans()),
        )

    return draw_case()


def strategy(*, dtypes=None):
    return bce_cases(dtypes=dtypes)


def _scale(name):
    # σ and σ - t live on the scale of 1 (their rounding is absolute there); the loss on
    # that of softplus(z) - t z, 1 + max|z|
    return {
        "sigmoid": lambda c: 1.0,
        "binary_cross_entropy": lambda c: 1.0 + float(np.max(np.abs(c.z))),
        "binary_cross_entropy_grad": lambda c: 1.0 / c.z.shape[0],
    }[name]


# --- properties of its own ----------------------------------------------------------


def grad_bounds(impl, case: BCECase) -> None:
    """∂L/∂z_i = (σ - t)/N lies in [-1/N, 1/N], and σ(-z) = 1 - σ(z)."""
    z, t = case
    N, tol = z.shape[0], tolerance(z.dtype)
    g = np.asarray(impl.binary_cross_entropy_grad(z, t), np.float64)
    if not np.all(np.abs(g) <= (1 + tol) / N):
        raise AssertionError(f"binary_cross_entropy_grad leaves [-1/N, 1/N]: max {np.abs(g).max()}")
    s, s_neg = (np.asarray(impl.sigmoid(x), np.float64) for x in (z, -z))
    if not np.all(np.abs(s + s_neg - 1) <= tol):
        raise AssertionError(f"σ(z) + σ(-z) != 1: off by {np.abs(s + s_neg - 1).max():.3g}")


# --- mutants --------------------------------------------------------------------------


def _naive_bce(z, t, sigmoid_fwd=hand.sigmoid_forward):
    s = sigmoid_fwd(z)
    L_i = -t * jnp.log(s) - (1 - t) * jnp.log(1 - s)  # log(0) = -inf once σ saturates
    return L_i.sum() / z.shape[0], hand.BCECache(s, t)


AGREES, FD, BOUNDS = "agrees", "finite_differences", "grad_bounds"

MUTANTS = (
    Mutant(
        "bce_grad_no_mean",
        "∂L/∂z = σ - t: forgot the 1/N",
        {"bce_backward": lambda c: c.s - c.t},
        "any N > 1",
        (AGREES, FD, BOUNDS),
    ),
    Mutant(
        "bce_grad_sign",
        "∂L/∂z = (t - σ)/N: sign flipped",
        {"bce_backward": lambda c: (c.t - c.s) / c.s.shape[0]},
        "σ != t",
        (AGREES, FD),
    ),
    Mutant(
        "bce_log_of_sigmoid",
        "the loss as -t log σ - (1-t) log(1-σ), literally",
        {"bce_forward": _naive_bce},
        "saturated logits (log 0)",
        (AGREES,),
    ),
)


# --- the ledger's side ----------------------------------------------------------------


def _ledger_inputs(chain, rng, scale):
    return {"z": jnp.asarray(rng.standard_normal(5) * scale), "t": jnp.asarray(rng.uniform(size=5))}


def _ledger_autodiff(chain, step, x):
    z, t = x["z"], x["t"]
    if chain == "sigmoid_derivative":
        return jax.vmap(jax.grad(jax.nn.sigmoid))(z)

    def per_entry(z):
        return -(t * jax.nn.log_sigmoid(z) + (1 - t) * jax.nn.log_sigmoid(-z))

    if chain == "bce_per_observation":
        return jax.grad(lambda z: per_entry(z).sum())(z)
    return jax.grad(lambda z: per_entry(z).mean())(z)


DERIVATION = Derivation(
    name="sigmoid_bce",
    module=hand,
    reference=sys.modules[__name__],
    outputs=(
        Output("sigmoid", "σ", lambda c: (c.z,), _scale("sigmoid")),
        Output("binary_cross_entropy", "L", tuple, _scale("binary_cross_entropy")),
        Output(
            "binary_cross_entropy_grad",
            "∂L/∂z",
            tuple,
            _scale("binary_cross_entropy_grad"),
        ),
    ),
    gradients=(
        GradientCheck(
            "binary_cross_entropy_grad",
            binary_cross_entropy,
            tuple,
            scale=_scale("binary_cross_entropy_grad"),
            parameter="∂L/∂z",
        ),
    ),
    cases=cases,
    strategy=strategy,
    properties={BOUNDS: grad_bounds},  # and the generic ones
    mutants=MUTANTS,
    ledger=Ledger(
        _ledger_inputs,
        _ledger_autodiff,
        lambda x: {"N": x["z"].shape[0]},
        lambda chain, x: 1.0,
        equalities=tuple(hand.CHAINS),
    ),
    order=30,
)
