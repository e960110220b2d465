"""A catalogue of plausible mistakes in deriving the seed's gradients, each a modified
hand implementation, and the kill matrix: which property kills which mutant.

`build()` assembles the seed's public functions from swappable pieces that mirror
handgrad's layer functions; with no swaps it equals handgrad (a test pins that), and each
mutant swaps one piece for a plausible wrong version. A mutant that no property kills is
a hole in the test suite.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np

from handgrad import _validate as v
from handgrad import layers
from handgrad.mlp import Params
from jax_ref.cases import sweep
from jax_ref.properties import LOGITS_PROPERTIES, MLP_PROPERTIES

__all__ = ["MUTANTS", "Mutant", "build", "kill_matrix"]


# --- the correct pieces (handgrad's) -------------------------------------------------


def _jacobian(a):
    return a[:, :, None] * (jnp.eye(a.shape[1], dtype=a.dtype) - a[:, None, :])


def _ce_forward(z, y, valid, softmax_fwd):
    return layers.ce_forward(*softmax_fwd(z), y, valid)  # with a swappable softmax


def _penalty(p, reg):
    return reg * ((p.W1**2).sum() + (p.W2**2).sum())


def _reg_grad(W, reg):
    return 2 * reg * W


def _bias_reg(b, reg):
    return jnp.zeros_like(b)


CORRECT = dict(
    softmax_fwd=layers.softmax_forward,
    jacobian=_jacobian,
    ce_forward=_ce_forward,
    ce_backward=layers.softmax_ce_backward,
    relu_backward=layers.relu_backward,
    affine_backward=layers.affine_backward,
    penalty=_penalty,
    reg_grad=_reg_grad,
    bias_reg=_bias_reg,
    grads_in=None,  # None: compute in the inputs' dtype
)


def build(**swaps) -> SimpleNamespace:
    """The seed's public functions from pieces; `swaps` replace pieces by name."""
    unknown = set(swaps) - set(CORRECT)
    if unknown:
        raise ValueError(f"unknown pieces {sorted(unknown)}; known: {sorted(CORRECT)}")
    P = SimpleNamespace(**{**CORRECT, **swaps})

    def ce(z, y):
        z = v.check_logits(z)
        y = v.check_labels(y, *z.shape, against="z")
        return P.ce_forward(z, y, v.label_mask(y, z.shape[1]), P.softmax_fwd)

    def checked(params, X, y, reg):
        params, X = v.check_mlp(params, X)
        y = v.check_labels(y, X.shape[0], params[2].shape[1], against="X")
        return Params(*params), X, y, v.reg_or_nan(v.check_reg(reg, X.dtype))

    def checked_forward(params, X):
        params, X = v.check_mlp(params, X)
        return Params(*params), X

    def forward(p, X):
        z1 = layers.affine_forward(X, p.W1, p.b1)[0]
        a1 = layers.relu_forward(z1)[0]
        return z1, a1, layers.affine_forward(a1, p.W2, p.b2)[0]

    def mlp_loss(params, X, y, reg=0.0):
        p, X, y, reg = checked(params, X, y, reg)
        z2 = forward(p, X)[2]
        ce_val = P.ce_forward(z2, y, v.label_mask(y, z2.shape[1]), P.softmax_fwd)[0]
        return ce_val + P.penalty(p, reg)

    def mlp_grads(params, X, y, reg=0.0):
        p, X, y, reg = checked(params, X, y, reg)
        out = X.dtype
        if P.grads_in is not None:
            p, X, reg = jax.tree.map(lambda t: t.astype(P.grads_in), (p, X, reg))
        z1, a1, z2 = forward(p, X)
        ce_val, cache = P.ce_forward(z2, y, v.label_mask(y, z2.shape[1]), P.softmax_fwd)
        dz2 = P.ce_backward(cache)
        da1, dW2, db2 = P.affine_backward(dz2, layers.AffineCache(a1, p.W2))
        dz1 = P.relu_backward(da1, z1)
        _, dW1, db1 = P.affine_backward(dz1, layers.AffineCache(X, p.W1))
        grads = Params(dW1 + P.reg_grad(p.W1, reg), db1 + P.bias_reg(p.b1, reg),
                       dW2 + P.reg_grad(p.W2, reg), db2 + P.bias_reg(p.b2, reg))
        loss = ce_val + P.penalty(p, reg)
        return jax.tree.map(lambda t: t.astype(out), (loss, grads))

    return SimpleNamespace(
        softmax=lambda z: P.softmax_fwd(v.check_logits(z))[0],
        softmax_jacobian=lambda z: P.jacobian(P.softmax_fwd(v.check_logits(z))[0]),
        cross_entropy=lambda z, y: ce(z, y)[0],
        cross_entropy_grad=lambda z, y: P.ce_backward(ce(z, y)[1]),
        mlp_forward=lambda params, X: forward(*checked_forward(params, X))[2],
        mlp_loss=mlp_loss,
        mlp_grads=mlp_grads,
    )


