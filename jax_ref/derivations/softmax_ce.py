"""Referee spec of `handgrad.softmax_ce`: softmax, its Jacobian, cross-entropy, its gradient.

The reference functions are written independently with `jax.nn` and differentiated by
JAX; nothing here reuses handgrad's math (a shared bug would hide). Then the inputs
(cases, strategies), natural error scales, properties, mutants and ledger inputs.
"""

from __future__ import annotations

import sys
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

import handgrad.softmax_ce as hand
from handgrad import validate as v
from jax_ref.spec import Derivation, GradientCheck, Ledger, Mutant, Output
from jax_ref.tolerances import tolerance

__all__ = [
    "DERIVATION",
    "EDGE_CASES",
    "EDGE_SHAPES",
    "LOGIT_SCALES",
    "LogitsCase",
    "cross_entropy",
    "cross_entropy_grad",
    "logits_case",
    "logits_cases",
    "logits_scales",
    "softmax",
    "softmax_jacobian",
]


# --- the reference ------------------------------------------------------------------


def softmax(z) -> jax.Array:
    """jax.nn.softmax over the class axis."""
    return _softmax(v.check_logits(z))


_softmax = jax.jit(lambda z: jax.nn.softmax(z, axis=-1))


def softmax_jacobian(z) -> jax.Array:
    """J[i] = jacrev(softmax)(z_i), row by row   (N, C, C)"""
    return _jacobian(v.check_logits(z))


_jacobian = jax.jit(jax.vmap(jax.jacrev(lambda row: jax.nn.softmax(row))))


@jax.jit
def _ce(z, y):
    C = z.shape[1]
    onehot = jax.nn.one_hot(y, C, dtype=z.dtype)  # an out-of-range label gives a zero row...
    per_row = -jnp.sum(onehot * jax.nn.log_softmax(z, axis=-1), axis=-1)
    per_row = jnp.where(onehot.sum(axis=-1) == 1, per_row, jnp.nan)  # ...which must not pass
    return jnp.mean(per_row)


def _checked(z, y):
    z = v.check_logits(z)
    return z, v.check_labels(y, *z.shape, against=f"z (N, C) = {z.shape}")


def cross_entropy(z, y) -> jax.Array:
    """mean_i -log_softmax(z)_{i, y_i}"""
    return _ce(*_checked(z, y))


def cross_entropy_grad(z, y) -> jax.Array:
    """jax.grad of cross_entropy with respect to z   (N, C)"""
    return _ce_grad(*_checked(z, y))


_ce_grad = jax.jit(jax.grad(_ce))


# --- inputs -------------------------------------------------------------------------


class LogitsCase(NamedTuple):
    z: np.ndarray  # (N, C)
    y: np.ndarray  # (N,)


# (N, C, logit scale) every sweep covers, generic first (most mistakes show there): one
# row, one class, one of each, square, wide. Scales from tiny to extreme: 1e4 makes every
# probability but one underflow in float32 and float64 alike (e^{-1e4} = 0), the regime
# where naive formulas fail.
EDGE_CASES = ((6, 3, 1.0), (1, 3, 1e4), (4, 1, 1e3), (1, 1, 30.0), (4, 4, 1e3), (3, 5, 1e-6))
EDGE_SHAPES = tuple((N, C) for N, C, _ in EDGE_CASES)
LOGIT_SCALES = (1e-6, 1.0, 30.0, 1e3, 1e4)


def logits_case(seed: int, N: int, C: int, dtype, scale: float) -> LogitsCase:
    """z ~ scale · normal, labels uniform in [0, C)."""
    rng = np.random.default_rng(seed)
    z = (rng.standard_normal((N, C)) * scale).astype(dtype)
    return LogitsCase(z, rng.integers(0, C, size=N).astype(np.int32))


def cases(seed: int = 0, dtypes=(np.float64, np.float32), random_cases: int = 2):
    """Every edge case and `random_cases` random shapes (logit scales in turn), each dtype."""
    rng = np.random.default_rng(seed)
    shapes = list(EDGE_CASES) + [
        (*(int(n) for n in rng.integers(1, 9, size=2)), LOGIT_SCALES[k % len(LOGIT_SCALES)])
        for k in range(random_cases)
    ]
    out = []
    for N, C, scale in shapes:
        for dtype in dtypes:
            s = int(rng.integers(0, 2**31))
            tag = f"{np.dtype(dtype).name} N={N} C={C} max abs z ~{scale:g}"
            out.append((logits_case(s, N, C, dtype, scale), tag))
    return out


