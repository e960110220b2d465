"""JAX settings the checks need: float64 on demand, and the persistent compilation cache."""

from __future__ import annotations

from pathlib import Path

import jax

__all__ = ["enable_x64", "use_compilation_cache"]


def enable_x64():
    """A context in which float64 is on, whatever the process's setting."""
    if hasattr(jax, "enable_x64"):  # jax >= 0.6
        return jax.enable_x64(True)
    from jax.experimental import enable_x64 as older

    return older()


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
