"""One function audited: each rule (jax.jvp, jax.vjp; first and second order; float64 and
float32) at each point, against central differences of the forward pass in float64;
what disagrees is a `Finding`, triaged by the evidence (jax_ref.audit.triage)."""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jax_ref.audit.inputs import Setup, find_inputs, flag_variants, points, with_flags
from jax_ref.finite_difference.along import differences_along, flat
from jax_ref.finite_difference.stencil import H, noise_level
from jax_ref.runtime import enable_x64
from jax_ref.trees import error_text

__all__ = ["Finding", "Judged", "audit_function"]

MODES = ("jvp", "vjp")


@dataclasses.dataclass
class Finding:
    """A rule that disagrees with the differences (or a convention at a kink)."""

    function: str
    mode: str
    order: int
    dtype: str
    point: dict[str, Any]
    category: str = ""  # bug | convention | checker; limitation: JAX has no rule there
    reason: str = ""
    rule: float = math.nan  # the rule's value at the worst element
    differences: float = math.nan  # the differences' estimate there, and its bound
    bound: float = math.nan
    upstream: str = ""
    evidence: str = ""  # mpmath's partial derivatives beside JAX's (jax_ref.audit.precise)

    def to_dict(self):
        return dataclasses.asdict(self)


@dataclasses.dataclass
class Judged:
    """One rule at one point: passed | failed | inconclusive, and where it failed."""

    status: str
    worst: int = -1
    rule: float = math.nan
    est: float = math.nan
    bound: float = math.nan
    nonfinite_rule: bool = False
    tied: bool = False  # every failing element's values tie exactly at this step


def _outputs(g):
    return lambda xs: [o for o in jax.tree.leaves(g(*xs))]


def _tangents(xs, seed, symmetric=False):
    """Random tangents, each element scaled to its own input's magnitude (an element at
    1e-8 moves by ~1e-12, never across the pole or kink at 0 beside it), and an element
    at exactly 0 by 5 % of its input's rms (across a kink at the point: seen as one)."""
    rng = np.random.default_rng(seed)
    out = []
    for x in xs:
        a = np.abs(np.asarray(x, np.float64))
        rms = float(np.sqrt(np.mean(a**2))) if a.size else 1.0
        s = np.where(a > 0, a, 0.05 * (rms if rms > 0 else 1.0))
        r = rng.standard_normal(np.shape(x)) * s
        if symmetric and r.ndim == 2 and r.shape[0] == r.shape[1]:
            r = (r + r.T) / 2  # a symmetric input moves symmetrically
        out.append(jnp.asarray(r))
    return tuple(out)


def _rule_function(g, mode, order, u, c, v):
    """(the function of xs whose derivative along v is judged, the rule's value at xs)."""
    first = (
        (lambda xs: [o for o in jax.tree.leaves(jax.jvp(g, tuple(xs), tuple(u))[1])])
        if mode == "jvp"
        else (lambda xs: list(jax.vjp(g, *xs)[1](c)))
    )
    if order == 1:
        if mode == "jvp":
            return _outputs(g), first
        return None, first  # vjp, first order: the dot-product test
    return first, lambda xs: list(jax.jvp(lambda *a: first(a), tuple(xs), tuple(v))[1])


def _compare(rule, d, tol, natural=0.0) -> Judged:
    """The rule's values against the differences, element by element; errors relative to
    the largest value, or the `natural` size of a derivative where that is larger."""
    ok = d.reliable
    if not ok.any():
        return Judged("inconclusive")
    r = flat(rule)
    scale = max(float(np.max(np.abs(d.est[ok]))), float(np.max(np.abs(np.nan_to_num(r[ok])))))
    scale = max(scale, natural)
    allowed = d.bound + tol * (scale if scale > 0 else 1.0)
    with np.errstate(invalid="ignore"):
        diff = np.abs(r - d.est)
    bad = ok & ~(diff <= allowed)
    if not bad.any():
        return Judged("passed")
    ratio = np.where(bad, np.nan_to_num(diff / np.maximum(allowed, 1e-300), nan=np.inf), -1.0)
    w = int(np.argmax(ratio))
    tied = d.tied is not None and bool(d.tied[bad].all())
    return Judged(
        "failed", w, float(r[w]), float(d.est[w]), float(d.bound[w]), not np.isfinite(r[w]), tied
    )