def logits_cases(*, dims=None, max_side: int = 8, dtypes=None, scales=LOGIT_SCALES):
    """Hypothesis strategy of LogitsCase, |z| from 1e-6 to 1e4. `dims` (a strategy of
    (N, C)) fixes the shapes; by default N and C are drawn, N = C a third of the time."""
    from hypothesis import strategies as st

    from jax_ref import strategies as hs

    @st.composite
    def draw_case(draw):
        if dims is not None:
            N, C = draw(dims)
        else:
            N = draw(hs.sides(max_side=max_side))
            C = draw(st.one_of(st.just(N), hs.sides(max_side=max_side)))
        dtype = draw(dtypes if dtypes is not None else hs.dtypes())
        return logits_case(draw(hs.seeds()), N, C, dtype, draw(st.sampled_from(scales)))

    return draw_case()


def strategy(*, dtypes=None, **kw):
    """Cases on the edge shapes only, so jit compiles once per (shape, dtype): float64 on
    every edge, float32 on the first three. Shape edges are dtype-blind (an index or a
    broadcast is wrong in both); float32 adds rounding, which scales drive, not shapes."""
    from hypothesis import strategies as st

    if dtypes is not None:
        return logits_cases(dims=st.sampled_from(EDGE_SHAPES), dtypes=dtypes, **kw)
    return st.one_of(
        logits_cases(dims=st.sampled_from(EDGE_SHAPES), dtypes=st.just(np.float64), **kw),
        logits_cases(dims=st.sampled_from(EDGE_SHAPES[:3]), dtypes=st.just(np.float32), **kw),
    )


# --- natural error scales (see jax_ref.tolerances) ------------------------------------


def logits_scales(z, y) -> dict[str, float]:
    """softmax (probabilities: 1), its Jacobian (products of probabilities: 1),
    cross-entropy (log-sum-exp minus a logit: 1 + max|z|), its gradient ((a + 1)/N)."""
    return {
        "softmax": 1.0,
        "softmax_jacobian": 1.0,
        "cross_entropy": 1.0 + float(np.max(np.abs(np.asarray(z, np.float64)))),
        "cross_entropy_grad": 2.0 / np.shape(z)[0],
    }


def _scale(name):
    return lambda case: logits_scales(*case)[name]


# --- properties of its own ----------------------------------------------------------


def softmax_invariants(impl, case: LogitsCase) -> None:
    """Rows of softmax sum to 1 and are invariant to a per-row shift; the Jacobian is
    symmetric, its rows sum to 0 and it is positive semi-definite."""
    z, _ = case
    tol = tolerance(z.dtype)
    a = np.asarray(impl.softmax(z), np.float64)
    # |Σ_j a_ij - 1| <= ~3C·u for a correct e/Σ; the table's tolerance covers C up to ~300
    if not np.all(np.abs(a.sum(axis=1) - 1) <= tol):
        raise AssertionError(f"softmax rows sum to {a.sum(axis=1)}, not 1")
    c = np.linspace(-3.0, 5.0, z.shape[0], dtype=z.dtype)[:, None]
    zc = z + c
    # the shift itself rounds: z + c - c != z; a logit error δ moves a_ij by at most e^{2δ}-1
    delta = np.abs((zc.astype(np.float64) - c) - z.astype(np.float64)).max()
    ac = np.asarray(impl.softmax(zc), np.float64)
    if not np.all(np.abs(ac - a) <= a * np.expm1(2 * delta) + tol):
        raise AssertionError(f"softmax(z + c) != softmax(z): max diff {np.abs(ac - a).max():.3g}")
    J = np.asarray(impl.softmax_jacobian(z), np.float64)
    # J's entries are products of probabilities (|J| <= 1/4) and carry absolute rounding of
    # order u: at extreme logits 1 - a_ij rounds to 0 while a_ik is 1e-90, so max|J| is no
    # scale for its errors. Scale 1.
    if not np.abs(J - J.transpose(0, 2, 1)).max() <= tol:
        raise AssertionError("softmax_jacobian is not symmetric in (j, k)")
    if not np.abs(J.sum(axis=2)).max() <= tol:
        raise AssertionError(f"softmax_jacobian rows sum to {np.abs(J.sum(axis=2)).max():.3g}")
    low = np.linalg.eigvalsh((J + J.transpose(0, 2, 1)) / 2).min()
    if not low >= -tol:
        raise AssertionError(f"softmax_jacobian is not positive semi-definite: eig {low:.3g}")


