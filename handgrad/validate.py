"""Argument checks, in one place, in the glossary's letters (public: `jax_ref` and new
derivations use them too).

Glossary:  N batch size (rows of X, z and y),  D input features,  H hidden units,
C classes. Shapes, ranks and dtypes are static, so they are checked always, also under
`jax.jit` and `jax.vmap`. Values (finiteness, label range, sign of `reg`) can only be
checked when they are concrete; under a transform the math itself turns a bad label or
a negative `reg` into NaN (`label_mask`, `reg_or_nan`): nothing comes back plausible.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "as_array",
    "check_labels",
    "check_logits",
    "check_mlp",
    "check_reg",
    "check_same_dtype",
    "float_array",
    "is_concrete",
    "label_mask",
    "reg_or_nan",
]


def is_concrete(x) -> bool:
    """True when `x` holds values (not a tracer inside jit/vmap/grad)."""
    return not isinstance(x, jax.core.Tracer)


def _fmt(letters: str, shape: tuple) -> str:
    sizes = ", ".join(str(s) for s in shape)
    if len(shape) == 1:
        sizes += ","
    return f"{letters} = ({sizes})"


def as_array(x, name: str, letters: str):
    """A jax array (or tracer) as is; anything else as a numpy array of JAX's canonical
    dtype. Not jnp.asarray: that compiles a staging op for every new shape."""
    if isinstance(x, jax.Array):
        return x
    try:
        x = np.asarray(x)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{name} must be an array {letters}; got {type(x).__name__}") from e
    if x.dtype == object:
        raise ValueError(f"{name} must be a numeric array {letters}; got dtype object")
    return x.astype(jax.dtypes.canonicalize_dtype(x.dtype), copy=False)


def float_array(x, name: str, letters: str, ndim: int):
    """`x` as a floating array of rank `ndim`, finite when concrete; a ValueError naming
    `name`, its expected shape in `letters` and what came otherwise."""
    x = as_array(x, name, letters)
    if x.ndim != ndim:
        raise ValueError(f"{name} must be {letters}, a {ndim}-D array; got shape {x.shape}")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(f"{name} must be a floating-point array {letters}; got dtype {x.dtype}")
    if is_concrete(x):
        bad = ~np.isfinite(np.asarray(x))
        if bad.any():
            where = tuple(int(i) for i in np.argwhere(bad)[0])
            value = np.asarray(x)[where]
            raise ValueError(f"{name} must be finite; got {value} at index {list(where)}")
    return x


def check_same_dtype(name: str, x, ref_name: str, ref) -> None:
    if x.dtype != ref.dtype:
        raise ValueError(
            f"{name} must have the dtype of {ref_name} ({ref.dtype}); got {x.dtype}"
            " (cast explicitly: handgrad never mixes precisions silently)"
        )


def check_logits(z):
    """z: (N, C) floating, N >= 1, C >= 1."""
    z = float_array(z, "z", "(N, C)", 2)
    if z.shape[0] == 0:
        raise ValueError(f"z must have at least one row (N >= 1); got {_fmt('(N, C)', z.shape)}")
    if z.shape[1] == 0:
        raise ValueError(f"z must have at least one class (C >= 1); got {_fmt('(N, C)', z.shape)}")
    return z


def check_labels(y, N: int, C: int, *, against: str, ignore: int | None = None):
    """y: (N,) integer labels in [0, C), or `ignore` (the range is checked when concrete)."""
    y = as_array(y, "y", "(N,)")
    if y.dtype == jnp.bool_ or not jnp.issubdtype(y.dtype, jnp.integer):
        raise ValueError(f"y must hold integer class labels (N,); got dtype {y.dtype}")
    if y.shape != (N,):
        raise ValueError(f"y must be (N,) = ({N},) to match {against}; got {y.shape}")
    if is_concrete(y):
        yv = np.asarray(y)
        bad = ((yv < 0) | (yv >= C)) & (yv != ignore if ignore is not None else True)
        if bad.any():
            i = int(np.argmax(bad))
            raise ValueError(f"y must hold labels in [0, C) = [0, {C}); got y[{i}] = {int(yv[i])}")
    return y


def check_reg(reg, dtype):
    """reg >= 0 (checked when concrete), as a scalar of the parameters' dtype."""
    if is_concrete(reg):
        r = np.asarray(reg)
        if r.shape != ():
            raise ValueError(f"reg must be a scalar; got shape {r.shape}")
        if not np.isfinite(r) or r < 0:
            raise ValueError(f"reg must be a finite number >= 0; got {r}")
    return jnp.asarray(reg, dtype)


def check_mlp(params, X):
    """params (W1 (D, H), b1 (H,), W2 (H, C), b2 (C,)) and X (N, D): shapes agree, one dtype."""
    if not (isinstance(params, tuple) and len(params) == 4):
        raise ValueError(
            f"params must be Params(W1, b1, W2, b2); got {type(params).__name__}"
            + (f" of length {len(params)}" if isinstance(params, tuple) else "")
        )
    X = float_array(X, "X", "(N, D)", 2)
    N, D = X.shape
    if N == 0:
        raise ValueError(f"X must have at least one row (N >= 1); got {_fmt('(N, D)', X.shape)}")
    x_is = f"X {_fmt('(N, D)', X.shape)}"
    W1 = float_array(params[0], "W1", "(D, H)", 2)
    if W1.shape[0] != D:
        raise ValueError(f"W1 must be (D, H) = ({D}, H) to match {x_is}; got {W1.shape}")
    H = W1.shape[1]
    w1_is = f"W1 {_fmt('(D, H)', W1.shape)}"
    b1 = float_array(params[1], "b1", "(H,)", 1)
    if b1.shape != (H,):
        raise ValueError(f"b1 must be (H,) = ({H},) to match {w1_is}; got {b1.shape}")
    W2 = float_array(params[2], "W2", "(H, C)", 2)
    if W2.shape[0] != H:
        raise ValueError(f"W2 must be (H, C) = ({H}, C) to match {w1_is}; got {W2.shape}")
    C = W2.shape[1]
    if C == 0:
        got = _fmt("(H, C)", W2.shape)
        raise ValueError(f"W2 must have at least one class (C >= 1); got {got}")
    b2 = float_array(params[3], "b2", "(C,)", 1)
    if b2.shape != (C,):
        raise ValueError(
            f"b2 must be (C,) = ({C},) to match W2 {_fmt('(H, C)', W2.shape)}; got {b2.shape}"
        )
    for name, p in (("W1", W1), ("b1", b1), ("W2", W2), ("b2", b2)):
        check_same_dtype(name, p, "X", X)
    return (W1, b1, W2, b2), X


def label_mask(y, C: int):
    """1 where 0 <= y < C. JAX clamps out-of-range gathers silently; this mask lets a bad
    label poison its row with NaN under jit, where it cannot raise."""
    return (y >= 0) & (y < C)


def reg_or_nan(reg):
    """A negative `reg` under jit becomes NaN (it cannot raise there)."""
    return jnp.where(reg >= 0, reg, jnp.nan)
