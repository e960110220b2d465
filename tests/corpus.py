"""An independent corpus for judging the checker: functions that are not in handgrad, each
with its hand-derived gradient and plausible wrong ones (`tests/test_corpus.py`).

Each `Case` has a loss `f(params, *args)`, the point, the correct gradient and wrong ones
(name -> gradient function). Scales range from 1e-6 to 1e6; some points sit on or near
kinks, ties and flat regions. All in float64 (built under jax_enable_x64, see conftest).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

rng = np.random.default_rng(1234)


def normal(*shape, s=1.0):
    return jnp.asarray(rng.standard_normal(shape) * s)


class Case(NamedTuple):
    name: str
    loss: Callable
    params: Any
    args: tuple
    grad: Callable
    wrong: dict[str, Callable]
    # wrong gradients an oracle cannot be asked to see: they differ from the correct one
    # only at elements sitting on a kink exactly at the point, where a convention decides
    # and differences cannot (the oracle must then say inconclusive, never passed)
    fd_blind: tuple[str, ...] = ()
    ad_blind: tuple[str, ...] = ()


def _scale(g, f):
    return {k: v * f for k, v in g.items()} if isinstance(g, dict) else g * f


def _bump(g, rel, key=None, index=0):
    """g with one element moved by rel times the leaf's largest entry."""
    if isinstance(g, dict):
        return {**g, key: _bump(g[key], rel, index=index)}
    flat = g.ravel()
    return flat.at[index].add(rel * jnp.max(jnp.abs(flat))).reshape(g.shape)


CASES: list[Case] = []


def case(name, loss, params, args, grad, wrong, fd_blind=(), ad_blind=()):
    CASES.append(Case(name, loss, params, args, grad, wrong, tuple(fd_blind), tuple(ad_blind)))


# 1. logistic regression, mean binary cross-entropy with logits
X1, t1 = normal(20, 5), jnp.asarray(rng.integers(0, 2, 20), jnp.float64)


def logreg(p, X, t):
    z = X @ p["w"] + p["b"]
    return jnp.mean(jnp.logaddexp(0.0, z) - t * z)


def logreg_grad(p, X, t):
    d = (1 / (1 + jnp.exp(-(X @ p["w"] + p["b"]))) - t) / X.shape[0]
    return {"w": X.T @ d, "b": d.sum()}


case(
    "logistic regression",
    logreg,
    {"w": normal(5), "b": jnp.array(0.3)},
    (X1, t1),
    logreg_grad,
    {
        "no 1/N": lambda p, X, t: _scale(logreg_grad(p, X, t), X.shape[0]),
        "sign": lambda p, X, t: _scale(logreg_grad(p, X, t), -1.0),
        "b not summed (first row)": lambda p, X, t: {
            **logreg_grad(p, X, t),
            "b": ((1 / (1 + jnp.exp(-(X @ p["w"] + p["b"]))) - t) / X.shape[0])[0],
        },
    },
)

# 2. least squares 0.5 |A x - y|² / N, square A (a missing transpose runs)
A2, y2 = normal(6, 6), normal(6)


def lsq(x, A, y):
    return 0.5 * jnp.sum((A @ x - y) ** 2) / A.shape[0]


def lsq_grad(x, A, y):
    return A.T @ (A @ x - y) / A.shape[0]


case(
    "least squares",
    lsq,
    normal(6),
    (A2, y2),
    lsq_grad,
    {
        "no transpose": lambda x, A, y: A @ (A @ x - y) / A.shape[0],
        "missing 0.5": lambda x, A, y: 2 * lsq_grad(x, A, y),
    },
)

# 3. layer norm, loss = Σ r ⊙ (γ x̂ + β)
X3, R3 = normal(4, 8, s=3.0), normal(4, 8)


def layernorm(p, X, R, eps=1e-5):
    mu = X.mean(-1, keepdims=True)
    var = ((X - mu) ** 2).mean(-1, keepdims=True)
    xhat = (X - mu) / jnp.sqrt(var + eps)
    return jnp.sum(R * (p["gamma"] * xhat + p["beta"]))