def ce_grad_bounds(impl, case: LogitsCase) -> None:
    """Each row of ∂L/∂z = (a - onehot)/N sums to 0 and lies in [-1/N, 1/N]."""
    z, y = case
    N = z.shape[0]
    tol = tolerance(z.dtype)
    g = np.asarray(impl.cross_entropy_grad(z, y), np.float64)
    if not np.abs(g.sum(axis=1)).max() <= tol / N:
        raise AssertionError(f"cross_entropy_grad rows sum to {np.abs(g.sum(axis=1)).max():.3g}")
    if not (np.all(g >= -(1 + tol) / N) and np.all(g <= (1 + tol) / N)):
        raise AssertionError(
            f"cross_entropy_grad leaves [-1/N, 1/N] = ±{1 / N:.3g}: "
            f"min {g.min():.3g}, max {g.max():.3g}"
        )


# --- mutants: plausible mistakes, each a shipped piece swapped ---------------------------


def _ce_backward(f):
    def backward(cache):
        a, onehot = cache  # an invalid label's indicator row is NaN already
        return f(a, onehot, a.shape[0])

    return backward


def _softmax_no_shift(z):
    e = jnp.exp(z)  # overflows to inf once z > 88 (float32) or 709 (float64)
    return e / e.sum(axis=1, keepdims=True), jnp.log(e / e.sum(axis=1, keepdims=True))


def _log_of_softmax(z):
    a = hand.softmax_forward(z)[0]
    return a, jnp.log(a)  # -inf once a probability underflows to 0


def _softmax_numpy_exp(z):
    shifted = z - z.max(axis=1, keepdims=True)
    e = np.exp(shifted)  # np.exp on a tracer cannot work: breaks under jit and vmap
    return e / e.sum(axis=1, keepdims=True), shifted - jnp.log(e.sum(axis=1, keepdims=True))


def _via_one_over_a(cache):
    # the derivation's middle line taken literally: -Σ_j 1[j=y_i] (1/a_ij) ∂a_ij/∂z_ik, / N
    a, onehot = cache
    return -jnp.einsum("ij,ijk->ik", onehot / a, hand.softmax_jacobian_of(a)) / a.shape[0]


def _ce_sum(a, logp, y, valid):
    L, cache = hand.ce_forward(a, logp, y, valid)
    return L * a.shape[0], cache  # Σ_i L_i, not the mean


AGREES, BOUNDS, INVARIANTS, FD = (
    "agrees",
    "ce_grad_bounds",
    "softmax_invariants",
    "finite_differences",
)

