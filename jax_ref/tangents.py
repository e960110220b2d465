"""A rule's inputs and outputs as named float leaves, the random cotangents and tangents
it is checked along, and the scalar pairing ⟨ȳ, f(x)⟩ that turns a VJP into a gradient."""

from __future__ import annotations

import functools
import inspect
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jax_ref.trees import is_float, leaf_name, max_abs

__all__ = [
    "BATCH",
    "Inputs",
    "assemble",
    "batch_points",
    "cached",
    "custom_rule_of",
    "fill_cotangent",
    "full_cotangent",
    "natural_scales",
    "normalise_cts",
    "output_cotangent",
    "output_names",
    "pair",
    "pairing_loss",
    "random_like",
    "structure_problems",
    "tangent_tuple",
    "zero_ct",
]

BATCH = 3  # points in the vmap checks


def custom_rule_of(f):
    """The custom_vjp/custom_jvp object behind f (through jax.jit/functools.wraps), or None."""
    for _ in range(8):
        if f is None or isinstance(f, (jax.custom_vjp, jax.custom_jvp)):
            return f
        f = getattr(f, "__wrapped__", None)
    return None


def _arg_names(f, n) -> list[str]:
    target = custom_rule_of(f)
    target = target.fun if target is not None else f
    try:
        params = [
            p
            for p in inspect.signature(target).parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]
    except (TypeError, ValueError):
        params = []
    names = [p.name for p in params[:n]]
    return names + [f"arg{i}" for i in range(len(names), n)]


class Inputs:
    """The primals flattened: every leaf named `argname[.path]`; the float ones are what
    the rule differentiates, the others (integers, booleans) are carried along."""

    def __init__(self, f, primals):
        self.f = f
        self.primals = tuple(primals)
        flat, self.treedef = jax.tree.flatten_with_path(self.primals)
        argnames = _arg_names(f, len(self.primals))
        self.leaves = [x for _, x in flat]
        self.names = []
        for path, _ in flat:
            head, rest = argnames[path[0].idx], path[1:]
            self.names.append(head + ("." + leaf_name(rest) if rest else ""))
        self.fidx = tuple(i for i, x in enumerate(self.leaves) if is_float(x))
        self.fnames = tuple(self.names[i] for i in self.fidx)
        self.others = tuple(x for i, x in enumerate(self.leaves) if i not in self.fidx)

    def floats(self) -> dict[str, Any]:
        return {self.names[i]: self.leaves[i] for i in self.fidx}

    def key(self):
        return (self.treedef, self.fidx, self.fnames)


def assemble(key, fl, others):
    """The primals tuple from the float leaves (a dict by name) and the others."""
    treedef, fidx, fnames = key
    n = len(fidx) + len(others)
    it = iter(others)
    leaves = [fl[fnames[fidx.index(i)]] if i in fidx else next(it) for i in range(n)]
    return jax.tree.unflatten(treedef, leaves)


def random_like(rng, tree, scale_by_rms=False):
    """Gaussian leaves shaped like `tree`'s float leaves (others get None): each leaf of
    norm ~1, or with `scale_by_rms` of entries ~ the leaf's own rms."""

    def one(x):
        if not is_float(x):
            return None
        n = max(int(np.size(x)), 1)
        r = rng.standard_normal(np.shape(x))
        if scale_by_rms:
            rms = float(np.sqrt(np.mean(np.square(np.asarray(x, np.float64))))) if np.size(x) else 0
            r = r * (rms if rms > 0 and math.isfinite(rms) else 1.0)
        else:
            r = r / math.sqrt(n)  # ‖ȳ‖ ~ 1 per output leaf
        return jnp.asarray(r, jnp.result_type(x))

    return jax.tree.map(one, tree)


def output_cotangent(rng, out):
    """A random cotangent for f's output (`random_like`), 0 at the output's non-finite
    entries (logaddexp(-inf, -inf) = -inf): ⟨ȳ, f(x)⟩ stays finite, and the rule is judged
    where f is."""

    def zero_where_odd(o, c):
        if c is None:
            return None
        odd = ~np.isfinite(np.asarray(o, np.float64))
        return jnp.where(odd, 0, c) if odd.any() else c

    return jax.tree.map(zero_where_odd, out, random_like(rng, out), is_leaf=lambda x: x is None)


def zero_ct(x):
    """The zero cotangent of a leaf: zeros of its dtype, float0 for an integer leaf."""
    if is_float(x):
        return jnp.zeros(np.shape(x), jnp.result_type(x))
    return np.zeros(np.shape(x), jax.dtypes.float0)


def fill_cotangent(out, ct):
    """`ct` (from `random_like(out)`) with float0 zeros where `out` has integer leaves."""
    return jax.tree.map(
        lambda o, c: zero_ct(o) if c is None else c, out, ct, is_leaf=lambda x: x is None
    )


