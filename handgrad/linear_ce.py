"""Fused linear + softmax cross-entropy: the seed's last layer at LLM scale, the N×V
logits never stored. docs/derivation.md, "Linear cross-entropy".

Letters: N tokens, H hidden, V vocabulary; B_n tokens and B_v entries per block. The seed:
z = X·W + b, L_i = lse_i − z_{i,y_i}, ∂L/∂z = (a − onehot)/N, dW = Xᵀ·dz, dX = dz·Wᵀ. Options:
soft cap s = c·tanh(z/c), z-loss α·lse², label smoothing ε, an ignored label. The forward
streams over vocabulary blocks with the online log-sum-exp (max + log-sum); the backward
recomputes each block's logits and forms its block of ∂L/∂z, one block at a time.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from handgrad import validate as v
from handgrad.ledger import Step

__all__ = [
    "BLOCK_ELEMENTS",
    "CHAINS",
    "LEDGER_OPTIONS",
    "PIECES",
    "Options",
    "Pieces",
    "block_grad",
    "block_logits",
    "linear_cross_entropy",
    "linear_cross_entropy_grads",
    "online_lse",
    "target_logit",
    "token_loss",
    "token_weights",
]

# A block of logits holds at most 2^21 entries (8 MiB in float32): small against the
# N×V it replaces, large enough that each block's matrix products run at full speed.
BLOCK_ELEMENTS = 2**21
_HI = lax.Precision.HIGHEST  # float32 products in float32, never TF32


class Options(NamedTuple):
    """The static options (hashable: jit and custom_vjp take them as they are)."""

    ignore_index: int = -100
    label_smoothing: float = 0.0
    z_loss: float = 0.0
    soft_cap: float | None = None
    reduction: str = "mean"
    block_v: int = 0
    block_n: int = 0
    pieces: Any = None  # a Pieces with some swapped (a mutant), or None: PIECES


# --- the pieces --------------------------------------------------------------------------


def block_logits(X_n, W_b, b_b, cap):
    """s = c·tanh(z/c) (or z without a cap),  z = X_n·W_b + b_b   (B_n, B_v), in float32
    at least: a bfloat16 product accumulates in float32."""
    acc = jnp.promote_types(X_n.dtype, jnp.float32)
    z = jnp.matmul(X_n, W_b, precision=_HI, preferred_element_type=acc) + b_b.astype(acc)
    return z if cap is None else cap * jnp.tanh(z / cap)


def online_lse(m, l, s, fresh):
    """One block of the online log-sum-exp over a row: m' = max(m, max_j s_j),
    l' = l·e^{m − m'} + Σ_j e^{s_j − m'} (only `fresh` columns), lse = m + log l at the end."""
    s = jnp.where(fresh, s, -jnp.inf)
    m_new = jnp.maximum(m, s.max(axis=1))
    # m = -inf before the first block: e^{-inf} = 0, never a NaN (m_new is finite)
    l_new = l * jnp.exp(m - m_new) + jnp.exp(s - m_new[:, None]).sum(axis=1)
    return m_new, l_new


def token_loss(lse, s_y, s_sum, V, eps, alpha):
    """L_i = lse_i − (1 − ε)·s_{i,y_i} − (ε/V)·Σ_j s_ij + α·lse_i²   (N,)
    (the cross-entropy against the smoothed target (1 − ε)·onehot + ε/V, plus the z-loss)."""
    return lse - (1 - eps) * s_y - (eps / V) * s_sum + alpha * lse**2


def block_grad(a, s, lse, y, cols, V, eps, alpha, cap, weight):
    """∂L/∂z for one block: (a·(1 + 2α·lse) − (1 − ε)·onehot − ε/V) ⊙ (1 − (s/c)²) ⊙ w_i
    (B_n, B_v), a = e^{s − lse}; w_i the token's weight (m_i ḡ / N_valid for the mean)."""
    onehot = (cols[None, :] == y[:, None]).astype(s.dtype)
    g = a * (1 + 2 * alpha * lse)[:, None] - (1 - eps) * onehot - eps / V
    if cap is not None:
        g = g * (1 - (s / cap) ** 2)  # d(c·tanh(z/c))/dz = 1 − tanh² = 1 − (s/c)²
    return g * weight[:, None]


# --- the blocks ----------------------------------------------------------------------------


def _blocks(N, V, o: Options):
    """(B_n, B_v): the options' sizes, else a block of at most BLOCK_ELEMENTS logits: the
    whole vocabulary when that leaves 128 tokens a block (one pass, below), else 4,096."""
    Bv = min(o.block_v or (V if V <= BLOCK_ELEMENTS // 128 else 4096), V)
    Bn = min(o.block_n or max(1, BLOCK_ELEMENTS // Bv), N)
    return Bn, Bv


def _slide(k, B, total):
    """Block k's start, slid back so that the last block ends at `total` (no padding, no
    copy), and which of its entries are new (the slid-back ones were counted already)."""
    start = jnp.minimum(k * B, total - B)
    return start, start + jnp.arange(B) >= k * B


def _row_block(X, y, t, Bn):
    N = X.shape[0]
    start, fresh = _slide(t, Bn, N)
    X_n = lax.dynamic_slice_in_dim(X, start, Bn, axis=0)
    return start, fresh, X_n, lax.dynamic_slice_in_dim(y, start, Bn)


def _col_block(W, b, k, Bv):
    V = W.shape[1]
    start, fresh = _slide(k, Bv, V)
    W_b = lax.dynamic_slice_in_dim(W, start, Bv, axis=1)
    return start, fresh, W_b, lax.dynamic_slice_in_dim(b, start, Bv)


def target_logit(X_n, y_n, W, b, cap):
    """s_{i,y_i} = c·tanh((x_i·W_{:,y_i} + b_{y_i})/c)   (B_n,): the label's column gathered
    (H, B_n), not found among the N×V (an ignored label reads column 0, masked later)."""
    acc = jnp.promote_types(X_n.dtype, jnp.float32)
    col = jnp.clip(y_n, 0, W.shape[1] - 1)
    z = jnp.einsum("ih,hi->i", X_n.astype(acc), jnp.take(W, col, axis=1).astype(acc)) + b[col]
    return z if cap is None else cap * jnp.tanh(z / cap)


def _row_stats(X_n, y_n, W, b, o: Options, Bv):
    """lse, s_{i,y_i} and Σ_j s_ij (0 without smoothing: not needed) for one block of
    tokens, streaming over the vocabulary."""
    V = W.shape[1]
    smoothing = o.label_smoothing > 0

    def body(k, carry):
        m, l, s_sum = carry
        _, fresh, W_b, b_b = _col_block(W, b, k, Bv)
        s = _p(o).block_logits(X_n, W_b, b_b, o.soft_cap)
        m, l = _p(o).online_lse(m, l, s, fresh[None, :])
        if smoothing:
            s_sum = s_sum + jnp.where(fresh[None, :], s, 0).sum(1)
        return m, l, s_sum

    acc = jnp.promote_types(X_n.dtype, jnp.float32)
    zero = jnp.zeros(X_n.shape[0], acc)
    m, l, s_sum = lax.fori_loop(0, -(-V // Bv), body, (jnp.full_like(zero, -jnp.inf), zero, zero))
    s_y = _p(o).target_logit(X_n, y_n, W, b, o.soft_cap)
    return m + jnp.log(l), s_y, s_sum  # lse kept as max + log-sum: never log of a sum of e^z


def _forward(X, W, b, y, o: Options):
    """(the loss, (lse (N,), the tokens' weights before ḡ, the bad-label mask))."""
    N, V = X.shape[0], W.shape[1]
    Bn, Bv = _blocks(N, V, o)
    acc = jnp.promote_types(X.dtype, jnp.float32)

    def body(t, carry):
        lse, losses = carry
        start, fresh, X_n, y_n = _row_block(X, y, t, Bn)
        lse_n, s_y, s_sum = _row_stats(X_n, y_n, W, b, o, Bv)
        L_n = _p(o).token_loss(lse_n, s_y, s_sum, V, o.label_smoothing, o.z_loss)
        keep = lambda new, old: jnp.where(fresh, new, old)  # noqa: E731
        old = lax.dynamic_slice_in_dim(lse, start, Bn), lax.dynamic_slice_in_dim(losses, start, Bn)
        lse = lax.dynamic_update_slice_in_dim(lse, keep(lse_n, old[0]), start, 0)
        losses = lax.dynamic_update_slice_in_dim(losses, keep(L_n, old[1]), start, 0)
        return lse, losses

    zero = jnp.zeros(N, acc)
    lse, losses = lax.fori_loop(0, -(-N // Bn), body, (zero, zero))
    weight = _p(o).token_weights(y, V, o, acc)
    return _reduce(losses, weight, o).astype(X.dtype), (lse, weight)


def token_weights(y, V, o: Options, dtype):
    """w_i = m_i / N_valid for the mean (m_i = 1[y_i ≠ ignore_index]), m_i for the sum and
    per token; NaN for a label out of [0, V). No valid token: N_valid is taken as 1, so the
    mean over no token is 0, and so is its gradient (a batch of padding only)."""
    valid = y != o.ignore_index
    bad = valid & ((y < 0) | (y >= V))  # a label out of range: NaN, never a plausible loss
    w = jnp.where(bad, jnp.nan, valid.astype(dtype))
    return w / jnp.maximum(valid.sum(), 1) if o.reduction == "mean" else w


def _reduce(losses, weight, o: Options):
    """Σ_i w_i L_i for the mean and the sum (0·L_i for an ignored token); w_i L_i per token."""
    per_token = jnp.where(weight == 0, 0.0, weight * losses)  # ignored: 0 even if L_i is inf
    return per_token if o.reduction == "none" else per_token.sum()


def _backward(X, W, b, y, lse, weight, o: Options):
    """(dX, dW, db): dX_n = Σ_b G_b·W_bᵀ, dW_b = Σ_n X_nᵀ·G_b, db_b = Σ_rows G_b, each
    block G_b (B_n, B_v) of ∂L/∂z recomputed from its logits and the saved lse."""
    (N, H), V = X.shape, W.shape[1]
    Bn, Bv = _blocks(N, V, o)
    acc = jnp.promote_types(X.dtype, jnp.float32)
    eps, alpha, cap = o.label_smoothing, o.z_loss, o.soft_cap

    def token_block(t, carry):
        dX, dW, db = carry
        start_n, fresh_n, X_n, y_n = _row_block(X, y, t, Bn)
        lse_n = lax.dynamic_slice_in_dim(lse, start_n, Bn)
        # rows of the slid-back block already done: weight 0, so dW and db count them once
        w_n = jnp.where(fresh_n, lax.dynamic_slice_in_dim(weight, start_n, Bn), 0.0)

        def vocab_block(k, inner):
            dX_n, dW, db = inner
            start, fresh, W_b, b_b = _col_block(W, b, k, Bv)
            s = _p(o).block_logits(X_n, W_b, b_b, cap)
            cols = start + jnp.arange(Bv)
            a = jnp.exp(s - lse_n[:, None])  # the block's probabilities, from the saved lse
            G = _p(o).block_grad(a, s, lse_n, y_n, cols, V, eps, alpha, cap, w_n)
            G = jnp.where(fresh[None, :], G, 0.0)
            # G·W_bᵀ (B_n, H) and X_nᵀ·G (H, B_v), contracted in place: no transposed copy
            dX_n = dX_n + lax.dot_general(G, W_b.astype(acc), (((1,), (1,)), ((), ())), _HI)
            dW_b = lax.dot_general(X_n.astype(acc), G, (((0,), (0,)), ((), ())), _HI)
            dW = lax.dynamic_update_slice_in_dim(
                dW, lax.dynamic_slice_in_dim(dW, start, Bv, axis=1) + dW_b, start, axis=1
            )
            db_b = lax.dynamic_slice_in_dim(db, start, Bv) + G.sum(axis=0)
            return dX_n, dW, lax.dynamic_update_slice_in_dim(db, db_b, start, 0)

        init = (jnp.zeros((Bn, H), acc), dW, db)
        dX_n, dW, db = lax.fori_loop(0, -(-V // Bv), vocab_block, init)
        old = lax.dynamic_slice_in_dim(dX, start_n, Bn, axis=0)
        dX_n = jnp.where(fresh_n[:, None], dX_n, old)
        return lax.dynamic_update_slice_in_dim(dX, dX_n, start_n, axis=0), dW, db

    init = (jnp.zeros((N, H), acc), jnp.zeros((H, V), acc), jnp.zeros(V, acc))
    return lax.fori_loop(0, -(-N // Bn), token_block, init)


class Pieces(NamedTuple):
    """The swappable pieces (`pieces=PIECES._replace(...)` runs a variant: the mutants)."""

    block_logits: Callable
    online_lse: Callable
    token_loss: Callable
    target_logit: Callable
    block_grad: Callable
    token_weights: Callable


PIECES = Pieces(block_logits, online_lse, token_loss, target_logit, block_grad, token_weights)


def _p(o: Options) -> Pieces:
    return PIECES if o.pieces is None else o.pieces


# --- the rule ------------------------------------------------------------------------------


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _fused(X, W, b, y, o: Options):
    return _forward(X, W, b, y, o)[0]


def _one_pass(X, W, b, y, o: Options):
    """(the loss, (dX, dW, db) at ḡ = 1) in one pass over token blocks, when one block
    covers the vocabulary: each block's row of logits (B_n, V) gives lse exactly and its
    ∂L/∂z at once, so no logit is computed twice (3 matrix products, as autodiff's)."""
    (N, H), V = X.shape, W.shape[1]
    Bn, _ = _blocks(N, V, o)
    acc = jnp.promote_types(X.dtype, jnp.float32)
    weight = _p(o).token_weights(y, V, o, acc)
    cols = jnp.arange(V)

    def body(t, carry):
        losses, dX, dW, db = carry
        start, fresh, X_n, y_n = _row_block(X, y, t, Bn)
        w_n = jnp.where(fresh, lax.dynamic_slice_in_dim(weight, start, Bn), 0.0)
        s = _p(o).block_logits(X_n, W, b, o.soft_cap)
        m = s.max(axis=1)
        e = jnp.exp(s - m[:, None])  # once: it gives both lse and the probabilities
        l = e.sum(axis=1)
        lse, a = m + jnp.log(l), e / l[:, None]
        s_sum = s.sum(axis=1) if o.label_smoothing > 0 else jnp.zeros_like(lse)
        s_y = _p(o).target_logit(X_n, y_n, W, b, o.soft_cap)
        L_n = _p(o).token_loss(lse, s_y, s_sum, V, o.label_smoothing, o.z_loss)
        old = lax.dynamic_slice_in_dim(losses, start, Bn)
        losses = lax.dynamic_update_slice_in_dim(losses, jnp.where(fresh, L_n, old), start, 0)
        G = _p(o).block_grad(a, s, lse, y_n, cols, V, o.label_smoothing, o.z_loss, o.soft_cap, w_n)
        dX_n = lax.dot_general(G, W.astype(acc), (((1,), (1,)), ((), ())), _HI)
        old = lax.dynamic_slice_in_dim(dX, start, Bn, axis=0)
        dX = lax.dynamic_update_slice_in_dim(dX, jnp.where(fresh[:, None], dX_n, old), start, 0)
        dW = dW + lax.dot_general(X_n.astype(acc), G, (((0,), (0,)), ((), ())), _HI)
        return losses, dX, dW, db + G.sum(axis=0)

    init = (jnp.zeros(N, acc), jnp.zeros((N, H), acc), jnp.zeros((H, V), acc), jnp.zeros(V, acc))
    losses, dX, dW, db = lax.fori_loop(0, -(-N // Bn), body, init)
    return _reduce(losses, weight, o).astype(X.dtype), (dX, dW, db)


def _single_block(X, W, o: Options) -> bool:
    """The one-pass rule applies: one block covers V, and ḡ is a scalar (not "none")."""
    return _blocks(X.shape[0], W.shape[1], o)[1] == W.shape[1] and o.reduction != "none"


def _fused_fwd(X, W, b, y, o: Options):
    if _single_block(X, W, o):
        loss, grads = _one_pass(X, W, b, y, o)
        return loss, (X, W, b, y, grads)
    loss, (lse, weight) = _forward(X, W, b, y, o)
    return loss, (X, W, b, y, (lse, weight))


def _fused_bwd(o: Options, res, g):
    X, W, b, y, saved = res
    if _single_block(X, W, o):  # the gradient at ḡ = 1, formed in the forward pass
        dX, dW, db = (g.astype(d.dtype) * d for d in saved)
        return dX.astype(X.dtype), dW.astype(W.dtype), db.astype(b.dtype), None
    lse, weight = saved
    # the upstream cotangent scales each token's weight: a scalar for mean and sum, (N,)
    # per token for reduction="none"
    w = weight * g.astype(weight.dtype)
    dX, dW, db = _backward(X, W, b, y, lse, w, o)
    return dX.astype(X.dtype), dW.astype(W.dtype), db.astype(b.dtype), None


_fused.defvjp(_fused_fwd, _fused_bwd)


def _options(
    ignore_index, label_smoothing, z_loss, soft_cap, reduction, block_v, block_n, pieces=None
):
    """The options as `Options`, or a ValueError naming the one that is wrong."""
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none'; got {reduction!r}")
    if not (0.0 <= float(label_smoothing) <= 1.0):
        raise ValueError(f"label_smoothing must be in [0, 1]; got {label_smoothing!r}")
    if not (math.isfinite(float(z_loss)) and float(z_loss) >= 0):
        raise ValueError(f"z_loss must be a finite number >= 0; got {z_loss!r}")
    if soft_cap is not None and not (math.isfinite(float(soft_cap)) and float(soft_cap) > 0):
        raise ValueError(f"soft_cap must be None or a finite number > 0; got {soft_cap!r}")
    for name, size in (("block_v", block_v), ("block_n", block_n)):
        if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 1):
            raise ValueError(f"{name} must be None or an integer >= 1; got {size!r}")
    return Options(
        int(ignore_index),
        float(label_smoothing),
        float(z_loss),
        None if soft_cap is None else float(soft_cap),
        reduction,
        block_v or 0,
        block_n or 0,
        pieces,
    )


def _checked(X, W, y, b, o: Options):
    """(X, W, b, y) validated, b zeros when None; a ValueError naming what is wrong."""
    X = v.float_array(X, "X", "(N, H)", 2)
    W = v.float_array(W, "W", "(H, V)", 2)
    N, H = X.shape
    if N == 0 or H == 0 or W.shape[1] == 0:
        raise ValueError(f"X (N, H) and W (H, V) must be non-empty; got {X.shape}, {W.shape}")
    if W.shape[0] != H:
        raise ValueError(f"W must be (H, V) with H = {H} to match X (N, H); got {W.shape}")
    v.check_same_dtype("W", W, "X", X)
    V = W.shape[1]
    b = jnp.zeros(V, X.dtype) if b is None else v.float_array(b, "b", "(V,)", 1)
    if b.shape != (V,):
        raise ValueError(f"b must be (V,) = ({V},) to match W (H, V); got {b.shape}")
    v.check_same_dtype("b", b, "X", X)
    y = v.check_labels(y, N, V, against="X (N, H)", ignore=o.ignore_index)
    return tuple(jnp.asarray(a) for a in (X, W, b, y))  # on the device: traced inside loops


def linear_cross_entropy_grads(X, W, y, b=None, **options):
    """(L, (dX, dW, db)) by the rule's own forward and backward, no autodiff: for a hand
    backward that continues below this layer (an MLP's head). Options and reduction
    ("mean" or "sum") as `linear_cross_entropy`."""
    o = _options(**{**_DEFAULTS, **options})
    if o.reduction == "none":
        raise ValueError("linear_cross_entropy_grads: reduction must be 'mean' or 'sum'")
    X, W, b, y = _checked(X, W, y, b, o)
    loss, res = _fused_fwd(X, W, b, y, o)
    dX, dW, db, _ = _fused_bwd(o, res, jnp.ones((), loss.dtype))
    return loss, (dX, dW, db)


_DEFAULTS = dict(
    ignore_index=-100,
    label_smoothing=0.0,
    z_loss=0.0,
    soft_cap=None,
    reduction="mean",
    block_v=None,
    block_n=None,
    pieces=None,
)


def linear_cross_entropy(
    X,
    W,
    y,
    b=None,
    *,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    soft_cap: float | None = None,
    reduction: str = "mean",
    block_v: int | None = None,
    block_n: int | None = None,
    pieces: Pieces | None = None,
):
    """The cross-entropy of softmax(X·W + b) against labels y, its rule derived by hand:
    () for "mean" (over labels not `ignore_index`; 0 when all are) and "sum", (N,) for
    "none". X (N, H), W (H, V), y (N,) integers, b (V,) or None. A label out of [0, V)
    raises when concrete and gives NaN under jit. No N×V array is ever stored."""
    o = _options(
        ignore_index, label_smoothing, z_loss, soft_cap, reduction, block_v, block_n, pieces
    )
    return _fused(*_checked(X, W, y, b, o), o)


# --- the derivation's steps (jax_ref.ledger runs them) -------------------------------------

# every option at once, as the ledger's inputs are small: one block holds every logit
LEDGER_OPTIONS = dict(label_smoothing=0.1, z_loss=1e-3, soft_cap=30.0)


def _dz(x):
    o = _options(**{**_DEFAULTS, **LEDGER_OPTIONS})
    X, W, b, y = x["X"], x["W"], x["b"], x["y"]
    V = W.shape[1]
    s = block_logits(X, W, b, o.soft_cap)
    m = s.max(axis=1)
    lse = m + jnp.log(jnp.exp(s - m[:, None]).sum(axis=1))
    w = token_weights(y, V, o, s.dtype)
    a = jnp.exp(s - lse[:, None])
    return block_grad(a, s, lse, y, jnp.arange(V), V, o.label_smoothing, o.z_loss, o.soft_cap, w)


def _shipped(x):
    X, W, b, y = x["X"], x["W"], x["b"], x["y"]
    streamed = dict(block_v=4, block_n=3)  # blocks that divide neither V nor N
    return linear_cross_entropy_grads(X, W, y, b, **LEDGER_OPTIONS, **streamed)[1]


CHAINS = {
    "linear_ce_grad": [
        Step(
            "dz",
            "∂L/∂z = (a·(1 + 2α·lse) − (1 − ε)·onehot − ε/V) ⊙ (1 − (s/c)²) ⊙ m/N_valid",
            "(N, V)",
            _dz,
        ),
        Step("dW", "dW = Xᵀ·dz", "(H, V) = (H, N)·(N, V)", lambda x: x["X"].T @ _dz(x)),
        Step("dX", "dX = dz·Wᵀ", "(N, H) = (N, V)·(V, H)", lambda x: _dz(x) @ x["W"].T),
        Step("db", "db = Σ_rows dz", "(V,)", lambda x: _dz(x).sum(axis=0)),
        Step(
            "shipped",
            "(dX, dW, db) = handgrad.linear_cross_entropy_grads(X, W, y, b), streamed in blocks",
            "(N, H), (H, V), (V,)",
            _shipped,
        ),
    ],
}
