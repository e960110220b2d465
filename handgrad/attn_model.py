"""An attention classifier on hand-derived gradients: one self-attention layer over tokens,
then the seed's two-layer MLP head and softmax cross-entropy.

A row of X (N, D) is T tokens of F features (D = T·F). Letters: T tokens, F features,
H hidden units, C classes. The backward chains the verified derivations: the head's
(handgrad.mlp), the residual's (dO = dh), attention's (handgrad.attn) and the
projections' dWq = Σ_n X_tᵀ·dQ; no autodiff. Its shape lines: docs/derivation.md,
"The attention classifier".
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from handgrad import attn, mlp
from handgrad import validate as v
from handgrad.softmax_ce import softmax_forward

__all__ = [
    "AttnParams",
    "attention_classifier_forward",
    "attention_classifier_grads",
    "attention_classifier_scales",
    "check_attention_classifier",
    "init_attention_params",
]


class AttnParams(NamedTuple):
    Wq: jax.Array  # (F, F)
    Wk: jax.Array  # (F, F)
    Wv: jax.Array  # (F, F)
    W1: jax.Array  # (T·F, H)
    b1: jax.Array  # (H,)
    W2: jax.Array  # (H, C)
    b2: jax.Array  # (C,)


def init_attention_params(key, T: int, F: int, H: int, C: int, *, dtype=jnp.float32) -> AttnParams:
    """Projections (F, F) ~ N(0, 1/F), the head as `handgrad.init_params` (He-normal W1)."""
    k = F
    for name, n in (("T", T), ("F", F), ("H", H), ("C", C)):
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"{name} must be a positive integer; got {n!r}")
    kq, kk, kv, kh = jax.random.split(key, 4)
    s = jnp.sqrt(1.0 / F).astype(dtype)
    head = mlp.init_params(kh, T * k, H, C, dtype=dtype)
    return AttnParams(
        jax.random.normal(kq, (F, k), dtype) * s,
        jax.random.normal(kk, (F, k), dtype) * s,
        jax.random.normal(kv, (F, k), dtype) * s,
        *head,
    )


def _tokens(params: AttnParams, X):
    N, D = X.shape
    F = params.Wq.shape[0]
    return X.reshape(N, D // F, F)


def _forward(params: AttnParams, X):
    Xt = _tokens(params, X)  # (N, T, F)
    Q, K, V = (jnp.einsum("ntf,fk->ntk", Xt, W) for W in (params.Wq, params.Wk, params.Wv))
    O, P = attn.forward_with_p(attn.PIECES, Q, K, V, False)  # (N, T, k), (N, T, T)
    h = (Xt + O).reshape(O.shape[0], -1)  # (N, T·F): the residual X_t + O (k = F)
    head = mlp.Params(params.W1, params.b1, params.W2, params.b2)
    z2, caches = mlp.forward_with_caches(mlp.PIECES, head, h)
    return z2, (Xt, Q, K, V, P, caches)


def attention_classifier_forward(params: AttnParams, X) -> jax.Array:
    """z2 = MLP head(reshape(X_t + attention(X_t·Wq, X_t·Wk, X_t·Wv)))   (N, C)"""
    return _forward(params, X)[0]


def _penalty(params: AttnParams, reg):
    """R = reg (ΣWq² + ΣWk² + ΣWv² + ΣW1² + ΣW2²); biases are not regularised."""
    return reg * sum((W**2).sum() for W in (params.Wq, params.Wk, params.Wv, params.W1, params.W2))


def attention_classifier_grads(params: AttnParams, X, y, reg=0.0, *, head: str = "softmax"):
    """(L, AttnParams of ∂L/∂θ): the head's backward (handgrad.mlp), then attention's
    (dV = Pᵀ·dO, dP = dO·Vᵀ, dS = P ⊙ (dP − rowsum(dP ⊙ P)), dQ = dS·K/√F, dK = dSᵀ·Q/√F),
    then the projections' dW = Σ_n X_tᵀ·dQ (F, F), and 2 reg W for every weight.
    `head="fused"`: the output layer by `handgrad.linear_cross_entropy`'s rule."""
    mp, ap = mlp.PIECES, attn.PIECES
    z2, (Xt, Q, K, V, P, (cache1, z1, cache2)) = _forward(params, X)
    ce, da1, dW2, db2 = mlp.head_grads(mp, head, z2, cache2, params.b2, y)
    dz1 = mp.relu_backward(da1, z1)  # (N, H)
    dh, dW1, db1 = mp.affine_backward(dz1, cache1)  # (N, T·F), (T·F, H), (H,)
    dO = dh.reshape(Q.shape)  # (N, T, F): the residual passes dh to O unchanged
    dP, dV = ap.pv_backward(dO, P, V)  # (N, T, T), (N, T, k)
    dS = ap.softmax_backward(dP, P)  # (N, T, T)
    dQ, dK = ap.qk_backward(dS, Q, K)  # (N, T, k) each
    dWq, dWk, dWv = (jnp.einsum("ntf,ntk->fk", Xt, d) for d in (dQ, dK, dV))  # (F, k)
    loss = ce + _penalty(params, reg)
    g = 2 * reg
    return loss, AttnParams(
        dWq + g * params.Wq,
        dWk + g * params.Wk,
        dWv + g * params.Wv,
        dW1 + g * params.W1,
        db1,
        dW2 + g * params.W2,
        db2,
    )


