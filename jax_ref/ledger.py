"""The derivation ledger: every step of handgrad.derivation evaluated on random inputs,
compared with the previous step and with autodiff, its shape checked against the seed's
shape line, and its behaviour recorded at extreme logits.

    entries = run_ledger(seed=0)
    first_wrong(entries)  # None, or the first step that goes wrong
"""

from __future__ import annotations

import dataclasses
import functools
import re
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from handgrad.derivation import CHAINS, Step
from jax_ref.tolerances import rel_error, tolerance

__all__ = ["LedgerEntry", "first_wrong", "run_ledger"]


@dataclasses.dataclass(frozen=True)
class LedgerEntry:
    chain: str
    step: str
    equation: str
    shape: str  # the seed's shape line
    actual_shape: tuple[int, ...]
    shape_ok: bool
    max_abs_err: float  # against autodiff
    rel_err: float
    vs_previous: float | None  # rel err against the previous step (None for the first)
    tolerance: float
    extreme_finite: bool  # finite at logits ~1e4?
    extreme_rel_err: float  # against autodiff at logits ~1e4 (inf when not finite)
    passed: bool

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["actual_shape"] = list(self.actual_shape)
        return d


# --- autodiff's answers ---------------------------------------------------------------


def _ad_jacobian(x):
    return jax.vmap(jax.jacrev(jax.nn.softmax))(x["z"])


def _ad_per_observation(x):
    def total(z):  # Σ_i L_i: row i of its gradient is ∂L_i/∂z_i
        return -jnp.take_along_axis(jax.nn.log_softmax(z), x["y"][:, None], axis=1).sum()

    return jax.grad(total)(x["z"])


def _ad_batch(x):
    def mean(z):
        return -jnp.take_along_axis(jax.nn.log_softmax(z), x["y"][:, None], axis=1).mean()

    return jax.grad(mean)(x["z"])


def _ad_mlp(x):
    """∂L/∂(every intermediate and parameter), by perturbing each with a zero."""

    def loss(W1, b1, W2, b2, e1, ea, e2):
        z1 = x["X"] @ W1 + b1 + e1
        a1 = jax.nn.relu(z1) + ea
        z2 = a1 @ W2 + b2 + e2
        logp = jax.nn.log_softmax(z2)
        return -jnp.take_along_axis(logp, x["y"][:, None], axis=1).mean()

    args = (x["W1"], x["b1"], x["W2"], x["b2"], jnp.zeros_like(x["z1"]),
            jnp.zeros_like(x["a1"]), jnp.zeros_like(x["z2"]))
    g = jax.grad(loss, argnums=tuple(range(7)))(*args)
    return dict(dW1=g[0], db1=g[1], dW2=g[2], db2=g[3], dz1=g[4], da1=g[5], dz2=g[6])


# --- inputs ---------------------------------------------------------------------------


def _logits_inputs(rng, N, C, scale):
    z = jnp.asarray(rng.standard_normal((N, C)) * scale)
    return {"z": z, "y": jnp.asarray(rng.integers(0, C, N))}


def _mlp_inputs(rng, N, D, H, C, scale):
    X = jnp.asarray(rng.standard_normal((N, D)))
    W1 = jnp.asarray(rng.standard_normal((D, H)) / np.sqrt(D))
    b1 = jnp.asarray(rng.standard_normal(H) * 0.1)
    W2 = jnp.asarray(rng.standard_normal((H, C)) * scale / np.sqrt(H))
    b2 = jnp.asarray(rng.standard_normal(C) * 0.1)
    z1 = X @ W1 + b1
    a1 = jnp.maximum(z1, 0)
    z2 = a1 @ W2 + b2
    y = jnp.asarray(rng.integers(0, C, N))
    return dict(X=X, W1=W1, b1=b1, W2=W2, b2=b2, z1=z1, a1=a1, z2=z2, y=y)