def _dot_test(rule_cts, u64, c, d, tol, natural=0.0, masked=False) -> Judged:
    """⟨vjp(ȳ), u⟩ against ⟨ȳ, differences along u⟩ (a scalar: the dot-product test);
    ȳ is 0 where the differences are not reliable, and u too for an elementwise
    function (judge_rule masks them): the input elements held still do not count, as
    a rule's 0·inf there (log's at 0) is the masking's NaN, not the rule's."""
    cf = flat(c)
    est = float(np.dot(cf, np.nan_to_num(d.est)))
    bound = float(np.dot(np.abs(cf), np.where(cf != 0, d.bound, 0.0)))
    with np.errstate(invalid="ignore"):
        got = float(
            sum(
                np.vdot(np.where(np.asarray(b) != 0, np.asarray(a, np.float64), 0.0),
                        np.asarray(b, np.float64))
                for a, b in zip(rule_cts, u64)
            )
        )  # fmt: skip
    if masked and not math.isfinite(got):
        return Judged("inconclusive")  # NaN from the masked cotangent itself
    reach = natural * float(np.sum(np.abs(cf))) * float(np.max(np.abs(flat(u64)), initial=0.0))
    scale = max(float(np.dot(np.abs(cf), np.abs(np.nan_to_num(d.est)))), abs(got), reach, 1e-300)
    if abs(got - est) <= bound + tol * scale:
        return Judged("passed")
    w = _worst_element(rule_cts, u64, cf, d)
    return Judged("failed", w, got, est, bound, not math.isfinite(got))


def _worst_element(rule_cts, u64, cf, d) -> int:
    """Where a failed dot test is worst, for an elementwise vector function (whose input
    element i feeds output element i alone: vjp(ȳ)_i·u_i against ȳ_i·differences_i);
    -1 elsewhere (the dot test is one number: the finding gives every input)."""
    shapes = {np.shape(u) for u in u64}
    if len(shapes) != 1 or len(next(iter(shapes))) != 1 or cf.size != np.size(u64[0]):
        return -1
    with np.errstate(invalid="ignore"):
        terms = sum(np.asarray(a, np.float64) * np.asarray(b, np.float64)
                    for a, b in zip(rule_cts, u64))  # fmt: skip
        off = np.abs(np.nan_to_num(terms, nan=np.inf) - cf * np.nan_to_num(d.est))
    return int(np.argmax(off))


def _masked(c, keep):
    """The cotangent tree c with its flat elements outside `keep` set to 0."""
    leaves, tree = jax.tree.flatten(c)
    out, at = [], 0
    for leaf in leaves:
        n = int(np.size(leaf))
        k = keep[at : at + n].reshape(np.shape(leaf))
        out.append(jnp.where(jnp.asarray(k), leaf, 0.0))
        at += n
    return jax.tree.unflatten(tree, out)


def effective_unit(g, xs64, seed) -> float | None:
    """The rounding unit the forward pass really has in float64, or None where it is
    float64's: a kernel that computes in float32 inside (Pallas's softmax, layer_norm)
    returns float64 arrays that round at 6e-8. Measured as ECnoise does (Moré & Wild
    2011): high-order differences of f at 7 points 1e-7 apart (relative) along a random
    tangent, where a smooth function's are ~0 and what is left is rounding noise; the
    median over elements, relative to each one's size (an element that cancels to
    near 0 does not set it)."""
    u = _tangents(xs64, seed + 7)
    ts = np.arange(7) * 1e-7
    try:
        vals = np.stack(
            [flat(g(*[x + t * v for x, v in zip(xs64, u)])) for t in ts]
        )  # (7, elements)
    except Exception:  # the function does not run there: float64's own rounding
        return None
    if not np.all(np.isfinite(vals)):
        return None
    sigma = np.array([noise_level(vals[:, i]) for i in range(vals.shape[1])])
    size = np.max(np.abs(vals), axis=0)
    keep = size > 0
    if not keep.any():
        return None
    ratio = float(np.median(sigma[keep] / size[keep]))
    eps64 = float(jnp.finfo(jnp.float64).eps)
    return ratio if ratio > 16 * eps64 else None


def _cast(xs, dtype):
    return tuple(jnp.asarray(x, dtype) for x in xs)


