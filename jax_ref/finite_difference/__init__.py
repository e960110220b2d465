"""The finite-difference oracle: a hand gradient judged by float64 central differences of
the loss alone, along random sign directions, leaf by leaf.

    results = finite_difference_results(loss_fn, params, grads, args, seed=0)

`stencil` turns loss values into one directional derivative and its error bound, `probe`
evaluates the loss at many points per jitted call, `engine` screens all leaves at once
and localises the rest one by one (docs/architecture.md).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from jax_ref.finite_difference.engine import Engine, build_engine
from jax_ref.runtime import enable_x64
from jax_ref.verdict import CheckResult

__all__ = ["Engine", "build_engine", "finite_difference_results"]


def finite_difference_results(
    loss_fn,
    params,
    grads,
    args=(),
    *,
    seed=0,
    directions=2,
    max_tries=12,
    scales=None,
    what="loss_fn",
    still=None,
) -> list[CheckResult]:
    """One finite-difference result per non-empty float leaf of `params`: `grads` (a
    pytree like `params`) against the directional slopes of `loss_fn(params, *args)`.
    `what` names the user's function in an error it raises; `still` ({leaf index: bool
    mask}) holds elements still (where the loss is singular)."""
    with enable_x64():
        engine = build_engine(loss_fn, params, grads, args, scales, directions, seed, what, still)
        out = engine.screen()
        for i in sorted(engine.leaves):
            if i not in out:
                out[i] = engine.localise(i, max_tries)
        dtypes = [jnp.result_type(p) for p in jax.tree.leaves(params)]
        results = [_dtype_kept(out[i], engine.leaves[i].gdtype, dtypes[i]) for i in sorted(out)]
    if engine.why:  # judged in the loss's own precision: every result says so
        results = [_own_precision(r, engine) for r in results]
    return results


def _own_precision(r: CheckResult, engine) -> CheckResult:
    """A result of differences taken in the loss's own dtype. In a 16-bit one the steps
    themselves round (bfloat16 keeps 8 bits: x + h·s moves by up to 40 % more or less than
    asked at h = 1e-2), which no error bound here covers: a disagreement there confirms
    nothing (inconclusive), an agreement stands."""
    note = f"{r.note}; {engine.why}"
    coarse = all(jnp.finfo(d).bits <= 16 for d in engine.dtypes) if engine.dtypes else False
    if r.status == "failed" and coarse and "not finite" not in r.note:
        note += "; in a 16-bit dtype the steps round: a disagreement confirms nothing"
        return dataclasses.replace(r, status="inconclusive", detectable_rel_err=math.inf, note=note)
    return dataclasses.replace(r, note=note)


def _dtype_kept(r: CheckResult, gdtype, pdtype) -> CheckResult:
    """A gradient whose dtype is not its parameter's fails, whatever its values."""
    if gdtype == pdtype:
        return r
    note = f"the gradient is {gdtype} for a {jnp.dtype(pdtype).name} parameter; {r.note}"
    return dataclasses.replace(r, status="failed", note=note)
