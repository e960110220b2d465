"""The two-layer MLP of the seed: affine -> ReLU -> affine -> softmax cross-entropy.

Forward:  z1 = X·W1 + b1,  a1 = max(0, z1),  z2 = a1·W2 + b2,  L = CE(z2, y) + reg (|W1|² + |W2|²)
Backward: the seed's lines, bottom to top (see `mlp_grads`).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from handgrad import _validate as v
from handgrad.layers import (
    affine_backward,
    affine_forward,
    relu_backward,
    relu_forward,
    softmax_ce_backward,
    softmax_ce_forward,
)

__all__ = ["Params", "init_params", "mlp_forward", "mlp_grads", "mlp_loss"]


class Params(NamedTuple):
    """Parameters of the two-layer MLP (a pytree); gradients use the same type."""

    W1: jax.Array  # (D, H)
    b1: jax.Array  # (H,)
    W2: jax.Array  # (H, C)
    b2: jax.Array  # (C,)


def init_params(key, D: int, H: int, C: int, *, dtype=jnp.float32) -> Params:
    """He-normal W1 (D, H) for the ReLU layer, W2 (H, C) scaled by 1/√H, zero biases."""
    for name, n in (("D", D), ("H", H), ("C", C)):
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"{name} must be a positive integer; got {n!r}")
    if not jnp.issubdtype(dtype, jnp.floating):
        raise ValueError(f"dtype must be a floating dtype; got {dtype}")
    k1, k2 = jax.random.split(key)
    W1 = jax.random.normal(k1, (D, H), dtype) * jnp.sqrt(2.0 / D).astype(dtype)
    W2 = jax.random.normal(k2, (H, C), dtype) * jnp.sqrt(1.0 / H).astype(dtype)
    return Params(W1, jnp.zeros((H,), dtype), W2, jnp.zeros((C,), dtype))


def _forward(params: Params, X):
    z1, cache1 = affine_forward(X, params.W1, params.b1)  # (N, H) = (N, D)·(D, H) + (H,)
    a1, cache_relu = relu_forward(z1)  # (N, H)
    z2, cache2 = affine_forward(a1, params.W2, params.b2)  # (N, C) = (N, H)·(H, C) + (C,)
    return z2, (cache1, cache_relu, cache2)


def _checked(params, X, y=None, reg=None):
    params, X = v.check_mlp(params, X)
    params = Params(*params)
    out = [params, X]
    if y is not None:
        N, C = X.shape[0], params.W2.shape[1]
        out.append(v.check_labels(y, N, C, against=f"X (N, D) = {X.shape}"))
    if reg is not None:
        out.append(v.reg_or_nan(v.check_reg(reg, X.dtype)))
    return out


def mlp_forward(params: Params, X) -> jax.Array:
    """z2 = max(0, X·W1 + b1)·W2 + b2   (N, C)"""
    return _forward_z2(*_checked(params, X))


_forward_z2 = jax.jit(lambda params, X: _forward(params, X)[0])


def _penalty(params: Params, reg):
    return reg * ((params.W1**2).sum() + (params.W2**2).sum())


def mlp_loss(params: Params, X, y, reg=0.0) -> jax.Array:
    """L = 1/N Σ_i -log a2_{i, y_i} + reg (Σ W1² + Σ W2²)   (); biases are not regularised."""
    return _loss(*_checked(params, X, y, reg))


@jax.jit
def _loss(params, X, y, reg):
    z2, _ = _forward(params, X)
    return softmax_ce_forward(z2, y, v.label_mask(y, z2.shape[1]))[0] + _penalty(params, reg)


def mlp_grads(params: Params, X, y, reg=0.0) -> tuple[jax.Array, Params]:
    """(L, Params(dW1, db1, dW2, db2)) by the seed's equations:

    dz2 = (a2 - 1[k = y_i]) / N        (N, C)
    dW2 = a1ᵀ·dz2 + 2 reg W2           (H, C) = (H, N)·(N, C)
    db2 = sum(dz2, axis=0)             (C,)
    da1 = dz2·W2ᵀ                      (N, H) = (N, C)·(C, H)
    dz1 = da1 ⊙ 1[z1 > 0]              (N, H)
    dW1 = Xᵀ·dz1 + 2 reg W1            (D, H) = (D, N)·(N, H)
    db1 = sum(dz1, axis=0)             (H,)
    """
    return _grads(*_checked(params, X, y, reg))


@jax.jit
def _grads(params, X, y, reg):
    z2, (cache1, z1, cache2) = _forward(params, X)
    C = z2.shape[1]
    ce, cache_ce = softmax_ce_forward(z2, y, v.label_mask(y, C))
    dz2 = softmax_ce_backward(cache_ce)
    da1, dW2, db2 = affine_backward(dz2, cache2)
    dz1 = relu_backward(da1, z1)
    _, dW1, db1 = affine_backward(dz1, cache1)
    loss = ce + _penalty(params, reg)
    return loss, Params(dW1 + 2 * reg * params.W1, db1, dW2 + 2 * reg * params.W2, db2)
