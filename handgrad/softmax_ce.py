"""Softmax cross-entropy: softmax, its Jacobian, cross-entropy and its batch-mean gradient.

Three layers (letters: N batch, C classes):
1. the pieces, one equation each (CS231n `layers.py` style): `softmax_forward`,
   `softmax_jacobian_of`, `ce_forward`, `softmax_ce_forward`, `softmax_ce_backward`;
2. the public functions, built from the pieces in `PIECES` (swap one with
   `pieces=PIECES._replace(...)` to run a variant: the mutant catalogue does);
3. `CHAINS`: the derivation's equalities as executable steps, each chain ending on the
   public function itself (`jax_ref.ledger` runs them).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from handgrad import validate as v
from handgrad.ledger import Step

__all__ = [
    "CHAINS",
    "PIECES",
    "Pieces",
    "SoftmaxCECache",
    "ce_forward",
    "cross_entropy",
    "cross_entropy_grad",
    "softmax",
    "softmax_ce_backward",
    "softmax_ce_forward",
    "softmax_cross_entropy",
    "softmax_forward",
    "softmax_jacobian",
    "softmax_jacobian_of",
]


# --- the pieces --------------------------------------------------------------------


def softmax_forward(z):
    """a_ij = e^{z_ij} / Σ_s e^{z_is},  with  log a_ij = z_ij - log Σ_s e^{z_is}   (N, C)
    Returns (a, log a)."""
    # Shift by the row max: e^{z - max} <= 1 never overflows, and the ratio is unchanged.
    shifted = z - z.max(axis=1, keepdims=True)
    e = jnp.exp(shifted)
    sigma = e.sum(axis=1, keepdims=True)  # >= 1: the max entry contributes e^0
    # log-sum-exp: never log(softmax(z)), which is -inf once a probability underflows.
    return e / sigma, shifted - jnp.log(sigma)


def softmax_jacobian_of(a):
    """J_ijk = ∂a_ij/∂z_ik = a_ij (1[j=k] - a_ik)   (N, C, C) from a (N, C)"""
    return a[:, :, None] * (jnp.eye(a.shape[1], dtype=a.dtype) - a[:, None, :])


class SoftmaxCECache(NamedTuple):
    a: jax.Array  # (N, C) softmax probabilities
    onehot: jax.Array  # (N, C) 1[k = y_i]; a NaN row for an out-of-range label


def ce_forward(a, logp, y, valid):
    """L = 1/N Σ_i L_i,   L_i = -Σ_j 1[j = y_i] log a_ij   () from a, log a (N, C), y (N,)

    A row whose label is out of range (valid False) gets a NaN indicator row, so its L_i,
    L and its row of ∂L/∂z come out NaN through the derivation's own formulas."""
    N, C = a.shape
    onehot = jnp.where(valid[:, None], (jnp.arange(C) == y[:, None]).astype(a.dtype), jnp.nan)
    L_i = -(onehot * logp).sum(axis=1)
    return L_i.sum() / N, SoftmaxCECache(a, onehot)


def softmax_ce_forward(z, y, valid, pieces=None):
    """L = 1/N Σ_i -log a_{i, y_i} with a = softmax(z)   () from z (N, C), y (N,)"""
    p = PIECES if pieces is None else pieces
    return p.ce_forward(*p.softmax_forward(z), y, valid)


def softmax_ce_backward(cache: SoftmaxCECache):
    """∂L/∂z_ik = (a_ik - 1[k = y_i]) / N   (N, C)
    A row whose label is out of range is NaN (its indicator row is)."""
    a, onehot = cache
    return (a - onehot) / a.shape[0]


class Pieces(NamedTuple):
    """The pieces the public functions are built from; `PIECES` holds the shipped ones."""

    softmax_forward: Callable = softmax_forward
    jacobian: Callable = softmax_jacobian_of
    ce_forward: Callable = ce_forward
    ce_backward: Callable = softmax_ce_backward


PIECES = Pieces()


# --- the public functions -----------------------------------------------------------
# Each validates its arguments eagerly, then runs a jitted core: one compilation per
# (shape, pieces) instead of one per primitive, and free under an outer jit.


@functools.partial(jax.jit, static_argnums=0)
def _softmax(p: Pieces, z):
    return p.softmax_forward(z)[0]


@functools.partial(jax.jit, static_argnums=0)
def _jacobian(p: Pieces, z):
    return p.jacobian(p.softmax_forward(z)[0])


@functools.partial(jax.jit, static_argnums=0)
def _ce(p: Pieces, z, y):
    return softmax_ce_forward(z, y, v.label_mask(y, z.shape[1]), p)


