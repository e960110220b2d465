"""Referee spec of `handgrad.mlp`: the derivation's two-layer ReLU MLP and its backward pass.

The reference is written independently with `jax.nn` and differentiated by
`jax.value_and_grad`; it shares only the `Params` type and the public argument checks
with handgrad. Then inputs, natural scales, properties, mutants and ledger inputs.
"""

from __future__ import annotations

import functools
import sys
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

import handgrad.mlp as hand
from handgrad import validate as v
from handgrad.mlp import Params
from handgrad.softmax_ce import softmax_ce_backward, softmax_ce_forward
from jax_ref import properties as props
from jax_ref.spec import Derivation, GradientCheck, Ledger, Mutant, Output
from jax_ref.tolerances import tolerance

__all__ = [
    "DERIVATION",
    "EDGE_DIMS",
    "MLPCase",
    "mlp_case",
    "mlp_cases",
    "mlp_forward",
    "mlp_grads",
    "mlp_loss",
    "mlp_scales",
]

_HI = jax.lax.Precision.HIGHEST


# --- the reference ------------------------------------------------------------------


@jax.jit
def _forward(params, X):
    W1, b1, W2, b2 = params
    hidden = jax.nn.relu(jnp.dot(X, W1, precision=_HI) + b1)
    return jnp.dot(hidden, W2, precision=_HI) + b2


@jax.jit
def _loss(params, X, y, reg):
    W1, _, W2, _ = params
    z = _forward(params, X)
    onehot = jax.nn.one_hot(y, z.shape[1], dtype=z.dtype)  # a bad label: a zero row...
    per_row = -jnp.sum(onehot * jax.nn.log_softmax(z, axis=-1), axis=-1)
    per_row = jnp.where(onehot.sum(axis=-1) == 1, per_row, jnp.nan)  # ...which must not pass
    return jnp.mean(per_row) + reg * (jnp.vdot(W1, W1) + jnp.vdot(W2, W2))


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


# --- inputs -------------------------------------------------------------------------


class MLPCase(NamedTuple):
    params: Params
    X: np.ndarray  # (N, D)
    y: np.ndarray  # (N,)
    reg: float


# Shapes (N, D, H, C) every sweep covers, generic first (most mistakes show there): single
# row, single class, one feature, one hidden unit, square H = C, square N = C.
EDGE_DIMS = (
    (6, 5, 7, 3),  # generic
    (1, 3, 4, 3),  # N = 1
    (4, 3, 5, 1),  # C = 1
    (5, 1, 4, 3),  # D = 1
    (4, 3, 1, 3),  # H = 1
    (3, 2, 4, 4),  # H = C
    (4, 3, 5, 4),  # N = C
    (1, 1, 1, 1),  # everything 1
)


def mlp_case(
    seed: int,
    N: int,
    D: int,
    H: int,
    C: int,
    dtype,
    *,
    x_scale: float = 1.0,
    w_scale: float = 1.0,
    kinks: bool = False,
    reg: float = 0.0,
) -> MLPCase:
    """A two-layer MLP problem. `kinks` zeroes half the hidden units' weights and biases so
    their pre-activations z1 are exactly 0: the ReLU's kink, where the convention decides.
    Biases are nonzero so a mistake that regularises them is visible."""
    rng = np.random.default_rng(seed)

    def normal(*shape, s=1.0):
        return (rng.standard_normal(shape) * s).astype(dtype)

    W1 = normal(D, H, s=w_scale / np.sqrt(D))
    b1 = normal(H, s=0.1 * w_scale)
    if kinks:
        dead = np.arange(H) % 2 == 0
        W1[:, dead] = 0
        b1[dead] = 0
    params = Params(W1, b1, normal(H, C, s=w_scale / np.sqrt(H)), normal(C, s=0.1 * w_scale))
    X = normal(N, D, s=x_scale)
    return MLPCase(params, X, rng.integers(0, C, size=N).astype(np.int32), float(reg))