def _ln_parts(X, eps=1e-5):
    mu = X.mean(-1, keepdims=True)
    inv = 1 / jnp.sqrt(((X - mu) ** 2).mean(-1, keepdims=True) + eps)
    return (X - mu) * inv, inv


def layernorm_grad(p, X, R):
    xhat, _ = _ln_parts(X)
    return {"gamma": (R * xhat).sum(0), "beta": R.sum(0)}


def ln_input(x, p, R, eps=1e-5):  # the loss as a function of the input
    return layernorm(p, x, R, eps)


def ln_input_grad(x, p, R, center=True, var_term=True):
    xhat, inv = _ln_parts(x)
    g = R * p["gamma"]
    out = g
    if center:
        out = out - g.mean(-1, keepdims=True)
    if var_term:
        out = out - xhat * (g * xhat).mean(-1, keepdims=True)
    return inv * out


P3 = {"gamma": 1 + normal(8, s=0.1), "beta": normal(8, s=0.1)}
case(
    "layer norm (γ, β)",
    layernorm,
    P3,
    (X3, R3),
    layernorm_grad,
    {
        "beta not summed over rows": lambda p, X, R: {**layernorm_grad(p, X, R), "beta": R.mean(0)},
        "gamma without normalising": lambda p, X, R: {
            **layernorm_grad(p, X, R),
            "gamma": (R * X).sum(0),
        },
    },
)
case(
    "layer norm (input)",
    ln_input,
    X3,
    (P3, R3),
    ln_input_grad,
    {
        "no mean term": lambda x, p, R: ln_input_grad(x, p, R, center=False),
        "no variance term": lambda x, p, R: ln_input_grad(x, p, R, var_term=False),
    },
)

# 4. Huber loss, some residuals in each regime
r4 = jnp.asarray(np.r_[rng.uniform(-0.5, 0.5, 5), rng.uniform(2, 4, 3), -rng.uniform(2, 4, 3)])


def huber(x, y, delta=1.0):
    r = x - y
    a = jnp.abs(r)
    return jnp.sum(jnp.where(a <= delta, 0.5 * r**2, delta * (a - 0.5 * delta)))


def huber_grad(x, y, delta=1.0):
    return jnp.clip(x - y, -delta, delta)


case(
    "huber",
    huber,
    r4 + 1.0,
    (jnp.ones(11),),
    huber_grad,
    {
        "quadratic everywhere": lambda x, y: x - y,
        "half slope outside": lambda x, y: jnp.clip(x - y, -0.5, 0.5),
    },
)

# 5. 1-D valid cross-correlation, gradient with respect to the kernel
x5, r5 = normal(12), normal(9)


def xcorr(k, x, r):
    n = x.shape[0] - k.shape[0] + 1
    windows = jnp.stack([x[i : i + n] for i in range(k.shape[0])], axis=1)  # (n, K)
    return jnp.sum(r * (windows @ k))


def xcorr_grad(k, x, r):
    n = x.shape[0] - k.shape[0] + 1
    return jnp.stack([jnp.dot(r, x[i : i + n]) for i in range(k.shape[0])])


case(
    "1-D correlation kernel",
    xcorr,
    normal(4),
    (x5, r5),
    xcorr_grad,
    {
        "kernel flipped": lambda k, x, r: xcorr_grad(k, x, r)[::-1],
        "window off by one": lambda k, x, r: jnp.stack(
            [jnp.dot(r[:-1], x[i + 1 : i + 9]) for i in range(4)]
        ),
    },
)

# 6. max pooling over pairs, no ties
x6, r6 = normal(10), normal(5)


def maxpool(x, r):
    return jnp.sum(r * jnp.max(x.reshape(5, 2), axis=1))


def maxpool_grad(x, r):
    pairs = x.reshape(5, 2)
    first = pairs[:, 0] >= pairs[:, 1]
    return jnp.stack([jnp.where(first, r, 0), jnp.where(first, 0, r)], 1).ravel()


case(
    "max pooling",
    maxpool,
    x6,
    (r6,),
    maxpool_grad,
    {
        "spread over the pair": lambda x, r: jnp.repeat(r / 2, 2),
        "loser gets it": lambda x, r: maxpool_grad(-x, r),
    },
)

