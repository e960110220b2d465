"""Check anyone's hand-derived gradient against two oracles, leaf by leaf.

    results = check_gradients(loss_fn, grad_fn, params, *args)

`loss_fn(params, *args)` is a scalar; `grad_fn(params, *args)` returns a pytree shaped like
`params` (or `(loss, grads)` with `returns_loss=True`). One `CheckResult` per leaf and
oracle:

* ``autodiff``: `jax.grad(loss_fn)`, compared under the dtype-keyed table in
  `jax_ref.tolerances` (norm-wise relative error).
* ``finite_difference``: central differences in float64 along random unit directions, a
  few loss evaluations per direction (never one per parameter). Each direction is
  evaluated at t = 0, ±h, ±h/2, ±h/4; a direction is used only if the differences behave
  as a smooth function's do (first differences shrink ~4x per halving, second
  differences ~2x). A ReLU kink anywhere in [-h, h], exactly at 0 included, breaks that
  pattern, and the direction is replaced instead of raising a false alarm. The allowed
  error per direction is the finite difference's own error bound: roundoff of the loss
  evaluations (measured, ECnoise-style, divided by h) plus the Richardson truncation
  estimate, plus the rounding the gradient's own dtype permits.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jax_ref.tolerances import rel_error, tolerance

__all__ = ["ORACLES", "CheckResult", "assert_gradients", "check_gradients", "compare", "enable_x64"]

ORACLES = ("autodiff", "finite_difference")


def enable_x64():
    """float64 for the finite differences, whatever the process's setting."""
    if hasattr(jax, "enable_x64"):  # jax >= 0.6
        return jax.enable_x64(True)
    from jax.experimental import enable_x64  # older jax

    return enable_x64()


@dataclasses.dataclass(frozen=True)
class CheckResult:
    """One leaf against one oracle. Errors are norm-wise relative (see jax_ref.tolerances);
    for finite differences they are relative to the leaf gradient's 2-norm, the natural
    scale of a directional derivative along a unit direction."""

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
    passed: bool
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["shape"] = list(self.shape)
        d["worst_index"] = list(self.worst_index)
        return d

    def describe(self) -> str:
        verdict = "ok" if self.passed else "FAILED"
        return (
            f"{self.parameter} [{self.oracle}, {self.dtype}{list(self.shape)}] {verdict}: "
            f"rel err {self.max_rel_err:.3g} vs tolerance {self.tolerance:.3g}; worst at "
            f"{list(self.worst_index)}: hand {self.got!r}, {self.oracle} {self.want!r}"
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
    """One leaf against one oracle's values, as a CheckResult."""
    max_abs, rel, idx = rel_error(got, want, scale)
    g, w = np.asarray(got, np.float64), np.asarray(want, np.float64)
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
        passed=bool(rel <= tol),
        note=note,
    )


def _to64(tree):
    # numpy casts: jnp ones would compile a conversion for every new shape
    return jax.tree.map(lambda x: np.asarray(x, np.float64) if _is_float(x) else x, tree)


@functools.partial(jax.jit, static_argnums=0)
def _value_and_grad(loss_fn, params, *args):
    """jax.value_and_grad(loss_fn), jitted once per (loss_fn, shapes): differentiating an
    already-jitted loss eagerly would compile its pieces one by one, every call."""
    return jax.value_and_grad(loss_fn)(params, *args)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _flat_loss(loss_fn, treedef, leaves, *args):
    """loss_fn on flat leaves; jitted once per (loss_fn, tree structure, shapes)."""
    return loss_fn(jax.tree.unflatten(treedef, leaves), *args)


def _noise_level(phi, h, f0) -> float:
    """The loss's own rounding noise at this point, measured (ECnoise, Moré & Wild 2011):
    φ on 7 points 2^-12 h apart, where its smooth variation is negligible; the k-th
    differences of rounding noise σ have variance (2k)!/(k!)² σ². Not ε|φ|: a loss like
    lse(z) - z_y rounds at the scale of |z|, which can be 1e4 times |φ|. The grid is
    one-sided (t >= 0) so that a kink exactly at t = 0 is not mistaken for noise."""
    d = h / 4096
    f = np.array([f0, *(phi(j * d) for j in range(1, 7))])
    sigma = 0.0
    for k in (4, 5, 6):
        diff = np.diff(f, n=k)
        gamma = math.factorial(k) ** 2 / math.factorial(2 * k)
        sigma = max(sigma, math.sqrt(gamma * float(np.mean(diff**2))))
    if len(set(f.tolist())) < len(f):
        # ties: the loss is quantized at this scale; its noise is at least one quantum
        sigma = max(sigma, float(np.ptp(f)))
    return sigma


