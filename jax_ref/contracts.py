"""The contract checks of a rule, each its own result (`oracle` names the check):

* `primal`: the rule's primal output equals f's (and the reference's);
* `structure`: cotangents (tangents) have the inputs' (outputs') tree, shapes and dtypes;
* `jit` / `vmap`: the rule under `jax.jit`, and under `jax.vmap` over BATCH points, equals
  the rule run eagerly at each point (the dtype's table tolerance: only rounding differs);
* `composed`: a loss calling f twice through other operations, differentiated by
  `jax.grad` through the rule, agrees with the reference's (or finite differences);
* `second_order`: the JVP of the rule's VJP agrees with the reference's.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from jax_ref.autodiff import autodiff_results, judge, singular_elements, value_and_grad
from jax_ref.finite_difference import finite_difference_results
from jax_ref.finite_difference.along import differences_along, flat
from jax_ref.runtime import OwnCodeError
from jax_ref.tangents import (
    BATCH,
    Inputs,
    assemble,
    batch_points,
    cached,
    full_cotangent,
    natural_scales,
    normalise_cts,
    output_names,
    pair,
    random_like,
    tangent_tuple,
)
from jax_ref.tolerances import tolerance
from jax_ref.trees import error_text, is_float, leaf_name, max_abs, rms
from jax_ref.verdict import (
    CheckResult,
    compare,
    failed_check,
    inconclusive_check,
    passed_check,
)

__all__ = [
    "autodiff_or_inconclusive",
    "composed_check",
    "derivative_along",
    "jit_jvp",
    "jit_vjp",
    "join",
    "no_reference",
    "primal_jvp",
    "primal_vjp",
    "same_tree",
    "second_order",
    "tangent_problems",
    "tangent_structure",
    "vmap_jvp",
    "vmap_vjp",
]


def join(a: str, b: str) -> str:
    """Two notes as one."""
    return f"{a}; {b}" if b else a


def same_tree(name, oracle, got, want, note="") -> list[CheckResult]:
    """Leaf by leaf, `got` against `want` at the dtype's table tolerance."""
    out = []
    gl, wl = jax.tree.leaves(got), jax.tree.leaves(want)
    if len(gl) != len(wl):
        return [failed_check(name, oracle, f"{len(gl)} leaves where {len(wl)} were expected")]
    paths = [p for p, _ in jax.tree.leaves_with_path(want)]
    for p, g, w in zip(paths, gl, wl):
        if not is_float(w):
            continue
        leaf = name + ("." + leaf_name(p) if p else "")
        if np.shape(g) != np.shape(w):
            out.append(failed_check(leaf, oracle, f"shape {np.shape(g)}, want {np.shape(w)}"))
            continue
        dt = jnp.result_type(w)
        out.append(compare(leaf, oracle, g, w, dt, tolerance(dt), note=note))
    return out


def no_reference(inputs: Inputs, oracle, why) -> list[CheckResult]:
    """An inconclusive result per float input: there is nothing to judge against."""
    return [
        inconclusive_check(
            n,
            oracle,
            why,
            dtype=jnp.dtype(jnp.result_type(inputs.leaves[i])).name,
            shape=tuple(np.shape(inputs.leaves[i])),
        )
        for n, i in zip(inputs.fnames, inputs.fidx)
    ]


def autodiff_or_inconclusive(loss, fl, hand, args, inputs, why_ref, scales=None):
    """The autodiff oracle on a pairing loss of the reference; inconclusive per input
    when the reference cannot be differentiated (the note says how it failed)."""
    try:  # the reference's own code only: the oracle's faults are not its failure
        value_and_grad(loss, fl, *args)  # compiled once, reused by the oracle below
    except Exception as e:  # the reference's failure: not a verdict on the rule
        why = f"the reference could not be differentiated ({error_text(e)})"
        return no_reference(inputs, "autodiff", why)
    res = autodiff_results(loss, fl, hand, args, scales=scales)
    return [dataclasses.replace(r, note=join(why_ref, r.note)) for r in res]


def primal_vjp(f, vjp, ref, primals, out) -> list[CheckResult]:
    """The rule's primal output against f's, and f's against the reference's."""
    results = []
    if vjp is None:
        try:
            rule_out = jax.vjp(f, *primals)[0]
        except Exception as e:  # the user's rule raised
            return [failed_check("output", "primal", f"jax.vjp(f) raised {error_text(e)}")]
        note = "the rule's primal output against f(*primals)"
        results += same_tree("output", "primal", rule_out, out, note)
    if ref is not None and ref is not f:
        try:
            ref_out = ref(*primals)
        except Exception as e:  # the user's reference raised
            why = f"the reference raised {error_text(e)}"
            return [*results, failed_check("output", "primal", why)]
        results += same_tree("output", "primal", out, ref_out, "f(*primals) against the reference")
    return results