# 7. one attention head, gradient with respect to Q
K7, V7, dO7 = normal(5, 4), normal(5, 3), normal(6, 3)


def attention(Q, K, V, dO):
    P = jnp.exp(Q @ K.T / 2.0 - jnp.max(Q @ K.T / 2.0, -1, keepdims=True))
    P = P / P.sum(-1, keepdims=True)
    return jnp.sum(dO * (P @ V))


def attention_dQ(Q, K, V, dO, scale=0.5):
    S = Q @ K.T / 2.0
    P = jnp.exp(S - S.max(-1, keepdims=True))
    P = P / P.sum(-1, keepdims=True)
    dP = dO @ V.T
    dS = P * (dP - (dP * P).sum(-1, keepdims=True))
    return dS @ K * scale


case(
    "attention dQ",
    attention,
    normal(6, 4),
    (K7, V7, dO7),
    attention_dQ,
    {
        "missing 1/sqrt(d)": lambda Q, K, V, dO: attention_dQ(Q, K, V, dO, 1.0),
        "row sum over the wrong axis": lambda Q, K, V, dO: (
            lambda S: (lambda P: (P * (dO @ V.T - (dO @ V.T * P).sum(0, keepdims=True))) @ K / 2.0)(
                jnp.exp(S - S.max(-1, keepdims=True))
                / jnp.exp(S - S.max(-1, keepdims=True)).sum(-1, keepdims=True)
            )
        )(Q @ K.T / 2.0),
    },
)

# 8. a tanh recurrent step, gradients of W and U
h8, x8, r8 = normal(4), normal(3), normal(4)


def rnn(p, h, x, r):
    return jnp.sum(r * jnp.tanh(p["W"] @ h + p["U"] @ x))


def rnn_grad(p, h, x, r, deriv=lambda a: 1 - a**2):
    a = jnp.tanh(p["W"] @ h + p["U"] @ x)
    d = r * deriv(a)
    return {"W": jnp.outer(d, h), "U": jnp.outer(d, x)}


P8 = {"W": normal(4, 4, s=0.5), "U": normal(4, 3, s=0.5)}
case(
    "tanh RNN step",
    rnn,
    P8,
    (h8, x8, r8),
    rnn_grad,
    {
        "1 - a instead of 1 - a²": lambda p, h, x, r: rnn_grad(p, h, x, r, lambda a: 1 - a),
        "W transposed": lambda p, h, x, r: {
            **rnn_grad(p, h, x, r),
            "W": rnn_grad(p, h, x, r)["W"].T,
        },
    },
)

# 9. tiny parameters: Σ log p with p ~ 1e-6 (a step of 1e-4 would leave the domain)
p9 = jnp.asarray(rng.uniform(0.5, 2.0, 6) * 1e-6)
case(
    "log of tiny parameters",
    lambda p: jnp.sum(jnp.log(p)),
    p9,
    (),
    lambda p: 1 / p,
    {"-1/p²": lambda p: -1 / p**2, "1e-3 relative in one entry": lambda p: _bump(1 / p, 1e-3)},
)

# 10. huge parameters: Σ sin(p / 1e6) with p ~ 1e6
p10 = normal(5, s=1e6)
case(
    "sin of huge parameters",
    lambda p: jnp.sum(jnp.sin(p / 1e6)),
    p10,
    (),
    lambda p: jnp.cos(p / 1e6) / 1e6,
    {
        "chain factor missing": lambda p: jnp.cos(p / 1e6),
        "sin for cos": lambda p: jnp.sin(p / 1e6) / 1e6,
    },
)

# 11. a temperature: a scalar leaf
z11, y11 = normal(5, 4), jnp.asarray(rng.integers(0, 4, 5))


def tempered_ce(tau, z, y):
    logp = jax_log_softmax(z / tau)
    return -jnp.mean(jnp.take_along_axis(logp, y[:, None], 1))


def jax_log_softmax(z):
    return (
        z
        - z.max(-1, keepdims=True)
        - jnp.log(jnp.sum(jnp.exp(z - z.max(-1, keepdims=True)), -1, keepdims=True))
    )


