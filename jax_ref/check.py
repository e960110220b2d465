"""Check anyone's hand-derived gradient against two oracles, leaf by leaf.

    results = check_gradients(loss_fn, grad_fn, params, *args)

`loss_fn(params, *args)` is a scalar; `grad_fn(params, *args)` returns a pytree shaped like
`params` (or `(loss, grads)` with `returns_loss=True`). One `CheckResult` per leaf and
oracle, with a `status`: "passed", "failed" or "inconclusive" (the oracle could not judge;
`note` says why). Never a pass for what was not judged.

* ``autodiff``: `jax.grad(loss_fn)`. float64 gradients are compared under the dtype-keyed
  table of `jax_ref.tolerances` (norm-wise relative error). Low-precision gradients
  (float32, bfloat16, float16) get a precision budget: the golden value is autodiff of
  the loss in float64 at the same point, the baseline autodiff at the gradient's own
  dtype; the hand gradient passes when its error is within k × the baseline's plus a
  floor (`jax_ref.tolerances.BUDGETS`). A gradient whose dtype differs from its
  parameter's fails.
* ``finite_difference``: central differences in float64 along random sign directions,
  each leaf stepped relative to its own scale (a leaf of size 1e-6 moves by ~1e-10), all
  stencil points of a round in one jitted call. A screen probes all leaves at once along
  leaf-balanced directions; only where it does not settle the verdict are leaves probed
  one by one. Each direction is evaluated at t = 0, ±h, ±h/2, ±h/4 and used only if the
  differences behave as a smooth function's do; a kink (a ReLU input crossing 0) is looked
  at closer (64x; a big leaf, which starts 16x closer, 16x), then replaced by another
  direction; a non-finite value shrinks the step;
  a loss flat at its rounding resolution is compared with the change the hand gradient
  predicts. The allowed error per direction is the difference's own error bound (the loss's
  rounding noise, measured ECnoise-style, the Richardson truncation estimate) plus the
  rounding the gradient's own dtype permits. Each result states `detectable_rel_err`, the
  smallest error in one element of the leaf, relative to the leaf's largest entry, that
  the directions used would have flagged. Directions travel as int8 signs and one scale
  per leaf. Along a big leaf (a problem over 65,536 elements), the loss is evaluated by
  `jax_ref.affine`: what is polynomial in the step (a first layer's X·W, a |W|² penalty)
  once, the rest point by point; exact algebra, not differentiation.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jax_ref.affine import line_values
from jax_ref.tolerances import budget, rel_error, tolerance

__all__ = [
    "ORACLES",
    "STATUSES",
    "CheckResult",
    "assert_gradients",
    "check_gradients",
    "compare",
    "enable_x64",
]

ORACLES = ("autodiff", "finite_difference")
STATUSES = ("passed", "failed", "inconclusive")


def enable_x64():
    """float64 for the finite differences and golden values, whatever the process's setting."""
    if hasattr(jax, "enable_x64"):  # jax >= 0.6
        return jax.enable_x64(True)
    from jax.experimental import enable_x64 as older

    return older()


@dataclasses.dataclass(frozen=True)
class CheckResult:
    """One leaf against one oracle. Errors are norm-wise relative (see jax_ref.tolerances);
    for finite differences they are per direction, relative to the size of the hand
    directional derivative (the gradient's 2-norm times the step scale), and
    `worst_index` is a direction, not an element (`index_kind`)."""

    parameter: str
    oracle: str
    dtype: str
    shape: tuple[int, ...]
    max_abs_err: float
    max_rel_err: float
    tolerance: float
    worst_index: tuple[int, ...]
    got: float  # the hand value at worst_index (for finite differences: the directional derivative)
    want: float  # the oracle's value there
    status: str
    note: str = ""
    detectable_rel_err: float = math.nan  # the smallest relative error this check would flag
    baseline_err: float | None = None  # precision budgets: autodiff at the gradient's dtype
    index_kind: str = "element"  # or "direction"

    def __post_init__(self):
        if self.status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}; got {self.status!r}")

    @property
    def passed(self) -> bool:
        return self.status == "passed"

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["shape"] = list(self.shape)
        d["worst_index"] = list(self.worst_index)
        d["passed"] = self.passed
        return d

    def describe(self) -> str:
        head = f"{self.parameter} [{self.oracle}, {self.dtype}{list(self.shape)}]"
        if self.status == "inconclusive":
            return f"{head} INCONCLUSIVE: {self.note}"
        verdict = "ok" if self.passed else "FAILED"
        where = ("direction " if self.index_kind == "direction" else "element ") + (
            str(list(self.worst_index)) if self.worst_index else "(scalar)"
        )
        base = "" if self.baseline_err is None else f", autodiff's own {self.baseline_err:.3g}"
        return (
            f"{head} {verdict}: rel err {self.max_rel_err:.3g} vs tolerance "
            f"{self.tolerance:.3g}{base}; worst at {where}: hand {self.got!r}, "
            f"{self.oracle} {self.want!r}; detects >= {self.detectable_rel_err:.2g}"
            + (f" ({self.note})" if self.note else "")
        )


def _leaf_name(path) -> str:
    return jax.tree_util.keystr(path, simple=True, separator=".") or "value"


def _split_grad_output(out, returns_loss: bool):
    if returns_loss:
        if not (isinstance(out, tuple) and len(out) == 2):
            raise ValueError(
                "grad_fn must return (loss, grads) when returns_loss=True;"
                f" got {type(out).__name__}"
            )
        return out
    return None, out


def _check_tree(grads, params) -> None:
    want, got = jax.tree.structure(params), jax.tree.structure(grads)
    if want != got:
        raise ValueError(
            f"grad_fn must return a pytree shaped like params;\n  params: {want}\n  grads:  {got}"
        )
    for (path, p), g in zip(jax.tree.leaves_with_path(params), jax.tree.leaves(grads)):
        if np.shape(g) != np.shape(p):
            raise ValueError(
                f"grad_fn's gradient for {_leaf_name(path)} must have the parameter's shape "
                f"{np.shape(p)}; got {np.shape(g)}"
            )


