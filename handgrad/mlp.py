"""The two-layer MLP of the seed: affine -> ReLU -> affine -> softmax cross-entropy.

Forward:  z1 = X·W1 + b1,  a1 = max(0, z1),  z2 = a1·W2 + b2,  L = CE(z2, y) + reg (|W1|² + |W2|²)
Backward: the derivation's lines, bottom to top (see `mlp_grads`).

As in `handgrad.softmax_ce`: the pieces (forward/backward pairs, one equation each), the
public functions built from `PIECES`, and `CHAINS`, the backward pass line by line.
Letters: N batch, D input features, H hidden units, C classes.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from handgrad import validate as v
from handgrad.ledger import Step
from handgrad.softmax_ce import softmax_ce_backward, softmax_ce_forward

__all__ = [
    "CHAINS",
    "PIECES",
    "AffineCache",
    "Params",
    "Pieces",
    "affine_backward",
    "affine_forward",
    "init_params",
    "mlp_forward",
    "mlp_grads",
    "mlp_loss",
    "penalty_backward",
    "penalty_forward",
    "relu_backward",
    "relu_forward",
]

# Matrix products use precision="highest" so that a GPU/TPU does not round float32
# products to TF32/bfloat16 and blur the comparison with the referee.
_HI = jax.lax.Precision.HIGHEST


class Params(NamedTuple):
    """Parameters of the two-layer MLP (a pytree); gradients use the same type."""

    W1: jax.Array  # (D, H)
    b1: jax.Array  # (H,)
    W2: jax.Array  # (H, C)
    b2: jax.Array  # (C,)


# --- the pieces --------------------------------------------------------------------


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
    """a = max(0, z)   (N, H) -> (N, H); the cache is z."""
    # where, not maximum: autodiff of maximum splits a tie 0.5/0.5, where gives 0 at z == 0
    return jnp.where(z > 0, z, jnp.zeros_like(z)), z


def relu_backward(da, z):
    """dz = da ⊙ 1[z > 0]   (N, H)
    Strictly greater: at an exact kink z == 0 the gradient is 0, as jax.nn.relu's."""
    return jnp.where(z > 0, da, jnp.zeros_like(da))


def penalty_forward(params: Params, reg):
    """R = reg (Σ W1² + Σ W2²)   (); biases are not regularised."""
    return reg * ((params.W1**2).sum() + (params.W2**2).sum())


def penalty_backward(params: Params, reg) -> Params:
    """∂R/∂W = 2 reg W,  ∂R/∂b = 0   (shapes of params)"""
    return Params(
        2 * reg * params.W1,
        jnp.zeros_like(params.b1),
        2 * reg * params.W2,
        jnp.zeros_like(params.b2),
    )


class Pieces(NamedTuple):
    """The pieces the public functions are built from; `PIECES` holds the shipped ones.
    The head is the derivation's softmax cross-entropy (`handgrad.softmax_ce`)."""

    affine_forward: Callable = affine_forward
    affine_backward: Callable = affine_backward
    relu_forward: Callable = relu_forward
    relu_backward: Callable = relu_backward
    head_forward: Callable = softmax_ce_forward
    head_backward: Callable = softmax_ce_backward
    penalty_forward: Callable = penalty_forward
    penalty_backward: Callable = penalty_backward


PIECES = Pieces()


# --- the public functions -----------------------------------------------------------


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


def forward_with_caches(p: Pieces, params: Params, X):
    z1, cache1 = p.affine_forward(X, params.W1, params.b1)  # (N, H) = (N, D)·(D, H) + (H,)
    a1, cache_relu = p.relu_forward(z1)  # (N, H)
    z2, cache2 = p.affine_forward(a1, params.W2, params.b2)  # (N, C) = (N, H)·(H, C) + (C,)
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


@functools.partial(jax.jit, static_argnums=0)
def _forward_z2(p: Pieces, params, X):
    return forward_with_caches(p, params, X)[0]


@functools.partial(jax.jit, static_argnums=0)
def _loss(p: Pieces, params, X, y, reg):
    z2, _ = forward_with_caches(p, params, X)
    ce = p.head_forward(z2, y, v.label_mask(y, z2.shape[1]))[0]
    return ce + p.penalty_forward(params, reg)


HEADS = ("softmax", "fused")


def head_grads(p: Pieces, head: str, z2, cache2, b2, y):
    """(CE, da1, dW2, db2): the output layer and its loss, by the softmax head's pieces
    (z2 = a1·W2 + b2, then softmax cross-entropy), or by `handgrad.linear_cross_entropy`'s
    hand rule on (a1, W2, b2), z2 never used ("fused")."""
    if head == "fused":
        from handgrad.linear_ce import linear_cross_entropy_grads

        ce, (da1, dW2, db2) = linear_cross_entropy_grads(cache2.X, cache2.W, y, b2)
        return ce, da1, dW2, db2
    ce, cache_ce = p.head_forward(z2, y, v.label_mask(y, z2.shape[1]))
    dz2 = p.head_backward(cache_ce)  # (N, C)
    return (ce, *p.affine_backward(dz2, cache2))  # (N, H), (H, C), (C,)


