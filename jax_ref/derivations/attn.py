"""Referee spec of `handgrad.attention`: softmax VJP, attention, its backward, flash attention.

The reference writes attention with `jax.nn.softmax` and a `jnp.where` mask, stores P, and
differentiates it with `jax.vjp`; the flash functions' reference is the same (it ignores the
block size: blocking must not change the mathematics).
"""

from __future__ import annotations

import dataclasses
import math
import sys

import jax
import jax.numpy as jnp
import numpy as np

import handgrad.attn as hand
from jax_ref.spec import Derivation, GradientCheck, Ledger, Mutant, Output
from jax_ref.tolerances import tolerance

__all__ = [
    "DERIVATION",
    "AttentionCase",
    "attention",
    "attention_backward",
    "attention_case",
    "attention_classifier_grads",
    "attention_classifier_loss",
    "flash_attention",
    "flash_attention_backward",
    "softmax_backward",
]


# --- the reference ------------------------------------------------------------------


def _mask(N, M, causal):
    return np.tril(np.ones((N, M), bool)) if causal else np.ones((N, M), bool)


def _attention(Q, K, V, mask):
    S = jnp.einsum("...nd,...md->...nm", Q, K) / jnp.sqrt(jnp.asarray(Q.shape[-1], Q.dtype))
    P = jax.nn.softmax(jnp.where(mask, S, -jnp.inf), axis=-1)
    return jnp.einsum("...nm,...mc->...nc", P, V)


def attention(Q, K, V, *, causal=False):
    """softmax(Q·Kᵀ/√d, masked)·V with jax.nn.softmax, P stored"""
    return _attention(Q, K, V, _mask(Q.shape[-2], K.shape[-2], causal))


def attention_backward(dO, Q, K, V, *, causal=False):
    """jax.vjp of `attention` at (Q, K, V), applied to dO"""
    return jax.vjp(lambda q, k, w: attention(q, k, w, causal=causal), Q, K, V)[1](dO)


def flash_attention(Q, K, V, *, causal=False, block_size=None):
    return attention(Q, K, V, causal=causal)


def flash_attention_backward(dO, Q, K, V, *, causal=False, block_size=None):
    return attention_backward(dO, Q, K, V, causal=causal)


def softmax_backward(da, a):
    """jax.vjp of jax.nn.softmax at z = log a (softmax is shift-invariant: softmax(log a) = a)"""
    return jax.vjp(lambda z: jax.nn.softmax(z, axis=-1), jnp.log(a))[1](da)[0]


def pairing(QKV, dO, mask):
    """⟨dO, attention(Q, K, V)⟩: the scalar whose gradient in (Q, K, V) is the VJP at dO."""
    return jnp.sum(dO * _attention(*QKV, mask))


# --- inputs -------------------------------------------------------------------------


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class AttentionCase:
    Q: np.ndarray  # (..., N, d)
    K: np.ndarray  # (..., M, d)
    V: np.ndarray  # (..., M, dv)
    dO: np.ndarray  # (..., N, dv)
    da: np.ndarray  # (N, M): an upstream gradient for softmax_backward
    a: np.ndarray  # (N, M): softmax probabilities
    mask: np.ndarray  # (N, M) bool: the causal (or full) mask, for the referee's loss
    causal: bool = dataclasses.field(default=False, metadata={"static": True})
    block: int = dataclasses.field(default=4, metadata={"static": True})


# (leading, N, M, d, dv, causal, block, score scale), generic first: a ragged last block;
# square causal with heads; one query and one key; two leading dims and M = 3 blocks
# exactly; scores |S| ~ 50 (float32 must not overflow); square, one block.
EDGE_CASES = (
    ((), 5, 7, 3, 2, False, 4, 1.0),
    ((2,), 6, 6, 4, 4, True, 4, 1.0),
    ((), 1, 1, 1, 1, False, 4, 1.0),
    ((2, 3), 4, 9, 2, 3, False, 3, 1.0),
    ((), 4, 4, 8, 2, True, 2, 50.0),
    ((), 4, 4, 4, 4, False, 8, 3.0),
)


