"""Logistic output: the sigmoid, binary cross-entropy with logits, and its batch-mean gradient.

The one-class sibling of the derivation's softmax cross-entropy, derived the same way:

    σ(z) = 1 / (1 + e^{-z}),   ∂σ/∂z = σ (1 - σ)
    L = 1/N Σ_i L_i,   L_i = -t_i log σ(z_i) - (1 - t_i) log(1 - σ(z_i))
    ∂L/∂z_i = (σ(z_i) - t_i) / N

As in `handgrad.softmax_ce`: the pieces, the public functions built from `PIECES`, and
`CHAINS`. Letters: N batch. z (N,) logits, t (N,) targets in [0, 1] (hard or soft).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from handgrad import validate as v
from handgrad.ledger import Step

__all__ = [
    "CHAINS",
    "PIECES",
    "BCECache",
    "Pieces",
    "bce_backward",
    "bce_forward",
    "binary_cross_entropy",
    "binary_cross_entropy_grad",
    "sigmoid",
    "sigmoid_forward",
]


# --- the pieces --------------------------------------------------------------------


def sigmoid_forward(z):
    """σ(z) = 1 / (1 + e^{-z})   (N,) -> (N,)"""
    # e^{-|z|} <= 1 never overflows; for z < 0 use the equal form e^z / (1 + e^z)
    e = jnp.exp(-jnp.abs(z))
    return jnp.where(z >= 0, 1 / (1 + e), e / (1 + e))


class BCECache(NamedTuple):
    s: jax.Array  # (N,) σ(z)
    t: jax.Array  # (N,) targets; NaN where out of [0, 1]


def bce_forward(z, t, sigmoid_fwd=sigmoid_forward):
    """L = 1/N Σ_i softplus(z_i) - t_i z_i   ()

    -t log σ(z) - (1 - t) log(1 - σ(z)) = log(1 + e^z) - t z, and
    softplus(z) = max(z, 0) + log(1 + e^{-|z|}): never log(σ), which is -inf once σ
    underflows."""
    L_i = jnp.maximum(z, 0) + jnp.log1p(jnp.exp(-jnp.abs(z))) - t * z
    return L_i.sum() / z.shape[0], BCECache(sigmoid_fwd(z), t)


def bce_backward(cache: BCECache):
    """∂L/∂z_i = (σ(z_i) - t_i) / N   (N,)"""
    s, t = cache
    return (s - t) / s.shape[0]


class Pieces(NamedTuple):
    """The pieces the public functions are built from; `PIECES` holds the shipped ones."""

    sigmoid_forward: Callable = sigmoid_forward
    bce_forward: Callable = bce_forward
    bce_backward: Callable = bce_backward


PIECES = Pieces()


# --- the public functions -----------------------------------------------------------


def _targets(t, N: int):
    t = v.float_array(t, "t", "(N,)", 1)
    if t.shape != (N,):
        raise ValueError(f"t must be (N,) = ({N},) to match z (N,) = ({N},); got {t.shape}")
    if v.is_concrete(t):
        tv = np.asarray(t)
        bad = (tv < 0) | (tv > 1)
        if bad.any():
            i = int(np.argmax(bad))
            raise ValueError(f"t must hold targets in [0, 1]; got t[{i}] = {tv[i]}")
    return t


def _checked(z, t):
    z = v.float_array(z, "z", "(N,)", 1)
    if z.shape[0] == 0:
        raise ValueError("z must have at least one entry (N >= 1); got (N,) = (0,)")
    t = _targets(t, z.shape[0])
    if t.dtype != z.dtype:
        raise ValueError(f"t must have the dtype of z ({z.dtype}); got {t.dtype}")
    return z, t


def _poisoned(t):
    # under jit a target outside [0, 1] cannot raise: it makes its row NaN instead
    return jnp.where((t >= 0) & (t <= 1), t, jnp.nan)


@functools.partial(jax.jit, static_argnums=0)
def _sigmoid(p: Pieces, z):
    return p.sigmoid_forward(z)


@functools.partial(jax.jit, static_argnums=0)
def _bce(p: Pieces, z, t):
    return p.bce_forward(z, _poisoned(t), p.sigmoid_forward)


@functools.partial(jax.jit, static_argnums=0)
def _bce_grad(p: Pieces, z, t):
    return p.bce_backward(_bce(p, z, t)[1])


def sigmoid(z, *, pieces: Pieces = PIECES) -> jax.Array:
    """σ(z) = 1 / (1 + e^{-z})   (N,) -> (N,); stable for any finite z."""
    return _sigmoid(pieces, v.float_array(z, "z", "(N,)", 1))


def binary_cross_entropy(z, t, *, pieces: Pieces = PIECES) -> jax.Array:
    """L = 1/N Σ_i -t_i log σ(z_i) - (1 - t_i) log(1 - σ(z_i))   ()

    z (N,) logits, t (N,) targets in [0, 1]. Under jit a target outside [0, 1] makes L NaN."""
    return _bce(pieces, *_checked(z, t))[0]


def binary_cross_entropy_grad(z, t, *, pieces: Pieces = PIECES) -> jax.Array:
    """∂L/∂z = (σ(z) - t) / N   (N,)"""
    return _bce_grad(pieces, *_checked(z, t))


# --- the derivation, step by step ---------------------------------------------------
# Each step takes {"z": (N,), "t": (N,)}.


def _s(z):
    return sigmoid_forward(z)


SIGMOID_CHAIN = [
    Step(
        "quotient rule",
        "∂σ/∂z = e^{-z} / (1 + e^{-z})²",
        "(N,)",
        lambda x: jnp.exp(-x["z"]) / (1 + jnp.exp(-x["z"])) ** 2,
    ),
    Step(
        "shipped",
        "= σ(z) (1 − σ(z)),   σ = handgrad.sigmoid",
        "(N,)",
        lambda x: sigmoid(x["z"]) * (1 - sigmoid(x["z"])),
    ),
]

PER_OBSERVATION_CHAIN = [
    Step(
        "chain through 1/σ",
        "∂L_i/∂z_i = −t_i (1/σ) σ(1 − σ) + (1 − t_i) (1/(1 − σ)) σ(1 − σ)",
        "(N,)",
        lambda x: (
            (-x["t"] / _s(x["z"]) + (1 - x["t"]) / (1 - _s(x["z"]))) * _s(x["z"]) * (1 - _s(x["z"]))
        ),
    ),
    Step(
        "cancel",
        "= −t_i (1 − σ) + (1 − t_i) σ",
        "(N,)",
        lambda x: -x["t"] * (1 - _s(x["z"])) + (1 - x["t"]) * _s(x["z"]),
    ),
    Step(
        "shipped",
        "= σ(z_i) − t_i   handgrad.binary_cross_entropy_grad of entry i alone (N = 1)",
        "(N,)",
        lambda x: jax.vmap(lambda z, t: binary_cross_entropy_grad(z[None], t[None])[0])(
            x["z"], x["t"]
        ),
    ),
]

BATCH_MEAN_CHAIN = [
    Step(
        "chain rule",
        "∂L/∂z_i = ∂L/∂L_i · ∂L_i/∂z_i = (1/N)(σ(z_i) − t_i)",
        "(N,)",
        lambda x: (_s(x["z"]) - x["t"]) / x["z"].shape[0],
    ),
    Step(
        "shipped",
        "= handgrad.binary_cross_entropy_grad(z, t)",
        "(N,)",
        lambda x: binary_cross_entropy_grad(x["z"], x["t"]),
    ),
]

CHAINS: dict[str, list[Step]] = {
    "sigmoid_derivative": SIGMOID_CHAIN,
    "bce_per_observation": PER_OBSERVATION_CHAIN,
    "bce_batch_mean": BATCH_MEAN_CHAIN,
}