def _is_float(x) -> bool:
    return jnp.issubdtype(jnp.result_type(x), jnp.floating)


def compare(name, oracle, got, want, dtype, tol, note="", scale=0.0) -> CheckResult:
    """One leaf against one oracle's values under tolerance `tol`, as a CheckResult."""
    max_abs, rel, idx = rel_error(got, want, scale)
    g, w = np.asarray(got, np.float64), np.asarray(want, np.float64)
    # detection power relative to the leaf's largest entry: a natural scale above it
    # (errors measured against the scale the rounding lives on) weakens it by that factor
    ok = np.isfinite(w)
    big = float(np.max(np.abs(w if ok.all() else w[ok]), initial=0.0))
    weaken = max(float(scale), big) / big if big > 0 else 1.0
    return CheckResult(
        parameter=name,
        oracle=oracle,
        dtype=jnp.dtype(dtype).name,
        shape=tuple(np.shape(want)),
        max_abs_err=max_abs,
        max_rel_err=rel,
        tolerance=tol,
        worst_index=idx,
        got=float(g[idx]) if g.ndim else float(g),
        want=float(w[idx]) if w.ndim else float(w),
        status="passed" if rel <= tol else "failed",
        note=note,
        detectable_rel_err=tol * weaken,
    )


def _to64(tree):
    # numpy casts: jnp ones would compile a conversion for every new shape
    return jax.tree.map(lambda x: np.asarray(x, np.float64) if _is_float(x) else x, tree)


@functools.partial(jax.jit, static_argnums=0)
def _value_and_grad(loss_fn, params, *args):
    """jax.value_and_grad(loss_fn), jitted once per (loss_fn, shapes): differentiating an
    already-jitted loss eagerly would compile its pieces one by one, every call."""
    return jax.value_and_grad(loss_fn)(params, *args)


# --- the autodiff oracle ------------------------------------------------------------


def _golden(loss_fn, params, args):
    """(value, gradient) of the loss in float64 at the same point, or (None, reason)."""
    try:
        with enable_x64():
            value, grads = _value_and_grad(loss_fn, _to64(params), *_to64(args))
            value, grads = float(value), jax.tree.map(lambda g: np.asarray(g, np.float64), grads)
    except Exception as e:  # any failure means: no golden value
        return None, f"the loss could not run in float64 ({type(e).__name__}: {e})"
    if not np.isfinite(value) or not all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads)):
        return None, "the loss or its gradient is not finite in float64"
    return (value, grads), ""


_OWN = {"autodiff": "autodiff's", "referee": "the referee's"}


def _judge(name, got, want, golden, dtype, scale, why_no_golden, oracle="autodiff") -> CheckResult:
    """A low-precision result against the float64 golden value under the precision
    budget, or against the table when there is no golden value (said in the note).
    `want` is the oracle's value at `dtype` (the baseline), `golden` the same in float64."""
    b = budget(dtype)
    if b is None:
        return compare(name, oracle, got, want, dtype, tolerance(dtype), scale=scale)
    if golden is None:
        return compare(
            name,
            oracle,
            got,
            want,
            dtype,
            tolerance(dtype),
            scale=scale,
            note=f"no float64 golden value: {why_no_golden}; judged against the "
            f"{jnp.dtype(dtype).name} table tolerance instead",
        )
    base = rel_error(want, golden, scale)[1]
    allowed = b.k * base + b.floor
    r = compare(
        name,
        oracle,
        got,
        golden,
        dtype,
        allowed,
        scale=scale,
        note=f"precision budget: within {b.k:g} x {_OWN[oracle]} own error "
        f"{base:.2g} + {b.floor:.2g} of the float64 golden value",
    )
    return dataclasses.replace(r, baseline_err=base)


def _autodiff_results(loss_fn, params, args, value, grads, scales, loss_scale):
    ref_value, ref = _value_and_grad(loss_fn, params, *args)
    if jnp.ndim(ref_value) != 0:
        raise ValueError(f"loss_fn must return a scalar; got shape {jnp.shape(ref_value)}")
    low = [
        jnp.result_type(x)
        for x in jax.tree.leaves(params) + jax.tree.leaves(grads)
        if _is_float(x) and budget(jnp.result_type(x)) is not None
    ]
    golden, why = _golden(loss_fn, params, args) if low else (None, "")
    results = []
    if value is not None:
        dt = jnp.result_type(value)
        results.append(
            _judge(
                "loss", value, ref_value, None if golden is None else golden[0], dt, loss_scale, why
            )
        )
    n = len(jax.tree.leaves(ref))
    leaf_scales = [0.0] * n if scales is None else jax.tree.leaves(scales)
    gold = [None] * n if golden is None else jax.tree.leaves(golden[1])
    engine = None
    for li, ((path, p), g, r, gd, sc) in enumerate(
        zip(
            jax.tree.leaves_with_path(params),
            jax.tree.leaves(grads),
            jax.tree.leaves(ref),
            gold,
            leaf_scales,
        )
    ):
        if not _is_float(r):
            continue
        name, pdt = _leaf_name(path), jnp.result_type(p)
        gdt = jnp.result_type(g) if _is_float(g) else None
        if gdt != pdt:
            results.append(_dtype_mismatch(name, "autodiff", g, r, pdt, gdt))
            continue
        res = _judge(name, g, r, gd, pdt, float(sc), why)
        g64 = np.asarray(g, np.float64)
        if res.status == "failed" and np.all(np.isfinite(g64)):
            with enable_x64():
                engine = engine or _fd_engine(loss_fn, params, grads, args, scales, 2, 0)
                want = np.asarray(r if gd is None else gd, np.float64)
                res = _explain(res, engine, li, g64, want)
        results.append(res)
    return results


