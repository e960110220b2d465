"""JAX settings the checks need: float64 on demand (or the function's own precision
where it runs in no other), and the persistent compilation cache."""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp

from jax_ref.trees import error_text, is_float, to64

__all__ = ["OwnCodeError", "enable_x64", "highest_precision", "use_compilation_cache"]


def enable_x64():
    """A context in which float64 is on, whatever the process's setting."""
    if hasattr(jax, "enable_x64"):  # jax >= 0.6
        return jax.enable_x64(True)
    from jax.experimental import enable_x64 as older

    return older()


class OwnCodeError(ValueError):
    """A user's function raised inside a check: the message names which one and where;
    the original exception is chained (`__cause__`)."""


def _float_dtype_name(tree) -> str:
    names = sorted(
        {jnp.dtype(jnp.result_type(x)).name for x in jax.tree.leaves(tree) if is_float(x)}
    )
    return "/".join(names) or "float64"


def highest_precision(fn, args, what, where="at the given point"):
    """(args, precision, why): `args` widened to float64 when `fn(*args)` traces there,
    else as given (a float32 `fori_loop` carry, a kernel written for float32), `why` then
    saying so. Call it inside `enable_x64`. A function that traces in neither raises
    OwnCodeError naming `what` and `where`."""
    wide = to64(args)
    try:
        jax.eval_shape(fn, *wide)
        return wide, "float64", ""
    except Exception as e64:  # the user's function does not run in float64: try its own
        first = e64
    try:
        jax.eval_shape(fn, *args)
    except Exception as e:  # the user's function raised in its own dtype too: theirs
        raise OwnCodeError(f"{what} raised {where}: {error_text(e)}") from e
    own = _float_dtype_name(args)
    why = f"{what} does not run in float64 ({error_text(first)}): judged in its own {own}"
    return args, own, why


def use_compilation_cache(path: str | None) -> str | None:
    """Keep XLA's compiled programs in `path` (JAX's persistent cache), every program
    however small; None, or a directory that cannot be made, leaves it off. Returns the
    directory in use."""
    if not path:
        return None
    try:
        Path(path).mkdir(parents=True, exist_ok=True)
    except OSError:
        return None  # no writable cache: run without one
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
    return str(path)
