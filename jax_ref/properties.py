"""The properties a correct implementation of the seed satisfies, as plain functions.

Each takes an implementation `impl` (a namespace with the seed's public functions:
`handgrad` itself, or a mutant from `jax_ref.mutants`) and a case, and raises
AssertionError with a message naming what broke. The tests run them under hypothesis
against `handgrad`; `handgrad mutants` runs them over a deterministic sweep against every
mutant, which proves that each property can fail (the kill matrix).
"""

from __future__ import annotations

from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np

import jax_ref.reference as ref
from jax_ref.cases import LogitsCase, MLPCase
from jax_ref.check import check_gradients
from jax_ref.scales import logits_scales, mlp_scales
from jax_ref.tolerances import rel_error, tolerance

__all__ = ["LOGITS_PROPERTIES", "MLP_PROPERTIES", "PUBLIC", "impl_of"]

PUBLIC = (
    "softmax",
    "softmax_jacobian",
    "cross_entropy",
    "cross_entropy_grad",
    "mlp_forward",
    "mlp_loss",
    "mlp_grads",
)


def impl_of(module) -> SimpleNamespace:
    """The seed's public functions of `module` (e.g. handgrad) as a namespace."""
    return SimpleNamespace(**{name: getattr(module, name) for name in PUBLIC})


def _close(what: str, got, want, dtype, scale: float = 0.0) -> None:
    got_dtype = jnp.result_type(got)
    if got_dtype != jnp.dtype(dtype):
        raise AssertionError(f"{what}: returns {got_dtype}, the input was {jnp.dtype(dtype)}")
    if np.shape(got) != np.shape(want):
        raise AssertionError(f"{what}: shape {np.shape(got)}, the referee's is {np.shape(want)}")
    _, rel, idx = rel_error(got, want, scale)
    tol = tolerance(dtype)
    if not rel <= tol:
        g, w = np.asarray(got), np.asarray(want)
        raise AssertionError(
            f"{what}: rel err {rel:.3g} > tolerance {tol:.3g} ({jnp.dtype(dtype).name}); at "
            f"{list(idx)} got {g[idx] if g.ndim else g}, referee {w[idx] if w.ndim else w}"
        )


def agrees_on_logits(impl, case: LogitsCase) -> None:
    """softmax, its Jacobian, cross-entropy and its gradient equal the referee's."""
    z, y = case
    scale = logits_scales(z, y)
    for name in ("softmax", "softmax_jacobian"):
        _close(name, getattr(impl, name)(z), getattr(ref, name)(z), z.dtype, scale[name])
    for name in ("cross_entropy", "cross_entropy_grad"):
        _close(name, getattr(impl, name)(z, y), getattr(ref, name)(z, y), z.dtype, scale[name])


def agrees_on_mlp(impl, case: MLPCase) -> None:
    """mlp_forward, mlp_loss and every leaf of mlp_grads equal the referee's."""
    p, X, y, reg = case
    s = mlp_scales(p, X, y, reg)
    _close("mlp_forward", impl.mlp_forward(p, X), ref.mlp_forward(p, X), X.dtype,
           s["mlp_forward"])
    _close("mlp_loss", impl.mlp_loss(p, X, y, reg), ref.mlp_loss(p, X, y, reg), X.dtype,
           s["mlp_loss"])
    loss, grads = impl.mlp_grads(p, X, y, reg)
    want_loss, want = ref.mlp_grads(p, X, y, reg)
    _close("mlp_grads loss", loss, want_loss, X.dtype, s["mlp_loss"])
    for field, g, w, sc in zip(want._fields, grads, want, s["grads"]):
        _close(f"mlp_grads d{field}", g, w, X.dtype, sc)


def softmax_invariants(impl, case: LogitsCase) -> None:
    """Rows of softmax sum to 1 and are invariant to a per-row shift; the Jacobian is
    symmetric, its rows sum to 0 and it is positive semi-definite."""
    z, _ = case
    tol = tolerance(z.dtype)
    a = np.asarray(impl.softmax(z), np.float64)
    # |Σ_j a_ij - 1| <= ~3C·u for a correct e/Σ; the table's tolerance covers C up to ~300
    if not np.all(np.abs(a.sum(axis=1) - 1) <= tol):
        raise AssertionError(f"softmax rows sum to {a.sum(axis=1)}, not 1")
    c = np.linspace(-3.0, 5.0, z.shape[0], dtype=z.dtype)[:, None]
    zc = z + c
    # the shift itself rounds: z + c - c != z; a logit error δ moves a_ij by at most e^{2δ}-1
    delta = np.abs((zc.astype(np.float64) - c) - z.astype(np.float64)).max()
    ac = np.asarray(impl.softmax(zc), np.float64)
    slack = a * np.expm1(2 * delta) + tol
    if not np.all(np.abs(ac - a) <= slack):
        raise AssertionError(f"softmax(z + c) != softmax(z): max diff {np.abs(ac - a).max():.3g}")
    J = np.asarray(impl.softmax_jacobian(z), np.float64)
    # J's entries are products of probabilities (|J| <= 1/4) and carry absolute rounding of
    # order u: at extreme logits 1 - a_ij rounds to 0 while a_ik is 1e-90, so max|J| is no
    # scale for its errors. Scale 1.
    scale = 1.0
    if not np.abs(J - J.transpose(0, 2, 1)).max() <= tol * scale:
        raise AssertionError("softmax_jacobian is not symmetric in (j, k)")
    if not np.abs(J.sum(axis=2)).max() <= tol:
        worst = np.abs(J.sum(axis=2)).max()
        raise AssertionError(f"softmax_jacobian rows sum to {worst:.3g}, not 0")
    low = np.linalg.eigvalsh((J + J.transpose(0, 2, 1)) / 2).min()
    if not low >= -tol * scale:
        raise AssertionError(f"softmax_jacobian is not positive semi-definite: eig {low:.3g}")


