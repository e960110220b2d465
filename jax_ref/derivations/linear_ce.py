"""Referee spec of `handgrad.linear_ce`: the fused linear + softmax cross-entropy.

The reference stores every logit: z = X·W + b, the soft cap, then `jax.nn.log_softmax`
against the smoothed target `jax.nn.one_hot`, the z-loss with `jax.nn.logsumexp`, the
ignored labels masked; differentiated by `jax.grad`. No block, no online log-sum-exp.
"""

from __future__ import annotations

import dataclasses
import sys

import jax
import jax.numpy as jnp
import numpy as np

import handgrad.linear_ce as hand
from jax_ref.spec import Derivation, GradientCheck, Ledger, Mutant, Output
from jax_ref.tolerances import tolerance

__all__ = [
    "DERIVATION",
    "LCECase",
    "lce_cases",
    "linear_cross_entropy",
    "linear_cross_entropy_grads",
    "plain_loss",
]

IGNORE = -100


# --- the reference ------------------------------------------------------------------


def plain_loss(params, y, opts):
    """L(X, W, b) with every N×V logit stored; opts = (ε, α, c, sum?) as numbers (c = 0:
    no cap), so that one function serves every case."""
    X, W, b = params
    eps, alpha, cap, summed = opts[0], opts[1], opts[2], opts[3]
    z = X @ W + b
    safe = jnp.where(cap > 0, cap, 1.0)  # no 0/0 in the branch not taken
    s = jnp.where(cap > 0, safe * jnp.tanh(z / safe), z)
    V = W.shape[1]
    valid = y != IGNORE
    target = (1 - eps) * jax.nn.one_hot(jnp.where(valid, y, 0), V, dtype=s.dtype) + eps / V
    L = -(target * jax.nn.log_softmax(s, axis=1)).sum(axis=1)
    L = jnp.where(valid, L + alpha * jax.nn.logsumexp(s, axis=1) ** 2, 0.0)
    return jnp.where(summed > 0, L.sum(), L.sum() / jnp.maximum(valid.sum(), 1))


def _opts(options: dict, dtype):
    return jnp.asarray(
        [
            options.get("label_smoothing", 0.0),
            options.get("z_loss", 0.0),
            options.get("soft_cap") or 0.0,
            1.0 if options.get("reduction") == "sum" else 0.0,
        ],
        dtype,
    )


_plain = jax.jit(plain_loss)
_plain_grad = jax.jit(jax.value_and_grad(plain_loss))


def linear_cross_entropy(X, W, y, b=None, **options):
    """The plain loss (block sizes ignored: the reference has none)."""
    b = jnp.zeros(W.shape[1], X.dtype) if b is None else b
    return _plain((X, W, b), y, _opts(options, X.dtype))


def linear_cross_entropy_grads(X, W, y, b=None, **options):
    """(L, (dX, dW, db)) by jax.value_and_grad of the plain loss."""
    b = jnp.zeros(W.shape[1], X.dtype) if b is None else b
    return _plain_grad((X, W, b), y, _opts(options, X.dtype))


# --- inputs -------------------------------------------------------------------------


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class LCECase:
    X: np.ndarray  # (N, H)
    W: np.ndarray  # (H, V)
    b: np.ndarray  # (V,)
    y: np.ndarray  # (N,) labels, IGNORE among them
    # linear_cross_entropy's keyword options, block sizes included, as sorted items:
    # static (a jitted property sees numbers, never tracers, for them)
    items: tuple = dataclasses.field(default=(), metadata={"static": True})

    @property
    def options(self) -> dict:
        return dict(self.items)


EVERY_OPTION = dict(label_smoothing=0.1, z_loss=1e-2, soft_cap=3.0)
# (N, H, V, options, blocks): one pass and streamed blocks dividing neither V nor N
EDGE_CASES = (
    (6, 3, 11, {}, {}),
    (6, 3, 11, EVERY_OPTION, dict(block_v=4, block_n=4)),
    (1, 3, 7, {}, dict(block_v=3)),
    (5, 4, 13, dict(reduction="sum", soft_cap=2.0), dict(block_v=5, block_n=2)),
)


def lce_case(seed, N, H, V, dtype, options, blocks, scale=1.0) -> LCECase:
    """X, W, b ~ scale · normal; labels uniform, the third ignored (N > 2)."""
    rng = np.random.default_rng(seed)
    X, W = (rng.standard_normal(s) * scale for s in ((N, H), (H, V)))
    y = rng.integers(0, V, N)
    if N > 2:
        y[2] = IGNORE
    b = rng.standard_normal(V)
    items = tuple(sorted({**options, **blocks}.items()))
    return LCECase(*(a.astype(dtype) for a in (X, W, b)), y, items)