def _shape_of(line: str, dims: dict[str, int]) -> tuple[int, ...]:
    """The result shape of a seed shape line: its first group, letters resolved."""
    first = re.match(r"\(([^)]*)\)", line).group(1)
    return tuple(dims[t.strip()] for t in first.split(",") if t.strip())


def _operands_ok(line: str) -> bool:
    """For a product line '(R) = (A)·(B)', check the operands' letters agree on the inner
    dimension and give the result: the seed's shape equation itself."""
    groups = re.findall(r"\(([^)]*)\)", line)
    if len(groups) != 3:
        return True
    r, a, b = ([t.strip() for t in g.split(",")] for g in groups)
    return a[-1] == b[0] and [a[0], b[-1]] == r


# --- the ledger -----------------------------------------------------------------------


_REFERENCES = {
    "softmax_jacobian": lambda x, name: _ad_jacobian(x),
    "cross_entropy_per_observation": lambda x, name: _ad_per_observation(x),
    "batch_mean": lambda x, name: _ad_batch(x),
    "mlp": lambda x, name: _ad_mlp(x)[name],
}


def _natural_scale(chain: str, x: dict) -> float:
    # J and a - onehot carry absolute rounding of the probabilities' scale (see scales.py)
    if chain in ("softmax_jacobian", "cross_entropy_per_observation"):
        return 1.0
    if chain == "batch_mean":
        return 1.0 / x["z"].shape[0]
    return 0.0


@functools.partial(jax.jit, static_argnums=(0, 1))
def _evaluate(chain: str, steps: tuple[Step, ...], x: dict):
    """Every step of a chain and autodiff's answer for it, in one compilation."""
    return [(step.fn(x), _REFERENCES[chain](x, step.name)) for step in steps]


def run_ledger(
    seed: int = 0,
    chains: dict[str, list[Step]] | None = None,
    dims: tuple[int, int, int, int] = (5, 4, 6, 3),
) -> list[LedgerEntry]:
    """Evaluate every step of every chain in float64 (N, D, H, C = `dims`)."""
    chains = CHAINS if chains is None else chains
    N, D, H, C = dims
    letters = {"N": N, "D": D, "H": H, "C": C}
    entries: list[LedgerEntry] = []
    with _x64():
        for chain, steps in chains.items():
            rng = np.random.default_rng(seed)
            if chain == "mlp":
                x, xe = _mlp_inputs(rng, N, D, H, C, 1.0), _mlp_inputs(rng, N, D, H, C, 1e4)
            else:
                x, xe = _logits_inputs(rng, N, C, 1.0), _logits_inputs(rng, N, C, 1e4)
            tol = tolerance(jnp.float64)
            outs, outs_e = _evaluate(chain, tuple(steps), x), _evaluate(chain, tuple(steps), xe)
            prev = None
            for step, (got, want), (got_e, want_e) in zip(steps, outs, outs_e):
                abs_err, rel, _ = rel_error(got, want, _natural_scale(chain, x))
                # equality chains compare each form with the one before; the MLP chain's lines
                # are different quantities, each checked against autodiff alone
                vs_prev = None if prev is None or chain == "mlp" else rel_error(
                    got, prev, _natural_scale(chain, x))[1]
                shape_ok = (tuple(got.shape) == _shape_of(step.shape, letters)
                            and _operands_ok(step.shape))
                finite = bool(np.all(np.isfinite(got_e)))
                rel_e = rel_error(got_e, want_e, _natural_scale(chain, xe))[1]
                entries.append(LedgerEntry(
                    chain, step.name, step.equation, step.shape, tuple(got.shape), shape_ok,
                    abs_err, rel, vs_prev, tol, finite, rel_e,
                    passed=bool(shape_ok and rel <= tol and (vs_prev is None or vs_prev <= tol)),
                ))
                prev = got
    return entries


def first_wrong(entries: list[LedgerEntry]) -> LedgerEntry | None:
    """The first step, in chain order, that does not hold."""
    return next((e for e in entries if not e.passed), None)


def _x64():
    from jax_ref.check import _enable_x64

    return _enable_x64()