def _tolerance(g, xs64, dtype) -> float:
    """The rule's allowance beyond the differences' bound, from what the forward pass
    itself loses at this point in float32 (an ill-conditioned function rounds its
    derivative as badly): in float32, 64x that loss, at least 1e-3; in float64, the same
    loss scaled by the ratio of the two dtypes' rounding, at least 1e-9 (float64's own
    rounding, seen through the differences) and at most 1e-4 (a near-singular svd's
    derivative rounds at 1e-8, not at 1e-16)."""
    y64 = flat(g(*xs64))
    try:
        y32 = flat(g(*_cast(xs64, jnp.float32)))
    except Exception:  # the function runs in float64 only: its own rounding alone
        return 1e-9 if dtype == jnp.float64 else 1e-3
    scale = max(float(np.max(np.abs(y64), initial=0.0)), 1e-300)
    with np.errstate(invalid="ignore"):
        fwd = float(np.max(np.abs(y32 - y64), initial=0.0)) / scale
    if not math.isfinite(fwd):
        return 1e-9 if dtype == jnp.float64 else 1e-3
    if dtype == jnp.float64:
        ratio = float(jnp.finfo(jnp.float64).eps / jnp.finfo(jnp.float32).eps)
        return min(max(1e-9, 64 * fwd * ratio), 1e-4)
    return max(1e-3, 64 * fwd)


def _allowance(g, xs64, dtype, memo) -> tuple[float, float, bool]:
    """(tolerance, natural size, the forward pass finite in this dtype) at one point,
    computed once per point and dtype (`memo`, a dict kept by the caller)."""
    key = ("allow", dtype.name)
    if key not in memo:
        tol, natural, finite = _tolerance(g, xs64, dtype), 0.0, True
        if dtype != jnp.float64:
            y = flat(g(*_cast(xs64, dtype)))
            finite = bool(np.all(np.isfinite(y)))
            # a low-precision derivative rounds at the size of |f| / |x|, not at its own
            xmax = max(float(np.max(np.abs(flat(xs64)), initial=0.0)), 1e-300)
            natural = float(np.max(np.abs(np.nan_to_num(y)), initial=0.0)) / xmax
        memo[key] = (tol, natural, finite)
    return memo[key]


def judge_rule(g, xs64, dtype, mode, order, seed, h=H, symmetric=False, eps=None, memo=None):
    """One rule at one point, against float64 differences with first step h: (Judged,
    the differences); `symmetric` tangents for matrices (a symmetric input's moves);
    `memo` keeps what every rule at this point shares."""
    memo = {} if memo is None else memo
    u64 = _tangents(xs64, seed, symmetric)
    v64 = _tangents(xs64, seed + 1, symmetric)
    if "y" not in memo:
        memo["y"] = g(*xs64)
    rng = np.random.default_rng(seed + 2)
    c64 = jax.tree.map(lambda o: jnp.asarray(rng.standard_normal(np.shape(o))), memo["y"])
    tol, natural, finite = _allowance(g, xs64, dtype, memo)
    if not finite:
        return Judged("inconclusive"), None  # the forward overflows in this dtype
    d, masked = None, False
    if mode == "vjp" and order == 1:  # the cotangent kept where the differences judge
        d = differences_along(
            _outputs(g), list(xs64), list(u64), what="the function", eps=eps, h=h, jit=False
        )
        if not d.reliable.any():
            return Judged("inconclusive"), None
        if not d.reliable.all():
            masked = True
            vectors = all(np.ndim(x) == 1 for x in xs64)  # a matrix's moves stay symmetric
            if vectors and _elementwise(g, xs64):  # the unreliable elements held still
                keep = d.reliable.reshape(-1, np.size(xs64[0])).all(axis=0)
                u64 = tuple(jnp.where(keep.reshape(np.shape(u)), u, 0.0) for u in u64)
                d = differences_along(
                    _outputs(g), list(xs64), list(u64), "the function", eps, h, jit=False
                )
            c64 = _masked(c64, d.reliable)
    fn64, _ = _rule_function(g, mode, order, u64, c64, v64)
    xs = _cast(xs64, dtype)
    cast = (lambda t: _cast(t, dtype)) if dtype != jnp.float64 else (lambda t: t)
    c = jax.tree.map(lambda a: jnp.asarray(a, dtype), c64)
    _, rule_fn = _rule_function(g, mode, order, cast(u64), c, cast(v64))
    try:
        rule = rule_fn(xs)
    except Exception as e:  # JAX has no rule here (a limitation, listed): nothing judged
        return Judged("raised"), error_text(e)
    if mode == "vjp" and order == 1:
        return _dot_test(rule, u64, c64, d, tol, natural, masked), None
    along = v64 if order == 2 else u64
    d = differences_along(
        fn64, list(xs64), list(along), what="the function", eps=eps, h=h, jit=False
    )
    return _compare(rule, d, tol, natural), d