# --- the mistakes ------------------------------------------------------------------


def _ce_backward(f):
    def backward(cache):
        a, onehot = cache  # an invalid label's indicator row is NaN already
        return f(a, onehot, a.shape[0])

    return backward


def _softmax_no_shift(z):
    e = jnp.exp(z)  # overflows to inf once z > 88 (float32) or 709 (float64)
    return e / e.sum(axis=1, keepdims=True), jnp.log(e / e.sum(axis=1, keepdims=True))


def _log_of_softmax(z):
    a = layers.softmax_forward(z)[0]
    return a, jnp.log(a)  # -inf once a probability underflows to 0


def _softmax_numpy_exp(z):
    shifted = z - z.max(axis=1, keepdims=True)
    e = np.exp(shifted)  # np.exp on a tracer cannot work: breaks under jit and vmap
    return e / e.sum(axis=1, keepdims=True), shifted - jnp.log(e.sum(axis=1, keepdims=True))


def _via_one_over_a(cache):
    # the seed's middle line taken literally: -Σ_j 1[j=y_i] (1/a_ij) ∂a_ij/∂z_ik, / N
    a, onehot = cache
    return -jnp.einsum("ij,ijk->ik", onehot / a, _jacobian(a)) / a.shape[0]


def _db_wrong_axis(dz, cache):
    dX, dW, _ = layers.affine_backward(dz, cache)
    return dX, dW, dz.sum(axis=1)  # (N,) not (H,)/(C,): runs only when N equals that side


def _da_no_transpose(dz, cache):
    _, dW, db = layers.affine_backward(dz, cache)
    return jnp.matmul(dz, cache.W), dW, db  # dz·W, not dz·Wᵀ: runs only when W is square


@dataclasses.dataclass(frozen=True)
class Mutant:
    name: str
    description: str
    swaps: dict = dataclasses.field(default_factory=dict)
    reveals: str = ""  # which inputs reveal it

    def impl(self) -> SimpleNamespace:
        return build(**self.swaps)