def tempered_grad(tau, z, y):
    a = jnp.exp(jax_log_softmax(z / tau))
    onehot = jnp.eye(z.shape[1])[y]
    dz = (a - onehot) / z.shape[0]  # ∂L/∂(z/τ)
    return jnp.sum(dz * (-z / tau**2))


case(
    "temperature (scalar)",
    tempered_ce,
    jnp.array(1.7),
    (z11, y11),
    tempered_grad,
    {
        "sign": lambda tau, z, y: -tempered_grad(tau, z, y),
        "1/τ instead of 1/τ²": lambda tau, z, y: tempered_grad(tau, z, y) * tau,
    },
)

# 12. Gaussian negative log-likelihood with a log-variance
y12 = normal(7)


def gauss_nll(p, y):
    return jnp.sum(0.5 * p["logvar"] + 0.5 * (y - p["mu"]) ** 2 * jnp.exp(-p["logvar"]))


def gauss_grad(p, y, half=0.5):
    e = jnp.exp(-p["logvar"])
    return {"mu": -(y - p["mu"]) * e, "logvar": half - 0.5 * (y - p["mu"]) ** 2 * e}


case(
    "Gaussian NLL",
    gauss_nll,
    {"mu": normal(7), "logvar": normal(7, s=0.3)},
    (y12,),
    gauss_grad,
    {
        "missing 0.5 on the log term": lambda p, y: gauss_grad(p, y, 1.0),
        "mu sign": lambda p, y: {**gauss_grad(p, y), "mu": -gauss_grad(p, y)["mu"]},
    },
)

# 13. a big leaf: 10,000 parameters of a weighted quadratic, one entry 1e-6 wrong
w13 = jnp.asarray(rng.uniform(0.5, 1.5, 10_000))
x13 = normal(10_000)


def quad(x, w):
    return 0.5 * jnp.sum(w * x**2) + jnp.sum(jnp.sin(x))


def quad_grad(x, w):
    return w * x + jnp.cos(x)


case(
    "10,000-element leaf",
    quad,
    x13,
    (w13,),
    quad_grad,
    {
        "1e-6 relative in one entry": lambda x, w: _bump(quad_grad(x, w), 1e-6, index=1234),
        "1e-6 relative everywhere": lambda x, w: quad_grad(x, w) * (1 + 1e-6),
    },
)

# 14. absolute value exactly at the kink (sign(0) = 0 is a subgradient convention)
x14 = jnp.asarray([0.0, 1.5, -0.7, 0.0, 2.0])
case(
    "|x| with entries at 0",
    lambda x: jnp.sum(jnp.abs(x)),
    x14,
    (),
    jnp.sign,
    {
        "slope 2 at 0": lambda x: jnp.where(x == 0, 2.0, jnp.sign(x)),
        "doubled": lambda x: 2 * jnp.sign(x),
    },
    fd_blind=("slope 2 at 0",),
    ad_blind=("slope 2 at 0",),
)

# 15. a quantized loss: flat everywhere, the true gradient is 0
x15 = normal(6)
case(
    "quantized (round)",
    lambda x: jnp.sum(jnp.round(x * 4.0) / 4.0),
    x15,
    (),
    jnp.zeros_like,
    {"straight-through 1": jnp.ones_like},
)

# 16. a ReLU layer near (not on) its kinks, with a tiny bias leaf
X16, r16 = normal(8, 3), normal(8, 4)


def relu_layer(p, X, r):
    return jnp.sum(r * jnp.maximum(X @ p["W"] + p["b"], 0.0))


def relu_layer_grad(p, X, r, at_zero=False):
    z = X @ p["W"] + p["b"]
    d = r * ((z >= 0) if at_zero else (z > 0))
    return {"W": X.T @ d, "b": d.sum(0)}


