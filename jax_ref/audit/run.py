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

from jax_ref.audit.inputs import Setup, find_inputs, points
from jax_ref.finite_difference.along import differences_along, flat
from jax_ref.finite_difference.stencil import H
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
    return Judged(
        "failed", w, float(r[w]), float(d.est[w]), float(d.bound[w]), not np.isfinite(r[w])
    )


def _dot_test(g, xs64, rule_cts, u64, c, tol, natural=0.0) -> Judged:
    """⟨vjp(ȳ), u⟩ against ⟨ȳ, differences along u⟩ (a scalar: the dot-product test)."""
    d = differences_along(_outputs(g), list(xs64), list(u64), what="the function", jit=False)
    cf = flat(c)
    moved = cf != 0
    if not d.reliable[moved].all():
        return Judged("inconclusive")
    est = float(np.dot(cf, d.est))
    bound = float(np.dot(np.abs(cf), d.bound))
    got = float(
        sum(
            np.vdot(np.asarray(a, np.float64), np.asarray(b, np.float64))
            for a, b in zip(rule_cts, u64)
        )
    )
    reach = natural * float(np.sum(np.abs(cf))) * float(np.max(np.abs(flat(u64)), initial=0.0))
    scale = max(float(np.dot(np.abs(cf), np.abs(d.est))), abs(got), reach, 1e-300)
    if not math.isfinite(got):
        return Judged("failed", 0, got, est, bound, True)
    if abs(got - est) <= bound + tol * scale:
        return Judged("passed")
    return Judged("failed", 0, got, est, bound)


def _cast(xs, dtype):
    return tuple(jnp.asarray(x, dtype) for x in xs)


def _tolerance(g, xs64, dtype) -> float:
    """The rule's allowance beyond the differences' bound: float64 rounding (1e-9 of the
    leaf's scale); in float32, 64x what the forward pass itself loses at this point (an
    ill-conditioned function rounds its derivative as badly), at least 1e-3."""
    if dtype == jnp.float64:
        return 1e-9
    y64 = flat(g(*xs64))
    y32 = flat(g(*_cast(xs64, dtype)))
    scale = max(float(np.max(np.abs(y64), initial=0.0)), 1e-300)
    with np.errstate(invalid="ignore"):
        fwd = float(np.max(np.abs(y32 - y64), initial=0.0)) / scale
    return max(1e-3, 64 * fwd) if math.isfinite(fwd) else 1e-3


def judge_rule(g, xs64, dtype, mode, order, seed, h=H, symmetric=False):
    """One rule at one point, against float64 differences with first step h: (Judged,
    the differences); `symmetric` tangents for matrices (a symmetric input's moves)."""
    u64 = _tangents(xs64, seed, symmetric)
    v64 = _tangents(xs64, seed + 1, symmetric)
    rng = np.random.default_rng(seed + 2)
    c64 = jax.tree.map(lambda o: jnp.asarray(rng.standard_normal(np.shape(o))), g(*xs64))
    fn64, _ = _rule_function(g, mode, order, u64, c64, v64)
    xs = _cast(xs64, dtype)
    cast = (lambda t: _cast(t, dtype)) if dtype != jnp.float64 else (lambda t: t)
    c = jax.tree.map(lambda a: jnp.asarray(a, dtype), c64)
    _, rule_fn = _rule_function(g, mode, order, cast(u64), c, cast(v64))
    tol = _tolerance(g, xs64, dtype)
    natural = 0.0
    if dtype != jnp.float64:
        y = flat(g(*xs))
        if not np.all(np.isfinite(y)):
            return Judged("inconclusive"), None  # the forward overflows in this dtype
        # a low-precision derivative rounds at the size of |f| / |x|, not at its own
        xmax = max(float(np.max(np.abs(flat(xs64)), initial=0.0)), 1e-300)
        natural = float(np.max(np.abs(y), initial=0.0)) / xmax
    try:
        rule = rule_fn(xs)
    except Exception as e:  # JAX has no rule here (a limitation, listed): nothing judged
        return Judged("raised"), error_text(e)
    if mode == "vjp" and order == 1:
        return _dot_test(g, xs64, rule, u64, c64, tol, natural), None
    along = v64 if order == 2 else u64
    d = differences_along(fn64, list(xs64), list(along), what="the function", h=h, jit=False)
    return _compare(rule, d, tol, natural), d


def _point_of(kind, xs, worst, elementwise) -> dict[str, Any]:
    """Where a finding is: the inputs at the worst element (elementwise functions) or the
    whole (small) inputs."""
    if elementwise and worst >= 0:
        return {"kind": kind, "at": [float(np.ravel(x)[worst % np.size(x)]) for x in xs]}
    return {"kind": kind, "args": [np.round(np.asarray(x, np.float64), 12).tolist() for x in xs]}