def _directional(phi, h, eps, budget, sigma, f0):
    """Finite-difference estimate of φ'(0) from φ at 0, ±h, ±h/2, ±h/4.

    Returns (estimate, error bound, verdict): "smooth", "kink" (inside (0, h)),
    "kink at 0" or "flat" (quantized at the step's scale: nothing to measure).
    `budget` is the error the caller accepts; a kink whose effect stays below it is
    harmless, one above it rejects the direction. `f0` is φ(0)."""
    f = {s: (phi(s * h), phi(-s * h)) for s in (1.0, 0.5, 0.25)}
    values = [f0, *(v for pair in f.values() for v in pair)]
    if len(set(values)) < len(values):
        # Two of seven well-separated points give exactly the same loss: it is quantized at
        # the scale of the step (e.g. a saturated softmax, flat at its rounding resolution),
        # and a slope below that resolution cannot be measured along this direction.
        return 0.0, 0.0, "flat"
    fmax = max(abs(f0), *(abs(v) for pair in f.values() for v in pair))
    D = {s: (p - m) / (2 * s * h) for s, (p, m) in f.items()}
    S = {s: (p - 2 * f0 + m) / (s * h) for s, (p, m) in f.items()}
    # roundoff in one difference at the finest step: the larger of ε|φ| and the measured σ
    noise = 8 * max(eps * fmax, sigma) / (0.25 * h)
    d1, d2 = D[1.0] - D[0.5], D[0.5] - D[0.25]
    # Smooth: D(h) = φ' + k h² + O(h⁴), so d2 ≈ d1/4. A kink inside (0, h) breaks that.
    off_center = abs(d2) > 0.4 * abs(d1) + noise
    # Smooth: S(h) = h φ'' + O(h³); a kink at 0 adds its slope jump J at every h. The
    # extrapolation 2 S(h/4) - S(h/2) cancels the curvature and leaves J; the central
    # difference is then off by J/2, harmless only while that is within the budget.
    # The estimate's own noise is ~1.25 noise; a jump under 4 noise + budget goes unseen and
    # shifts the central difference by at most half that, which the bound below covers.
    jump = abs(2 * S[0.25] - S[0.5])
    at_zero = jump > 4 * noise + budget
    richardson = D[0.25] - d2 / 3  # (4 D(h/4) - D(h/2)) / 3, error O(h⁴)
    bound = 3 * noise + abs(d2) / 3 + abs(d1 - 4 * d2) / 12
    verdict = "kink at 0" if at_zero else "kink" if off_center else "smooth"
    return richardson, bound, verdict


