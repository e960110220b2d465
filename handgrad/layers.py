"""Per-layer forward/backward pairs, one equation each (CS231n `layers.py` style).

Each `*_forward` returns `(out, cache)`; each `*_backward` takes the upstream gradient and
the cache and returns the gradients of the inputs. No validation here: the public
functions in `softmax.py` and `mlp.py` validate once, up front, then call these.
Matrix products use `precision="highest"` so that a GPU/TPU does not round float32
products to TF32/bfloat16 and blur the comparison with the referee.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

__all__ = [
    "AffineCache",
    "SoftmaxCECache",
    "affine_backward",
    "affine_forward",
    "ce_forward",
    "relu_backward",
    "relu_forward",
    "softmax_ce_backward",
    "softmax_ce_forward",
    "softmax_forward",
]

_HI = jax.lax.Precision.HIGHEST


class AffineCache(NamedTuple):
    X: jax.Array  # (N, D)
    W: jax.Array  # (D, H)


def affine_forward(X, W, b):
    """z = X·W + b   (N, H) = (N, D)·(D, H) + (H,)"""
    return jnp.matmul(X, W, precision=_HI) + b, AffineCache(X, W)


def affine_backward(dz, cache: AffineCache):
    """dX = dz·Wᵀ   (N, D) = (N, H)·(H, D)
    dW = Xᵀ·dz   (D, H) = (D, N)·(N, H)
    db = sum(dz, axis=0)   (H,)"""
    X, W = cache
    dX = jnp.matmul(dz, W.T, precision=_HI)
    dW = jnp.matmul(X.T, dz, precision=_HI)
    db = dz.sum(axis=0)
    return dX, dW, db


def relu_forward(z):
    """a = max(0, z)   (N, H) -> (N, H)"""
    # where, not maximum: autodiff of maximum splits a tie 0.5/0.5, where gives 0 at z == 0
    return jnp.where(z > 0, z, jnp.zeros_like(z)), z


def relu_backward(da, z):
    """dz = da ⊙ 1[z > 0]   (N, H)
    Strictly greater: at an exact kink z == 0 the gradient is 0, as jax.nn.relu's."""
    return jnp.where(z > 0, da, jnp.zeros_like(da))


def softmax_forward(z):
    """a_ij = e^{z_ij} / Σ_s e^{z_is},  with  log a_ij = z_ij - log Σ_s e^{z_is}   (N, C)
    Returns (a, log a)."""
    # Shift by the row max: e^{z - max} <= 1 never overflows, and the ratio is unchanged.
    shifted = z - z.max(axis=1, keepdims=True)
    e = jnp.exp(shifted)
    sigma = e.sum(axis=1, keepdims=True)  # >= 1: the max entry contributes e^0
    # log-sum-exp: never log(softmax(z)), which is -inf once a probability underflows.
    return e / sigma, shifted - jnp.log(sigma)


class SoftmaxCECache(NamedTuple):
    a: jax.Array  # (N, C) softmax probabilities
    onehot: jax.Array  # (N, C) 1[k = y_i]; a NaN row for an out-of-range label


def ce_forward(a, logp, y, valid):
    """L = 1/N Σ_i L_i,   L_i = -Σ_j 1[j = y_i] log a_ij   () from a, log a (N, C), y (N,)

    A row whose label is out of range (valid False) gets a NaN indicator row, so its L_i,
    L and its row of ∂L/∂z come out NaN through the seed's own formulas."""
    N, C = a.shape
    onehot = jnp.where(valid[:, None], (jnp.arange(C) == y[:, None]).astype(a.dtype), jnp.nan)
    L_i = -(onehot * logp).sum(axis=1)
    return L_i.sum() / N, SoftmaxCECache(a, onehot)


def softmax_ce_forward(z, y, valid):
    """L = 1/N Σ_i -log a_{i, y_i} with a = softmax(z)   () from z (N, C), y (N,)"""
    return ce_forward(*softmax_forward(z), y, valid)


def softmax_ce_backward(cache: SoftmaxCECache):
    """∂L/∂z_ik = (a_ik - 1[k = y_i]) / N   (N, C)
    A row whose label is out of range is NaN (its indicator row is)."""
    a, onehot = cache
    return (a - onehot) / a.shape[0]