MUTANTS = (
    Mutant(
        "ce_grad_no_mean",
        "∂L/∂z = a - onehot: forgot the 1/N of the batch mean",
        {"ce_backward": _ce_backward(lambda a, o, N: a - o)},
        "any N > 1 (hidden at N = 1)",
        (AGREES, BOUNDS, FD),
    ),
    Mutant(
        "ce_grad_over_C",
        "∂L/∂z = (a - onehot)/C: divided by the class count",
        {"ce_backward": _ce_backward(lambda a, o, N: (a - o) / a.shape[1])},
        "N != C (hidden when square N = C)",
        (AGREES, BOUNDS),
    ),
    Mutant(
        "ce_grad_sign",
        "∂L/∂z = (onehot - a)/N: sign flipped",
        {"ce_backward": _ce_backward(lambda a, o, N: (o - a) / N)},
        "any C > 1",
        (AGREES, FD),
    ),
    Mutant(
        "ce_grad_one_over_a",
        "the 1/a_ij chain rule evaluated literally",
        {"ce_backward": _via_one_over_a},
        "extreme logits (a_iy underflows: 0/0)",
        (AGREES, BOUNDS),
    ),
    Mutant(
        "softmax_no_max_shift",
        "softmax as e^z / Σ e^z without the max shift",
        {"softmax_forward": _softmax_no_shift},
        "logits above ~88 (float32) / ~709 (float64)",
        (AGREES, INVARIANTS),
    ),
    Mutant(
        "log_of_softmax",
        "cross-entropy as -log(softmax(z)) instead of log-sum-exp",
        {"softmax_forward": _log_of_softmax},
        "extreme logits (log 0 = -inf)",
        (AGREES,),
    ),
    Mutant(
        "softmax_numpy_inside",
        "np.exp instead of jnp.exp inside the softmax",
        {"softmax_forward": _softmax_numpy_exp},
        "jax.jit (a tracer cannot become numpy)",
        (AGREES,),
        (jax.errors.TracerArrayConversionError,),
    ),
    Mutant(
        "jacobian_a_ij_twice",
        "∂a_ij/∂z_ik = a_ij (1[j=k] - a_ij): wrong index",
        {
            "jacobian": lambda a: (
                a[:, :, None] * (jnp.eye(a.shape[1], dtype=a.dtype) - a[:, :, None])
            )
        },
        "C > 1",
        (AGREES, INVARIANTS),
    ),
    Mutant(
        "jacobian_no_indicator",
        "∂a_ij/∂z_ik = -a_ij a_ik: dropped the 1[j=k] term",
        {"jacobian": lambda a: -a[:, :, None] * a[:, None, :]},
        "any",
        (AGREES, INVARIANTS),
    ),
    Mutant(
        "loss_sum_not_mean",
        "L = Σ_i L_i: the batch sum instead of the mean",
        {"ce_forward": _ce_sum},
        "any N > 1",
        (AGREES,),
    ),
)


# --- the ledger's side ----------------------------------------------------------------


def _ledger_inputs(chain, rng, scale):
    N, C = 5, 3
    return {
        "z": jnp.asarray(rng.standard_normal((N, C)) * scale),
        "y": jnp.asarray(rng.integers(0, C, N)),
    }


def _nll(z, y):
    return -jnp.take_along_axis(jax.nn.log_softmax(z), y[:, None], axis=1)


def _ledger_autodiff(chain, step, x):
    z, y = x["z"], x["y"]
    if chain == "softmax_jacobian":
        return jax.vmap(jax.jacrev(jax.nn.softmax))(z)
    if chain == "cross_entropy_per_observation":  # Σ_i L_i: row i of its gradient is ∂L_i/∂z_i
        return jax.grad(lambda z: _nll(z, y).sum())(z)
    return jax.grad(lambda z: _nll(z, y).mean())(z)


def _ledger_scale(chain, x):
    # J and a - onehot carry absolute rounding of the probabilities' scale
    return 1.0 / x["z"].shape[0] if chain == "batch_mean" else 1.0


DERIVATION = Derivation(
    name="softmax_ce",
    module=hand,
    reference=sys.modules[__name__],
    outputs=(
        Output("softmax", "a", lambda c: (c.z,), _scale("softmax")),
        Output("softmax_jacobian", "J", lambda c: (c.z,), _scale("softmax_jacobian")),
        Output("cross_entropy", "L", tuple, _scale("cross_entropy")),
        Output("cross_entropy_grad", "∂L/∂z", tuple, _scale("cross_entropy_grad")),
    ),
    gradients=(
        GradientCheck(
            "cross_entropy_grad",
            cross_entropy,
            tuple,
            scale=_scale("cross_entropy_grad"),
            parameter="∂L/∂z",
        ),
    ),
    cases=cases,
    strategy=strategy,
    properties={INVARIANTS: softmax_invariants, BOUNDS: ce_grad_bounds},  # and the generic ones
    mutants=MUTANTS,
    ledger=Ledger(
        _ledger_inputs,
        _ledger_autodiff,
        lambda x: dict(zip("NC", x["z"].shape)),
        _ledger_scale,
        equalities=tuple(hand.CHAINS),
    ),
    order=10,
)
