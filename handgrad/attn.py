"""Attention: the seed's softmax Jacobian at work, and a flash-style backward by blocks.

Three layers (as `handgrad.softmax_ce`): the pieces, one equation each (`scores`,
`row_softmax`, `softmax_backward_rows`, `pv_backward`, `qk_backward`, `key_valid`,
`online_update`, `row_term`, `recompute_p`); the public functions built from `PIECES`
(`softmax_backward`, `attention`, `attention_backward`, `flash_attention`: a
`jax.custom_vjp` whose backward recomputes P block by block from the row log-sum-exp,
and `flash_attention_backward`); and `CHAINS`. Letters: Q (..., N, d), K (..., M, d),
V (..., M, dv), S, P (..., N, M), O, dO (..., N, dv), B the key block size. The
derivation, line by line: docs/derivation.md, "Attention".
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from handgrad import validate as v
from handgrad.ledger import Step
from handgrad.softmax_ce import softmax_jacobian_of

__all__ = [
    "CHAINS",
    "DEFAULT_BLOCK",
    "LSE",
    "PIECES",
    "Pieces",
    "attention",
    "attention_backward",
    "flash_attention",
    "flash_attention_backward",
    "key_valid",
    "online_update",
    "pv_backward",
    "qk_backward",
    "recompute_p",
    "row_softmax",
    "row_term",
    "scores",
    "softmax_backward",
    "softmax_backward_rows",
]

DEFAULT_BLOCK = 256  # keys per block: N×B temporaries; fastest of 128-1024 on CPU (bench_attention)


def _work_dtype(dtype):
    """Half precisions accumulate in float32 (as FlashAttention kernels do)."""
    return jnp.promote_types(dtype, jnp.float32)


# --- the pieces --------------------------------------------------------------------


def key_valid(i, j, M, causal):
    """1[j < M and (not causal or j <= i)]: a real key (not block padding) that query i
    may see   (N, B) from query indices i (N, 1) and key indices j (1, B)"""
    ok = j < M
    return ok & (j <= i) if causal else ok


def scores(Q, K, valid):
    """S_ij = Q_i·K_j / √d, −∞ where key j is masked   (..., N, M) = (..., N, d)·(..., d, M)"""
    S = jnp.einsum("...nd,...md->...nm", Q, K) / math.sqrt(Q.shape[-1])
    return jnp.where(valid, S, -jnp.inf)


def row_softmax(S):
    """P_ij = e^{S_ij} / Σ_k e^{S_ik}   (..., N, M); shifted by the row max (never overflows)"""
    m = S.max(axis=-1, keepdims=True)
    e = jnp.exp(S - m)  # masked entries: e^{-inf} = 0
    return e / e.sum(axis=-1, keepdims=True)


def softmax_backward_rows(da, a):
    """∂L/∂z_ik = Σ_j da_ij a_ij (δ_jk − a_ik) = a_ik (da_ik − Σ_j da_ij a_ij)   (..., C)
    The seed's Jacobian contracted with da, row by row, without building it."""
    return a * (da - (da * a).sum(axis=-1, keepdims=True))


def pv_backward(dO, P, V):
    """O = P·V:  dP = dO·Vᵀ (..., N, M) = (..., N, dv)·(..., dv, M),
    dV = Pᵀ·dO (..., M, dv) = (..., M, N)·(..., N, dv)"""
    dP = jnp.einsum("...nc,...mc->...nm", dO, V)
    dV = jnp.einsum("...nm,...nc->...mc", P, dO)
    return dP, dV


def qk_backward(dS, Q, K):
    """S = Q·Kᵀ/√d:  dQ = dS·K/√d (..., N, d) = (..., N, M)·(..., M, d),
    dK = dSᵀ·Q/√d (..., M, d) = (..., M, N)·(..., N, d)"""
    c = 1 / math.sqrt(Q.shape[-1])
    return jnp.einsum("...nm,...md->...nd", dS, K) * c, jnp.einsum("...nm,...nd->...md", dS, Q) * c