P16 = {"W": normal(3, 4), "b": normal(4, s=1e-6)}
case(
    "ReLU layer near kinks",
    relu_layer,
    P16,
    (X16, r16),
    relu_layer_grad,
    {
        "step forgotten": lambda p, X, r: {"W": X.T @ r, "b": r.sum(0)},
        "b 1e-3 wrong in one entry": lambda p, X, r: _bump(relu_layer_grad(p, X, r), 1e-3, "b", 2),
    },
)

# 17. exp(a · x) with respect to a scalar
x17 = normal(9, s=0.5)
case(
    "exp(a x), scalar a",
    lambda a, x: jnp.sum(jnp.exp(a * x)),
    jnp.array(0.8),
    (x17,),
    lambda a, x: jnp.sum(x * jnp.exp(a * x)),
    {"missing x": lambda a, x: jnp.sum(jnp.exp(a * x))},
)

# 18. batch norm (training mode) with respect to its input
X18, R18 = normal(6, 3, s=2.0), normal(6, 3)


def batchnorm(x, R, eps=1e-5):
    mu = x.mean(0)
    xhat = (x - mu) / jnp.sqrt(((x - mu) ** 2).mean(0) + eps)
    return jnp.sum(R * xhat)


def batchnorm_grad(x, R, var_term=True, eps=1e-5):
    mu = x.mean(0)
    inv = 1 / jnp.sqrt(((x - mu) ** 2).mean(0) + eps)
    xhat = (x - mu) * inv
    out = R - R.mean(0)
    if var_term:
        out = out - xhat * (R * xhat).mean(0)
    return inv * out


case(
    "batch norm (input)",
    batchnorm,
    X18,
    (R18,),
    batchnorm_grad,
    {
        "no variance term": lambda x, R: batchnorm_grad(x, R, var_term=False),
        "float32 inside": lambda x, R: batchnorm_grad(
            x.astype(jnp.float32), R.astype(jnp.float32)
        ).astype(jnp.float64),
    },
)

# 19. max over a vector with a tie at the maximum (kink at the point)
x19 = jnp.asarray([0.3, 1.2, 1.2, -0.5])


def max_grad_first(x):
    return jnp.zeros_like(x).at[jnp.argmax(x)].set(1.0)


case(
    "max with a tie",
    lambda x: jnp.max(x),
    x19,
    (),
    max_grad_first,
    {
        "all winners get 1": lambda x: (x == x.max()).astype(x.dtype),
        "negated": lambda x: -max_grad_first(x),
    },
    fd_blind=("all winners get 1", "negated"),
    ad_blind=("all winners get 1", "negated"),
)

# 20. a big leaf: a 600 x 220 tanh layer (132,000 weights, over the 65,536 elements from
# which the finite-difference oracle evaluates the loss along the leaf's line through
# jax_ref.affine) with a softplus head and weight decay
W20 = normal(600, 220, s=1 / np.sqrt(600))
c20, A20 = normal(220, s=0.3), normal(16, 600)


def wide(p, A, decay=1e-3):
    h = jnp.tanh(A @ p["W"])
    return jnp.mean(jnp.logaddexp(0.0, h @ p["c"])) + decay * jnp.vdot(p["W"], p["W"])


def wide_grad(p, A, decay=1e-3, tanh_deriv=lambda h: 1 - h**2):
    h = jnp.tanh(A @ p["W"])
    r = jax.nn.sigmoid(h @ p["c"]) / A.shape[0]  # d mean softplus / d z
    dh = r[:, None] * p["c"][None, :] * tanh_deriv(h)
    return {"W": A.T @ dh + 2 * decay * p["W"], "c": h.T @ r}


case(
    "132,000-element leaf",
    wide,
    {"W": W20, "c": c20},
    (A20,),
    wide_grad,
    {
        "weight decay counted once, not twice": lambda p, A: {
            **wide_grad(p, A),
            "W": wide_grad(p, A)["W"] - 1e-3 * p["W"],
        },
        "tanh' taken as 1 - h": lambda p, A: wide_grad(p, A, tanh_deriv=lambda h: 1 - h),
        "one weight 1e-3 of the largest off": lambda p, A: _bump(
            wide_grad(p, A), 1e-3, key="W", index=77_777
        ),
    },
)

WRONG = sum(len(c.wrong) for c in CASES)