def full_cotangent(rng, out):
    """A random cotangent for every leaf of `out` (never all ones: a rule that permutes or
    ignores ȳ would pass), float0 zeros for its integer leaves."""
    return fill_cotangent(out, random_like(rng, out))


def pair(out, ct):
    """⟨ct, out⟩ over the float leaves of an output pytree."""
    total = 0.0
    for o, c in zip(jax.tree.leaves(out), jax.tree.leaves(ct, is_leaf=lambda x: x is None)):
        if c is None or not is_float(o):
            continue
        total = total + jnp.sum(c * o)
    return total


@functools.lru_cache(maxsize=256)
def pairing_loss(fn, key):
    """loss(fl, others, ct) = ⟨ct, fn(*primals)⟩, one object per (fn, structure): the
    jitted oracles compile once per shape."""

    def loss(fl, others, ct):
        return pair(fn(*assemble(key, fl, others)), ct)

    return loss


def cached(factory, *key):
    """`factory(*key)` from its lru_cache, or built afresh for an unhashable function."""
    try:
        return factory(*key)
    except TypeError:
        return factory.__wrapped__(*key)


def normalise_cts(cts, inputs: Inputs):
    """The rule's input cotangents as a list per flat input leaf (None -> zeros), or
    (None, the reason they cannot be matched to the inputs)."""
    n = len(inputs.primals)
    if n == 1 and not isinstance(cts, (tuple, list)):
        cts = (cts,)
    if not isinstance(cts, (tuple, list)) or len(cts) != n:
        got = (
            f"{type(cts).__name__} of {len(cts)}"
            if isinstance(cts, (tuple, list))
            else type(cts).__name__
        )
        return None, f"the rule must return a tuple of {n} cotangents (one per input); got {got}"
    out = []
    for a, (p, c) in enumerate(zip(inputs.primals, cts)):
        if c is None:
            out += [zero_ct(x) for x in jax.tree.leaves(p)]
            continue
        pt = jax.tree.structure(p)
        try:
            flat = pt.flatten_up_to(c)
        except (ValueError, TypeError):
            return None, (
                f"the cotangent of input {a} has tree {jax.tree.structure(c)}; its input's is {pt}"
            )
        out += [zero_ct(x) if ci is None else ci for x, ci in zip(jax.tree.leaves(p), flat)]
    return out, ""


def structure_problems(cts, inputs: Inputs) -> list[str]:
    """What is wrong with the cotangents' shapes and dtypes, leaf by leaf."""
    problems = []
    for name, x, c in zip(inputs.names, inputs.leaves, cts):
        want_dt = jnp.result_type(x) if is_float(x) else jax.dtypes.float0
        got_dt = getattr(c, "dtype", None)
        if np.shape(c) != np.shape(x):
            problems.append(f"{name}: shape {np.shape(c)}, want {np.shape(x)}")
        elif got_dt != want_dt and not (not is_float(x) and c is None):
            problems.append(
                f"{name}: dtype {got_dt}, want "
                + (jnp.dtype(want_dt).name if is_float(x) else "float0")
            )
    return problems


def output_names(out) -> list[str]:
    return ["output" + ("." + leaf_name(p) if p else "") for p, _ in jax.tree.leaves_with_path(out)]


def natural_scales(fl, out, *cts) -> dict[str, float]:
    """Each low-precision input leaf's natural error scale in a VJP check: max|ȳ|·max|y|.

    A VJP's cancelling terms round at the scale of the cotangent times the outputs'
    magnitude, not at that of the (possibly tiny) result: tanh's ȳ(1 − y²) loses
    everything to rounding at saturation, in any correct rule (measured figures:
    docs/oracles.md). float64 leaves keep 0 (relative to the values): detection at
    full power. In low precision, a rule whose result is small against max|ȳ|·max|y|
    without cancelling is judged at that scale, which `detectable_rel_err` states."""
    s = sum(max_abs(c) for c in cts) * max_abs(out)
    return {n: (0.0 if jnp.result_type(x) == jnp.float64 else s) for n, x in fl.items()}


def batch_points(inputs: Inputs, rng):
    """BATCH points: the given one and two nearby (float leaves scaled by 1 ± ~5 %)."""
    pts = [inputs.leaves]
    for _ in range(BATCH - 1):
        pts.append(
            [
                jnp.asarray(
                    np.asarray(x, np.float64) * (1 + 0.05 * rng.standard_normal(np.shape(x))),
                    jnp.result_type(x),
                )
                if is_float(x)
                else x
                for x in inputs.leaves
            ]
        )
    return pts


def tangent_tuple(inputs: Inputs, only: str | None, u):
    """Tangents for every input: `u` in leaf `only`, zeros elsewhere (float0 for ints)."""
    leaves = []
    for i, x in enumerate(inputs.leaves):
        if i in inputs.fidx and inputs.names[i] == only:
            leaves.append(u)
        else:
            leaves.append(zero_ct(x))
    return tuple(jax.tree.unflatten(inputs.treedef, leaves))