def jit_vjp(rule, primals, ct, cts, inputs) -> list[CheckResult]:
    """jax.jit(rule) against the rule run eagerly."""
    try:
        raw = jax.jit(rule)(*primals, ct)
    except Exception as e:  # the user's rule raised under jit (only its call is guarded)
        why = f"the rule raised under jax.jit: {error_text(e)}"
        return [failed_check("cotangents", "jit", why)]
    jcts, why = normalise_cts(raw, inputs)
    if jcts is None:
        return [failed_check("cotangents", "jit", why)]
    out = []
    for n, i in zip(inputs.fnames, inputs.fidx):
        out += same_tree(n, "jit", jcts[i], cts[i], "jax.jit(rule) against the rule run eagerly")
    return out


def _per_point_cts(rule, inputs, pts, cts_b):
    """The rule at each batch point, normalised: (list, "") or (None, why)."""
    singles = []
    for p, c in zip(pts, cts_b):
        try:
            raw = rule(*jax.tree.unflatten(inputs.treedef, p), c)
        except Exception as e:  # the user's rule raised at a batch point (only its call)
            return None, f"the rule raised at a batch point: {error_text(e)}"
        s, why = normalise_cts(raw, inputs)
        if s is None:
            return None, why
        singles.append(s)
    return singles, ""


def vmap_vjp(rule, inputs, out, rng) -> list[CheckResult]:
    """jax.vmap(rule) over BATCH points and cotangents against the rule at each."""
    pts = batch_points(inputs, rng)
    cts_b = [full_cotangent(rng, out) for _ in pts]
    singles, why = _per_point_cts(rule, inputs, pts, cts_b)
    if singles is None:
        return [failed_check("cotangents", "vmap", why)]
    stacked = [np.stack([np.asarray(p[i]) for p in pts]) for i in range(len(inputs.leaves))]
    stacked = [jnp.asarray(s) if is_float(x) else s for s, x in zip(stacked, inputs.leaves)]
    ct_stack = jax.tree.map(lambda *c: jnp.stack(c), *cts_b)

    def per_point(*flat_and_ct):
        *flat, c = flat_and_ct
        cts, why = normalise_cts(rule(*jax.tree.unflatten(inputs.treedef, list(flat)), c), inputs)
        if cts is None:
            raise ValueError(why)
        return [cts[i] for i in inputs.fidx]  # None -> zeros inside: vmap batches them

    try:
        bcts = jax.vmap(per_point)(*stacked, ct_stack)
    except Exception as e:  # the user's rule raised under vmap
        why = f"the rule raised under jax.vmap: {error_text(e)}"
        return [failed_check("cotangents", "vmap", why)]
    note = f"jax.vmap(rule) over {BATCH} points against the rule at each"
    res = []
    for j, (n, i) in enumerate(zip(inputs.fnames, inputs.fidx)):
        want = np.stack([np.asarray(s[i], np.float64) for s in singles])
        if np.shape(bcts[j]) != np.shape(want):
            why = f"batched cotangent of shape {np.shape(bcts[j])}, want {want.shape}"
            res.append(failed_check(n, "vmap", why))
            continue
        dt = jnp.result_type(inputs.leaves[i])
        res.append(compare(n, "vmap", bcts[j], want, dt, tolerance(dt), note=note))
    return res


def tangent_problems(out, t0) -> list[str]:
    """What is wrong with the output tangents' tree, shapes and dtypes."""
    try:
        flat_t = jax.tree.structure(out).flatten_up_to(t0)
    except (ValueError, TypeError):
        return [
            f"tangent tree {jax.tree.structure(t0)}, want the output's {jax.tree.structure(out)}"
        ]
    problems = []
    for nm, o, t in zip(output_names(out), jax.tree.leaves(out), flat_t):
        if not is_float(o):
            continue
        if t is None or np.shape(t) != np.shape(o):
            shape = None if t is None else np.shape(t)
            problems.append(f"{nm}: tangent shape {shape}, want {np.shape(o)}")
        elif jnp.result_type(t) != jnp.result_type(o):
            problems.append(f"{nm}: tangent dtype {jnp.result_type(t)}, want {jnp.result_type(o)}")
    return problems