@functools.partial(jax.jit, static_argnums=0)
def _ce_grad(p: Pieces, z, y):
    return p.ce_backward(_ce(p, z, y)[1])


def _logits_labels(z, y):
    z = v.check_logits(z)
    N, C = z.shape
    return z, v.check_labels(y, N, C, against=f"z (N, C) = ({N}, {C})")


def softmax(z, *, pieces: Pieces = PIECES) -> jax.Array:
    """a_ij = e^{z_ij} / Σ_{s=1..C} e^{z_is}   (N, C) -> (N, C)

    Stable for any finite logits (max-shifted)."""
    return _softmax(pieces, v.check_logits(z))


def softmax_jacobian(z, *, pieces: Pieces = PIECES) -> jax.Array:
    """∂a_ij/∂z_ik = a_ij (1[j=k] - a_ik)   (N, C) -> (N, C, C), J[i, j, k]"""
    return _jacobian(pieces, v.check_logits(z))


def cross_entropy(z, y, *, pieces: Pieces = PIECES) -> jax.Array:
    """L = 1/N Σ_i L_i,   L_i = -log a_{i, y_i} = -(z_{i,y_i} - log Σ_s e^{z_is})   ()

    By log-sum-exp, never log(softmax). z (N, C) floating, y (N,) integer in [0, C).
    Under jit an out-of-range label makes L NaN."""
    return _ce(pieces, *_logits_labels(z, y))[0]


def cross_entropy_grad(z, y, *, pieces: Pieces = PIECES) -> jax.Array:
    """∂L/∂z = (a - 1[k = y_i]) / N   (N, C)

    Under jit an out-of-range label makes its row NaN."""
    return _ce_grad(pieces, *_logits_labels(z, y))


# --- the seed as a rule ---------------------------------------------------------------
# Registering the hand-derived backward pass as the loss's VJP rule is not differentiating:
# JAX calls the rule below, the seed's (a - onehot)/N, wherever it differentiates through
# softmax_cross_entropy (an MLP trained by jax.grad then uses the hand derivation at its
# loss). jax_ref.check_vjp verifies the rule against autodiff of its undecorated primal.


@jax.custom_vjp
def _sce(z, y):
    L, _ = softmax_ce_forward(z, y, v.label_mask(y, z.shape[1]), PIECES)
    return L


def _sce_fwd(z, y):
    L, cache = softmax_ce_forward(z, y, v.label_mask(y, z.shape[1]), PIECES)
    return L, cache


def _sce_bwd(cache: SoftmaxCECache, g):
    """z̄ = ḡ · ∂L/∂z = ḡ (a - 1[k = y_i]) / N   (N, C); y is an integer input: no cotangent"""
    return g * softmax_ce_backward(cache), None


_sce.defvjp(_sce_fwd, _sce_bwd)


def softmax_cross_entropy(z, y) -> jax.Array:
    """L = 1/N Σ_i -log a_{i, y_i}   ()   with the seed's ∂L/∂z = (a - onehot)/N as its
    registered `jax.custom_vjp` rule: `jax.grad` through it runs the hand derivation.

    z (N, C) floating, y (N,) integer in [0, C); an out-of-range label makes L (and its
    row of the gradient) NaN. Arguments are validated eagerly; under jit they are traced."""
    return _sce(*_logits_labels(z, y))


softmax_cross_entropy.__wrapped__ = _sce  # the custom_vjp function behind the validation


# --- the derivation, step by step ---------------------------------------------------
# Each step takes {"z": (N, C), "y": (N,)} and computes one line of the derivation. The shift
# by the row max in `_exps` cancels in every ratio below.


def _exps(z):
    e = jnp.exp(z - z.max(axis=1, keepdims=True))
    return e, e.sum(axis=1, keepdims=True)


def _eye(C, dtype):
    return jnp.eye(C, dtype=dtype)[None]  # 1[j=k], broadcast over i


def _onehot(z, y):
    return (jnp.arange(z.shape[1]) == y[:, None]).astype(z.dtype)  # 1[k = y_i]


def _quotient(x):
    e, s = _exps(x["z"])
    de = e[:, :, None] * _eye(e.shape[1], e.dtype)  # ∂e^{z_ij}/∂z_ik = e^{z_ij} 1[j=k]
    ds = e[:, None, :]  # ∂Σ/∂z_ik = e^{z_ik}
    S = s[:, :, None]
    return (S * de - e[:, :, None] * ds) / S**2


def _split(x):
    e, s = _exps(x["z"])
    de = e[:, :, None] * _eye(e.shape[1], e.dtype)
    S = s[:, :, None]
    return de / S - e[:, :, None] * e[:, None, :] / S**2


