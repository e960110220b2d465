"""Rule checks of `handgrad.linear_cross_entropy`, run by `handgrad check examples/linear_ce.py`.

Each check is `jax_ref.check_vjp` of the fused loss in (X, W, b), against `plain`: the
same loss with every N×V logit stored, written with `jax.nn` and differentiated by JAX.
The checks cover float64, float32 and bfloat16, every option, one pass and streamed
blocks that divide neither V = 11 nor N = 6, N = 1, and every label but one ignored.
Every label ignored gives a loss of 0 and a gradient of 0, with nothing for an oracle to
judge: tests/test_linear_ce.py asserts those zeros. Report: reports/linear_ce/gradcheck.md.
"""

import jax
import jax.numpy as jnp
import numpy as np

from handgrad import linear_cross_entropy
from jax_ref import RuleCheck

jax.config.update("jax_enable_x64", True)

H, V = 3, 11


def plain(X, W, b, y, *, label_smoothing=0.0, z_loss=0.0, soft_cap=None, reduction="mean"):
    """The reference: z = X·W + b stored whole, cross-entropy against the smoothed target."""
    z = X @ W + b
    if soft_cap is not None:
        z = soft_cap * jnp.tanh(z / soft_cap)
    valid = y != -100
    target = (1 - label_smoothing) * jax.nn.one_hot(jnp.where(valid, y, 0), V, dtype=z.dtype)
    L = -((target + label_smoothing / V) * jax.nn.log_softmax(z, axis=1)).sum(1)
    L = jnp.where(valid, L + z_loss * jax.nn.logsumexp(z, axis=1) ** 2, 0.0)
    if reduction == "none":
        return L
    return L.sum() / jnp.maximum(valid.sum(), 1) if reduction == "mean" else L.sum()


def _inputs(dtype, n=6, seed=0):
    rng = np.random.default_rng(seed)
    X, W, b = (jnp.asarray(rng.normal(size=s), dtype) for s in ((n, H), (H, V), (V,)))
    return X, W, b, jnp.asarray(rng.integers(0, V, n)).at[min(2, n - 1)].set(-100 if n > 1 else 3)


OPTIONS = {
    "plain": {},
    "smoothing 0.1, z-loss 0.01, soft cap 2": dict(label_smoothing=0.1, z_loss=1e-2, soft_cap=2.0),
    "sum": dict(reduction="sum"),
    "none, soft cap 3": dict(reduction="none", soft_cap=3.0),
}
BLOCKS = {"one pass": {}, "streamed 4x4": dict(block_v=4, block_n=4)}


def _check(name, dtype, options, blocks, n=6, labels=None):
    X, W, b, y = _inputs(dtype, n)
    y = y if labels is None else labels

    def fused(X, W, b):
        return linear_cross_entropy(X, W, y, b, **options, **blocks)

    def reference(X, W, b):
        return plain(X, W, b, y, **options)

    return RuleCheck(name, fused, (X, W, b), reference=reference)


CHECKS = [
    _check(f"{jnp.dtype(dt).name}: {opt}, {blk}", dt, OPTIONS[opt], BLOCKS[blk])
    for dt in (np.float64, np.float32, jnp.bfloat16)
    for opt in OPTIONS
    for blk in BLOCKS
]
CHECKS += [
    _check("float64: N = 1", np.float64, {}, BLOCKS["streamed 4x4"], n=1),
    _check(
        "float64: every label but one ignored",
        np.float64,
        OPTIONS["smoothing 0.1, z-loss 0.01, soft cap 2"],
        BLOCKS["streamed 4x4"],
        labels=jnp.full(6, -100).at[4].set(3),
    ),
]