def ce_grad_bounds(impl, case: LogitsCase) -> None:
    """Each row of ∂L/∂z = (a - onehot)/N sums to 0 and lies in [-1/N, 1/N]."""
    z, y = case
    N = z.shape[0]
    tol = tolerance(z.dtype)
    g = np.asarray(impl.cross_entropy_grad(z, y), np.float64)
    if not np.abs(g.sum(axis=1)).max() <= tol / N:
        raise AssertionError(f"cross_entropy_grad rows sum to {np.abs(g.sum(axis=1)).max():.3g}")
    if not (np.all(g >= -(1 + tol) / N) and np.all(g <= (1 + tol) / N)):
        raise AssertionError(f"cross_entropy_grad leaves [-1/N, 1/N] = ±{1 / N:.3g}: "
                             f"min {g.min():.3g}, max {g.max():.3g}")


def jit_matches_eager(impl, case: MLPCase) -> None:
    """jax.jit(f) gives what f gives (no Python-side value dependence)."""
    p, X, y, reg = case
    eager = impl.mlp_grads(p, X, y, reg)
    jitted = jax.jit(impl.mlp_grads)(p, X, y, reg)
    s = mlp_scales(p, X, y, reg)
    for name, a, b, sc in zip(("loss", "dW1", "db1", "dW2", "db2"), jax.tree.leaves(jitted),
                              jax.tree.leaves(eager), [s["mlp_loss"], *s["grads"]]):
        _close(f"jit(mlp_grads) {name}", a, b, X.dtype, sc)


def vmap_per_example(impl, case: MLPCase) -> None:
    """Per-example gradients (vmap over single rows) averaged over N equal the batch's."""
    p, X, y, reg = case

    def one(x, t):
        return impl.mlp_grads(p, x[None], t[None], reg)

    losses, per = jax.vmap(one)(X, y)
    loss, grads = impl.mlp_grads(p, X, y, reg)
    s = mlp_scales(p, X, y, reg)
    _close("mean of per-example losses", losses.mean(), loss, X.dtype, s["mlp_loss"])
    for name, g, w, sc in zip(("dW1", "db1", "dW2", "db2"), per, grads, s["grads"]):
        _close(f"mean of per-example {name}", g.mean(axis=0), w, X.dtype, sc)


def finite_differences(impl, case: MLPCase) -> None:
    """Directional central differences (float64) of the referee's loss match mlp_grads."""
    p, X, y, reg = case
    _, grads = impl.mlp_grads(p, X, y, reg)
    scales = mlp_scales(p, X, y, reg)["grads"]
    results = check_gradients(ref.mlp_loss, lambda *_: grads, p, X, y, reg,
                              oracles=("finite_difference",), scales=scales)
    bad = [r.describe() for r in results if not r.passed]
    if bad:
        raise AssertionError("finite differences disagree: " + "; ".join(bad))


def loss_near_log_c(impl, case: MLPCase) -> None:
    """With tiny weights and zero biases every class is equally likely: L ≈ log C."""
    p, X, y, _ = case
    tiny = type(p)(p.W1 * 1e-3, p.b1 * 0, p.W2 * 1e-3, p.b2 * 0)
    C = p.W2.shape[1]
    z2 = np.asarray(ref.mlp_forward(tiny, X), np.float64)
    # log-softmax of z lies within 2 max|z| of -log C
    bound = 2 * np.abs(z2).max() + tolerance(X.dtype) * max(np.log(C), 1.0)
    L = float(impl.mlp_loss(tiny, X, y, 0.0))
    if not abs(L - np.log(C)) <= bound:
        raise AssertionError(f"loss with tiny weights is {L:.6g}, not log C = {np.log(C):.6g}")


LOGITS_PROPERTIES = {
    "agrees_on_logits": agrees_on_logits,
    "softmax_invariants": softmax_invariants,
    "ce_grad_bounds": ce_grad_bounds,
}
MLP_PROPERTIES = {
    "agrees_on_mlp": agrees_on_mlp,
    "finite_differences": finite_differences,
    "jit_matches_eager": jit_matches_eager,
    "vmap_per_example": vmap_per_example,
    "loss_near_log_c": loss_near_log_c,
}