def _fd_results(loss_fn, params, grads, args, *, seed, directions, max_tries, scales=None):
    """Finite differences, leaf by leaf, in float64."""
    results = []
    with enable_x64():
        p64, a64 = _to64(params), _to64(args)
        leaves, treedef = jax.tree.flatten_with_path(p64)

        def loss(ps, *xs):
            return _flat_loss(loss_fn, treedef, ps, *xs)

        value = loss([x for _, x in leaves], *a64)
        out_dtype = jnp.result_type(value)
        eps = float(jnp.finfo(out_dtype).eps) if _is_float(out_dtype) else 2.2e-16
        rng = np.random.default_rng(seed)
        f0 = float(value)  # φ(0): the same point for every leaf and direction
        grad_leaves = jax.tree.leaves(grads)
        leaf_scales = [0.0] * len(grad_leaves) if scales is None else jax.tree.leaves(scales)
        base = [np.asarray(y) for _, y in leaves]
        for li, ((path, x), g) in enumerate(zip(leaves, grad_leaves)):
            name = _leaf_name(path)
            if not _is_float(x) or np.size(x) == 0:
                continue
            g64 = np.asarray(g, np.float64)
            gdtype = jnp.result_type(g)
            gnorm = float(np.linalg.norm(g64)) if np.all(np.isfinite(g64)) else np.inf
            h = 1e-4 * max(float(np.linalg.norm(base[li])), 1.0)
            # what the gradient's own dtype permits: |<δg, u>| <= ||δg||₂, and δg lives on
            # the leaf's natural scale where cancellation made the gradient small
            natural = np.sqrt(np.size(x)) * float(leaf_scales[li])
            budget = tolerance(gdtype) * max(gnorm if np.isfinite(gnorm) else 0.0, natural)
            rows, tries, kinks, flat, at_point = [], 0, 0, 0, False
            sigma = None
            # at least two probes: one direction along which the slope jumps of a point
            # kink happen to cancel must not decide alone
            while (len(rows) < directions or tries < 2) and tries < max_tries:
                tries += 1
                # directions drawn in numpy: no per-shape compilation
                u = rng.standard_normal(np.shape(x))
                u = u / np.linalg.norm(u)

                def phi(t, u=u, li=li):
                    moved = list(base)
                    moved[li] = base[li] + t * u
                    return float(loss(moved, *a64))

                if sigma is None:  # once per leaf: the noise depends on the point
                    sigma = _noise_level(phi, h, f0)
                est, bound, verdict = _directional(phi, h, eps, budget, sigma, f0)
                if verdict != "smooth":
                    # a kink in [-h, h]: look again 64x closer
                    est, bound, verdict = _directional(phi, h / 64, eps, budget, sigma, f0)
                if verdict == "kink at 0":
                    # The point itself sits on a kink (a ReLU input exactly 0): the loss is
                    # not differentiable there, and a direction along which the slope jumps
                    # happen to cancel would compare a convention with a directional
                    # derivative. Finite differences cannot judge this leaf here.
                    at_point = True
                    break
                if verdict == "flat":
                    flat += 1
                    continue
                if verdict != "smooth":
                    kinks += 1
                    continue
                hand = float(np.vdot(g64, u))
                allowed = bound + budget
                rows.append((abs(hand - est), allowed, hand, est))
            note = f"{len(rows)} directions, {kinks} skipped at kinks"
            if flat:
                note += f", {flat} flat at rounding resolution"
            if at_point or not rows:
                why = (
                    "the point is on a kink (not differentiable in this leaf)"
                    if at_point
                    else "no usable direction: " + note
                )
                results.append(
                    CheckResult(
                        name,
                        "finite_difference",
                        jnp.dtype(gdtype).name,
                        np.shape(x),
                        0.0,
                        0.0,
                        0.0,
                        (),
                        np.nan,
                        np.nan,
                        True,
                        f"inconclusive: {why}",
                    )
                )
                continue
            errs = np.array([r[0] for r in rows])
            errs = np.where(np.isfinite(errs), errs, np.inf)
            i = int(np.argmax(errs / np.array([max(r[1], 1e-300) for r in rows])))
            scale = gnorm if np.isfinite(gnorm) and gnorm > 0 else 1.0
            passed = all(e <= a for e, (_, a, _, _) in zip(errs, rows))
            results.append(
                CheckResult(
                    name,
                    "finite_difference",
                    jnp.dtype(gdtype).name,
                    np.shape(x),
                    float(errs.max()),
                    float(errs[i] / scale),
                    float(rows[i][1] / scale),
                    (i,),
                    rows[i][2],
                    rows[i][3],
                    bool(passed),
                    note,
                )
            )
    return results


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
    `scales` (a pytree like `params` of floats) and `loss_scale` give each leaf's natural
    error scale where cancellation makes a gradient smaller than its rounding's scale
    (see jax_ref.scales), for both oracles; by default a leaf's errors are relative to its
    own magnitude, which suits float64 but can flag a correct float32 gradient of a
    saturated softmax (check such points in float64, or pass the scales)."""
    unknown = set(oracles) - set(ORACLES)
    if unknown:
        raise ValueError(f"oracles must be among {ORACLES}; got {sorted(unknown)}")
    if not callable(loss_fn) or not callable(grad_fn):
        raise ValueError("loss_fn and grad_fn must be callables (params, *args)")
    value, grads = _split_grad_output(grad_fn(params, *args), returns_loss)
    _check_tree(grads, params)
    results: list[CheckResult] = []
    if "autodiff" in oracles:
        ref_value, ref = _value_and_grad(loss_fn, params, *args)
        if jnp.ndim(ref_value) != 0:
            raise ValueError(f"loss_fn must return a scalar; got shape {jnp.shape(ref_value)}")
        if value is not None:
            dt = jnp.result_type(value)
            results.append(
                compare("loss", "autodiff", value, ref_value, dt, tolerance(dt), scale=loss_scale)
            )
        n = len(jax.tree.leaves(ref))
        leaf_scales = [0.0] * n if scales is None else jax.tree.leaves(scales)
        for (path, g), r, sc in zip(
            jax.tree.leaves_with_path(grads), jax.tree.leaves(ref), leaf_scales
        ):
            if _is_float(r):
                dt = jnp.result_type(g) if _is_float(g) else jnp.result_type(r)
                results.append(
                    compare(_leaf_name(path), "autodiff", g, r, dt, tolerance(dt), scale=float(sc))
                )
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


def assert_gradients(loss_fn, grad_fn, params, *args, **kwargs) -> list[CheckResult]:
    """`check_gradients`, raising an AssertionError naming every failed leaf and oracle,
    the worst element and both values. Returns the results when all pass."""
    results = check_gradients(loss_fn, grad_fn, params, *args, **kwargs)
    failed = [r for r in results if not r.passed]
    if failed:
        lines = "\n".join("  " + r.describe() for r in failed)
        raise AssertionError(f"{len(failed)} of {len(results)} gradient checks failed:\n{lines}")
    return results