def _elementwise(g, xs) -> bool:
    """Is every output the shape of every input (so an element's inputs are its own)?"""
    shapes = {np.shape(x) for x in xs}
    return len(shapes) == 1 and all(
        np.shape(o) in shapes for o in jax.tree.leaves(jax.eval_shape(g, *xs))
    )


def _point_of(kind, xs, worst, g, label="") -> dict[str, Any]:
    """Where a finding is: the inputs at the worst element (elementwise functions) or the
    whole (small) inputs; the flags set, if any."""
    out: dict[str, Any] = {"kind": kind, **({"with": label} if label else {})}
    if worst >= 0 and _elementwise(g, xs):
        size = np.size(xs[0])
        return {**out, "at": [float(np.ravel(x)[worst % size]) for x in xs]}
    return {**out, "args": [np.round(np.asarray(x, np.float64), 12).tolist() for x in xs]}


def _steps(g, xs64, dtype, mode, order, seed, eps=None, memo=None) -> dict[float, Judged]:
    """The same rule judged with steps 8x larger and 8x smaller (a real wrong derivative
    fails at all three; differences fooled by rounding or curvature do not)."""
    return {
        f: judge_rule(g, xs64, dtype, mode, order, seed, h=H * f, eps=eps, memo=memo)[0]
        for f in (8.0, 1 / 8)
    }


def _convention(name, kind, xs, d, rule, elementwise, label="") -> Finding | None:
    """At a kink at the point, the rule's value against the one-sided slopes."""
    if d is None or d.kink0 is None or not d.kink0.any() or not elementwise:
        return None
    r = flat(rule)
    i = int(np.flatnonzero(d.kink0)[0])
    lo, hi = sorted((float(d.left[i]), float(d.right[i])))
    inside = lo - d.bound_kink[i] <= r[i] <= hi + d.bound_kink[i]
    # one-sided slopes that move with the step (a jump: J/t) resolve no convention
    resolved = d.bound_kink[i] <= 1e-2 * (abs(lo) + abs(hi)) + 1e-12
    if not inside or not resolved:
        return None  # a jump or the domain's edge, not a kink: the differences cannot say
    reason = (
        f"a kink at the point: one-sided slopes {lo:.6g} and {hi:.6g}; the rule takes {r[i]:.6g}"
        + ("" if inside else ", outside both: no convention")
    )
    return Finding(
        name, "jvp", 1, "float64", _point_of(kind, xs, i, lambda *a: a[0], label),
        "convention" if inside else "bug", reason, float(r[i]), float("nan"), float("nan"),
    )  # fmt: skip


def audit_function(
    name,
    fn,
    dtypes=("float64", "float32"),
    orders=(1, 2),
    quick=False,
    seed=0,
    setup=None,
    deadline=math.inf,
    flags=True,
):
    """(the setup or the skip reason, judged counts, findings) for one function (its
    inputs found by trial unless `setup` is given). Past `deadline` (perf_counter) the
    remaining rules are counted `unrun`. With `flags` (not quick), each FLAGS argument
    the function takes (where=, ord=, ...) is audited too at the ordinary point and the
    first special one, with VARIANT_S seconds more each; `counts["variants"]` lists
    them, audited or why not."""
    setup = find_inputs(name, fn) if setup is None else setup
    if isinstance(setup, str):
        return setup, {}, []
    counts = {"passed": 0, "failed": 0, "inconclusive": 0, "raised": 0, "unrun": 0}
    counts["deadline"] = deadline
    findings: list[Finding] = []
    pts = points(setup)[:1] if quick else points(setup)
    dtypes = [d for d in dtypes if d in setup.dtypes] or list(setup.dtypes[:1])
    variants = {}
    with enable_x64():
        for kind, xs64, g in pts:
            findings += _audit_point(name, setup, kind, xs64, g, dtypes, orders, seed, counts)
        for label, kw in flag_variants(fn) if flags and not quick else []:
            counts["deadline"] = max(counts["deadline"], time.perf_counter()) + VARIANT_S
            vs = find_inputs(name, with_flags(fn, kw))
            variants[label] = vs if isinstance(vs, str) else "audited"
            if isinstance(vs, str):
                continue
            for kind, xs64, g in points(vs)[:2]:
                findings += _audit_point(
                    name, vs, kind, xs64, g, dtypes, orders, seed, counts, label
                )
    del counts["deadline"]
    counts["variants"] = variants
    return setup, counts, findings