def primal_jvp(f, ref, primals, y0, out) -> list[CheckResult]:
    """The JVP rule's primal output against f's, and f's against the reference's."""
    results = same_tree("output", "primal", y0, out, "the rule's primal output against f(*primals)")
    if ref is not None and ref is not f:
        try:
            results += same_tree("output", "primal", out, ref(*primals), "f against the reference")
        except Exception as e:  # the user's reference raised
            results.append(
                failed_check("output", "primal", f"the reference raised {error_text(e)}")
            )
    return results


def jit_jvp(rule, inputs, U, t0) -> list[CheckResult]:
    """jax.jit of a JVP rule against the rule run eagerly."""
    n0 = inputs.fnames[0]
    try:
        _, jt = jax.jit(rule)(inputs.primals, tangent_tuple(inputs, n0, U[n0][0]))
    except Exception as e:  # the user's rule raised under jit
        why = f"the rule raised under jax.jit: {error_text(e)}"
        return [failed_check("tangents", "jit", why)]
    return same_tree("tangents", "jit", jt, t0, "jax.jit(rule) against the rule run eagerly")


def tangent_structure(problems) -> CheckResult:
    """The structure check of a JVP rule's tangents, from `tangent_problems`."""
    if problems:
        return failed_check("tangents", "structure", "; ".join(problems))
    return passed_check("tangents", "structure", "tree, shapes and dtypes match the output's")


def vmap_jvp(rule, inputs, rng) -> list[CheckResult]:
    """jax.vmap of a JVP rule over BATCH points and tangents against the rule at each."""
    pts = batch_points(inputs, rng)
    n0, i0 = inputs.fnames[0], inputs.fidx[0]
    us = [random_like(rng, inputs.leaves[i0], scale_by_rms=True) for _ in pts]
    try:
        singles = [
            rule(tuple(jax.tree.unflatten(inputs.treedef, p)), tangent_tuple(inputs, n0, u))[1]
            for p, u in zip(pts, us)
        ]
    except Exception as e:  # the user's rule raised at a batch point
        why = f"the rule raised at a batch point: {error_text(e)}"
        return [failed_check("tangents", "vmap", why)]
    stacked = [
        jnp.stack([jnp.asarray(p[i]) for p in pts])
        if is_float(x)
        else np.stack([np.asarray(p[i]) for p in pts])
        for i, x in enumerate(inputs.leaves)
    ]

    def per_point(flat, u):
        p = tuple(jax.tree.unflatten(inputs.treedef, list(flat)))
        return rule(p, tangent_tuple(inputs, n0, u))[1]

    try:
        batched = jax.vmap(per_point)(stacked, jnp.stack(us))
    except Exception as e:  # the user's rule raised under vmap
        why = f"the rule raised under jax.vmap: {error_text(e)}"
        return [failed_check("tangents", "vmap", why)]
    want = jax.tree.map(lambda *t: np.stack([np.asarray(x, np.float64) for x in t]), *singles)
    note = f"jax.vmap(rule) over {BATCH} points against the rule at each"
    return same_tree("tangents", "vmap", batched, want, note)


@functools.lru_cache(maxsize=256)
def _composed_loss(fn, key):
    """A scalar loss calling fn twice, at x and at x·(1 + w), through other operations:
    L = ⟨c1, y1⟩ + σ ⟨c2, tanh(y2 / σ)⟩ with y1 = fn(x), y2 = fn(x ⊙ (1 + w))."""

    def loss(fl, others, c1, c2, w, sigma):
        x1 = assemble(key, fl, others)
        fl2 = {k: v * (1 + w[k]).astype(v.dtype) for k, v in fl.items()}
        x2 = assemble(key, fl2, others)
        y1, y2 = fn(*x1), fn(*x2)
        squashed = jax.tree.map(
            lambda y, s: jnp.tanh(y / s.astype(y.dtype)) * s.astype(y.dtype) if is_float(y) else y,
            y2,
            sigma,
        )
        return pair(y1, c1) + pair(squashed, c2)

    return loss