def cases(seed: int = 0, dtypes=(np.float64, np.float32), random_cases: int = 2):
    rng = np.random.default_rng(seed)
    edges = list(EDGE_CASES) + [
        (int(rng.integers(1, 7)), 3, int(rng.integers(5, 17)), EVERY_OPTION, dict(block_v=4))
        for _ in range(random_cases)
    ]
    out = []
    for N, H, V, options, blocks in edges:
        for dtype in dtypes:
            tag = f"{np.dtype(dtype).name} (N, H, V) = ({N}, {H}, {V}) {options or ''} {blocks}"
            case = lce_case(int(rng.integers(0, 2**31)), N, H, V, dtype, options, blocks)
            out.append((case, tag.replace("  ", " ")))
    return out


def lce_cases(*, dtypes=None):
    """Hypothesis strategy of LCECase over the edge shapes, options and blocks."""
    from hypothesis import strategies as st

    from jax_ref import strategies as hs

    @st.composite
    def draw_case(draw):
        N, H, V, options, blocks = draw(st.sampled_from(EDGE_CASES))
        scale = draw(st.sampled_from((1.0, 1.0, 0.1, 5.0)))
        dtype = draw(dtypes or hs.dtypes())
        return lce_case(draw(hs.seeds()), N, H, V, dtype, options, blocks, scale)

    return draw_case()


def strategy(*, dtypes=None):
    return lce_cases(dtypes=dtypes)


def _args(c):
    return (c.X, c.W, c.y, c.b)


def _scale(c):
    # the loss lives on the scale of its logits (lse, s_y ~ max |z|), each gradient on
    # that of its products |X|·|W| over N (the mean's weights); 1/N_valid at least
    z = np.abs(c.X) @ np.abs(c.W) + np.abs(c.b)
    return 1.0 + float(np.max(z, initial=0.0))


# --- properties of its own ----------------------------------------------------------


def ignored_tokens_have_no_gradient(impl, case: LCECase) -> None:
    """An ignored token's row of dX is exactly 0, and moving it moves no loss."""
    ignored = case.y == IGNORE
    if not ignored.any():
        return
    loss, (dX, _, _) = impl.linear_cross_entropy_grads(*_args(case), **case.options)
    rows = np.asarray(dX, np.float64)[ignored]
    if np.any(rows != 0):
        raise AssertionError(f"ignored tokens have a gradient: max |dX| {np.abs(rows).max()}")
    moved = np.array(case.X, copy=True)
    moved[ignored] += 1.0
    other = impl.linear_cross_entropy(moved, case.W, case.y, case.b, **case.options)
    tol = tolerance(case.X.dtype) * (1 + abs(float(loss)))
    if not abs(float(other) - float(loss)) <= tol:
        raise AssertionError(f"moving an ignored token changed the loss: {loss} -> {other}")


def mean_is_the_sum_over_valid_tokens(impl, case: LCECase) -> None:
    """reduction="mean" times N_valid is reduction="sum" (the mean's 1/N_valid)."""
    opts = {k: v for k, v in case.options.items() if k != "reduction"}
    mean = float(impl.linear_cross_entropy(*_args(case), **opts, reduction="mean"))
    total = float(impl.linear_cross_entropy(*_args(case), **opts, reduction="sum"))
    n_valid = max(int(np.sum(case.y != IGNORE)), 1)
    tol = 4 * tolerance(case.X.dtype) * (1 + abs(total))
    if not abs(mean * n_valid - total) <= tol:
        raise AssertionError(f"mean x N_valid = {mean * n_valid} is not the sum {total}")


# --- mutants --------------------------------------------------------------------------


def _cap_dropped(a, s, lse, y, cols, V, eps, alpha, cap, weight):
    return hand.block_grad(a, s, lse, y, cols, V, eps, alpha, None, weight)


def _z_loss_half(a, s, lse, y, cols, V, eps, alpha, cap, weight):
    return hand.block_grad(a, s, lse, y, cols, V, eps, alpha / 2, cap, weight)


def _onehot_in_block_indices(a, s, lse, y, cols, V, eps, alpha, cap, weight):
    return hand.block_grad(a, s, lse, y, cols - cols[0], V, eps, alpha, cap, weight)


def _no_rescale(m, l, s, fresh):
    s = jnp.where(fresh, s, -jnp.inf)
    m_new = jnp.maximum(m, s.max(axis=1))
    return m_new, l + jnp.exp(s - m_new[:, None]).sum(axis=1)


