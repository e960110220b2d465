"""Pytree helpers every check shares: leaf names, float tests, float64 copies."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["error_text", "is_float", "leaf_name", "max_abs", "rms", "to64"]


def leaf_name(path) -> str:
    """A leaf's path as `a.b.0`, or "value" for the root."""
    return jax.tree_util.keystr(path, simple=True, separator=".") or "value"


def is_float(x) -> bool:
    """Is `x` (an array or a number) of a floating dtype?"""
    return jnp.issubdtype(jnp.result_type(x), jnp.floating)


def to64(tree):
    """`tree` with its float arrays widened to float64 numpy arrays (exactly). Python
    numbers stay as they are: weakly typed, they are float64 already under x64, and a
    program compiled for them is reused."""

    def widen(x):  # numpy casts: jnp ones would compile a conversion for every new shape
        if isinstance(x, (bool, int, float)) or not is_float(x):
            return x
        return np.asarray(x, np.float64)

    return jax.tree.map(widen, tree)


def max_abs(tree) -> float:
    """The largest |entry| over a pytree's float leaves (0 for none)."""
    vals = [
        float(np.max(np.abs(np.asarray(x, np.float64)), initial=0.0))
        for x in jax.tree.leaves(tree)
        if is_float(x)
    ]
    return max(vals, default=0.0)


def rms(x) -> float:
    """The root-mean-square of an array's entries (0 for an empty one)."""
    flat = np.ravel(np.asarray(x, np.float64))
    return float(np.sqrt(np.dot(flat, flat) / flat.size)) if flat.size else 0.0


def error_text(e: BaseException) -> str:
    """An exception in one line: `TypeError: first line of its message` (300 chars)."""
    msg = str(e).strip().splitlines()
    return f"{type(e).__name__}: {msg[0] if msg else ''}"[:300]
