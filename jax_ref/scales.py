"""Natural error scales for the seed's outputs: the forward-error bound's magnitude.

A computed a - onehot near a confident prediction cancels: the result is 1e-4 while its
rounding error is u (of the 1 it came from). Measured against its own size, a correct
float32 gradient then looks 1e-3 wrong. The classical bound |fl(f) - f| <= γ·f_abs, with
f_abs the same computation on absolute values (|A||B| for a product), gives the scale
that rounding actually lives on. These functions compute that f_abs, leaf by leaf, in
plain numpy, float64 (no handgrad code, no autodiff), as one float per output.
"""

from __future__ import annotations

import numpy as np

from handgrad.mlp import Params

__all__ = ["logits_scales", "mlp_scales"]


def _mx(x) -> float:
    return float(np.max(np.abs(np.asarray(x, np.float64)), initial=0.0))


def logits_scales(z, y) -> dict[str, float]:
    """Scales for softmax (probabilities: 1), its Jacobian (products of probabilities: 1),
    cross-entropy (log-sum-exp minus a logit: 1 + max|z|) and its gradient ((a + 1)/N)."""
    N = np.shape(z)[0]
    return {
        "softmax": 1.0,
        "softmax_jacobian": 1.0,
        "cross_entropy": 1.0 + _mx(z),
        "cross_entropy_grad": 2.0 / N,
    }


def mlp_scales(params, X, y, reg=0.0) -> dict[str, float]:
    """Scales for mlp_forward, mlp_loss and each gradient leaf: the backward pass on
    absolute values, dz2 -> (a2 + onehot)/N, every product |A|·|B|, the mask kept."""
    W1, b1, W2, b2 = (np.asarray(p, np.float64) for p in params)
    X = np.asarray(X, np.float64)
    N, C = X.shape[0], W2.shape[1]
    z1 = X @ W1 + b1
    a1 = np.maximum(z1, 0)
    z2 = a1 @ W2 + b2
    z2_abs = np.abs(a1) @ np.abs(W2) + np.abs(b2)
    a2 = np.exp(z2 - z2.max(axis=1, keepdims=True))
    a2 = a2 / a2.sum(axis=1, keepdims=True)
    dz2 = (a2 + np.eye(C)[np.asarray(y)]) / N
    dW2 = a1.T @ dz2 + 2 * reg * np.abs(W2)
    da1 = dz2 @ np.abs(W2).T
    dz1 = da1 * (z1 >= 0)
    dW1 = np.abs(X).T @ dz1 + 2 * reg * np.abs(W1)
    penalty = reg * (np.sum(W1**2) + np.sum(W2**2))
    return {
        "mlp_forward": _mx(z2_abs),
        "mlp_loss": 1.0 + _mx(z2) + float(penalty),
        "grads": Params(_mx(dW1), _mx(dz1.sum(axis=0)), _mx(dW2), _mx(dz2.sum(axis=0))),
    }