def cases(seed: int = 0, dtypes=(np.float64, np.float32), random_cases: int = 2):
    """Every edge shape and `random_cases` random ones, each dtype: plain, and in turn
    reg > 0 with exact kinks or extreme logits (|z2| ~ 1e3); the generic shape (first)
    gets all three, since most mistakes show there first."""
    rng = np.random.default_rng(seed)
    dims = list(EDGE_DIMS) + [
        tuple(int(n) for n in rng.integers(1, 9, size=4)) for _ in range(random_cases)
    ]
    out = []
    for k, (N, D, H, C) in enumerate(dims):
        for dtype in dtypes:
            s, tag = int(rng.integers(0, 2**31)), f"{np.dtype(dtype).name} N={N} D={D} H={H} C={C}"
            out.append((mlp_case(s, N, D, H, C, dtype), tag))
            if k == 0 or k % 2:
                out.append(
                    (
                        mlp_case(s + 1, N, D, H, C, dtype, reg=0.1, kinks=True),
                        f"{tag} reg=0.1 kinks",
                    )
                )
            if k % 2 == 0:
                out.append(
                    (
                        mlp_case(s + 2, N, D, H, C, dtype, w_scale=30.0, x_scale=10.0, reg=0.01),
                        f"{tag} reg=0.01 extreme logits",
                    )
                )
    return out


def mlp_cases(
    *,
    dims=None,
    max_side: int = 6,
    dtypes=None,
    kinks=None,
    regs=None,
    x_scales=None,
    w_scales=None,
):
    """Hypothesis strategy of MLPCase: shapes (N = 1, C = 1, H = C, N = C often), exact
    kinks, reg, input and weight scales (w_scale 30 drives the logits to ~1e3). `dims`
    (a strategy of (N, D, H, C)) fixes the shapes, e.g. `bucketed_dims()`."""
    from hypothesis import strategies as st

    from jax_ref import strategies as hs

    @st.composite
    def draw_case(draw):
        N, D, H, C = draw(dims if dims is not None else hs.random_dims(max_side=max_side))
        return mlp_case(
            draw(hs.seeds()),
            N,
            D,
            H,
            C,
            draw(dtypes if dtypes is not None else hs.dtypes()),
            x_scale=draw(x_scales or st.sampled_from((1.0, 1.0, 0.1, 10.0))),
            w_scale=draw(w_scales or st.sampled_from((1.0, 1.0, 0.01, 30.0))),
            kinks=draw(kinks or st.booleans()),
            reg=draw(regs or st.sampled_from((0.0, 0.0, 0.1, 1.0))),
        )

    return draw_case()


def strategy(*, dtypes=None, **kw):
    """Cases on the edge shapes only, so jit compiles once per (shape, dtype): float64 on
    every edge, float32 on the first three. Shape edges are dtype-blind (an index or a
    broadcast is wrong in both); float32 adds rounding, which scales drive, not shapes."""
    from hypothesis import strategies as st

    if dtypes is not None:
        return mlp_cases(dims=st.sampled_from(EDGE_DIMS), dtypes=dtypes, **kw)
    return st.one_of(
        mlp_cases(dims=st.sampled_from(EDGE_DIMS), dtypes=st.just(np.float64), **kw),
        mlp_cases(dims=st.sampled_from(EDGE_DIMS[:3]), dtypes=st.just(np.float32), **kw),
    )


# --- natural error scales -------------------------------------------------------------


def _mx(x) -> float:
    return float(np.max(np.abs(np.asarray(x, np.float64)), initial=0.0))


def mlp_scales(params, X, y, reg=0.0) -> dict:
    """The backward pass on absolute values, in float64 numpy: dz2 -> (a2 + onehot)/N,
    every product |A|·|B|, the mask kept. One float per output leaf."""
    W1, b1, W2, b2 = (np.asarray(p, np.float64) for p in params)
    X = np.asarray(X, np.float64)
    N, C = X.shape[0], W2.shape[1]
    z1 = X @ W1 + b1
    a1 = np.maximum(z1, 0)
    z2 = a1 @ W2 + b2
    a2 = np.exp(z2 - z2.max(axis=1, keepdims=True))
    a2 = a2 / a2.sum(axis=1, keepdims=True)
    dz2 = (a2 + np.eye(C)[np.asarray(y)]) / N
    dW2 = a1.T @ dz2 + 2 * reg * np.abs(W2)
    dz1 = dz2 @ np.abs(W2).T * (z1 >= 0)
    dW1 = np.abs(X).T @ dz1 + 2 * reg * np.abs(W1)
    loss = 1.0 + _mx(z2) + float(reg * (np.sum(W1**2) + np.sum(W2**2)))
    grads = Params(_mx(dW1), _mx(dz1.sum(axis=0)), _mx(dW2), _mx(dz2.sum(axis=0)))
    return {
        "mlp_forward": _mx(np.abs(a1) @ np.abs(W2) + np.abs(b2)),
        "mlp_loss": loss,
        "mlp_grads": (loss, grads),
    }


def _scale(name):
    return lambda case: mlp_scales(*case)[name]


# --- properties of its own ----------------------------------------------------------