@functools.partial(jax.jit, static_argnums=(0, 5))
def _grads(p: Pieces, params, X, y, reg, head="softmax"):
    z2, (cache1, z1, cache2) = forward_with_caches(p, params, X)
    ce, da1, dW2, db2 = head_grads(p, head, z2, cache2, params.b2, y)
    dz1 = p.relu_backward(da1, z1)  # (N, H)
    _, dW1, db1 = p.affine_backward(dz1, cache1)  # (D, H), (H,)
    dR = p.penalty_backward(params, reg)
    loss = ce + p.penalty_forward(params, reg)
    return loss, Params(dW1 + dR.W1, db1 + dR.b1, dW2 + dR.W2, db2 + dR.b2)


def mlp_forward(params: Params, X, *, pieces: Pieces = PIECES) -> jax.Array:
    """z2 = max(0, X·W1 + b1)·W2 + b2   (N, C)"""
    return _forward_z2(pieces, *_checked(params, X))


def mlp_loss(params: Params, X, y, reg=0.0, *, pieces: Pieces = PIECES) -> jax.Array:
    """L = 1/N Σ_i -log a2_{i, y_i} + reg (Σ W1² + Σ W2²)   (); biases are not regularised."""
    return _loss(pieces, *_checked(params, X, y, reg))


def mlp_grads(
    params: Params, X, y, reg=0.0, *, pieces: Pieces = PIECES, head: str = "softmax"
) -> tuple[jax.Array, Params]:
    """(L, Params(dW1, db1, dW2, db2)); head="fused": the first four by linear_ce's rule.

    dz2 = (a2 - 1[k = y_i]) / N        (N, C)
    dW2 = a1ᵀ·dz2 + 2 reg W2           (H, C) = (H, N)·(N, C)
    db2 = sum(dz2, axis=0)             (C,)
    da1 = dz2·W2ᵀ                      (N, H) = (N, C)·(C, H)
    dz1 = da1 ⊙ 1[z1 > 0]              (N, H)
    dW1 = Xᵀ·dz1 + 2 reg W1            (D, H) = (D, N)·(N, H)
    db1 = sum(dz1, axis=0)             (H,)"""
    if head not in HEADS:
        raise ValueError(f"head must be one of {HEADS}; got {head!r}")
    return _grads(pieces, *_checked(params, X, y, reg), head)


# --- the backward pass, line by line ------------------------------------------------
# Each step computes one line from the forward values in x (X, W1, b1, W2, b2, y, z1, a1,
# z2) with the shipped pieces; the ledger compares each with autodiff's ∂L/∂(that
# quantity). The last step is mlp_grads itself.


def _dz2(x):
    valid = v.label_mask(x["y"], x["z2"].shape[1])
    return softmax_ce_backward(softmax_ce_forward(x["z2"], x["y"], valid)[1])


def _layer2(x):
    return affine_backward(_dz2(x), AffineCache(x["a1"], x["W2"]))  # da1, dW2, db2


def _dz1(x):
    return relu_backward(_layer2(x)[0], x["z1"])


def _layer1(x):
    return affine_backward(_dz1(x), AffineCache(x["X"], x["W1"]))  # dX, dW1, db1


MLP_CHAIN = [
    Step("dz2", "∂L/∂z⁽²⁾ = (a⁽²⁾ − I{z⁽²⁾[range(N), y]}) / N", "(N, C)", _dz2),
    Step("dW2", "∂L/∂W⁽²⁾ = a⁽¹⁾ᵀ · ∂L/∂z⁽²⁾", "(H, C) = (H, N)·(N, C)", lambda x: _layer2(x)[1]),
    Step("db2", "∂L/∂b⁽²⁾ = sum(∂L/∂z⁽²⁾, axis=0)", "(C,)", lambda x: _layer2(x)[2]),
    Step("da1", "∂L/∂a⁽¹⁾ = ∂L/∂z⁽²⁾ · W⁽²⁾ᵀ", "(N, H) = (N, C)·(C, H)", lambda x: _layer2(x)[0]),
    Step("dz1", "∂L/∂z⁽¹⁾ = ∂L/∂a⁽¹⁾ ⊙ 1[z⁽¹⁾ > 0]   (implicit in the seed)", "(N, H)", _dz1),
    Step("dW1", "∂L/∂W⁽¹⁾ = Xᵀ · ∂L/∂z⁽¹⁾", "(D, H) = (D, N)·(N, H)", lambda x: _layer1(x)[1]),
    Step("db1", "∂L/∂b⁽¹⁾ = sum(∂L/∂z⁽¹⁾, axis=0)", "(H,)", lambda x: _layer1(x)[2]),
    Step(
        "shipped",
        "(dW1, db1, dW2, db2) = handgrad.mlp_grads(params, X, y)[1]",
        "(D, H), (H,), (H, C), (C,)",
        lambda x: mlp_grads(Params(x["W1"], x["b1"], x["W2"], x["b2"]), x["X"], x["y"])[1],
    ),
]

CHAINS: dict[str, list[Step]] = {"mlp": MLP_CHAIN}