VARIANT_S = 4.0  # seconds more for each flag variant


def _wanted(kind, label, dtype, order) -> bool:
    """Which rules the extra points judge, to keep the audit within its time: a complex
    point at first order (both dtypes), a flag variant in float64 (both orders)."""
    if kind == "complex" and order > 1:
        return False
    return not label or dtype == "float64"


def _audit_point(name, setup: Setup, kind, xs64, g, dtypes, orders, seed, counts, label=""):
    """Every (dtype, mode, order) at one point: the findings, the counts updated; `label`
    names the flags set (where=mask), kept in each finding's point."""
    out = []
    try:
        y = g(*xs64)
    except Exception:  # the function does not run at this special point: nothing to judge
        return out
    elementwise = all(np.shape(o) == np.shape(xs64[0]) for o in jax.tree.leaves(y))
    unit: list = []  # the forward pass's measured rounding, on the first failure here
    memo: dict = {"y": y}
    for dt in dtypes:
        dtype = jnp.dtype(dt)
        for mode in MODES:
            for order in orders:
                if not _wanted(kind, label, dt, order):
                    continue
                if time.perf_counter() > counts["deadline"]:
                    counts["unrun"] += 1
                    continue
                at = (g, xs64, dtype, mode, order, seed)
                j, d = judge_rule(g, xs64, dtype, mode, order, seed, memo=memo)
                if j.status == "failed":  # judged again at the rounding it really has
                    unit = unit or [effective_unit(g, xs64, seed)]
                    if unit[0] is not None:
                        j, d = judge_rule(*at, eps=unit[0], memo=memo)
                counts[j.status] += 1
                if j.status == "raised":
                    why = f"jax.{mode} at order {order} raised {d}"
                    where = {"kind": kind, **({"with": label} if label else {})}
                    out.append(Finding(name, mode, order, dtype.name, where, "limitation", why))
                    continue
                first = mode == "jvp" and order == 1 and dtype == jnp.float64
                if first and d is not None:
                    rule = jax.jvp(g, xs64, _tangents(xs64, seed))[1]
                    conv = _convention(name, kind, xs64, d, rule, elementwise, label)
                    out += [conv] if conv is not None else []
                if j.status == "failed":
                    where = (kind, label)
                    eps = unit[0] if unit else None
                    f = settle(name, setup, g, where, *at[1:], j, eps, memo)
                    if f is None:  # resolved at the larger step: the rule agrees there
                        counts["failed"] -= 1
                        counts["passed"] += 1
                        continue
                    if f.category == "unsettled":
                        counts["failed"] -= 1
                        counts["inconclusive"] += 1
                    out.append(f)
    return out


def settle(name, setup: Setup, g, where, xs64, dtype, mode, order, seed, j, eps=None, memo=None):
    """A failure at the first step, settled: a Finding (bug, convention, or `unsettled`:
    the differences disagree between step sizes, so no verdict), or None where the
    failing elements only tied at the first step (they move below their rounding there:
    a saturated softmax) and the rule agrees with the differences at the 8x step."""
    kind, label = where
    f = Finding(name, mode, order, dtype.name, _point_of(kind, xs64, j.worst, g, label))
    f.rule, f.differences, f.bound = j.rule, j.est, j.bound
    args = (g, xs64, dtype, mode, order, seed)
    if setup.matrix and judge_rule(*args, symmetric=True, eps=eps)[0].status == "passed":
        f.category = "convention"
        f.reason = (
            "right along symmetric tangents, not along general ones: the rule treats the "
            "input as symmetric (its tangent symmetrized), the forward pass reads one triangle"
        )
        return f
    other = _steps(*args, eps=eps, memo=memo)
    if all(o.status == "failed" for o in other.values()):
        what = "not finite where the derivative is finite" if j.nonfinite_rule else "wrong"
        f.category = "bug"
        f.reason = (
            f"the {mode} rule is {what}: {j.rule:.6g} where differences at three step "
            f"sizes give {j.est:.6g} ± {j.bound:.2g}"
        )
        return f
    if j.tied and other[8.0].status == "passed":
        return None
    said = ", ".join(f"{'8x' if k > 1 else '1/8x'} step {o.status}" for k, o in other.items())
    f.category = "unsettled"
    f.reason = (
        f"the differences disagree between step sizes ({j.est:.6g} ± {j.bound:.2g} at the"
        f" standard step against the rule's {j.rule:.6g}; {said}): not converged, no verdict"
    )
    return f