@functools.lru_cache(maxsize=64)
def _per_example_program(grads_fn):
    """Per-example gradients (vmap over single rows) and the batch's, in one compilation
    per (implementation, shape)."""

    def both(p, X, y, reg):
        per = jax.vmap(lambda x, t: grads_fn(p, x[None], t[None], reg))(X, y)
        return per, grads_fn(p, X, y, reg)

    return jax.jit(both)


def vmap_per_example(impl, case: MLPCase) -> None:
    """Per-example gradients (vmap over single rows) averaged over N equal the batch's."""
    p, X, y, reg = case
    (losses, per), (loss, grads) = _per_example_program(impl.mlp_grads)(p, X, y, reg)
    s_loss, s_grads = mlp_scales(p, X, y, reg)["mlp_grads"]
    props.close("mean of per-example losses", losses.mean(), loss, X.dtype, s_loss)
    for name, g, w, sc in zip(Params._fields, per, grads, s_grads):
        props.close(f"mean of per-example d{name}", g.mean(axis=0), w, X.dtype, sc)


def loss_near_log_c(impl, case: MLPCase) -> None:
    """With tiny weights and zero biases every class is equally likely: L ≈ log C."""
    p, X, y, _ = case
    tiny = Params(p.W1 * 1e-3, p.b1 * 0, p.W2 * 1e-3, p.b2 * 0)
    C = p.W2.shape[1]
    z2 = np.asarray(mlp_forward(tiny, X), np.float64)
    # log-softmax of z lies within 2 max|z| of -log C
    bound = 2 * np.abs(z2).max() + tolerance(X.dtype) * max(np.log(C), 1.0)
    L = float(impl.mlp_loss(tiny, X, y, 0.0))
    if not abs(L - np.log(C)) <= bound:
        raise AssertionError(f"loss with tiny weights is {L:.6g}, not log C = {np.log(C):.6g}")


# --- mutants: plausible mistakes, each a shipped piece swapped ---------------------------


def _db_wrong_axis(dz, cache):
    dX, dW, _ = hand.affine_backward(dz, cache)
    return dX, dW, dz.sum(axis=1)  # (N,) not (H,)/(C,): runs only when N equals that side


def _da_no_transpose(dz, cache):
    _, dW, db = hand.affine_backward(dz, cache)
    return jnp.matmul(dz, cache.W), dW, db  # dz·W, not dz·Wᵀ: runs only when W is square


def _affine_backward_float32(dz, cache):
    low = jax.tree.map(lambda t: t.astype(jnp.float32), (dz, cache))
    return jax.tree.map(lambda t: t.astype(dz.dtype), hand.affine_backward(*low))


def _penalty_grad(w_factor, bias):
    def backward(params, reg):
        return Params(
            w_factor * reg * params.W1,
            bias * reg * params.b1,
            w_factor * reg * params.W2,
            bias * reg * params.b2,
        )

    return backward


def _head_sum_not_mean(z, y, valid, pieces=None):
    L, cache = softmax_ce_forward(z, y, valid, pieces)
    return L * z.shape[0], cache


AGREES, FD, VMAP, LOG_C = "agrees", "finite_differences", "vmap_per_example", "loss_near_log_c"
_SHAPE_ERRORS = (TypeError, ValueError)  # what JAX raises for a product of mismatched shapes

