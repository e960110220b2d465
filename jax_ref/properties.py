"""Properties every derivation gets from its spec, and the comparison they share.

A property is a function `(impl, case) -> None` that raises AssertionError naming what
broke; `impl` is handgrad's functions or a mutant's (`jax_ref.spec.implementation`).
Generic here: `agrees` (every output equals the referee's) and `finite_differences`
(every gradient against differences of the referee's loss). No jit-equals-eager
property: every public function runs a jitted core, so it could not fail.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jax_ref.gradients import check_gradients
from jax_ref.spec import Derivation
from jax_ref.tolerances import rel_error, tolerance
from jax_ref.verdict import verdict

__all__ = [
    "agrees",
    "close",
    "close_tree",
    "finite_differences",
    "leaf_names",
    "outputs",
    "scales_like",
]


def close(what: str, got, want, dtype, scale: float = 0.0) -> None:
    """Raise unless `got` has `dtype`, `want`'s shape, and is within the dtype's tolerance
    of `want` (norm-wise, relative to max(|values|, `scale`))."""
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


def scales_like(tree, scale) -> list[float]:
    """One natural scale per leaf of `tree`: a number is every leaf's."""
    n = len(jax.tree.leaves(tree))
    if scale is None or isinstance(scale, (int, float, np.floating)):
        return [float(scale or 0.0)] * n
    leaves = jax.tree.leaves(scale)
    if len(leaves) != n:
        raise ValueError(f"scale has {len(leaves)} leaves for an output of {n}")
    return [float(s) for s in leaves]


def leaf_names(parameter, tree) -> list[str]:
    """Names for the leaves of an output: the spec's `parameter` (one name, or one per
    leaf), else the leaves' paths."""
    paths = [
        jax.tree_util.keystr(p, simple=True, separator=".")
        for p, _ in jax.tree.flatten_with_path(tree)[0]
    ]
    names = [parameter] if isinstance(parameter, str) else list(parameter or ())
    return names if len(names) == len(paths) else [f"{names[0]}.{p}" if names else p for p in paths]


def close_tree(what: str, got, want, dtype, scale=0.0, names=None) -> None:
    """`close` leaf by leaf over two pytrees of one structure."""
    wt = jax.tree.structure(want)
    if jax.tree.structure(got) != wt:
        raise AssertionError(f"{what}: returns a {jax.tree.structure(got)}, the referee {wt}")
    leaves = jax.tree.leaves(want)
    names = leaf_names(names, want) if len(leaves) > 1 else [""]
    for name, g, w, s in zip(names, jax.tree.leaves(got), leaves, scales_like(want, scale)):
        close(f"{what} {name}".rstrip(), g, w, dtype, s)


def _dtype_of(args) -> np.dtype:
    floats = [
        jnp.result_type(x)
        for x in jax.tree.leaves(args)
        if jnp.issubdtype(jnp.result_type(x), jnp.floating)
    ]
    return floats[0] if floats else jnp.dtype(jnp.float64)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _values(d: Derivation, funcs: tuple, case):
    return [o.call(f, case) for f, o in zip(funcs, d.outputs)]


def outputs(d: Derivation, impl, case) -> list[tuple]:
    """[(impl's value, the referee's value)] for each of `d.outputs`. All of an
    implementation's functions share one compilation per shape, and the referee's another
    (which every mutant then reuses)."""
    ref = tuple(getattr(d.reference, o.function) for o in d.outputs)
    hand = tuple(getattr(impl, o.function) for o in d.outputs)
    return list(zip(_values(d, hand, case), _values(d, ref, case)))


def agrees(d: Derivation):
    """Every public function equals the referee's (forward values and autodiff gradients)."""

    def agrees(impl, case) -> None:
        dtype = _dtype_of(case)
        for o, (got, want) in zip(d.outputs, outputs(d, impl, case)):
            close_tree(o.function, got, want, dtype, o.scale(case), o.parameter)

    agrees.__doc__ = f"{', '.join(d.functions)} equal the referee's."
    return agrees


def finite_differences(d: Derivation):
    """Every hand gradient agrees with float64 central differences of the referee's loss."""

    def finite_differences(impl, case) -> None:
        bad = []
        for g in d.gradients:
            grads = g.gradient(impl, case)
            scales = None if g.scale is None else g.scale(case)
            results = check_gradients(
                g.loss,
                lambda *_, grads=grads: grads,
                *g.loss_arguments(case),
                oracles=("finite_difference",),
                max_tries=6,  # a point on a kink is inconclusive sooner: autodiff judges it
                scales=scales,
            )
            bad += [f"{g.function}: {r.describe()}" for r in verdict(results).failed]
        if bad:
            raise AssertionError("finite differences disagree: " + "; ".join(bad))

    return finite_differences