class LSE(NamedTuple):
    """The row log-sum-exp lse_i = log Σ_j e^{S_ij}, kept in two parts, lse = max + log_sum:
    m_i = max_j S_ij and log Σ_j e^{S_ij − m_i} (in [0, log M]). P = e^{(S − max) − log_sum}
    then rounds like softmax's own e^{S − m}/Σ; a single lse of size |S| ~ 50 would carry
    |S|·u of rounding into every P (measured: 8x autodiff's float32 error in dK)."""

    max: jax.Array  # (..., N)
    log_sum: jax.Array  # (..., N)


class Online(NamedTuple):
    m: jax.Array  # (..., N) running row max of the scores seen so far
    l: jax.Array  # (..., N) running Σ_j e^{S_ij − m_i}
    acc: jax.Array  # (..., N, dv) running Σ_j e^{S_ij − m_i} V_j
    lse: LSE  # (..., N) log Σ_j e^{S_ij} of the keys seen so far: m + log l


def online_update(state: Online, S, Vb):
    """One key block of the online softmax (Milakov & Gimelshein 2018):
    m' = max(m, max_j S_ij),  l' = e^{m − m'} l + Σ_j e^{S_ij − m'},
    acc' = e^{m − m'} acc + e^{S − m'}·V_b,  lse' = m' + log l'   (..., N), (..., N, dv)"""
    m_new = jnp.maximum(state.m, S.max(axis=-1))
    m_use = jnp.where(jnp.isneginf(m_new), 0.0, m_new)  # a row with no key yet: no NaN
    alpha = jnp.exp(state.m - m_use)  # rescales what was accumulated under the old max
    p = jnp.exp(S - m_use[..., None])
    l_new = alpha * state.l + p.sum(axis=-1)
    acc = alpha[..., None] * state.acc + jnp.einsum("...nb,...bc->...nc", p, Vb)
    return Online(m_new, l_new, acc, LSE(m_use, jnp.log(l_new)))


def row_term(dO, O):
    """D_i = rowsum(dP ⊙ P)_i = rowsum(dO ⊙ O)_i   (..., N): no P needed"""
    return (dO * O).sum(axis=-1)


def recompute_p(S, lse: LSE, valid):
    """P_ij = e^{S_ij − lse_i} = e^{(S_ij − m_i) − log Σ_i}, one block of keys   (..., N, B)"""
    return jnp.where(valid, jnp.exp((S - lse.max[..., None]) - lse.log_sum[..., None]), 0.0)


class Pieces(NamedTuple):
    """The pieces the public functions are built from; `PIECES` holds the shipped ones."""

    key_valid: Callable = key_valid
    backward_mask: Callable = key_valid  # the mask the blocked backward recomputes S under
    scores: Callable = scores
    softmax_forward: Callable = row_softmax
    softmax_backward: Callable = softmax_backward_rows
    pv_backward: Callable = pv_backward
    qk_backward: Callable = qk_backward
    online_update: Callable = online_update
    row_term: Callable = row_term
    recompute_p: Callable = recompute_p


PIECES = Pieces()


# --- the cores: textbook (stores P) and by blocks ------------------------------------


def _indices(N, M):
    return jnp.arange(N)[:, None], jnp.arange(M)[None, :]


def forward_with_p(p: Pieces, Q, K, V, causal):
    N, M = Q.shape[-2], K.shape[-2]
    i, j = _indices(N, M)
    P = p.softmax_forward(p.scores(Q, K, p.key_valid(i, j, M, causal)))
    return jnp.einsum("...nm,...mc->...nc", P, V), P


def _backward(p: Pieces, dO, Q, K, V, causal):
    _, P = forward_with_p(p, Q, K, V, causal)
    dP, dV = p.pv_backward(dO, P, V)
    dS = p.softmax_backward(dP, P)
    dQ, dK = p.qk_backward(dS, Q, K)
    return dQ, dK, dV