MUTANTS = (
    Mutant(
        "relu_grad_at_zero_one",
        "dz1 = da1 ⊙ 1[z1 >= 0]: kink counted as active",
        {"relu_backward": lambda da, z: jnp.where(z >= 0, da, 0)},
        "exact kinks z1 == 0 only",
        (AGREES,),
    ),
    Mutant(
        "relu_grad_missing",
        "dz1 = da1: the ReLU step forgotten",
        {"relu_backward": lambda da, z: da},
        "any inactive unit",
        (AGREES, FD),
    ),
    Mutant(
        "reg_grad_no_factor_2",
        "d(reg·ΣW²)/dW = reg·W: dropped the 2",
        {"penalty_backward": _penalty_grad(1, 0)},
        "reg > 0 only",
        (AGREES, FD),
    ),
    Mutant(
        "reg_on_biases",
        "biases regularised too: db += 2 reg b",
        {"penalty_backward": _penalty_grad(2, 2)},
        "reg > 0 and b != 0",
        (AGREES,),
    ),
    Mutant(
        "loss_missing_reg",
        "the loss value leaves out reg·ΣW² (the gradient has it)",
        {"penalty_forward": lambda p, reg: jnp.zeros((), p.W1.dtype)},
        "reg > 0 only",
        (AGREES,),
    ),
    Mutant(
        "db_sum_wrong_axis",
        "db = sum(dz, axis=1) instead of axis=0",
        {"affine_backward": _db_wrong_axis},
        "shape error unless N = H or N = C",
        (AGREES,),
        _SHAPE_ERRORS,
    ),
    Mutant(
        "da1_no_transpose",
        "da1 = dz2·W2 instead of dz2·W2ᵀ",
        {"affine_backward": _da_no_transpose},
        "shape error unless H = C (square)",
        (AGREES,),
        _SHAPE_ERRORS,
    ),
    Mutant(
        "float32_inside",
        "the affine backward computed in float32 and cast back",
        {"affine_backward": _affine_backward_float32},
        "float64 inputs, at float64 tolerance",
        (AGREES, FD),
    ),
    Mutant(
        "head_grad_no_mean",
        "dz2 = a2 - onehot: the head's 1/N forgotten",
        {"head_backward": lambda cache: cache.a - cache.onehot},
        "any N > 1",
        (AGREES, VMAP, FD),
    ),
    Mutant(
        "head_grad_sign",
        "dz2 = (onehot - a2)/N: the head's sign flipped",
        {"head_backward": lambda cache: -softmax_ce_backward(cache)},
        "any C > 1",
        (AGREES, FD),
    ),
    Mutant(
        "head_loss_sum_not_mean",
        "L = Σ_i L_i: the loss value sums over the batch",
        {"head_forward": _head_sum_not_mean},
        "any N > 1",
        (AGREES, LOG_C),
    ),
)


# --- the ledger's side ----------------------------------------------------------------


def _ledger_inputs(chain, rng, scale, dims=(5, 4, 6, 3)):
    N, D, H, C = dims
    X = jnp.asarray(rng.standard_normal((N, D)))
    W1 = jnp.asarray(rng.standard_normal((D, H)) / np.sqrt(D))
    b1 = jnp.asarray(rng.standard_normal(H) * 0.1)
    W2 = jnp.asarray(rng.standard_normal((H, C)) * scale / np.sqrt(H))
    b2 = jnp.asarray(rng.standard_normal(C) * 0.1)
    z1 = X @ W1 + b1
    a1 = jnp.maximum(z1, 0)
    y = jnp.asarray(rng.integers(0, C, N))
    return dict(X=X, W1=W1, b1=b1, W2=W2, b2=b2, z1=z1, a1=a1, z2=a1 @ W2 + b2, y=y)


def _ledger_autodiff(chain, step, x):
    """∂L/∂(every intermediate and parameter), by perturbing each with a zero."""

    def loss(W1, b1, W2, b2, e1, ea, e2):
        z1 = x["X"] @ W1 + b1 + e1
        a1 = jax.nn.relu(z1) + ea
        z2 = a1 @ W2 + b2 + e2
        return -jnp.take_along_axis(jax.nn.log_softmax(z2), x["y"][:, None], axis=1).mean()

    args = (
        x["W1"],
        x["b1"],
        x["W2"],
        x["b2"],
        jnp.zeros_like(x["z1"]),
        jnp.zeros_like(x["a1"]),
        jnp.zeros_like(x["z2"]),
    )
    g = jax.grad(loss, argnums=tuple(range(7)))(*args)
    named = dict(dW1=g[0], db1=g[1], dW2=g[2], db2=g[3], dz1=g[4], da1=g[5], dz2=g[6])
    return named[step] if step in named else Params(*g[:4])


def _letters(x):
    (N, D), (H, C) = x["X"].shape, x["W2"].shape
    return {"N": N, "D": D, "H": H, "C": C}


DERIVATION = Derivation(
    name="mlp",
    module=hand,
    reference=sys.modules[__name__],
    outputs=(
        Output("mlp_forward", "z2", lambda c: (c.params, c.X), _scale("mlp_forward")),
        Output("mlp_loss", "L", tuple, _scale("mlp_loss")),
        Output("mlp_grads", ("L", "W1", "b1", "W2", "b2"), tuple, _scale("mlp_grads")),
    ),
    gradients=(
        GradientCheck(
            "mlp_grads",
            mlp_loss,
            tuple,
            returns_loss=True,
            scale=lambda c: mlp_scales(*c)["mlp_grads"][1],
        ),
    ),
    cases=cases,
    strategy=strategy,
    properties={VMAP: vmap_per_example, LOG_C: loss_near_log_c},  # and the generic ones
    mutants=MUTANTS,
    ledger=Ledger(_ledger_inputs, _ledger_autodiff, _letters),
    order=20,
)
