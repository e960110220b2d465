"""Central differences of a vector-valued function along one tangent, element by element:
the finite-difference oracle of a JVP's output tangents and of second derivatives (the
derivative of a rule's VJP), and the witness that settles a disagreement between a rule
and the reference's autodiff.

    d = differences_along(fn, x, u, what="f")     # fn(x) -> list of arrays
    d.judge(name, oracle, hand, dtype)             # hand ≈ d/dt fn(x + t u) at t = 0
    d.overrule(result, hand, want)                 # the reference disagrees with d?
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from jax_ref.finite_difference.stencil import STENCIL, H
from jax_ref.runtime import enable_x64, highest_precision
from jax_ref.tolerances import absolute_allowance, tolerance
from jax_ref.verdict import CheckResult, inconclusive_check

__all__ = ["Along", "differences_along", "flat"]


def flat(tree) -> np.ndarray:
    """The float leaves of a pytree, raveled and concatenated, in float64."""
    leaves = [np.asarray(x, np.float64).ravel() for x in jax.tree.leaves(tree)]
    return np.concatenate(leaves) if leaves else np.zeros(0)


@dataclasses.dataclass
class Along:
    """d/dt fn(x + t u) at 0 per output element: Richardson's estimate, its error bound
    (inf where a kink or a non-finite value sits inside the stencil), and the precision
    the differences ran in."""

    est: np.ndarray
    bound: np.ndarray
    precision: str
    why: str  # why not float64, or ""
    kink0: np.ndarray | None = None  # elements with a kink at the point itself
    left: np.ndarray | None = None  # there: the one-sided slopes, and their error bound
    right: np.ndarray | None = None
    bound_kink: np.ndarray | None = None
    tied: np.ndarray | None = None  # elements whose values tie exactly at every step

    @property
    def reliable(self) -> np.ndarray:
        return np.isfinite(self.est) & np.isfinite(self.bound)

    def judge(self, name, oracle, hand, dtype, natural=0.0, note="") -> CheckResult:
        """`hand` (flat, output-shaped) against the differences, element by element:
        failed where it is off by more than the bound plus the dtype's rounding."""
        g = flat(hand)
        ok = self.reliable
        kw = dict(dtype=jnp.dtype(dtype).name, shape=(int(g.size),))
        if not ok.any():
            why = "finite differences are not smooth or not finite at any element"
            return inconclusive_check(name, oracle, _join(note, why), **kw)
        scale = max(float(np.max(np.abs(self.est[ok]))), float(np.max(np.abs(g[ok]))), natural)
        scale = scale if scale > 0 else 1.0
        allowed = self.bound + tolerance(dtype) * scale + absolute_allowance()
        with np.errstate(invalid="ignore"):
            diff = np.where(ok, np.abs(g - self.est), 0.0)
            diff = np.where(ok & ~np.isfinite(g), np.inf, diff)
        w = int(np.argmax(np.where(ok, diff / np.maximum(allowed, 1e-300), -1.0)))
        bad = ok & ~(diff <= allowed)
        det = float(np.max(allowed[ok])) / scale
        status = "failed" if bad.any() else ("passed" if det < 1 else "inconclusive")
        parts = [note, f"central differences in {self.precision} along the tangent"]
        if (~ok).any():
            parts.append(f"{int((~ok).sum())} of {ok.size} elements not judged (a kink or NaN)")
        if status == "inconclusive":
            parts.append("their error bound is as large as the values: nothing judged")
        return CheckResult(
            parameter=name,
            oracle=oracle,
            status=status,
            note="; ".join(p for p in [*parts, self.why] if p),
            max_abs_err=float(diff[w]),
            max_rel_err=float(diff[w] / scale),
            tolerance=float(allowed[w] / scale),
            worst_index=(w,),
            got=float(g[w]),
            want=float(self.est[w]),
            detectable_rel_err=det,
            **kw,
        )

    def overrule(self, result: CheckResult, hand, want, what="reference's derivative"):
        """A failed comparison of `hand` with the reference's `want`, looked at where they
        differ: if the differences are reliable there and side with the hand value, the
        reference is wrong there, a finding about the oracle (inconclusive, saying where);
        otherwise the failure stands."""
        if result.status != "failed":
            return result
        g, w = flat(hand), flat(want)
        scale = max(float(np.max(np.abs(g), initial=0)), float(np.max(np.abs(w), initial=0)))
        tol = max(result.tolerance, 0.0) * max(scale, 1e-300)
        with np.errstate(invalid="ignore"):
            differ = ~(np.abs(g - w) <= tol)
        if not differ.any():
            return result
        kinked = np.zeros_like(differ) if self.kink0 is None else self.kink0
        if kinked[differ].all():
            return self._conventions(result, g, differ, tol)
        if not self.reliable[differ].all():
            return result
        near = np.abs(g - self.est) <= self.bound + tol
        far = ~(np.abs(w - self.est) <= self.bound + tol)
        if not (near[differ].all() and far[differ].all()):
            return result
        i = int(np.flatnonzero(differ)[np.argmax(np.abs(g - w)[differ])])
        note = (
            f"the {what} disagrees with finite differences at {int(differ.sum())} of "
            f"{differ.size} elements (worst [{i}]: reference {w[i]:.6g}, finite differences "
            f"{self.est[i]:.6g} ± {self.bound[i]:.2g}, rule {g[i]:.6g}): a finding about the "
            "reference, not a verdict on the rule"
        )
        return dataclasses.replace(
            result, status="inconclusive", detectable_rel_err=math.inf, note=note
        )

    def _conventions(self, result, g, differ, tol):
        """The rule and the reference differ only where f has a kink at the point: two
        conventions. Where the rule's value lies between the one-sided slopes it is one
        (relu's 0 or 1 at 0, |x|'s 0): set aside, the other elements stay judged (passed);
        a value outside them is no convention, and the failure stands."""
        lo = np.minimum(self.left, self.right) - self.bound_kink - tol
        hi = np.maximum(self.left, self.right) + self.bound_kink + tol
        between = (lo <= g) & (g <= hi)
        if not between[differ].all():
            return result
        k, n = int(differ.sum()), differ.size
        note = (
            f"the rule and the reference differ only where f has a kink at the point ({k} of "
            f"{n} elements), the rule's value between the one-sided slopes there: two "
            "conventions, not judged there"
        )
        if k == n:
            return dataclasses.replace(
                result, status="inconclusive", detectable_rel_err=math.inf, note=note
            )
        note += f"; the other {n - k} agree"
        return dataclasses.replace(result, status="passed", note=_join(result.note, note))