def _composed_args(inputs, out, rng):
    """(others, c1, c2, w, sigma) of the composed loss: two cotangents, the rescaling w
    of the second call (a factor per leaf), and each output leaf's rms σ."""
    fl = inputs.floats()
    c1, c2 = full_cotangent(rng, out), full_cotangent(rng, out)
    # one factor per leaf, not per element: a symmetric, triangular or sparse input (a
    # covariance) stays so, and the rule is asked only where it was written for
    w = {k: np.float64(0.25 * rng.uniform(-1, 1)) for k in fl}
    sigma = jax.tree.map(
        lambda y: np.float64(max(rms(y), 1e-30) if is_float(y) and np.size(y) else 1.0), out
    )
    return (inputs.others, c1, c2, w, sigma)


def composed_check(g, ref, inputs, out, rng, seed, ref_why) -> list[CheckResult]:
    """jax.grad of a loss calling f twice, through the rule, against the same loss through
    the reference (or, when that cannot be differentiated, finite differences)."""
    fl, key = inputs.floats(), inputs.key()
    args = _composed_args(inputs, out, rng)
    loss_g = cached(_composed_loss, g, key)
    try:
        hand = jax.jit(jax.grad(loss_g))(fl, *args)
    except Exception as e:  # the user's rule raised inside a larger loss
        why = f"jax.grad of a loss through the rule raised {error_text(e)}"
        return [failed_check("rule", "composed", why)]
    note = "jax.grad of a loss calling f twice, through the rule"
    natural = natural_scales(fl, out, args[1], args[2])  # c1, c2
    res, still = [], None
    if ref is not None:
        loss_ref = cached(_composed_loss, ref, key)
        res = autodiff_or_inconclusive(loss_ref, fl, hand, args, inputs, ref_why, natural)
        if all(r.status != "inconclusive" for r in res):
            return [dataclasses.replace(r, oracle="composed", note=join(note, r.note)) for r in res]
        still = singular_elements(loss_ref, fl, args)
    # the reference could not judge some leaf (not differentiable, in doubt, not finite):
    # finite differences of the loss through f judge those
    fd = finite_difference_results(
        loss_g, fl, hand, args, seed=seed, scales=natural, what="f", still=still
    )
    by_ref = {r.parameter: r for r in res}
    out = []
    for r in fd:
        prior = by_ref.get(r.parameter)
        if prior is not None and prior.status != "inconclusive":
            r = prior
        else:
            why = "" if prior is None else f"; the reference: {prior.note}"
            r = dataclasses.replace(r, note=f"against finite differences; {r.note}{why}")
        out.append(dataclasses.replace(r, oracle="composed", note=join(note, r.note)))
    return out


def _vjp_as_function(rule, inputs, ct):
    """fl -> {input leaf: cotangent} for a rule (*primals, ct) -> cotangents."""
    key, others = inputs.key(), inputs.others

    def h(fl_):
        cts, why = normalise_cts(rule(*assemble(key, fl_, others), ct), inputs)
        if cts is None:
            raise ValueError(why)
        return {n: cts[i] for n, i in zip(inputs.fnames, inputs.fidx)}

    return h


def _reference_rule(ref):
    def rule(*args):
        *p, c = args
        return jax.vjp(ref, *p)[1](c)

    return rule


def derivative_along(h, fl, u):
    """d/dt h(fl + t u) at 0 through JAX: forward over the function; where JAX cannot push a
    tangent through it (a custom_vjp whose fwd calls the decorated function), reverse:
    ∇⟨h(x), u⟩, the same for a gradient's Jacobian (a Hessian, symmetric). (value, how);
    JAX's limitation is never the rule's error. Raises only when neither works."""
    try:
        return jax.jvp(h, (fl,), (u,))[1], "forward over reverse"
    except Exception as e:  # JAX's limitation or the user's code: reverse mode may still work
        first = e
    try:
        return jax.grad(lambda x: _dot(h(x), u))(fl), "reverse over reverse"
    except Exception as e:  # neither mode goes through: both messages, chained
        raise ValueError(
            f"jax.jvp raised {error_text(first)}; jax.grad raised {error_text(e)}"
        ) from e


def _dot(a, b):
    return sum(jnp.sum(a[k] * b[k].astype(a[k].dtype)) for k in a)