def _key_blocks(X, B):
    """(..., M, e) -> (nb, ..., B, e): zero-padded to a multiple of B, blocks leading."""
    M = X.shape[-2]
    nb = -(-M // B)
    pad = [(0, 0)] * (X.ndim - 2) + [(0, nb * B - M), (0, 0)]
    Xb = jnp.pad(X, pad).reshape(*X.shape[:-2], nb, B, X.shape[-1])
    return jnp.moveaxis(Xb, -3, 0)


def _flash_forward(p: Pieces, Q, K, V, causal, B):
    """(O, lse) by key blocks; the largest temporary is one (..., N, B) block."""
    dt, wt = Q.dtype, _work_dtype(Q.dtype)
    Q, K, V = Q.astype(wt), K.astype(wt), V.astype(wt)
    N, M = Q.shape[-2], K.shape[-2]
    B = min(B, M)
    i = jnp.arange(N)[:, None]
    lead = Q.shape[:-2]
    init = Online(
        jnp.full((*lead, N), -jnp.inf, wt),
        jnp.zeros((*lead, N), wt),
        jnp.zeros((*lead, N, V.shape[-1]), wt),
        LSE(jnp.full((*lead, N), -jnp.inf, wt), jnp.zeros((*lead, N), wt)),
    )

    masked = causal or M % B != 0  # else every key of every block is valid: no mask pass

    def step(state, block):
        Kb, Vb, start = block
        j = start + jnp.arange(B)[None, :]
        S = p.scores(Q, Kb, p.key_valid(i, j, M, causal) if masked else True)
        return p.online_update(state, S, Vb), None

    starts = jnp.arange(0, -(-M // B) * B, B)
    final, _ = jax.lax.scan(step, init, (_key_blocks(K, B), _key_blocks(V, B), starts))
    O = final.acc / final.l[..., None]
    return O.astype(dt), final.lse


def _flash_backward(p: Pieces, dO, Q, K, V, O, lse, causal, B):
    """(dQ, dK, dV) by key blocks, P recomputed from the lse; D = rowsum(dO ⊙ O)."""
    dt, wt = Q.dtype, _work_dtype(Q.dtype)
    Q, K, V, dO, O = (x.astype(wt) for x in (Q, K, V, dO, O))
    N, M = Q.shape[-2], K.shape[-2]
    B = min(B, M)
    i = jnp.arange(N)[:, None]
    D = p.row_term(dO, O)
    masked = causal or M % B != 0

    def step(dQ, block):
        Kb, Vb, start = block
        j = start + jnp.arange(B)[None, :]
        valid = p.backward_mask(i, j, M, causal) if masked else True
        P = p.recompute_p(p.scores(Q, Kb, valid), lse, valid)
        dP, dVb = p.pv_backward(dO, P, Vb)
        dS = P * (dP - D[..., None])  # = softmax_backward(dP, P) with its row sum as D
        dQb, dKb = p.qk_backward(dS, Q, Kb)
        return dQ + dQb, (dKb, dVb)

    starts = jnp.arange(0, -(-M // B) * B, B)
    dQ, (dKb, dVb) = jax.lax.scan(
        step, jnp.zeros_like(Q), (_key_blocks(K, B), _key_blocks(V, B), starts)
    )

    def unblock(Xb):  # (nb, ..., B, e) -> (..., M, e)
        X = jnp.moveaxis(Xb, 0, -3)
        return X.reshape(*X.shape[:-3], -1, X.shape[-1])[..., :M, :]

    return dQ.astype(dt), unblock(dKb).astype(dt), unblock(dVb).astype(dt)


# --- the public functions -----------------------------------------------------------


def _qkv(Q, K, V, causal):
    Q = _float(Q, "Q", "(..., N, d)")
    K = _float(K, "K", "(..., M, d)")
    V = _float(V, "V", "(..., M, dv)")
    for name, x in (("K", K), ("V", V)):
        if x.dtype != Q.dtype:
            raise ValueError(
                f"{name} must have the dtype of Q ({Q.dtype}); got {x.dtype} (cast explicitly)"
            )
    if K.shape[:-2] != Q.shape[:-2] or V.shape[:-2] != Q.shape[:-2]:
        raise ValueError(
            "Q, K and V must share their leading (batch, head) dimensions; got "
            f"Q {Q.shape}, K {K.shape}, V {V.shape}"
        )
    if K.shape[-1] != Q.shape[-1]:
        raise ValueError(
            f"K must be (..., M, d) with Q's d = {Q.shape[-1]}; got K {K.shape}, Q {Q.shape}"
        )
    if V.shape[-2] != K.shape[-2]:
        raise ValueError(f"V must be (..., M, dv) with K's M = {K.shape[-2]}; got V {V.shape}")
    for name, x, letter in (("Q", Q, "N"), ("K", K, "M"), ("Q", Q, "d")):
        axis = -1 if letter == "d" else -2
        if x.shape[axis] == 0:
            raise ValueError(f"{name} must have {letter} >= 1; got shape {x.shape}")
    if not isinstance(causal, bool):
        raise ValueError(f"causal must be True or False; got {causal!r}")
    if causal and Q.shape[-2] != K.shape[-2]:
        raise ValueError(
            f"causal attention needs N = M (query i sees keys j <= i); got N = {Q.shape[-2]}, "
            f"M = {K.shape[-2]}"
        )
    return Q, K, V


def _float(x, name, letters):
    x = v.as_array(x, name, letters)
    if x.ndim < 2:
        raise ValueError(f"{name} must be {letters}, at least 2-D; got shape {x.shape}")
    return v.float_array(x, name, letters, x.ndim)


def _d_out(dO, Q, V):
    dO = _float(dO, "dO", "(..., N, dv)")
    want = (*Q.shape[:-1], V.shape[-1])
    if dO.shape != want:
        raise ValueError(f"dO must be (..., N, dv) = {want} to match Q and V; got {dO.shape}")
    if dO.dtype != Q.dtype:
        raise ValueError(f"dO must have the dtype of Q ({Q.dtype}); got {dO.dtype}")
    return dO


def _block(block_size):
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"block_size must be a positive integer; got {block_size!r}")
    return block_size


@functools.partial(jax.jit, static_argnums=0)
def _softmax_backward(p: Pieces, da, a):
    return p.softmax_backward(da, a)


@functools.partial(jax.jit, static_argnums=(0, 4))
def _attention(p: Pieces, Q, K, V, causal):
    return forward_with_p(p, Q, K, V, causal)[0]


@functools.partial(jax.jit, static_argnums=(0, 5))
def _attention_backward(p: Pieces, dO, Q, K, V, causal):
    return _backward(p, dO, Q, K, V, causal)


def softmax_backward(da, a, *, pieces: Pieces = PIECES) -> jax.Array:
    """∂L/∂z = a ⊙ (da − Σ_k da_k a_k), row-wise over the last axis   (..., C)

    The VJP of a = softmax(z) given the upstream da = ∂L/∂a: the seed's Jacobian
    a_ij (δ_jk − a_ik) contracted with da, never built (O(C) per row, not O(C²))."""
    a = v.as_array(a, "a", "(..., C)")
    a = v.float_array(a, "a", "(..., C)", max(a.ndim, 1))
    da = v.float_array(da, "da", "(..., C)", a.ndim)
    if da.shape != a.shape or da.dtype != a.dtype:
        raise ValueError(
            f"da must match a: shape {a.shape}, dtype {a.dtype}; got {da.shape}, {da.dtype}"
        )
    return _softmax_backward(pieces, da, a)


def attention(Q, K, V, *, causal: bool = False, pieces: Pieces = PIECES) -> jax.Array:
    """O = softmax_rows(Q·Kᵀ/√d)·V   (..., N, dv); with `causal`, key j > i is masked."""
    return _attention(pieces, *_qkv(Q, K, V, causal), causal)


def attention_backward(
    dO, Q, K, V, *, causal: bool = False, pieces: Pieces = PIECES
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(dQ, dK, dV) of O = attention(Q, K, V) given dO = ∂L/∂O, the textbook way (P stored):

    dV = Pᵀ·dO  (M, dv),  dP = dO·Vᵀ  (N, M),  dS = P ⊙ (dP − rowsum(dP ⊙ P))  (N, M),
    dQ = dS·K/√d  (N, d),  dK = dSᵀ·Q/√d  (M, d)"""
    Q, K, V = _qkv(Q, K, V, causal)
    return _attention_backward(pieces, _d_out(dO, Q, V), Q, K, V, causal)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def _flash(Q, K, V, causal, B, p):
    return _flash_forward(p, Q, K, V, causal, B)[0]


def _flash_fwd(Q, K, V, causal, B, p):
    O, lse = _flash_forward(p, Q, K, V, causal, B)
    return O, (Q, K, V, O, lse)  # residuals: O(N) beyond the inputs and output


def _flash_bwd(causal, B, p, res, dO):
    Q, K, V, O, lse = res
    return _flash_backward(p, dO, Q, K, V, O, lse, causal, B)


_flash.defvjp(_flash_fwd, _flash_bwd)
_flash_jit = jax.jit(_flash, static_argnums=(3, 4, 5))


def flash_attention(
    Q, K, V, *, causal: bool = False, block_size: int = DEFAULT_BLOCK, pieces: Pieces = PIECES
) -> jax.Array:
    """O = attention(Q, K, V) by key blocks of `block_size`, a `jax.custom_vjp` function.

    Forward: an online softmax over the blocks, saving only O and the row log-sum-exp.
    Backward (the registered rule, see `flash_attention_backward`): P recomputed per block
    from the log-sum-exp, D = rowsum(dO ⊙ O). No (N, M) array is ever formed; memory is
    O(N·B). Any N, M (the last block is padded and masked). bfloat16/float16 inputs
    accumulate in float32."""
    Q, K, V = _qkv(Q, K, V, causal)
    return _flash_jit(Q, K, V, causal, _block(block_size), pieces)


@functools.partial(jax.jit, static_argnums=(0, 5, 6))
def _flash_attention_backward(p, dO, Q, K, V, causal, B):
    O, lse = _flash_forward(p, Q, K, V, causal, B)
    return _flash_backward(p, dO, Q, K, V, O, lse, causal, B)


def flash_attention_backward(
    dO,
    Q,
    K,
    V,
    *,
    causal: bool = False,
    block_size: int = DEFAULT_BLOCK,
    pieces: Pieces = PIECES,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(dQ, dK, dV) by key blocks: flash_attention's registered backward, run after its
    forward. For each block b:  P_b = e^{S_b − lse},  dV_b = P_bᵀ·dO,  dP_b = dO·V_bᵀ,
    dS_b = P_b ⊙ (dP_b − D) with D = rowsum(dO ⊙ O),  dQ += dS_b·K_b/√d,  dK_b = dS_bᵀ·Q/√d."""
    Q, K, V = _qkv(Q, K, V, causal)
    return _flash_attention_backward(pieces, _d_out(dO, Q, V), Q, K, V, causal, _block(block_size))


# --- the derivation, step by step ---------------------------------------------------
# Softmax VJP: inputs {"z": (N, C), "da": (N, C)}. Flash dQ: {"Q", "K", "V", "dO"}.


def _a(z):
    return row_softmax(z)


def _contracted(x):
    a = _a(x["z"])
    return jnp.einsum("ij,ijk->ik", x["da"], softmax_jacobian_of(a))


def _indicator_split(x):
    a = _a(x["z"])
    return x["da"] * a - a * (x["da"] * a).sum(axis=1, keepdims=True)


def _factored(x):
    a = _a(x["z"])
    return a * (x["da"] - (x["da"] * a).sum(axis=1, keepdims=True))


SOFTMAX_VJP_CHAIN = [
    Step(
        "Jacobian contracted",
        "dz_ik = Σ_j da_ij ∂a_ij/∂z_ik = Σ_j da_ij a_ij (1[j=k] − a_ik)",
        "(N, C)",
        _contracted,
    ),
    Step("split the indicator", "= da_ik a_ik − a_ik Σ_j da_ij a_ij", "(N, C)", _indicator_split),
    Step("factored", "= a_ik (da_ik − Σ_j da_ij a_ij)", "(N, C)", _factored),
    Step(
        "shipped",
        "= a ⊙ (da − rowsum(da ⊙ a))   handgrad.softmax_backward",
        "(N, C)",
        lambda x: softmax_backward(x["da"], _a(x["z"])),
    ),
]


class _Parts(NamedTuple):
    Q: jax.Array
    K: jax.Array
    S: jax.Array  # (N, M) = Q·Kᵀ/√d
    P: jax.Array  # (N, M)
    O: jax.Array  # (N, dv) = P·V
    dO: jax.Array
    V: jax.Array
    dP: jax.Array  # (N, M) = dO·Vᵀ


def _attn_parts(x) -> _Parts:
    Q, K, V, dO = x["Q"], x["K"], x["V"], x["dO"]
    S = jnp.einsum("nd,md->nm", Q, K) / math.sqrt(Q.shape[-1])
    P = row_softmax(S)
    return _Parts(Q, K, S, P, P @ V, dO, V, dO @ V.T)


def _dq(t: _Parts, P, D):
    return (P * (t.dP - D[:, None])) @ t.K / math.sqrt(t.Q.shape[-1])  # dS·K/√d


def _dq_rowsum_dp_p(x):
    t = _attn_parts(x)
    return _dq(t, t.P, (t.dP * t.P).sum(axis=1))


def _dq_expanded(x):
    t = _attn_parts(x)
    return _dq(t, t.P, jnp.einsum("nm,nc,mc->n", t.P, t.dO, t.V))  # Σ_j P_ij Σ_c dO_ic V_jc


def _dq_rowsum_do_o(x):
    t = _attn_parts(x)
    return _dq(t, t.P, (t.dO * t.O).sum(axis=1))  # Σ_c dO_ic (P·V)_ic


def _dq_from_lse(x):
    t = _attn_parts(x)
    m = t.S.max(axis=1, keepdims=True)
    lse = m + jnp.log(jnp.exp(t.S - m).sum(axis=1, keepdims=True))
    return _dq(t, jnp.exp(t.S - lse), (t.dO * t.O).sum(axis=1))  # P from the saved lse


FLASH_DQ_CHAIN = [
    Step(
        "rowsum(dP ⊙ P)",
        "dQ = [P ⊙ (dP − rowsum(dP ⊙ P))]·K/√d,  dP = dO·Vᵀ",
        "(N, d) = (N, M)·(M, d)",
        _dq_rowsum_dp_p,
    ),
    Step(
        "expand dP",
        "rowsum(dP ⊙ P)_i = Σ_j P_ij Σ_c dO_ic V_jc",
        "(N, d) = (N, M)·(M, d)",
        _dq_expanded,
    ),
    Step(
        "swap the sums",
        "= Σ_c dO_ic (Σ_j P_ij V_jc) = rowsum(dO ⊙ O)_i",
        "(N, d) = (N, M)·(M, d)",
        _dq_rowsum_do_o,
    ),
    Step(
        "P from the log-sum-exp",
        "P_ij = e^{S_ij − lse_i},  lse_i = log Σ_j e^{S_ij}",
        "(N, d) = (N, M)·(M, d)",
        _dq_from_lse,
    ),
    Step(
        "shipped",
        "by key blocks of 4   handgrad.flash_attention_backward",
        "(N, d)",
        lambda x: flash_attention_backward(x["dO"], x["Q"], x["K"], x["V"], block_size=4)[0],
    ),
]

CHAINS: dict[str, list[Step]] = {
    "softmax_vjp": SOFTMAX_VJP_CHAIN,
    "flash_dq": FLASH_DQ_CHAIN,
}