MUTANTS: tuple[Mutant, ...] = (
    Mutant("ce_grad_no_mean", "∂L/∂z = a - onehot: forgot the 1/N of the batch mean",
           {"ce_backward": _ce_backward(lambda a, o, N: a - o)}, "any N > 1 (hidden at N = 1)"),
    Mutant("ce_grad_over_C", "∂L/∂z = (a - onehot)/C: divided by the class count",
           {"ce_backward": _ce_backward(lambda a, o, N: (a - o) / a.shape[1])},
           "N != C (hidden when square N = C)"),
    Mutant("ce_grad_sign", "∂L/∂z = (onehot - a)/N: sign flipped",
           {"ce_backward": _ce_backward(lambda a, o, N: (o - a) / N)}, "any C > 1"),
    Mutant("ce_grad_one_over_a", "the 1/a_ij chain rule evaluated literally",
           {"ce_backward": _via_one_over_a}, "extreme logits (a_iy underflows: 0/0)"),
    Mutant("softmax_no_max_shift", "softmax as e^z / Σ e^z without the max shift",
           {"softmax_fwd": _softmax_no_shift}, "logits above ~88 (float32) / ~709 (float64)"),
    Mutant("log_of_softmax", "cross-entropy as -log(softmax(z)) instead of log-sum-exp",
           {"softmax_fwd": _log_of_softmax}, "extreme logits (log 0 = -inf)"),
    Mutant("softmax_numpy_inside", "np.exp instead of jnp.exp inside the softmax",
           {"softmax_fwd": _softmax_numpy_exp}, "jax.jit (a tracer cannot become numpy)"),
    Mutant("jacobian_a_ij_twice", "∂a_ij/∂z_ik = a_ij (1[j=k] - a_ij): wrong index",
           {"jacobian": lambda a: a[:, :, None] * (jnp.eye(a.shape[1], dtype=a.dtype)
                                                   - a[:, :, None])}, "C > 1"),
    Mutant("jacobian_no_indicator", "∂a_ij/∂z_ik = -a_ij a_ik: dropped the 1[j=k] term",
           {"jacobian": lambda a: -a[:, :, None] * a[:, None, :]}, "any"),
    Mutant("relu_grad_at_zero_one", "dz1 = da1 ⊙ 1[z1 >= 0]: kink counted as active",
           {"relu_backward": lambda da, z: jnp.where(z >= 0, da, 0)},
           "exact kinks z1 == 0 only"),
    Mutant("relu_grad_missing", "dz1 = da1: the ReLU step forgotten",
           {"relu_backward": lambda da, z: da}, "any inactive unit"),
    Mutant("reg_grad_no_factor_2", "d(reg·ΣW²)/dW = reg·W: dropped the 2",
           {"reg_grad": lambda W, reg: reg * W}, "reg > 0 only"),
    Mutant("reg_on_biases", "biases regularised too: db += 2 reg b",
           {"bias_reg": lambda b, reg: 2 * reg * b}, "reg > 0 and b != 0"),
    Mutant("loss_missing_reg", "the loss value leaves out reg·ΣW² (the gradient has it)",
           {"penalty": lambda p, reg: jnp.zeros((), p.W1.dtype)}, "reg > 0 only"),
    Mutant("db_sum_wrong_axis", "db = sum(dz, axis=1) instead of axis=0",
           {"affine_backward": _db_wrong_axis}, "shape error unless N = H or N = C"),
    Mutant("da1_no_transpose", "da1 = dz2·W2 instead of dz2·W2ᵀ",
           {"affine_backward": _da_no_transpose}, "shape error unless H = C (square)"),
    Mutant("float32_inside", "gradients computed in float32 and cast back",
           {"grads_in": jnp.float32}, "float64 inputs, at float64 tolerance"),
    Mutant("loss_sum_not_mean", "L = Σ_i L_i: the batch sum instead of the mean",
           {"ce_forward": lambda z, y, valid, sm: (lambda L, c: (L * z.shape[0], c))(
               *_ce_forward(z, y, valid, sm))}, "any N > 1"),
)


def kill_matrix(
    mutants: Iterable[Mutant] = MUTANTS,
    *,
    seed: int = 0,
    random_cases: int = 2,
    properties: Iterable[str] | None = None,
    stop_at_first: bool = False,
) -> dict[str, dict[str, str | None]]:
    """{mutant: {property: the first case that kills it, or None}} over `sweep(seed)`.

    A property kills a mutant when it raises on some case (an exception from a mutant that
    cannot even run on that shape counts: the mistake is revealed). With `stop_at_first`,
    a mutant's row stops at its first kill (enough to know it is caught)."""
    table: dict[str, Callable] = {**LOGITS_PROPERTIES, **MLP_PROPERTIES}
    names = list(table) if properties is None else list(properties)
    cases = list(sweep(seed, random_cases=random_cases))
    out: dict[str, dict[str, str | None]] = {}
    for m in mutants:
        impl = m.impl()
        row: dict[str, str | None] = dict.fromkeys(names)
        for kind, case, tag in cases:
            props = LOGITS_PROPERTIES if kind == "logits" else MLP_PROPERTIES
            for pname in names:
                if pname not in props or row[pname] is not None:
                    continue
                try:
                    props[pname](impl, case)
                except Exception as e:
                    row[pname] = f"{tag}: {type(e).__name__}"
                    if stop_at_first:
                        break
            if stop_at_first and any(row.values()):
                break
            if all(row.values()):
                break
        out[m.name] = row
    return out