def attention_case(seed, lead, N, M, d, dv, causal, block, scale, dtype) -> AttentionCase:
    """Q, K with scores S = Q·Kᵀ/√d of size ~scale; V, dO, da standard normal."""
    rng = np.random.default_rng(seed)
    r = math.sqrt(scale)  # |Q_i·K_j| ~ scale·√d; /√d: S ~ scale

    def n(*shape, s=1.0):
        return (rng.standard_normal(shape) * s).astype(dtype)

    z = rng.standard_normal((N, M)) * 2
    a = np.exp(z - z.max(1, keepdims=True))
    a = (a / a.sum(1, keepdims=True)).astype(dtype)
    return AttentionCase(
        n(*lead, N, d, s=r),
        n(*lead, M, d, s=r),
        n(*lead, M, dv),
        n(*lead, N, dv),
        n(N, M),
        a,
        _mask(N, M, causal),
        causal,
        block,
    )


def cases(seed: int = 0, dtypes=(np.float64, np.float32), random_cases: int = 2):
    rng = np.random.default_rng(seed)
    shapes = list(EDGE_CASES)
    for _ in range(random_cases):
        N = int(rng.integers(1, 9))
        causal = bool(rng.integers(0, 2))
        M = N if causal else int(rng.integers(1, 11))
        shapes.append(
            (
                (int(rng.integers(1, 3)),),
                N,
                M,
                int(rng.integers(1, 6)),
                int(rng.integers(1, 4)),
                causal,
                int(rng.integers(1, 5)),
                10.0 ** float(rng.integers(-1, 2)),
            )
        )
    out = []
    for lead, N, M, d, dv, causal, block, scale in shapes:
        for dtype in dtypes:
            tag = (
                f"{np.dtype(dtype).name} {'x'.join(map(str, lead)) + ' ' if lead else ''}"
                f"N={N} M={M} d={d} dv={dv}{' causal' if causal else ''} B={block} S~{scale:g}"
            )
            seed_i = int(rng.integers(0, 2**31))
            out.append(
                (attention_case(seed_i, lead, N, M, d, dv, causal, block, scale, dtype), tag)
            )
    return out


def strategy(*, dtypes=None):
    """Hypothesis strategy of AttentionCase over the edge shapes, random seeds and dtypes."""
    from hypothesis import strategies as st

    from jax_ref import strategies as hs

    @st.composite
    def draw_case(draw):
        shape = draw(st.sampled_from(EDGE_CASES))
        return attention_case(draw(hs.seeds()), *shape, draw(dtypes or hs.dtypes()))

    return draw_case()


# --- natural scales: the same computation on absolute values ------------------------------


def _abs_parts(c: AttentionCase):
    Q, K, V, dO = (np.abs(np.asarray(x, np.float64)) for x in (c.Q, c.K, c.V, c.dO))
    d = c.Q.shape[-1]
    P = np.asarray(attention_probs(c), np.float64)
    dP = dO @ np.swapaxes(V, -1, -2)
    dS = P * (dP + (dP * P).sum(-1, keepdims=True))
    return Q, K, V, dO, P, dS, d