def _confirmed(g, xs64, dtype, mode, order, seed) -> bool:
    """Does the disagreement hold at steps 8x larger and 8x smaller too? (A real wrong
    derivative does; differences fooled by rounding or curvature do not.)"""
    return all(
        judge_rule(g, xs64, dtype, mode, order, seed, h=H * f)[0].status == "failed"
        for f in (8.0, 1 / 8)
    )


def _convention(name, kind, xs, d, rule, elementwise) -> Finding | None:
    """At a kink at the point, the rule's value against the one-sided slopes."""
    if d is None or d.kink0 is None or not d.kink0.any() or not elementwise:
        return None
    r = flat(rule)
    i = int(np.flatnonzero(d.kink0)[0])
    lo, hi = sorted((float(d.left[i]), float(d.right[i])))
    inside = lo - d.bound_kink[i] <= r[i] <= hi + d.bound_kink[i]
    if not inside:
        return None  # a jump or the domain's edge, not a kink: the differences cannot say
    reason = (
        f"a kink at the point: one-sided slopes {lo:.6g} and {hi:.6g}; the rule takes {r[i]:.6g}"
        + ("" if inside else ", outside both: no convention")
    )
    return Finding(
        name, "jvp", 1, "float64", _point_of(kind, xs, i, True),
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
):
    """(the setup or the skip reason, judged counts, findings) for one function (its
    inputs found by trial unless `setup` is given). Past `deadline` (perf_counter) the
    remaining rules are counted `unrun`."""
    setup = find_inputs(name, fn) if setup is None else setup
    if isinstance(setup, str):
        return setup, {}, []
    counts = {"passed": 0, "failed": 0, "inconclusive": 0, "raised": 0, "unrun": 0}
    counts["deadline"] = deadline
    findings: list[Finding] = []
    pts = points(setup)[:1] if quick else points(setup)
    with enable_x64():
        for kind, xs64 in pts:
            findings += _audit_point(name, setup, kind, xs64, dtypes, orders, seed, counts)
    del counts["deadline"]
    return setup, counts, findings


def _audit_point(name, setup: Setup, kind, xs64, dtypes, orders, seed, counts):
    """Every (dtype, mode, order) at one point: the findings, the counts updated."""
    g, out = setup.g, []
    try:
        y = g(*xs64)
    except Exception:  # the function does not run at this special point: nothing to judge
        return out
    elementwise = all(np.shape(o) == np.shape(xs64[0]) for o in jax.tree.leaves(y))
    for dt in dtypes:
        dtype = jnp.dtype(dt)
        for mode in MODES:
            for order in orders:
                if time.perf_counter() > counts["deadline"]:
                    counts["unrun"] += 1
                    continue
                j, d = judge_rule(g, xs64, dtype, mode, order, seed)
                counts[j.status] += 1
                if j.status == "raised":
                    why = f"jax.{mode} at order {order} raised {d}"
                    out.append(
                        Finding(name, mode, order, dtype.name, {"kind": kind}, "limitation", why)
                    )
                    continue
                first = mode == "jvp" and order == 1 and dtype == jnp.float64
                if first and d is not None:
                    rule = jax.jvp(g, xs64, _tangents(xs64, seed))[1]
                    conv = _convention(name, kind, xs64, d, rule, elementwise)
                    out += [conv] if conv is not None else []
                if j.status == "failed":
                    where = _point_of(kind, xs64, j.worst, elementwise)
                    f = Finding(name, mode, order, dtype.name, where, rule=j.rule)
                    f.differences, f.bound = j.est, j.bound
                    out.append(_classify(f, j, setup, xs64, seed))
    return out


def _classify(f: Finding, j: Judged, setup: Setup, xs64, seed) -> Finding:
    """A failure's category from the evidence: right along symmetric tangents (a matrix
    rule that assumes symmetry): convention; confirmed at three step sizes: bug; else
    the differences were fooled: checker."""
    g, dtype = setup.g, jnp.dtype(f.dtype)
    args = (g, xs64, dtype, f.mode, f.order, seed)
    if setup.matrix and judge_rule(*args, symmetric=True)[0].status == "passed":
        f.category = "convention"
        f.reason = (
            "right along symmetric tangents, not along general ones: the rule treats the "
            "input as symmetric (its tangent symmetrized), the forward pass reads one triangle"
        )
    elif _confirmed(*args):
        what = "not finite where the derivative is finite" if j.nonfinite_rule else "wrong"
        f.category = "bug"
        f.reason = (
            f"the {f.mode} rule is {what}: {j.rule:.6g} where differences at three step "
            f"sizes give {j.est:.6g} ± {j.bound:.2g}"
        )
    else:
        f.category = "checker"
        f.reason = (
            "the differences disagree at one step size but not at others: a handgrad false alarm"
        )
    return f
