"""The seed's first blocks: softmax, its Jacobian, cross-entropy and its batch-mean gradient."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from handgrad import _validate as v
from handgrad.layers import softmax_ce_backward, softmax_ce_forward, softmax_forward

__all__ = ["cross_entropy", "cross_entropy_grad", "softmax", "softmax_jacobian"]


# Each public function validates its arguments eagerly, then runs a jitted core: one
# compilation per shape instead of one per primitive, and free under an outer jit.


@jax.jit
def _jacobian(z):
    a = softmax_forward(z)[0]
    eye = jnp.eye(z.shape[1], dtype=z.dtype)
    return a[:, :, None] * (eye - a[:, None, :])


@jax.jit
def _ce_core(z, y):
    return softmax_ce_forward(z, y, v.label_mask(y, z.shape[1]))


_softmax = jax.jit(lambda z: softmax_forward(z)[0])
_ce_grad = jax.jit(softmax_ce_backward)


def softmax(z) -> jax.Array:
    """a_ij = e^{z_ij} / Σ_{s=1..C} e^{z_is}   (N, C) -> (N, C)

    Stable for any finite logits (max-shifted)."""
    return _softmax(v.check_logits(z))


def softmax_jacobian(z) -> jax.Array:
    """∂a_ij/∂z_ik = a_ij (1[j=k] - a_ik)   (N, C) -> (N, C, C), J[i, j, k]"""
    return _jacobian(v.check_logits(z))


def _ce(z, y):
    z = v.check_logits(z)
    N, C = z.shape
    y = v.check_labels(y, N, C, against=f"z (N, C) = ({N}, {C})")
    return _ce_core(z, y)


def cross_entropy(z, y) -> jax.Array:
    """L = 1/N Σ_i L_i,   L_i = -log a_{i, y_i} = -(z_{i,y_i} - log Σ_s e^{z_is})   ()

    By log-sum-exp, never log(softmax). z (N, C) floating, y (N,) integer in [0, C).
    Under jit an out-of-range label makes L NaN."""
    return _ce(z, y)[0]


def cross_entropy_grad(z, y) -> jax.Array:
    """∂L/∂z = (a - 1[k = y_i]) / N   (N, C)

    Under jit an out-of-range label makes its row NaN."""
    return _ce_grad(_ce(z, y)[1])
