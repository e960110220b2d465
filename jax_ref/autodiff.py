"""The autodiff oracle: a hand gradient against `jax.grad` of a loss, under the dtype's
tolerance, or in low precision under a precision budget against the float64 golden value.

Where hand and autodiff disagree, `explain` asks finite differences along the elements
that differ most: a kink at the point (two conventions) or finite differences siding with
the hand make the result inconclusive instead of a false alarm.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jax_ref.finite_difference import build_engine
from jax_ref.runtime import enable_x64
from jax_ref.tolerances import budget, budget_tolerance, rel_error, tolerance
from jax_ref.trees import error_text, is_float, leaf_name, to64
from jax_ref.verdict import CheckResult, compare, inconclusive_check

__all__ = [
    "autodiff_results",
    "explain",
    "golden_value",
    "judge",
    "singular_elements",
    "value_and_grad",
]

ORACLE = "autodiff"


@functools.partial(jax.jit, static_argnums=0)
def value_and_grad(loss_fn, params, *args):
    """jax.value_and_grad(loss_fn), jitted once per (loss_fn, shapes): differentiating an
    already-jitted loss eagerly would compile its pieces one by one, every call."""
    return jax.value_and_grad(loss_fn)(params, *args)


def golden_value(fn, *args, what="the loss") -> tuple[Any, str]:
    """`fn(*args)` at the same point in float64 (float leaves widened exactly), as float64
    numpy leaves: (value, ""); or (None, why) when it cannot run there or is not finite."""
    try:
        with enable_x64():
            value = jax.tree.map(lambda x: np.asarray(x, np.float64), fn(*to64(args)))
    except Exception as e:  # the user's code cannot run in float64: no golden value
        return None, f"{what} could not run in float64 ({error_text(e)})"
    if not all(np.all(np.isfinite(x)) for x in jax.tree.leaves(value)):
        return None, f"{what} is not finite in float64"
    return value, ""


def judge(name, got, want, golden, dtype, scale, why_no_golden, oracle=ORACLE) -> CheckResult:
    """`got` against an oracle's value `want` at `dtype`: float64 under the table;
    low precision against the float64 `golden` within k x the oracle's own error there
    plus a floor (jax_ref.tolerances.BUDGETS), or under the table when there is no golden
    value (the note says why)."""
    b, kw = budget(dtype), dict(scale=scale, partial=True)
    if b is None:
        return compare(name, oracle, got, want, dtype, tolerance(dtype), **kw)
    if golden is None:
        note = (
            f"no float64 golden value: {why_no_golden}; judged against the "
            f"{jnp.dtype(dtype).name} table tolerance instead"
        )
        return compare(name, oracle, got, want, dtype, tolerance(dtype), note=note, **kw)
    base = rel_error(want, golden, scale)[1]
    note = (
        f"precision budget: within {b.k:g} x {oracle}'s own error "
        f"{base:.2g} + {b.floor:.2g} of the float64 golden value"
    )
    tol = budget_tolerance(b, base)
    r = compare(name, oracle, got, golden, dtype, tol, note=note, **kw)
    return dataclasses.replace(r, baseline_err=base)


def _low_precision(params, grads) -> bool:
    leaves = jax.tree.leaves(params) + jax.tree.leaves(grads)
    return any(is_float(x) and budget(jnp.result_type(x)) is not None for x in leaves)


def singular_elements(loss_fn, params, args) -> dict[int, np.ndarray]:
    """{leaf index: mask} of the elements where autodiff's derivative is not finite while
    the loss is: a hint for finite differences (jax_ref.finite_difference, `still`)."""
    try:  # compiled already by the autodiff oracle: one more evaluation
        value, g = value_and_grad(loss_fn, params, *args)
    except Exception:  # the user's loss cannot be differentiated: no hint, nothing lost
        return {}
    if not np.isfinite(float(value)):
        return {}
    masks = {i: ~np.isfinite(np.asarray(x)) for i, x in enumerate(jax.tree.leaves(g))}
    return {i: m for i, m in masks.items() if m.any()}


def _odd_inputs(params, args) -> str:
    """Which inputs hold NaN or inf (data, or parameters), as "; params.w: 1 NaN"."""
    found = []
    for head, tree in (("params", params), ("args", args)):
        for path, x in jax.tree.leaves_with_path(tree):
            if not is_float(x):
                continue
            a = np.asarray(x, np.float64)
            nan, inf = int(np.isnan(a).sum()), int(np.isinf(a).sum())
            if nan or inf:
                what = ", ".join(f"{n} {w}" for n, w in ((nan, "NaN"), (inf, "inf")) if n)
                found.append(f"{head}.{leaf_name(path)}: {what}")
    return "; " + ", ".join(found) if found else ""


def _unjudged_leaves(params, why) -> list[CheckResult]:
    return [
        inconclusive_check(
            leaf_name(path),
            ORACLE,
            why,
            dtype=jnp.dtype(jnp.result_type(p)).name,
            shape=tuple(np.shape(p)),
        )
        for path, p in jax.tree.leaves_with_path(params)
        if is_float(p)
    ]


def autodiff_results(
    loss_fn, params, grads, args=(), *, scales=None, value=None, loss_scale=0.0, what="loss_fn"
) -> list[CheckResult]:
    """One result per float leaf of `params`: `grads` against `jax.grad(loss_fn)`; with
    `value` (the hand loss), one for it too (parameter "loss"). `scales` is a pytree like
    `params` of natural error scales (jax_ref.tolerances), `loss_scale` the loss's.
    A loss JAX cannot differentiate, or not finite at the point, judges nothing."""
    try:
        ref_value, ref = value_and_grad(loss_fn, params, *args)
    except Exception as e:  # the user's loss cannot be differentiated: autodiff cannot judge
        return _unjudged_leaves(params, f"jax.value_and_grad of {what} raised {error_text(e)}")
    if jnp.ndim(ref_value) != 0:
        raise ValueError(f"{what} must return a scalar; got shape {jnp.shape(ref_value)}")
    if not np.isfinite(float(ref_value)):
        why = (
            f"{what} is not finite at the point ({float(ref_value)}"
            f"{_odd_inputs(params, args)}): nothing can be judged there"
        )
        return _unjudged_leaves(params, why)
    golden, why = None, ""
    if _low_precision(params, grads):
        golden, why = golden_value(lambda p, *a: value_and_grad(loss_fn, p, *a), params, *args)
    results = []
    if value is not None:
        gold = None if golden is None else golden[0]
        results.append(
            judge("loss", value, ref_value, gold, jnp.result_type(value), loss_scale, why)
        )
    n = len(jax.tree.leaves(ref))
    leaf_scales = [0.0] * n if scales is None else jax.tree.leaves(scales)
    gold = [None] * n if golden is None else jax.tree.leaves(golden[1])
    rows = zip(jax.tree.leaves_with_path(params), jax.tree.leaves(grads), jax.tree.leaves(ref))
    engine = None  # finite differences, built only to explain a disagreement
    for li, ((path, p), g, r) in enumerate(rows):
        if not is_float(r):
            continue
        name, pdt = leaf_name(path), jnp.result_type(p)
        gdt = jnp.result_type(g) if is_float(g) else None
        if gdt != pdt:
            results.append(_dtype_mismatch(name, g, r, pdt, gdt))
            continue
        res = judge(name, g, r, gold[li], pdt, float(leaf_scales[li]), why)
        g64 = np.asarray(g, np.float64)
        if res.status == "failed" and np.all(np.isfinite(g64)):
            with enable_x64():
                engine = engine or build_engine(loss_fn, params, grads, args, scales, 2, 0)
                want = np.asarray(r if gold[li] is None else gold[li], np.float64)
                res = explain(res, engine, li, g64, want)
        results.append(res)
    return results


def explain(res: CheckResult, engine, li, g, r, most=6) -> CheckResult:
    """Hand and autodiff disagree: look at the loss along the elements that differ most.
    Where it is smooth there, finite differences say who is right; where every such
    element sits on a kink at the point, the two may just take different conventions
    (jnp.maximum's 0.5 at a tie, |x|'s slope at 0): not a failure of the hand gradient,
    and not something autodiff can judge."""
    diff = np.abs(g - r).ravel()
    # only elements that break the tolerance on their own: rounding-level differences
    # elsewhere say nothing about who is right
    size = max(float(np.max(np.abs(g), initial=0.0)), float(np.max(np.abs(r), initial=0.0)))
    coords = [int(c) for c in np.argsort(-diff)[:most] if diff[c] > res.tolerance * size]
    if li not in engine.leaves or not coords:
        return res
    leaf = engine.leaves[li]
    rows = engine.coordinates(li, coords)
    smooth = [(c, d) for c, d in zip(coords, rows) if d.verdict in ("smooth", "flat", "constant")]
    sides_with_hand = False
    for c, d in smooth:
        hand, ad = leaf.s * g.ravel()[c], leaf.s * r.ravel()[c]
        if abs(hand - d.est) > d.bound:
            return res  # where the loss is smooth, finite differences contradict the hand
        sides_with_hand |= abs(ad - d.est) > d.bound
    if sides_with_hand:
        c, d = smooth[0]
        where = list(np.unravel_index(c, g.shape)) if g.ndim else []
        note = (
            f"the reference's derivative disagrees with finite differences at "
            f"{len(smooth)} of the elements that differ most (first {where}: autodiff "
            f"{r.ravel()[c]:.6g}, finite differences {d.est / leaf.s:.6g}, hand "
            f"{g.ravel()[c]:.6g}), which side with the hand gradient: a finding about the "
            "reference, not a verdict on the rule"
        )
        return dataclasses.replace(res, status="inconclusive", note=note)
    if smooth:
        return res  # smooth there, and too fine for differences: autodiff's precision decides
    note = (
        f"hand and autodiff differ only where the loss has a kink at the point (the "
        f"{len(coords)} elements that differ most): different conventions at a kink, which "
        f"autodiff cannot judge"
    )
    return dataclasses.replace(res, status="inconclusive", detectable_rel_err=math.inf, note=note)


def _dtype_mismatch(name, g, want, pdt, gdt) -> CheckResult:
    r = compare(name, ORACLE, g, want, pdt, 0.0)
    note = (
        f"the gradient is {gdt} for a {jnp.dtype(pdt).name} parameter: a gradient has "
        "its parameter's dtype (computed in another precision and cast, or not cast)"
    )
    return dataclasses.replace(r, status="failed", detectable_rel_err=math.nan, note=note)
