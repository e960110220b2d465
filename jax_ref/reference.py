"""The referee: the seed's losses written independently with `jax.nn`, differentiated by JAX.

Name for name the mirror of `handgrad`. Nothing here reuses handgrad's math (a shared bug
would hide); it shares only the `Params` type and the argument checks.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from handgrad import _validate as v
from handgrad.mlp import Params

__all__ = [
    "cross_entropy",
    "cross_entropy_grad",
    "mlp_forward",
    "mlp_grads",
    "mlp_loss",
    "softmax",
    "softmax_jacobian",
]

_HI = jax.lax.Precision.HIGHEST


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


def cross_entropy(z, y) -> jax.Array:
    """mean_i -log_softmax(z)_{i, y_i}"""
    z = v.check_logits(z)
    y = v.check_labels(y, *z.shape, against=f"z (N, C) = {z.shape}")
    return _ce(z, y)


def cross_entropy_grad(z, y) -> jax.Array:
    """jax.grad of cross_entropy with respect to z   (N, C)"""
    z = v.check_logits(z)
    y = v.check_labels(y, *z.shape, against=f"z (N, C) = {z.shape}")
    return _ce_grad(z, y)


_ce_grad = jax.jit(jax.grad(_ce))


@jax.jit
def _forward(params, X):
    W1, b1, W2, b2 = params
    hidden = jax.nn.relu(jnp.dot(X, W1, precision=_HI) + b1)
    return jnp.dot(hidden, W2, precision=_HI) + b2


@jax.jit
def _loss(params, X, y, reg):
    W1, _, W2, _ = params
    return _ce(_forward(params, X), y) + reg * (jnp.vdot(W1, W1) + jnp.vdot(W2, W2))


def _checked(params, X, y, reg):
    params, X = v.check_mlp(params, X)
    y = v.check_labels(y, X.shape[0], params[2].shape[1], against=f"X (N, D) = {X.shape}")
    reg = v.reg_or_nan(v.check_reg(reg, X.dtype))
    return Params(*params), X, y, reg


def mlp_forward(params: Params, X) -> jax.Array:
    """relu(X W1 + b1) W2 + b2 with jax.nn.relu   (N, C)"""
    params, X = v.check_mlp(params, X)
    return _forward(params, X)


def mlp_loss(params: Params, X, y, reg=0.0) -> jax.Array:
    """cross-entropy of mlp_forward plus reg (|W1|² + |W2|²)"""
    return _loss(*_checked(params, X, y, reg))


def mlp_grads(params: Params, X, y, reg=0.0) -> tuple[jax.Array, Params]:
    """jax.value_and_grad(mlp_loss) with respect to params"""
    return _value_and_grad(*_checked(params, X, y, reg))


_value_and_grad = jax.jit(jax.value_and_grad(_loss))