def attention_classifier_scales(params: AttnParams, X, y, reg) -> AttnParams:
    """The magnitude each gradient leaf's rounding lives on: the same backward pass on
    absolute values, every cancelling difference a sum (as `handgrad.train.natural_scales`
    for the MLP): dz2 -> (a2 + onehot)/N, dS -> P ⊙ (|dP| + rowsum(|dP| ⊙ P))."""
    z2, (Xt, Q, K, V, P, (cache1, z1, cache2)) = _forward(params, X)
    a2, _ = softmax_forward(z2)
    dz2 = (a2 + jax.nn.one_hot(y, a2.shape[1], dtype=a2.dtype)) / X.shape[0]
    a1 = cache2.X
    h = cache1.X
    dz1 = (dz2 @ jnp.abs(params.W2).T) * (z1 >= 0)
    dO = (dz1 @ jnp.abs(params.W1).T).reshape(Q.shape)
    dP = jnp.einsum("ntc,nmc->ntm", dO, jnp.abs(V))
    dS = P * (dP + (dP * P).sum(-1, keepdims=True))
    c = 1 / math.sqrt(Q.shape[-1])
    dQ = jnp.einsum("ntm,nmk->ntk", dS, jnp.abs(K)) * c
    dK = jnp.einsum("ntm,ntk->nmk", dS, jnp.abs(Q)) * c
    dV = jnp.einsum("ntm,ntc->nmc", P, dO)
    g = 2 * reg
    big = [
        *(
            jnp.einsum("ntf,ntk->fk", jnp.abs(Xt), d) + g * jnp.abs(W)
            for d, W in ((dQ, params.Wq), (dK, params.Wk), (dV, params.Wv))
        ),
        jnp.abs(h).T @ dz1 + g * jnp.abs(params.W1),
        dz1.sum(0),
        a1.T @ dz2 + g * jnp.abs(params.W2),
        dz2.sum(0),
    ]
    return AttnParams(*(jnp.max(b) for b in big))


def check_attention_classifier(params, X):
    """params an AttnParams whose shapes agree with X (N, T·F): one dtype, finite."""
    if not (isinstance(params, tuple) and len(params) == 7):
        raise ValueError(
            f"params must be AttnParams(Wq, Wk, Wv, W1, b1, W2, b2); got {type(params).__name__}"
        )
    X = v.float_array(X, "X", "(N, D)", 2)
    names = AttnParams._fields[:3]
    Wq, Wk, Wv = (v.float_array(p, n, "(F, F)", 2) for n, p in zip(names, params[:3]))
    F, k = Wq.shape
    if k != F or Wk.shape != (F, F) or Wv.shape != (F, F):
        raise ValueError(
            f"Wq, Wk and Wv must be (F, F) (the residual adds O to X_t); got "
            f"{Wq.shape}, {Wk.shape}, {Wv.shape}"
        )
    if X.shape[1] % F:
        raise ValueError(
            f"X must be (N, T·F) with F = {F} features per token; got D = {X.shape[1]}"
        )
    T = X.shape[1] // F
    # the head is the seed's MLP on h (N, T·F): its own checks name W1, b1, W2, b2
    head, _ = v.check_mlp(tuple(params[3:]), jnp.zeros((1, T * k), X.dtype))
    for n, p in zip(AttnParams._fields, (Wq, Wk, Wv, *head)):
        if p.dtype != X.dtype:
            raise ValueError(f"{n} must have X's dtype {X.dtype}; got {p.dtype}")
    return AttnParams(Wq, Wk, Wv, *head), X
