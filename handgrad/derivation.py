"""Every equality of the seed derivation as an executable step (pure jnp, no autodiff).

A chain is a list of `Step`s that all compute the same quantity, each written the way one
line of the seed writes it; `jax_ref.ledger` evaluates them, compares each with the
previous step and with autodiff, checks its shape line, and records how each form behaves
at extreme logits. Steps take a dict of named inputs (see `inputs` of each chain).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax.numpy as jnp

__all__ = ["CHAINS", "Step"]


class Step(NamedTuple):
    name: str
    equation: str  # as the seed writes it
    shape: str  # the seed's shape line, in N, D, H, C
    fn: Callable[[dict], jnp.ndarray]


def _exps(z):
    """e^{z_ij} shifted by the row max (the shift cancels in every ratio below) and Σ."""
    e = jnp.exp(z - z.max(axis=1, keepdims=True))
    return e, e.sum(axis=1, keepdims=True)


def _eye(C, dtype):
    return jnp.eye(C, dtype=dtype)[None]  # 1[j=k], broadcast over i


def _onehot(z, y):
    return (jnp.arange(z.shape[1]) == y[:, None]).astype(z.dtype)  # 1[k = y_i]


def _softmax(z):
    e, s = _exps(z)
    return e / s


# --- softmax Jacobian: J[i, j, k] = ∂a_ij/∂z_ik ------------------------------------


def _quotient(x):
    e, s = _exps(x["z"])
    de = e[:, :, None] * _eye(e.shape[1], e.dtype)  # ∂e^{z_ij}/∂z_ik = e^{z_ij} 1[j=k]
    ds = e[:, None, :]  # ∂Σ/∂z_ik = e^{z_ik}
    S = s[:, :, None]
    return (S * de - e[:, :, None] * ds) / S**2


def _split(x):
    e, s = _exps(x["z"])
    de = e[:, :, None] * _eye(e.shape[1], e.dtype)
    S = s[:, :, None]
    return de / S - e[:, :, None] * e[:, None, :] / S**2


def _indicator(x):
    e, s = _exps(x["z"])
    S = s[:, :, None]
    return e[:, :, None] * _eye(e.shape[1], e.dtype) / S - e[:, :, None] * e[:, None, :] / S**2


def _factored(x):
    e, s = _exps(x["z"])
    S = s[:, :, None]
    return (e[:, :, None] / S) * (_eye(e.shape[1], e.dtype) - e[:, None, :] / S)


def _jac_final(x):
    a = _softmax(x["z"])
    return a[:, :, None] * (_eye(a.shape[1], a.dtype) - a[:, None, :])


SOFTMAX_JACOBIAN = [
    Step("quotient rule", "∂a_ij/∂z_ik = (Σ ∂e^{z_ij}/∂z_ik − e^{z_ij} ∂Σ/∂z_ik) / Σ²",
         "(N, C, C)", _quotient),
    Step("split fraction", "= (∂e^{z_ij}/∂z_ik)/Σ − e^{z_ij} (∂Σ/∂z_ik)/Σ²", "(N, C, C)", _split),
    Step("indicator form", "= e^{z_ij} 1[j=k]/Σ − e^{z_ij} e^{z_ik}/Σ²", "(N, C, C)", _indicator),
    Step("factored", "= (e^{z_ij}/Σ)(1[j=k] − e^{z_ik}/Σ)", "(N, C, C)", _factored),
    Step("final", "= a_ij (1[j=k] − a_ik)", "(N, C, C)", _jac_final),
]


# --- one observation's cross-entropy gradient: ∂L_i/∂z_ik ---------------------------


def _via_one_over_a(x):
    a = _softmax(x["z"])
    J = _jac_final(x)
    return -jnp.einsum("ij,ijk->ik", _onehot(x["z"], x["y"]) / a, J)


def _log_derivative(x):
    a = _softmax(x["z"])
    ind = _onehot(x["z"], x["y"])
    return -jnp.einsum("ij,ijk->ik", ind, _eye(a.shape[1], a.dtype) - a[:, None, :])


def _split_k(x):
    a = _softmax(x["z"])
    ind = _onehot(x["z"], x["y"])  # 1[k = y_i] read at column k
    others = ind.sum(axis=1, keepdims=True) - ind  # Σ_{j≠k} 1[j = y_i]
    return -ind * (1 - a) + others * a


def _regroup(x):
    a = _softmax(x["z"])
    ind = _onehot(x["z"], x["y"])
    return -ind + a * ind.sum(axis=1, keepdims=True)


def _ce_final(x):
    return _softmax(x["z"]) - _onehot(x["z"], x["y"])


CE_PER_OBSERVATION = [
    Step("chain through 1/a", "∂L_i/∂z_ik = −Σ_j 1[j=y_i] (1/a_ij) ∂a_ij/∂z_ik", "(N, C)",
         _via_one_over_a),
    Step("log derivative", "= −Σ_j 1[j=y_i] (1[j=k] − a_ik)", "(N, C)", _log_derivative),
    Step("split j = k", "= −1[k=y_i](1 − a_ik) + Σ_{j≠k} 1[j=y_i] a_ik", "(N, C)", _split_k),
    Step("regroup", "= −1[k=y_i] + a_ik Σ_j 1[j=y_i]", "(N, C)", _regroup),
    Step("final", "= a_ik − 1[k=y_i]", "(N, C)", _ce_final),
]


# --- the batch mean: ∂L/∂z ----------------------------------------------------------


def _mean_chain(x):
    N = x["z"].shape[0]
    return (1 / N) * _ce_final(x)  # ∂L/∂L_i · ∂L_i/∂z_ik


def _python_form(x):
    z, y = x["z"], x["y"]
    N = z.shape[0]
    ind = jnp.zeros_like(z).at[jnp.arange(N), y].set(1)  # I{z[range(N), y]}
    return (_softmax(z) - ind) / N


BATCH_MEAN = [
    Step("chain rule", "∂L/∂z_ik = ∂L/∂L_i · ∂L_i/∂z_ik = (1/N)(a_ik − 1[k=y_i])", "(N, C)",
         _mean_chain),
    Step("python", "∂L/∂z = (a − I{z[range(N), y]}) / N", "(N, C)", _python_form),
]


# --- the two-layer MLP, line by line ------------------------------------------------
# Each step computes one line from the previous lines' hand values (x holds X, W1, b1,
# W2, b2, y and the forward intermediates z1, a1, z2); the ledger compares each with
# autodiff's ∂L/∂(that quantity).


def _dz2(x):
    return _mean_chain({"z": x["z2"], "y": x["y"]})


def _dW2(x):
    return x["a1"].T @ _dz2(x)


def _db2(x):
    return _dz2(x).sum(axis=0)


def _da1(x):
    return _dz2(x) @ x["W2"].T


def _dz1(x):
    return _da1(x) * (x["z1"] > 0)


def _dW1(x):
    return x["X"].T @ _dz1(x)


def _db1(x):
    return _dz1(x).sum(axis=0)


MLP = [
    Step("dz2", "∂L/∂z⁽²⁾ = (a⁽²⁾ − I{z⁽²⁾[range(N), y]}) / N", "(N, C)", _dz2),
    Step("dW2", "∂L/∂W⁽²⁾ = a⁽¹⁾ᵀ · ∂L/∂z⁽²⁾", "(H, C) = (H, N)·(N, C)", _dW2),
    Step("db2", "∂L/∂b⁽²⁾ = sum(∂L/∂z⁽²⁾, axis=0)", "(C,)", _db2),
    Step("da1", "∂L/∂a⁽¹⁾ = ∂L/∂z⁽²⁾ · W⁽²⁾ᵀ", "(N, H) = (N, C)·(C, H)", _da1),
    Step("dz1", "∂L/∂z⁽¹⁾ = ∂L/∂a⁽¹⁾ ⊙ 1[z⁽¹⁾ > 0]   (implicit in the seed)", "(N, H)", _dz1),
    Step("dW1", "∂L/∂W⁽¹⁾ = Xᵀ · ∂L/∂z⁽¹⁾", "(D, H) = (D, N)·(N, H)", _dW1),
    Step("db1", "∂L/∂b⁽¹⁾ = sum(∂L/∂z⁽¹⁾, axis=0)", "(H,)", _db1),
]

CHAINS: dict[str, list[Step]] = {
    "softmax_jacobian": SOFTMAX_JACOBIAN,
    "cross_entropy_per_observation": CE_PER_OBSERVATION,
    "batch_mean": BATCH_MEAN,
    "mlp": MLP,
}