def _explain(res: CheckResult, engine, li, g, r, most=6) -> CheckResult:
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
        return dataclasses.replace(
            res,
            status="inconclusive",
            note=(
                "autodiff disagrees with the hand gradient, but finite differences along the "
                "elements that differ most side with the hand gradient: the referee is in doubt"
            ),
        )
    if smooth:
        return res  # smooth there, and too fine for differences: autodiff's precision decides
    return dataclasses.replace(
        res,
        status="inconclusive",
        detectable_rel_err=math.inf,
        note=(
            f"hand and autodiff differ only where the loss has a kink at the point (the "
            f"{len(coords)} elements that differ most): different conventions at a kink, which "
            f"autodiff cannot judge"
        ),
    )


def _dtype_mismatch(name, oracle, g, want, pdt, gdt) -> CheckResult:
    r = compare(name, oracle, g, want, pdt, 0.0)
    return dataclasses.replace(
        r,
        status="failed",
        detectable_rel_err=math.nan,
        note=f"the gradient is {gdt} for a {jnp.dtype(pdt).name} parameter: a gradient has "
        "its parameter's dtype (computed in another precision and cast, or not cast)",
    )


# --- the finite-difference oracle ----------------------------------------------------
# A direction v has, in leaf l, entries s_l · (±1): every element of the leaf moves by the
# same amount, s_l = the leaf's root-mean-square (its own scale). The loss along v is
# φ(t) = L(x + t v); φ'(0) = Σ_l s_l ĝ_l·r_l is what the hand gradient predicts.

_H = 1e-4  # relative step: each element moves by 1e-4 of its leaf's rms
# The largest step, for a loss whose rounding hides the slope at _H (one computed in
# float32 inside: noise ~6e-8 of its value). Richardson's O(h⁴) error stays small there
# for a smooth loss, and the smoothness test catches one that is not.
_H_MAX = 1e-2
_NOISE = 5  # extra points for the noise estimate (ECnoise differences of order 3 to 5)
_STENCIL = (1.0, 0.5, 0.25)  # t = ±h·s: three central differences


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3, 4))
def _phi(loss_fn, treedef, moving, batched, line, leaves, signs, steps, ts, ks, masks, *args):
    """loss_fn at leaves + t_m · mask_ml · s_l · signs_l[k_m], for every point m, in one call.

    The directions travel as int8 signs (−1, 0, +1) and one scale per leaf: a direction of
    a million-element leaf is 1 MB, not 8, both across to the device and read per point.
    Small problems: one program for every probe (`moving` None: the masks say which
    leaves move), so a test suite compiles once per shape. Big problems: `moving` names
    the leaves that move (static), so the others stay constants and XLA computes what
    they alone determine once (X·W1 while probing W2); the points are then vmapped when
    the moving leaves are small, and evaluated one after another when they are large (a
    batch of perturbed copies of a big leaf costs more memory traffic than it saves). With
    `line` the index of the one (big) leaf that moves, the loss along the line is evaluated
    by jax_ref.affine: the part linear in that leaf once, the rest point by point."""
    if line is not None:

        def along(x):
            moved = list(leaves)
            moved[line] = x
            return loss_fn(jax.tree.unflatten(treedef, moved), *args)

        B = steps[line] * signs[line].astype(leaves[line].dtype)
        return line_values(along, leaves[line], B, ts * masks[:, line], ks)

    def one(point):
        t, k, m = point
        moved = []
        for i, (x, d) in enumerate(zip(leaves, signs)):
            still = d is None or (moving is not None and not moving[i])
            moved.append(x if still else x + (t * m[i] * steps[i]) * d[k].astype(x.dtype))
        return loss_fn(jax.tree.unflatten(treedef, moved), *args)

    if batched:
        return jax.vmap(one)((ts, ks, masks))
    return jax.lax.map(one, (ts, ks, masks))


_BIG = 1 << 16  # elements: a problem this big compiles a program per probed leaf
_SCREEN_FROM = 8  # leaves: fewer are probed one by one


class _Probe:
    """Evaluates the loss at stencil points, a fixed number per call."""

    def __init__(self, loss_fn, treedef, leaves, steps, args, size):
        self.loss_fn, self.treedef, self.leaves, self.args = loss_fn, treedef, leaves, args
        self.steps = jnp.asarray(steps, jnp.float64)  # each leaf's scale s_l
        self.size = size
        self.big = sum(int(np.size(x)) for x in leaves) > _BIG
        self.no_line = set()  # moving patterns the affine evaluation could not trace
        self.eps = _resolution(loss_fn, treedef, leaves, args)

    def __call__(self, dirs, points):
        """dirs: per leaf, int8 signs (K, *shape) on the device, or None. points:
        [(t, k, mask)], mask a float vector over leaves. Returns φ values."""
        mask = points[0][2]
        moving, batched, line = None, True, None
        if self.big:
            moving = tuple(bool(m) for m in mask)
            batched = sum(int(np.size(x)) for x, m in zip(self.leaves, moving) if m) <= _BIG
            if not batched and sum(moving) == 1 and moving not in self.no_line:
                line = moving.index(True)
        out = []
        for start in range(0, len(points), self.size):
            chunk = points[start : start + self.size]
            pad = chunk + [(0.0, 0, mask)] * (self.size - len(chunk))
            ts = np.array([p[0] for p in pad], np.float64)
            ks = np.array([p[1] for p in pad], np.int32)
            ms = np.array([p[2] for p in pad], np.float64)
            call = functools.partial(_phi, self.loss_fn, self.treedef, moving, batched)
            rest = (self.leaves, dirs, self.steps, ts, ks, ms, *self.args)
            try:
                vals = call(line, *rest)
            except Exception:
                if line is None:
                    raise
                # an operation the affine walk cannot handle: evaluate the plain way
                self.no_line.add(moving)
                line = None
                vals = call(line, *rest)
            out += [float(v) for v in np.asarray(vals)[: len(chunk)]]
        return out