def _join(a, b):
    return f"{a}; {b}" if a else b


def differences_along(fn, x, u, what="f", eps=None, h=H, jit=True) -> Along:
    """Central differences of `fn` (a pytree -> pytree of float arrays) at x along u, at
    steps h, h/2, h/4 (default H), Richardson-extrapolated; in float64 where fn runs
    there. `jit=False` evaluates eagerly (one-off functions: no compilation to pay)."""
    with enable_x64():
        (x_, u_), precision, why = highest_precision(lambda a, b: fn(a), (x, u), what)

        def moved(t):
            return fn(jax.tree.map(lambda a, b: a + (t * b).astype(a.dtype), x_, u_))

        f = jax.jit(moved) if jit else moved
        ts = [s * h for s in STENCIL]
        plus = [flat(f(t)) for t in ts]
        minus = [flat(f(-t)) for t in ts]
        center = flat(f(0.0))
    unit = float(jnp.finfo(jnp.float64 if precision == "float64" else jnp.float32).eps)
    if precision not in ("float64", "float32"):
        unit = max(unit, 2.0**-8)
    unit = eps if eps is not None else unit
    values = np.stack([center, *plus, *minus])
    with np.errstate(invalid="ignore", over="ignore"):  # inf - inf: not finite, set apart
        D = [(p - m) / (2 * t) for p, m, t in zip(plus, minus, ts)]
        d1, d2 = D[0] - D[1], D[1] - D[2]
        noise = 8 * unit * np.max(np.abs(values), axis=0) / ts[-1]
        est = D[2] - d2 / 3
        bound = 3 * noise + np.abs(d2) / 3 + np.abs(d1 - 4 * d2) / 12
        # Smooth: d2 ≈ d1/4. Otherwise a kink inside the stencil, or rounding the values'
        # size does not show (terms that cancel inside: sinc's near 0). Differences that
        # agree to 1e-5 of the slope are converged either way, their spread the bound.
        off = np.abs(d2) > 0.4 * np.abs(d1) + noise
        wobble = np.abs(d1) + np.abs(d2)
        kink = off & (wobble > 1e-5 * np.abs(est) + noise)
        bound = bound + np.where(off, 2 * wobble, 0.0)
        # a kink at the point adds its slope jump J to every S(h) = (φ(h) - 2φ(0) + φ(-h))/h:
        # 2 S(h/4) - S(h/2) cancels the curvature and leaves J (as in stencil.directional)
        S = [(p - 2 * center + m) / t for p, m, t in zip(plus, minus, ts)]
        F = [(p - center) / t for p, t in zip(plus, ts)]
        B = [(center - m) / t for m, t in zip(minus, ts)]
        right, left = 2 * F[2] - F[1], 2 * B[2] - B[1]
        bound_kink = 4 * noise + np.abs(F[2] - F[1]) + np.abs(B[2] - B[1])
        # a jump below 1e-5 of the slopes is rounding (kinks that cancel inside, as in
        # logaddexp's max + log1p(exp(-|x - y|)) at x = y), not a kink of the function
        jump = np.abs(right - left) > 1e-5 * (np.abs(right) + np.abs(left)) + noise
        kink0 = (np.abs(2 * S[2] - S[1]) > 4 * noise + 4 * wobble) & jump
    finite = np.all(np.isfinite(values), axis=0)
    bad = ~finite | kink | kink0
    est, bound = np.where(bad, np.nan, est), np.where(bad, np.inf, bound)
    with np.errstate(invalid="ignore"):
        tied = np.ptp(values, axis=0) == 0  # constant here, or moving below its rounding
    return Along(est, bound, precision, why, kink0 & finite, left, right, bound_kink, tied)