def second_order(rule, ref, inputs, ct, rng, out) -> list[CheckResult]:
    """The derivative of the rule's VJP along a random tangent u (second derivatives),
    against central differences of the rule's VJP along u, and against the reference's
    (where it can be differentiated twice); where the two oracles disagree and the
    differences side with the rule, the reference's result says so."""
    fl = inputs.floats()
    u = random_like(rng, fl, scale_by_rms=True)
    h = _vjp_as_function(rule, inputs, ct)
    try:
        hand, how = derivative_along(h, fl, u)
    except Exception as e:  # the user's rule cannot be differentiated by JAX at all
        why = f"the rule's VJP could not be differentiated ({error_text(e)})"
        return [failed_check("rule", "second_order", why)]
    fd = _differences_per_leaf(h, fl, u, inputs)
    want, why_ref = _reference_second(ref, inputs, fl, u, ct)
    natural, res = max_abs(ct) * max_abs(out), []
    for n in inputs.fnames:
        dt = jnp.result_type(fl[n])
        reach = max_abs(u[n]) / max(rms(fl[n]), 1e-300)
        scale = 0.0 if dt == jnp.float64 else natural * min(reach, 1e6)
        note = f"the derivative of the rule's VJP along a random tangent ({how})"
        d = fd.get(n)
        if d is not None:
            r = d.judge(
                n, "second_order", hand[n], dt, scale, note + ", against finite differences"
            )
            res.append(dataclasses.replace(r, shape=np.shape(fl[n])))
        if want is None:
            res.append(inconclusive_check(n, "second_order", why_ref, shape=np.shape(fl[n])))
            continue
        r = judge(n, hand[n], want[n], None, dt, scale, "", oracle="second_order")
        if d is not None:
            r = d.overrule(r, hand[n], want[n], "reference's second derivative")
        res.append(dataclasses.replace(r, note=join(note + ", against the reference", r.note)))
    return res


def jvp_second_order(rule, ref, inputs, U, rng, out) -> list[CheckResult]:
    """Per input leaf n: the derivative of the rule's output tangent (along n's first
    tangent) along a second random tangent v, against central differences of those
    tangents along v, and against the reference's (forward over forward)."""
    fl, key, others = inputs.floats(), inputs.key(), inputs.others
    v = random_like(rng, fl, scale_by_rms=True)
    res = []
    for n in inputs.fnames:
        dt = jnp.result_type(fl[n])

        def tangent_of(fn, n=n):
            def h(x):
                p = assemble(key, x, others)
                t = fn(tuple(p), tangent_tuple(inputs, n, U[n][0]))[1]
                return [o for o, y in zip(jax.tree.leaves(t), jax.tree.leaves(out)) if is_float(y)]

            return h

        try:
            hand = flat(jax.jvp(tangent_of(rule), (fl,), (v,))[1])
        except Exception as e:  # the user's rule cannot be differentiated by jax.jvp
            why = f"jax.jvp of the rule's tangents raised {error_text(e)}"
            res.append(failed_check(n, "second_order", why))
            continue
        d = differences_along(tangent_of(rule), fl, v, what="the rule")
        note = "the derivative of the rule's tangents along a second random tangent"
        res.append(d.judge(n, "second_order", hand, dt, 0.0, note + ", against finite differences"))
        if ref is None:
            continue
        ref_rule = lambda p, t: jax.jvp(ref, p, t)  # noqa: E731
        try:
            want = flat(jax.jvp(tangent_of(ref_rule), (fl,), (v,))[1])
        except Exception as e:  # the user's reference cannot be differentiated twice
            why = f"the reference could not be differentiated twice ({error_text(e)})"
            res.append(inconclusive_check(n, "second_order", why))
            continue
        r = judge(n, hand, want, None, dt, 0.0, "", oracle="second_order")
        r = d.overrule(r, hand, want, "reference's second derivative")
        res.append(dataclasses.replace(r, note=join(note + ", against the reference", r.note)))
    return res


def _differences_per_leaf(h, fl, u, inputs):
    """{input leaf: central differences of its cotangent along u}, {} where h cannot run."""
    try:
        return {
            n: differences_along(lambda x, n=n: h(x)[n], fl, u, what="the rule")
            for n in inputs.fnames
        }
    except OwnCodeError:
        raise
    except Exception as e:  # the rule raised between the points: theirs
        raise OwnCodeError(
            f"the rule raised at points near the given point: {error_text(e)}"
        ) from e


def _reference_second(ref, inputs, fl, u, ct):
    """The reference's derivative of its VJP along u: ({leaf: value}, "") or (None, why)."""
    if ref is None:
        return None, "no reference: judged by finite differences alone"
    try:
        want, _ = derivative_along(_vjp_as_function(_reference_rule(ref), inputs, ct), fl, u)
    except Exception as e:  # the user's reference cannot be differentiated twice
        return None, f"the reference could not be differentiated twice ({error_text(e)})"
    return want, ""