# loss_fn -> {(treedef, dtypes): eps}; weak, so that a cached entry never keeps a loss (and
# the arrays its closure holds) alive
_RESOLUTIONS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _resolution(loss_fn, treedef, leaves, args) -> float:
    """The unit of the loss's rounding: the machine epsilon of the narrowest float type it
    computes in (float64's, 2.2e-16, unless it casts to float32, bfloat16 or float16
    inside). A loss that runs in float32 inside is quantized at ~1e-7 of its value even
    when its inputs and output are float64: taking float64's unit would read its flatness
    at small steps as a slope of zero, and a correct gradient as wrong."""
    # keyed by dtypes, not shapes: the float types a loss computes in do not change with
    # its shapes, and a test suite calls one loss at many shapes (one trace each, else)
    key = (treedef, tuple(jnp.result_type(x) for x in [*leaves, *jax.tree.leaves(args)]))
    try:
        cached = _RESOLUTIONS.setdefault(loss_fn, {})
    except TypeError:  # not weakly referable, or unhashable: work it out each time
        cached = {}
    if key not in cached:
        try:
            closed = jax.make_jaxpr(lambda ls, a: loss_fn(jax.tree.unflatten(treedef, ls), *a))(
                list(leaves), args
            )
            eps = [float(jnp.finfo(d).eps) for d in _float_dtypes(closed.jaxpr)]
            cached[key] = max([2.2e-16, *eps])
        except Exception:  # the probe will raise what is wrong; here: assume float64
            cached[key] = 2.2e-16
    return cached[key]


def _float_dtypes(jaxpr):
    """Every float dtype a jaxpr (and the jaxprs inside it) computes in."""
    from jax.extend.core import jaxprs_in_params

    for eqn in jaxpr.eqns:
        for v in eqn.outvars:
            dt = getattr(v.aval, "dtype", None)
            if dt is not None and jnp.issubdtype(dt, jnp.floating):
                yield dt
        for sub in jaxprs_in_params(eqn.params):
            yield from _float_dtypes(sub)


def _noise_level(f) -> float:
    """The loss's own rounding noise from values on a fine equispaced grid (ECnoise, Moré &
    Wild 2011): the k-th differences of noise σ have variance (2k)!/(k!)² σ². Not ε|φ|:
    a loss like lse(z) - z_y rounds at the scale of |z|, which can be 1e4 times |φ|."""
    f = np.asarray(f, np.float64)
    sigma = 0.0
    for k in range(3, len(f)):
        diff = np.diff(f, n=k)
        gamma = math.factorial(k) ** 2 / math.factorial(2 * k)
        sigma = max(sigma, math.sqrt(gamma * float(np.mean(diff**2))))
    if len(set(f.tolist())) < len(f):
        # ties: the loss is quantized at this scale; its noise is at least one quantum
        sigma = max(sigma, float(np.ptp(f)))
    return sigma


@dataclasses.dataclass
class _Dir:
    est: float
    bound: float
    verdict: str  # smooth | kink | kink at 0 | flat | non-finite
    left: float = math.nan  # one-sided slopes, at a kink at 0
    right: float = math.nan
    noise: float = 0.0  # the part of `bound` that rounding noise makes

    def too_fine(self, flat_is_resolution: bool) -> bool:
        """Is the step too small for the loss's rounding, so that a larger one would see
        more: noise above 1e-3 of the slope; or flat, where that flatness is the rounding's
        (below the standard step _H, or a loss computed in a narrower float inside). A
        float64 loss flat at _H is flat for real (a quantized loss: round(x)), and the
        flat comparison judges it."""
        if self.verdict in ("flat", "constant"):
            return flat_is_resolution
        return self.verdict == "smooth" and self.noise > 1e-3 * abs(self.est)


def _directional(f0, fp, fm, h, eps, sigma) -> _Dir:
    """φ'(0) from φ at 0, ±h, ±h/2, ±h/4 (fp, fm in the order of _STENCIL), its error
    bound, and what the values look like."""
    values = [f0, *fp, *fm]
    if not all(math.isfinite(v) for v in values):
        return _Dir(math.nan, math.inf, "non-finite")
    fmax = max(abs(v) for v in values)
    noise1 = max(eps * fmax, sigma)  # rounding in one value
    one_side = [f0, *fp], [f0, *fm]
    if all(len(set(side)) < len(side) for side in one_side):
        # Points tie exactly on both sides: the loss is quantized at the step's scale (a
        # saturated softmax, a piecewise-constant loss). Ties on one side only are a kink's
        # (a ReLU at 0 is constant on one side): the differences below tell those apart.
        # The slope is measurable only down to one quantum over the step: |φ'| <= ~q / h.
        # A loss that rounds to the same value may hide its scale (lse(z) - z_y is 0.0 at
        # saturated logits while it rounds at ε|z|): the quantum is at least ε·max(|φ|, 1).
        quantum = max(float(np.ptp(values)), noise1, eps * max(fmax, 1.0))
        if len(set(values)) == 1:  # exactly constant along this direction
            return _Dir(0.0, 2 * quantum / h, "constant")
        return _Dir((fp[0] - fm[0]) / (2 * h), 2 * quantum / h, "flat")
    D = [(p - m) / (2 * s * h) for s, p, m in zip(_STENCIL, fp, fm)]
    S = [(p - 2 * f0 + m) / (s * h) for s, p, m in zip(_STENCIL, fp, fm)]
    noise = 8 * noise1 / (0.25 * h)  # roundoff in one difference at the finest step
    d1, d2 = D[0] - D[1], D[1] - D[2]
    # Smooth: D(h) = φ' + k h² + O(h⁴), so d2 ≈ d1/4. A kink inside (0, h) breaks that.
    off_center = abs(d2) > 0.4 * abs(d1) + noise
    # Smooth: S(h) = h φ'' + O(h³); a kink at 0 adds its slope jump J at every h. The
    # extrapolation 2 S(h/4) - S(h/2) cancels the curvature and leaves J.
    jump = abs(2 * S[2] - S[1])
    richardson = D[2] - d2 / 3  # (4 D(h/4) - D(h/2)) / 3, error O(h⁴)
    bound = 3 * noise + abs(d2) / 3 + abs(d1 - 4 * d2) / 12
    # A jump above what noise and the smooth terms can make is a kink at 0 (its noise is at
    # most ~1.25 noise; for a smooth φ it is O(h³), below the O(h²) differences d1, d2).
    if jump > 4 * noise + 4 * (abs(d1) + abs(d2)):
        # one-sided slopes, Richardson-extrapolated: 2 F(h/4) - F(h/2)
        F = [(p - f0) / (s * h) for s, p in zip(_STENCIL, fp)]
        B = [(f0 - m) / (s * h) for s, m in zip(_STENCIL, fm)]
        right, left = 2 * F[2] - F[1], 2 * B[2] - B[1]
        err = 4 * noise + abs(F[2] - F[1]) + abs(B[2] - B[1])
        return _Dir(richardson, err, "kink at 0", left, right)
    verdict = "kink" if off_center else "smooth"
    return _Dir(richardson, bound + 2 * jump, verdict, noise=3 * noise)