def _forgot_n_valid(y, V, o, dtype):
    return (y != o.ignore_index).astype(dtype)


def _ignored_leak(y, V, o, dtype):
    w = jnp.ones(y.shape, dtype)
    return w / y.shape[0] if o.reduction == "mean" else w


AGREES, FD = "agrees", "finite_differences"
IGNORED, MEAN = "ignored_tokens_have_no_gradient", "mean_is_the_sum_over_valid_tokens"

MUTANTS = (
    Mutant(
        "lce_forgot_n_valid",
        "the mean's weights m_i, not m_i / N_valid",
        {"token_weights": _forgot_n_valid},
        "more than one valid token",
        (AGREES, FD, MEAN),
    ),
    Mutant(
        "lce_ignored_rows_leak",
        "every token weighted 1/N: ignored rows leak into dW and dX",
        {"token_weights": _ignored_leak},
        "an ignored label",
        (AGREES, IGNORED),
    ),
    Mutant(
        "lce_soft_cap_derivative_dropped",
        "∂L/∂z without the soft cap's 1 − (s/c)²",
        {"block_grad": _cap_dropped},
        "a soft cap",
        (AGREES, FD),
    ),
    Mutant(
        "lce_z_loss_without_2",
        "the z-loss's gradient α·lse·a, its factor 2 missing",
        {"block_grad": _z_loss_half},
        "a z-loss",
        (AGREES, FD),
    ),
    Mutant(
        "lce_onehot_shifted_by_a_block",
        "the label compared with the block's own column index, not the global one",
        {"block_grad": _onehot_in_block_indices},
        "streamed vocabulary blocks",
        (AGREES, FD),
    ),
    Mutant(
        "lce_lse_not_rescaled",
        "the online sum not rescaled when the max grows: lse saved before the rescale",
        {"online_lse": _no_rescale},
        "streamed vocabulary blocks",
        (AGREES,),
    ),
)


# --- the ledger's side ----------------------------------------------------------------


def _ledger_inputs(chain, rng, scale):
    N, H, V = 5, 3, 11
    y = rng.integers(0, V, N)
    y[1] = IGNORE
    return {
        "X": jnp.asarray(rng.standard_normal((N, H)) * scale),
        "W": jnp.asarray(rng.standard_normal((H, V))),
        "b": jnp.asarray(rng.standard_normal(V)),
        "y": jnp.asarray(y),
    }


def _ledger_autodiff(chain, step, x):
    opts = _opts(hand.LEDGER_OPTIONS, x["X"].dtype)
    params = (x["X"], x["W"], x["b"])
    if step == "dz":  # ∂L/∂z: the plain loss as a function of the logits before the cap
        return jax.grad(lambda z: _loss_of_z(z, x["y"], opts))(x["X"] @ x["W"] + x["b"])
    dX, dW, db = jax.grad(plain_loss)(params, x["y"], opts)
    return {"dW": dW, "dX": dX, "db": db, "shipped": (dX, dW, db)}[step]


def _loss_of_z(z, y, opts):
    """plain_loss with z given: X = I, W = z, b = 0 (z = X·W + b)."""
    N = z.shape[0]
    return plain_loss((jnp.eye(N, dtype=z.dtype), z, jnp.zeros(z.shape[1], z.dtype)), y, opts)


DERIVATION = Derivation(
    name="linear_ce",
    module=hand,
    reference=sys.modules[__name__],
    outputs=(
        Output("linear_cross_entropy", "L", _args, _scale, kwargs=lambda c: c.options),
        Output(
            "linear_cross_entropy_grads",
            ("L", "dX", "dW", "db"),
            _args,
            _scale,
            kwargs=lambda c: c.options,
        ),
    ),
    gradients=(
        GradientCheck(
            "linear_cross_entropy_grads",
            plain_loss,
            _args,
            returns_loss=True,
            scale=lambda c: (_scale(c),) * 3,
            parameter=("X", "W", "b"),
            kwargs=lambda c: c.options,
            loss_args=lambda c: ((c.X, c.W, c.b), c.y, _opts(c.options, c.X.dtype)),
        ),
    ),
    cases=cases,
    strategy=strategy,
    properties={IGNORED: ignored_tokens_have_no_gradient, MEAN: mean_is_the_sum_over_valid_tokens},
    mutants=MUTANTS,
    ledger=Ledger(
        _ledger_inputs,
        _ledger_autodiff,
        lambda x: {"N": x["X"].shape[0], "H": x["X"].shape[1], "V": x["W"].shape[1]},
        lambda chain, x: 0.0,
    ),
    order=50,
)