def attention_probs(c: AttentionCase):
    Q, K = np.asarray(c.Q, np.float64), np.asarray(c.K, np.float64)
    S = Q @ np.swapaxes(K, -1, -2) / math.sqrt(Q.shape[-1])
    S = np.where(c.mask, S, -np.inf)
    e = np.exp(S - S.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _backward_scale(c: AttentionCase):
    Q, K, _, dO, P, dS, d = _abs_parts(c)
    dQ = dS @ K / math.sqrt(d)
    dK = np.swapaxes(dS, -1, -2) @ Q / math.sqrt(d)
    dV = np.swapaxes(P, -1, -2) @ dO
    return tuple(float(x.max(initial=0.0)) for x in (dQ, dK, dV))


def _scale(name):
    return {
        "softmax_backward": lambda c: float(
            np.max(np.abs(np.asarray(c.a, np.float64)) * np.abs(np.asarray(c.da, np.float64))) * 2
        ),
        "attention": lambda c: float(np.max(np.abs(np.asarray(c.V, np.float64)), initial=0.0)),
        "attention_backward": _backward_scale,
    }[name]


# --- properties of its own ----------------------------------------------------------------


def rows_of_ds_sum_to_zero(impl, case: AttentionCase) -> None:
    """Σ_k dS_ik = Σ_k a_ik (da_ik − Σ_j da_ij a_ij) = 0: softmax is shift-invariant."""
    dS = np.asarray(impl.softmax_backward(case.da, case.a), np.float64)
    tol = tolerance(case.a.dtype) * max(_scale("softmax_backward")(case), 1e-300) * 4
    worst = float(np.abs(dS.sum(-1)).max())
    if not worst <= tol * case.a.shape[-1]:
        raise AssertionError(f"softmax_backward rows sum to {worst:.3g}, not 0 (allowed {tol:.2g})")


def causal_ignores_the_future(impl, case: AttentionCase) -> None:
    """Causal: with dO nonzero in query row 0 only, only key 0 gets a gradient (query 0
    sees key 0 alone), in the textbook backward and the blocked one."""
    if not case.causal:
        return
    dO = np.zeros_like(case.dO)
    dO[..., 0, :] = case.dO[..., 0, :]
    for name, kw in (
        ("attention_backward", {}),
        ("flash_attention_backward", {"block_size": case.block}),
    ):
        _, dK, dV = getattr(impl, name)(dO, case.Q, case.K, case.V, causal=True, **kw)
        leak = max(
            float(np.abs(np.asarray(x, np.float64)[..., 1:, :]).max(initial=0.0)) for x in (dK, dV)
        )
        if leak != 0.0:
            raise AssertionError(f"{name}: keys after 0 get gradient {leak:.3g} from query 0")


def flash_matches_textbook(impl, case: AttentionCase) -> None:
    """The blocked forward and backward equal the textbook ones (hand against hand: a
    blocking bug shows even where the referee is not consulted)."""
    kw = {"causal": case.causal}
    O = impl.attention(case.Q, case.K, case.V, **kw)
    Of = impl.flash_attention(case.Q, case.K, case.V, block_size=case.block, **kw)
    g = impl.attention_backward(case.dO, case.Q, case.K, case.V, **kw)
    gf = impl.flash_attention_backward(case.dO, case.Q, case.K, case.V, block_size=case.block, **kw)
    tol = tolerance(case.Q.dtype)
    scales = (_scale("attention")(case), *_backward_scale(case))
    for name, x, y, s in zip(("O", "dQ", "dK", "dV"), (O, *g), (Of, *gf), scales):
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        err = float(np.abs(x - y).max(initial=0.0)) if np.all(np.isfinite(y)) else math.inf
        if not err <= tol * max(s, float(np.abs(x).max(initial=0.0)), 1e-300):
            raise AssertionError(f"flash {name} differs from the textbook one by {err:.3g}")


# --- mutants --------------------------------------------------------------------------------

AGREES, FD = "agrees", "finite_differences"
ROWS, CAUSAL, FLASH = (
    "rows_of_ds_sum_to_zero",
    "causal_ignores_the_future",
    "flash_matches_textbook",
)


def _qk_no_scale(dS, Q, K):
    return jnp.einsum("...nm,...md->...nd", dS, K), jnp.einsum("...nm,...nd->...md", dS, Q)


def _qk_swapped(dS, Q, K):
    dQ, dK = hand.qk_backward(dS, Q, K)
    return dK, dQ


def _pv_no_transpose(dO, P, V):
    dP, _ = hand.pv_backward(dO, P, V)
    return dP, jnp.einsum("...nm,...mc->...nc", P, dO)  # P·dO: runs only when N = M


def _online_lse_stale(state, S, Vb):
    new = hand.online_update(state, S, Vb)
    m_old = jnp.where(jnp.isneginf(state.m), 0.0, state.m)
    return new._replace(lse=hand.LSE(m_old, jnp.log(state.l)))  # before this block's rescale


def _online_no_rescale(state, S, Vb):
    m_new = jnp.maximum(state.m, S.max(axis=-1))
    m_use = jnp.where(jnp.isneginf(m_new), 0.0, m_new)
    alpha = jnp.exp(state.m - m_use)
    p = jnp.exp(S - m_use[..., None])
    l_new = alpha * state.l + p.sum(axis=-1)
    acc = state.acc + jnp.einsum("...nb,...bc->...nc", p, Vb)  # acc not rescaled by alpha
    return hand.Online(m_new, l_new, acc, hand.LSE(m_use, jnp.log(l_new)))


MUTANTS = (
    Mutant(
        "backward_missing_inv_sqrt_d",
        "dQ = dS·K, dK = dSᵀ·Q: the 1/√d of S = Q·Kᵀ/√d forgotten in the backward",
        {"qk_backward": _qk_no_scale},
        "any d > 1",
        (AGREES, FD),
    ),
    Mutant(
        "rowsum_wrong_axis",
        "dS = P ⊙ (dP − Σ_i dP ⊙ P): the row sum taken down the columns",
        {"softmax_backward": lambda da, a: a * (da - (da * a).sum(axis=-2, keepdims=True))},
        "more than one row",
        (AGREES, ROWS),
    ),
    Mutant(
        "causal_mask_forgotten_in_backward",
        "the blocked backward recomputes S without the causal mask (the forward has it)",
        {"backward_mask": lambda i, j, M, causal: hand.key_valid(i, j, M, False)},
        "causal, N > 1",
        (AGREES, FD, CAUSAL, FLASH),
    ),
    Mutant(
        "dq_dk_swapped",
        "(dQ, dK) returned as (dK, dQ): runs on square shapes",
        {"qk_backward": _qk_swapped},
        "N = M, Q != K",
        (AGREES, FD),
        raises=(TypeError, ValueError),
    ),
    Mutant(
        "block_boundary_off_by_one",
        "key j valid while j <= M: one zero-padded key joins the softmax",
        {"key_valid": lambda i, j, M, causal: (j <= M) & (j <= i) if causal else j <= M},
        "M not a multiple of the block size",
        (AGREES, FLASH),
    ),
    Mutant(
        "lse_saved_before_last_rescale",
        "lse = m + log l taken before the last block's update: P recomputed wrong",
        {"online_update": _online_lse_stale},
        "more than one key block",
        (AGREES, FD, FLASH),
    ),
    Mutant(
        "softmax_backward_elementwise",
        "dS = P ⊙ dP: softmax differentiated as if elementwise (the Jacobian's diagonal)",
        {"softmax_backward": lambda da, a: a * da},
        "any row",
        (AGREES, ROWS),
    ),
    Mutant(
        "dv_without_transpose",
        "dV = P·dO instead of Pᵀ·dO: runs on square shapes",
        {"pv_backward": _pv_no_transpose},
        "N = M, P not symmetric",
        (AGREES,),
        raises=(TypeError, ValueError),
    ),
    Mutant(
        "online_softmax_no_rescale",
        "acc' = acc + e^{S − m'}·V_b: the running sum not rescaled when the max grows",
        {"online_update": _online_no_rescale},
        "a later block holds a larger score",
        (AGREES, FLASH),
    ),
    Mutant(
        "row_term_forgot_o",
        "D = rowsum(dO) instead of rowsum(dO ⊙ O)",
        {"row_term": lambda dO, O: dO.sum(axis=-1)},
        "any dO",
        (AGREES, FD, FLASH),
    ),
)


# --- the ledger's side ----------------------------------------------------------------------


def _ledger_inputs(chain, rng, scale):
    if chain == "softmax_vjp":
        return {
            "z": jnp.asarray(rng.standard_normal((5, 4)) * scale),
            "da": jnp.asarray(rng.standard_normal((5, 4))),
        }
    return {
        "Q": jnp.asarray(rng.standard_normal((5, 3)) * scale),
        "K": jnp.asarray(rng.standard_normal((7, 3))),
        "V": jnp.asarray(rng.standard_normal((7, 2))),
        "dO": jnp.asarray(rng.standard_normal((5, 2))),
    }


def _ledger_autodiff(chain, step, x):
    if chain == "softmax_vjp":
        return jax.vjp(lambda z: jax.nn.softmax(z, axis=-1), x["z"])[1](x["da"])[0]
    return jax.vjp(lambda q: attention(q, x["K"], x["V"]), x["Q"])[1](x["dO"])[0]


def _ledger_letters(x):
    if "z" in x:
        return {"N": x["z"].shape[0], "C": x["z"].shape[1]}
    return {"N": x["Q"].shape[0], "M": x["K"].shape[0], "d": x["Q"].shape[1]}


def _ledger_scale(chain, x):
    if chain == "softmax_vjp":
        return float(jnp.abs(x["da"]).max())
    return float(jnp.abs(x["dO"]).max() * jnp.abs(x["V"]).max() * jnp.abs(x["K"]).max()) * 2


def _qkv(c):
    return (c.Q, c.K, c.V)


def _kw(c):
    return {"causal": c.causal}


def _flash_kw(c):
    return {"causal": c.causal, "block_size": c.block}


def _dO_QKV(c):
    return (c.dO, c.Q, c.K, c.V)


def _backward_output(function, kwargs) -> Output:
    """A backward pass (dO, Q, K, V) -> (dQ, dK, dV) against the referee's jax.vjp."""
    return Output(function, ("dQ", "dK", "dV"), _dO_QKV, _scale("attention_backward"), kwargs)


def _pairing_check(function, kwargs) -> GradientCheck:
    """The same backward pass as the gradient of ⟨dO, O(Q, K, V)⟩, by finite differences."""
    return GradientCheck(
        function,
        pairing,
        _dO_QKV,
        scale=_scale("attention_backward"),
        parameter=("dQ", "dK", "dV"),
        kwargs=kwargs,
        loss_args=lambda c: ((c.Q, c.K, c.V), c.dO, c.mask),
    )


DERIVATION = Derivation(
    name="attention",
    module=hand,
    reference=sys.modules[__name__],
    outputs=(
        Output(
            "softmax_backward",
            "∂L/∂z",
            lambda c: (c.da, c.a),
            _scale("softmax_backward"),
        ),
        Output("attention", "O", _qkv, _scale("attention"), _kw),
        _backward_output("attention_backward", _kw),
        Output("flash_attention", "O", _qkv, _scale("attention"), _flash_kw),
        _backward_output("flash_attention_backward", _flash_kw),
    ),
    gradients=(
        _pairing_check("attention_backward", _kw),
        _pairing_check("flash_attention_backward", _flash_kw),
    ),
    cases=cases,
    strategy=strategy,
    properties={
        ROWS: rows_of_ds_sum_to_zero,
        CAUSAL: causal_ignores_the_future,
        FLASH: flash_matches_textbook,
    },
    mutants=MUTANTS,
    ledger=Ledger(
        _ledger_inputs,
        _ledger_autodiff,
        _ledger_letters,
        _ledger_scale,
        equalities=tuple(hand.CHAINS),
    ),
    order=40,
)


# --- the attention classifier of `handgrad train --model attention` -----------------------


def attention_classifier_loss(params, X, y, reg=0.0):
    """The classifier of handgrad.attn_model written with jax.nn: tokens, one attention
    layer (this module's `attention`), the residual, a ReLU MLP head, log_softmax."""
    N, D = X.shape
    F = params.Wq.shape[0]
    Xt = X.reshape(N, D // F, F)
    O = attention(Xt @ params.Wq, Xt @ params.Wk, Xt @ params.Wv)
    h = (Xt + O).reshape(N, -1)
    z2 = jax.nn.relu(h @ params.W1 + params.b1) @ params.W2 + params.b2
    ce = -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(z2), y[:, None], axis=1))
    weights = (params.Wq, params.Wk, params.Wv, params.W1, params.W2)
    return ce + reg * sum(jnp.sum(W**2) for W in weights)


def attention_classifier_grads(params, X, y, reg=0.0):
    """(L, ∂L/∂θ) by jax.value_and_grad of `attention_classifier_loss`."""
    return jax.value_and_grad(attention_classifier_loss)(params, X, y, reg)