def _indicator(x):
    e, s = _exps(x["z"])
    S = s[:, :, None]
    return e[:, :, None] * _eye(e.shape[1], e.dtype) / S - e[:, :, None] * e[:, None, :] / S**2


def _factored(x):
    e, s = _exps(x["z"])
    S = s[:, :, None]
    return (e[:, :, None] / S) * (_eye(e.shape[1], e.dtype) - e[:, None, :] / S)


def _a(z):
    e, s = _exps(z)
    return e / s


JACOBIAN_CHAIN = [
    Step(
        "quotient rule",
        "∂a_ij/∂z_ik = (Σ ∂e^{z_ij}/∂z_ik − e^{z_ij} ∂Σ/∂z_ik) / Σ²",
        "(N, C, C)",
        _quotient,
    ),
    Step("split fraction", "= (∂e^{z_ij}/∂z_ik)/Σ − e^{z_ij} (∂Σ/∂z_ik)/Σ²", "(N, C, C)", _split),
    Step("indicator form", "= e^{z_ij} 1[j=k]/Σ − e^{z_ij} e^{z_ik}/Σ²", "(N, C, C)", _indicator),
    Step("factored", "= (e^{z_ij}/Σ)(1[j=k] − e^{z_ik}/Σ)", "(N, C, C)", _factored),
    Step(
        "shipped",
        "= a_ij (1[j=k] − a_ik)   handgrad.softmax_jacobian",
        "(N, C, C)",
        lambda x: softmax_jacobian(x["z"]),
    ),
]


def _via_one_over_a(x):
    a = _a(x["z"])
    return -jnp.einsum("ij,ijk->ik", _onehot(x["z"], x["y"]) / a, softmax_jacobian_of(a))


def _log_derivative(x):
    a = _a(x["z"])
    ind = _onehot(x["z"], x["y"])
    return -jnp.einsum("ij,ijk->ik", ind, _eye(a.shape[1], a.dtype) - a[:, None, :])


def _split_k(x):
    a = _a(x["z"])
    ind = _onehot(x["z"], x["y"])  # 1[k = y_i] read at column k
    others = ind.sum(axis=1, keepdims=True) - ind  # Σ_{j≠k} 1[j = y_i]
    return -ind * (1 - a) + others * a


def _regroup(x):
    a = _a(x["z"])
    ind = _onehot(x["z"], x["y"])
    return -ind + a * ind.sum(axis=1, keepdims=True)


def _per_row_shipped(x):
    # ∂L_i/∂z_i is the batch gradient of row i alone (N = 1, so 1/N = 1)
    one = jax.vmap(lambda z, y: cross_entropy_grad(z[None], y[None])[0])
    return one(x["z"], x["y"])


PER_OBSERVATION_CHAIN = [
    Step(
        "chain through 1/a",
        "∂L_i/∂z_ik = −Σ_j 1[j=y_i] (1/a_ij) ∂a_ij/∂z_ik",
        "(N, C)",
        _via_one_over_a,
    ),
    Step("log derivative", "= −Σ_j 1[j=y_i] (1[j=k] − a_ik)", "(N, C)", _log_derivative),
    Step("split j = k", "= −1[k=y_i](1 − a_ik) + Σ_{j≠k} 1[j=y_i] a_ik", "(N, C)", _split_k),
    Step("regroup", "= −1[k=y_i] + a_ik Σ_j 1[j=y_i]", "(N, C)", _regroup),
    Step(
        "shipped",
        "= a_ik − 1[k=y_i]   handgrad.cross_entropy_grad of row i alone (N = 1)",
        "(N, C)",
        _per_row_shipped,
    ),
]


def _python_form(x):
    z, y = x["z"], x["y"]
    N = z.shape[0]
    ind = jnp.zeros_like(z).at[jnp.arange(N), y].set(1)  # I{z[range(N), y]}
    return (_a(z) - ind) / N


BATCH_MEAN_CHAIN = [
    Step(
        "chain rule",
        "∂L/∂z_ik = ∂L/∂L_i · ∂L_i/∂z_ik = (1/N)(a_ik − 1[k=y_i])",
        "(N, C)",
        lambda x: (_a(x["z"]) - _onehot(x["z"], x["y"])) / x["z"].shape[0],
    ),
    Step("python", "= (a − I{z[range(N), y]}) / N", "(N, C)", _python_form),
    Step(
        "shipped",
        "= handgrad.cross_entropy_grad(z, y)",
        "(N, C)",
        lambda x: cross_entropy_grad(x["z"], x["y"]),
    ),
]

CHAINS: dict[str, list[Step]] = {
    "softmax_jacobian": JACOBIAN_CHAIN,
    "cross_entropy_per_observation": PER_OBSERVATION_CHAIN,
    "batch_mean": BATCH_MEAN_CHAIN,
}