def _rademacher(rng, shape) -> np.ndarray:
    """Random signs ±1 as int8, from random bytes (8 signs a byte)."""
    n = int(np.prod(shape, dtype=np.int64))
    bits = np.unpackbits(np.frombuffer(rng.bytes((n + 7) // 8), np.uint8), count=n)
    return (bits.astype(np.int8) * 2 - 1).reshape(shape)


def _rms(x) -> float:
    flat = np.ravel(x)
    return math.sqrt(float(np.dot(flat, flat)) / flat.size) if flat.size else 0.0


class _Leaf:
    def __init__(self, name, x, g, rms, scale, fallback_scale):
        self.name, self.x = name, x
        self.g = np.asarray(g, np.float64)
        self.flat_g = self.g.ravel()
        self.shape, self.n = np.shape(x), int(np.size(x))
        self.gdtype = jnp.result_type(g)
        self.s = rms if rms > 0 else fallback_scale  # the leaf's own scale
        gnorm = math.sqrt(float(np.dot(self.flat_g, self.flat_g)))  # one pass
        finite = math.isfinite(gnorm) or bool(np.all(np.isfinite(self.g)))
        if finite and not math.isfinite(gnorm):  # finite entries whose squares overflow
            gnorm = float(np.linalg.norm(self.g))
        self.gmax = float(np.max(np.abs(self.g), initial=0.0)) if finite else math.inf
        self.gnorm = gnorm if finite else math.inf
        self.natural = float(scale)
        # rounding the gradient's dtype permits, per element, and what it can add up to
        # along a sign direction: Σ δ_i r_i with random signs exceeds 4 ‖δ‖ with
        # probability < 7e-4 (Hoeffding)
        rho = tolerance(self.gdtype) * max(self.gmax if finite else 0.0, self.natural)
        self.budget = 4 * math.sqrt(self.n) * rho * self.s
        self.gscale = max(self.gmax if finite else 0.0, self.natural)
        # The first step. A big leaf usually feeds many units, and a step of _H crosses some
        # unit's kink (a ReLU layer of 65,536 pre-activations, each moved by ~_H of its
        # scale, crosses about five per direction); a kink inside the stencil costs a closer
        # round of the priciest evaluations and, through the jump term, power. The loss runs
        # in float64, so 16x closer costs little in noise. Measured on the 814k MLP over 12
        # seeds: W1 detects >= 1e-5 every time (4e-5 to 5e-5 starting at _H and redoing
        # kinks 64x closer; 8x closer left kinks in 2 of 12). A kink inside the stencil is
        # looked at `closer` times closer: 64x for a small leaf, 16x for a big one.
        self.h0, self.closer = (_H, 64) if self.n <= _BIG else (_H / 16, 16)


def _fd_engine(loss_fn, params, grads, args, scales, directions, seed):
    """The finite-difference machinery at this point, in float64 (inside enable_x64)."""
    p64, a64 = _to64(params), _to64(args)
    flat, treedef = jax.tree.flatten_with_path(p64)
    values = [np.asarray(x) for _, x in flat]
    grad_leaves = jax.tree.leaves(grads)
    leaf_scales = [0.0] * len(values) if scales is None else jax.tree.leaves(scales)
    idx = [i for i, x in enumerate(values) if _is_float(x) and np.size(x) > 0]
    rms = {i: _rms(values[i]) for i in idx}
    fallback = max(rms.values(), default=0.0) or 1.0
    leaves = {
        i: _Leaf(
            _leaf_name(flat[i][0]), values[i], grad_leaves[i], rms[i], leaf_scales[i], fallback
        )
        for i in idx
    }
    K = max(int(directions), 2)  # a point kink whose jumps cancel must not decide alone
    steps = [leaves[i].s if i in leaves else 0.0 for i in range(len(values))]
    probe = _Probe(
        loss_fn, treedef, [jnp.asarray(v) for v in values], steps, a64, size=1 + _NOISE + 6 * K
    )
    return _Engine(probe, leaves, len(values), K, np.random.default_rng(seed))


def _fd_results(loss_fn, params, grads, args, *, seed, directions, max_tries, scales=None):
    with enable_x64():
        engine = _fd_engine(loss_fn, params, grads, args, scales, directions, seed)
        leaves, idx = engine.leaves, sorted(engine.leaves)
        if not idx:
            return []
        out = engine.screen()
        todo = [i for i in idx if i not in out]
        for i in todo:
            out[i] = engine.localise(i, max_tries)
        results = []
        for i in idx:
            pdt, r = jnp.result_type(jax.tree.leaves(params)[i]), out[i]
            if leaves[i].gdtype != pdt:
                r = dataclasses.replace(
                    r,
                    status="failed",
                    note=f"the gradient is {leaves[i].gdtype} for a "
                    f"{jnp.dtype(pdt).name} parameter; " + r.note,
                )
            results.append(r)
        return results


class _Engine:
    """The screen (all leaves along shared directions) and the per-leaf localisation."""

    def __init__(self, probe, leaves, n_leaves, K, rng):
        self.probe, self.leaves, self.n_leaves, self.K, self.rng = probe, leaves, n_leaves, K, rng
        self.last = None  # the signs of the last round, per leaf, on the host
        self.last_dev = None  # the same on the device
        self._hand_cache = {}  # leaf -> the hand directional derivatives along self.last

    def _dirs(self, only=None, density=1.0):
        """K sign directions per leaf (int8; the probe scales leaf l by its s_l; None for a
        leaf that is not probed). With `only`, the other leaves keep their last directions:
        the mask leaves them still, and the structure (hence the compilation) stays the
        same. With density < 1 each element takes part with that probability (at least one
        does): sparse directions, which can step around a kink that sits exactly at the
        point."""
        signs = []
        for i in range(self.n_leaves):
            leaf = self.leaves.get(i)
            if leaf is None:
                signs.append(None)
                continue
            if only is not None and i != only and self.last is not None:
                signs.append(self.last[i])
                continue
            r = _rademacher(self.rng, (self.K, *leaf.shape))
            if density < 1.0:
                keep = self.rng.random(r.shape) < density
                flat = keep.reshape(self.K, -1)
                for k in range(self.K):
                    if not flat[k].any():
                        flat[k, self.rng.integers(flat.shape[1])] = True
                r = r * flat.reshape(r.shape).astype(np.int8)
            signs.append(r)
        return self._put(signs)

    def _put(self, signs):
        """Sends the signs that changed to the device; returns the device list."""
        old, old_dev = self.last or [None] * self.n_leaves, self.last_dev or [None] * self.n_leaves
        dev = [
            None if r is None else (d if r is o else jnp.asarray(r))
            for r, o, d in zip(signs, old, old_dev)
        ]
        self.last, self.last_dev = signs, dev
        self._hand_cache = {}
        return dev

    def _mask(self, only=None):
        return np.array(
            [
                1.0 if (i in self.leaves and (only is None or i == only)) else 0.0
                for i in range(self.n_leaves)
            ]
        )

    def _hand(self, k, only=None):
        """What the hand gradient predicts along direction k, and its rounding budget."""
        total, budget2, scale2 = 0.0, 0.0, 0.0
        for i, leaf in self.leaves.items():
            if only is not None and i != only:
                continue
            if i not in self._hand_cache:  # all K at once: one pass over the leaf
                signs = self.last[i].reshape(self.K, -1).astype(np.float64)
                self._hand_cache[i] = leaf.s * (signs @ leaf.flat_g)
            total += float(self._hand_cache[i][k])
            budget2 += leaf.budget**2
            scale2 += (leaf.s * leaf.gnorm) ** 2
        return total, math.sqrt(budget2), math.sqrt(scale2)

    def _round(self, dirs, h, mask, ks):
        """Stencils along directions ks (noise on the first), at step h: [(Dir, σ)]."""
        pts = [(0.0, ks[0], mask)] + [(j * h / 4096, ks[0], mask) for j in range(1, _NOISE + 1)]
        for k in ks:
            pts += [(s * h, k, mask) for s in _STENCIL] + [(-s * h, k, mask) for s in _STENCIL]
        vals = self.probe(dirs, pts)
        f0 = vals[0]
        sigma = _noise_level(vals[: 1 + _NOISE]) if all(map(math.isfinite, vals[:6])) else 0.0
        eps = self.probe.eps
        out = []
        for j, _ in enumerate(ks):
            base = 1 + _NOISE + 6 * j
            fp, fm = vals[base : base + 3], vals[base + 3 : base + 6]
            out.append(_directional(f0, fp, fm, h, eps, sigma))
        return out

    def screen(self) -> dict[int, CheckResult]:
        """All leaves at once along K shared directions. Returns the leaves it settles.
        Worth it only with many leaves: a few are cheaper probed one by one (small ones
        vmapped), and a ReLU network's big leaf forces the shared step down anyway."""
        if len(self.leaves) < _SCREEN_FROM:
            return {}
        dirs, mask, h = self._dirs(), self._mask(), _H
        for _ in range(4):
            rows = self._round(dirs, h, mask, list(range(self.K)))
            if all(r.verdict != "non-finite" for r in rows):
                break
            h /= 16
        redo = [k for k, r in enumerate(rows) if r.verdict in ("kink", "kink at 0")]
        if redo:  # a kink in [-h, h]: look 64x closer
            for k, r in zip(redo, self._round(dirs, h / 64, mask, redo)):
                rows[k] = r
        if any(r.verdict not in ("smooth", "constant") for r in rows):
            return {}
        diffs, alloweds, hands = [], [], []
        for k, r in enumerate(rows):
            hand, budget_k, _ = self._hand(k)
            diffs.append(abs(hand - r.est))
            alloweds.append(r.bound + budget_k)
            hands.append((hand, r.est))
            if not diffs[-1] <= alloweds[-1]:
                return {}  # something disagrees: localise it leaf by leaf
        out = {}
        for i, leaf in self.leaves.items():
            # an error δ in one element moves every direction's hand value by s |δ|
            det = (
                min(a + d for a, d in zip(alloweds, diffs)) / (leaf.s * leaf.gscale)
                if leaf.gscale > 0
                else math.inf
            )
            if det > max(1e-6, 10 * leaf.budget / max(leaf.s * leaf.gscale, 1e-300)):
                continue  # swamped by the other leaves here: probe it alone
            out[i] = self._result(
                leaf,
                "passed",
                diffs,
                alloweds,
                hands,
                det,
                f"{self.K} directions shared by all leaves",
            )
        return out

    def _result(self, leaf, status, diffs, alloweds, hands, det, note) -> CheckResult:
        # relative to the hand directional derivatives, or to the measured ones where the
        # hand gradient is zero (a dropped cotangent): never to 1e-300
        measured = max((abs(h[1]) for h in hands if math.isfinite(h[1])), default=0.0)
        scale = max(leaf.s * leaf.gnorm, measured, 1e-300) if math.isfinite(leaf.gnorm) else 1.0
        w = int(np.argmax(np.array(diffs) / np.maximum(np.array(alloweds), 1e-300))) if diffs else 0
        return CheckResult(
            leaf.name,
            "finite_difference",
            jnp.dtype(leaf.gdtype).name,
            leaf.shape,
            float(max(diffs)) if diffs else 0.0,
            float(diffs[w] / scale) if diffs else 0.0,
            float(alloweds[w] / scale) if alloweds else 0.0,
            (w,) if diffs else (),
            hands[w][0] if hands else math.nan,
            hands[w][1] if hands else math.nan,
            status,
            note,
            det,
            None,
            "direction",
        )

    def localise(self, i, max_tries) -> CheckResult:
        """Leaf i alone: K directions at a time, a kinked one looked at 64x closer, then
        replaced, until K judge it or max_tries are spent."""
        leaf = self.leaves[i]
        mask = self._mask(only=i)
        diffs, alloweds, hands = [], [], []
        tried, kinks, flat, at_point, between, nonfinite, h = 0, 0, 0, 0, 0, 0, leaf.h0
        failed_flat = []
        density, covered, supports = 1.0, np.zeros(leaf.n, bool), []
        while len(diffs) < self.K and tried < max_tries:
            dirs = self._dirs(only=i, density=density)
            tried += self.K
            rows = self._round(dirs, h, mask, list(range(self.K)))
            shrink = 0
            while any(r.verdict == "non-finite" for r in rows) and shrink < 5:
                h, shrink = h / 16, shrink + 1
                rows = self._round(dirs, h, mask, list(range(self.K)))
            coarse = self.probe.eps > 1e-15  # computed in float32 (or narrower) inside
            while not shrink and h < _H_MAX and any(r.too_fine(h < _H or coarse) for r in rows):
                # the step is below what the loss's rounding resolves (a loss computed in
                # float32 inside): a bigger one, up to _H_MAX (a big leaf's 16x finer
                # first step goes back to _H first)
                h = min(h * 16, _H_MAX)
                rows = self._round(dirs, h, mask, list(range(self.K)))
            redo = [k for k, r in enumerate(rows) if r.verdict in ("kink", "kink at 0")]
            if redo:  # a kink in [-h, h]: look closer
                closer = self._round(dirs, h / leaf.closer, mask, redo)
                for k, r in zip(redo, closer):
                    rows[k] = r
            for k, r in enumerate(rows):
                hand, budget_k, _ = self._hand(k, only=i)
                if r.verdict == "non-finite":
                    nonfinite += 1
                elif r.verdict == "kink":
                    kinks += 1
                elif r.verdict == "kink at 0":
                    at_point += 1
                    lo, hi = min(r.left, r.right), max(r.left, r.right)
                    between += lo - r.bound - budget_k <= hand <= hi + r.bound + budget_k
                elif r.verdict in ("flat", "constant") and abs(hand - r.est) <= r.bound + budget_k:
                    flat += 1  # agrees, but the loss shows no slope to agree with
                else:  # smooth; or flat and the hand gradient predicts a change it does not show
                    if r.verdict in ("flat", "constant"):
                        failed_flat.append(k)
                    diffs.append(abs(hand - r.est))
                    alloweds.append(r.bound + budget_k)
                    hands.append((hand, r.est))
                    support = self.last[i][k].ravel() != 0
                    supports.append(support)
                    covered |= support
            if any(r.verdict == "kink at 0" for r in rows) and len(diffs) < self.K:
                # every direction so far crosses a kink sitting at the point: try sparser
                # ones, which may step around the kinked elements
                density = max(density / 4, 1.0 / max(leaf.n, 1))
        parts = [f"{len(diffs) - len(failed_flat)} directions judged of {tried}"]
        if kinks:
            parts.append(f"{kinks} skipped at kinks near the point")
        if at_point:
            parts.append(
                f"{at_point} on a kink at the point ({between} with the hand value "
                "between the one-sided slopes)"
            )
        if flat:
            parts.append(f"{flat} flat at the loss's rounding resolution")
        if nonfinite:
            parts.append(f"{nonfinite} not finite even at step {h:.1g}")
        note = ", ".join(parts)
        if failed_flat:
            note += (
                "; along a flat direction the hand gradient predicts a change the loss "
                "does not show"
            )
        if not diffs:
            why = (
                "the point is on a kink: differences cannot confirm which one-sided "
                "slope (or value between) the gradient's convention takes"
                if at_point
                else "no usable direction"
            )
            return CheckResult(
                leaf.name,
                "finite_difference",
                jnp.dtype(leaf.gdtype).name,
                leaf.shape,
                0.0,
                0.0,
                0.0,
                (),
                math.nan,
                math.nan,
                "inconclusive",
                f"{why}: {note}",
                math.inf,
                None,
                "direction",
            )
        ok = all(d <= a for d, a in zip(diffs, alloweds))
        if not ok:
            bad = [sup for d, a, sup in zip(diffs, alloweds, supports) if d > a]
            if not any(self._smooth_elements(i, sup) for sup in bad):
                # At a point where the loss is not differentiable, a direction along which
                # slope jumps of opposite sign cancel looks smooth, yet its slope is not the
                # convention's: a disagreement there says nothing about the gradient.
                return CheckResult(
                    leaf.name,
                    "finite_difference",
                    jnp.dtype(leaf.gdtype).name,
                    leaf.shape,
                    float(max(diffs)),
                    math.nan,
                    math.nan,
                    (),
                    math.nan,
                    math.nan,
                    "inconclusive",
                    "finite differences disagree, but the loss is not smooth at the point "
                    "along every element the disagreeing directions move (a kink, or flat at "
                    "its resolution): through a kink whose slope jumps cancel, the slope is "
                    f"not the gradient's convention, so the disagreement proves nothing: {note}",
                    math.inf,
                    None,
                    "direction",
                )
        # an error δ in one element moves every direction's hand value by s |δ|: flagged
        # once s |δ| exceeds the allowance plus what is already there (a failure: its
        # allowance alone is the resolution)
        res = [a + (d if ok else 0.0) for a, d in zip(alloweds, diffs)]
        det = min(res) / (leaf.s * leaf.gscale) if leaf.gscale > 0 else math.inf
        status = "passed" if ok else "failed"
        slope = max(leaf.s * leaf.gnorm, max(abs(m) for _, m in hands))
        if ok and 0 < slope <= min(alloweds):
            # every direction allows an error as large as the slope itself: even a dropped
            # gradient would agree. Nothing was judged. (A zero gradient against a
            # measured zero slope is judged: to the allowance, in absolute terms.)
            det, status = math.inf, "inconclusive"
            note = (
                "the differences' error bound (the loss's rounding noise at the largest step) "
                f"is as large as the slope itself, so even a zero gradient would agree: {note}"
            )
        if not covered.all() and ok:
            # sparse directions saw only some elements: the rest sit on a kink at the point,
            # where an error (or a convention) goes unseen. Agreement there is no pass.
            det, status = math.inf, "inconclusive"
            note = (
                f"the point is on a kink: sparse directions stepping around it agree on "
                f"{covered.sum()} of {leaf.n} elements, the others cannot be judged: {note}"
            )
        return self._result(leaf, status, diffs, alloweds, hands, det, note)

    def _smooth_elements(self, i, support, most=24) -> bool:
        """Is the loss smooth at the point along each element a direction moved (all of a
        small support, a random `most` of a big one)? A failure is confirmed only then:
        along a direction through a kink whose slope jumps of opposite sign cancel, the
        loss looks smooth but its slope is not the gradient's convention."""
        idx = np.flatnonzero(support)
        coords = idx if idx.size <= most else self.rng.choice(idx, most, False)
        rows = self.coordinates(i, [int(c) for c in coords])
        return all(d.verdict in ("smooth", "constant") for d in rows)

    def coordinates(self, i, coords) -> list[_Dir]:
        """The loss along single elements of leaf i (for explaining a disagreement)."""
        leaf, out = self.leaves[i], []
        mask = self._mask(only=i)
        for start in range(0, len(coords), self.K):
            chunk = list(coords[start : start + self.K])
            if self.last is None:
                self._dirs()
            signs = list(self.last)
            d = np.zeros((self.K, leaf.n), np.int8)
            for k, c in enumerate(chunk):
                d[k, c] = 1
            signs[i] = d.reshape(self.K, *leaf.shape)
            dirs = self._put(signs)
            rows = self._round(dirs, _H, mask, list(range(len(chunk))))
            redo = [k for k, r in enumerate(rows) if r.verdict in ("kink", "non-finite")]
            if redo:
                for k, r in zip(redo, self._round(dirs, _H / 64, mask, redo)):
                    rows[k] = r
            out += rows
        return out


def check_gradients(
    loss_fn: Callable[..., Any],
    grad_fn: Callable[..., Any],
    params: Any,
    *args: Any,
    seed: int = 0,
    oracles: Sequence[str] = ORACLES,
    returns_loss: bool = False,
    directions: int = 2,
    max_tries: int = 12,
    scales: Any = None,
    loss_scale: float = 0.0,
) -> list[CheckResult]:
    """Compare `grad_fn` with autodiff and finite differences of `loss_fn`, leaf by leaf.

    `params` may be any pytree (NamedTuple, dict, list). With `returns_loss=True`,
    `grad_fn` returns `(loss, grads)` and the loss is checked against `loss_fn` too
    (parameter ``loss``, oracle ``autodiff``: the referee's forward value).
    `directions` is the number of random directions per round (at least 2), `max_tries`
    the most a leaf may use. `scales` (a pytree like `params` of floats) and `loss_scale`
    give each leaf's natural error scale where cancellation makes a gradient smaller than
    its rounding's scale (see jax_ref.tolerances), for both oracles."""
    unknown = set(oracles) - set(ORACLES)
    if unknown:
        raise ValueError(f"oracles must be among {ORACLES}; got {sorted(unknown)}")
    if not callable(loss_fn) or not callable(grad_fn):
        raise ValueError("loss_fn and grad_fn must be callables (params, *args)")
    value, grads = _split_grad_output(grad_fn(params, *args), returns_loss)
    _check_tree(grads, params)
    results: list[CheckResult] = []
    if "autodiff" in oracles:
        results += _autodiff_results(loss_fn, params, args, value, grads, scales, loss_scale)
    if "finite_difference" in oracles:
        results += _fd_results(
            loss_fn,
            params,
            grads,
            args,
            seed=seed,
            directions=directions,
            max_tries=max_tries,
            scales=scales,
        )
    return results


def assert_gradients(
    loss_fn, grad_fn, params, *args, allow_inconclusive: bool = False, **kwargs
) -> list[CheckResult]:
    """`check_gradients`, raising an AssertionError naming every failed leaf and oracle
    (the worst element or direction and both values), and every leaf that no oracle
    judged conclusively (unless `allow_inconclusive`). Returns the results otherwise."""
    results = check_gradients(loss_fn, grad_fn, params, *args, **kwargs)
    return raise_on_problems(results, "gradient", "leaves", allow_inconclusive)


def raise_on_problems(results, what: str, unit: str, allow_inconclusive: bool):
    """Raise an AssertionError naming every failed result and every leaf that no oracle
    (autodiff or finite differences: a contract check judges no leaf) judged conclusively,
    unless `allow_inconclusive`. Returns the results otherwise."""
    failed = [r for r in results if r.status == "failed"]
    judged = {r.parameter for r in results if r.status != "inconclusive" and r.oracle in ORACLES}
    unjudged = [
        r
        for r in results
        if r.status == "inconclusive" and r.oracle in ORACLES and r.parameter not in judged
    ]
    problems = failed + ([] if allow_inconclusive else unjudged)
    if problems:
        lines = "\n".join("  " + r.describe() for r in problems)
        msg = f"{len(failed)} of {len(results)} {what} checks failed"
        if unjudged and not allow_inconclusive:
            msg += (
                f"; {len({r.parameter for r in unjudged})} {unit} no oracle could judge "
                "(allow_inconclusive=True to accept that)"
            )
        raise AssertionError(f"{msg}:\n{lines}")
    return results
