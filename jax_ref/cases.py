"""Test inputs for the seed's functions, built from a few structural knobs and a seed.

One builder serves the hypothesis strategies (`jax_ref.strategies`, which draw the knobs
and shrink on them) and the deterministic sweeps of `handgrad check` / `handgrad mutants`
(`sweep`), so the tests and the reports exercise the same inputs.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from handgrad.mlp import Params

__all__ = [
    "EDGE_DIMS",
    "LOGIT_SCALES",
    "LogitsCase",
    "MLPCase",
    "logits_case",
    "mlp_case",
    "sweep",
]

# Edge shapes (N, D, H, C) every sweep covers: single row, single class, one feature,
# one hidden unit, square H = C, square N = C.
EDGE_DIMS = (
    (1, 3, 4, 3),  # N = 1
    (4, 3, 5, 1),  # C = 1
    (5, 1, 4, 3),  # D = 1
    (4, 3, 1, 3),  # H = 1
    (3, 2, 4, 4),  # H = C
    (4, 3, 5, 4),  # N = C
    (1, 1, 1, 1),  # everything 1
    (6, 5, 7, 3),  # generic
)

# Logit scales from tiny to extreme: 1e4 makes every probability but one underflow in
# float32 and float64 alike (e^{-1e4} = 0), the regime where naive formulas fail.
LOGIT_SCALES = (1e-6, 1.0, 30.0, 1e3, 1e4)


class LogitsCase(NamedTuple):
    z: np.ndarray  # (N, C)
    y: np.ndarray  # (N,)


class MLPCase(NamedTuple):
    params: Params
    X: np.ndarray  # (N, D)
    y: np.ndarray  # (N,)
    reg: float


def logits_case(seed: int, N: int, C: int, dtype, scale: float) -> LogitsCase:
    """z ~ scale · normal, labels uniform in [0, C)."""
    rng = np.random.default_rng(seed)
    z = (rng.standard_normal((N, C)) * scale).astype(dtype)
    return LogitsCase(z, rng.integers(0, C, size=N).astype(np.int32))


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


def sweep(seed: int = 0, dtypes=(np.float64, np.float32), random_cases: int = 4):
    """Deterministic cases for `seed`: every edge shape x dtype, with reg = 0 and > 0, kinks
    and extreme logits, plus `random_cases` random shapes. Yields ("logits"|"mlp", case, tag)."""
    rng = np.random.default_rng(seed)
    dims = list(EDGE_DIMS)
    for _ in range(random_cases):
        dims.append(tuple(int(v) for v in rng.integers(1, 9, size=4)))
    for k, (N, D, H, C) in enumerate(dims):
        for dtype in dtypes:
            dname = np.dtype(dtype).name
            s = int(rng.integers(0, 2**31))
            scale = LOGIT_SCALES[k % len(LOGIT_SCALES)]
            yield "logits", logits_case(s, N, C, dtype, scale), f"{dname} N={N} C={C} |z|~{scale:g}"
            shape = f"N={N} D={D} H={H} C={C}"
            yield "mlp", mlp_case(s, N, D, H, C, dtype), f"{dname} {shape}"
            yield "mlp", mlp_case(s + 1, N, D, H, C, dtype, reg=0.1, kinks=True), \
                f"{dname} {shape} reg=0.1 kinks"
            yield "mlp", mlp_case(s + 2, N, D, H, C, dtype, w_scale=30.0, x_scale=10.0,
                                  reg=0.01), f"{dname} {shape} reg=0.01 extreme logits"
