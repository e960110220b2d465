"""The one tolerance table, keyed by dtype, the precision budgets, and the error measure.

The measure is the norm-wise relative error of a leaf,
    rel = max_i |got_i - want_i| / max(max_i |want_i|, max_i |got_i|, natural scale),
the natural scale being the magnitude its rounding lives on (docs/oracles.md).
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import math
from typing import NamedTuple

import jax.numpy as jnp
import numpy as np

__all__ = [
    "BUDGETS",
    "TOLERANCES",
    "Budget",
    "Override",
    "absolute_allowance",
    "budget",
    "budget_tolerance",
    "current_override",
    "default_tolerance",
    "overridden",
    "override_from",
    "rel_error",
    "tolerance",
    "unit_roundoff",
]

TOLERANCES: dict[str, float] = {
    # u = 1.1e-16. 1e-10 covers the worst-case n·u of reductions up to n ~ 10^6 (typical
    # error grows like sqrt(n)·u), and stays 600x below float32's u = 6e-8: a gradient
    # computed in float32 inside a float64 call fails.
    "float64": 1e-10,
    # u = 6e-8. 1e-4 covers worst-case n·u for n ~ 1700 and typical sqrt(n)·u far beyond;
    # a wrong gradient is wrong at O(1) relative, 1e4 times above it.
    "float32": 1e-4,
    # Half precisions: not exercised by handgrad's tests; n·u for n ~ 20.
    "float16": 1e-2,  # u = 4.9e-4
    "bfloat16": 8e-2,  # u = 3.9e-3
}


class Budget(NamedTuple):
    """A low-precision gradient passes when err(hand) <= k · err(baseline) + floor, both
    errors against the float64 golden value (see `budget`)."""

    k: float
    floor: float


# Precision budgets for gradients computed in a low precision (the FlashAttention tests'
# rule, made explicit): the golden value is autodiff of the loss in float64 at the same
# point; the baseline is autodiff at the gradient's own dtype, i.e. what the dtype allows
# for this computation. k = 4: a correct hand computation rounds in another order than
# autodiff's, so its error is another draw of the same size. The floor covers a baseline
# that is exact by luck (a saturated softmax: autodiff's 0 - 1 rounds to exactly -1), where
# the ratio means nothing: 16 unit roundoffs in float32, 8 in the 16-bit types (whose u is
# already coarse). Measured on handgrad's mlp_grads, cross_entropy_grad and
# binary_cross_entropy_grad over 80 cases per dtype (edge shapes, logits to 1e4): the
# largest correct error is 6.4e-7 in float32 and 0.045 in bfloat16, all within budget,
# and hand/baseline reaches 34 only where the baseline is tiny (the floor decides there).
# A float32 gradient 1e-5 relative wrong fails: autodiff's own error is ~1e-7 there.
BUDGETS: dict[str, Budget] = {
    "float32": Budget(4.0, 16 * 2.0**-24),  # floor 9.5e-7
    "bfloat16": Budget(4.0, 8 * 2.0**-9),  # floor 1.6e-2
    "float16": Budget(4.0, 8 * 2.0**-11),  # floor 3.9e-3
}


def budget(dtype) -> Budget | None:
    """The precision budget for a gradient of `dtype`, or None (float64: the table)."""
    return BUDGETS.get(jnp.dtype(dtype).name)


def unit_roundoff(dtype) -> float:
    """u = eps / 2 of a floating dtype."""
    return float(jnp.finfo(dtype).eps) / 2


def default_tolerance(dtype) -> float:
    """The table's tolerance for `dtype`, whatever a caller has set."""
    name = jnp.dtype(dtype).name
    if name not in TOLERANCES:
        raise ValueError(f"no tolerance for dtype {name}; known: {sorted(TOLERANCES)}")
    return TOLERANCES[name]


def tolerance(dtype) -> float:
    """The relative tolerance for comparing a hand-derived result of `dtype` with an
    oracle: the table's, or what the caller of the running check set (`Override`)."""
    base, o = default_tolerance(dtype), _OVERRIDE.get()
    if o is None:
        return base
    return (base if o.rtol is None else o.rtol) * o.factor


def budget_tolerance(b: Budget, baseline: float) -> float:
    """The relative tolerance a precision budget gives against the float64 golden value,
    k x the oracle's own error `baseline` + the floor; or what the caller set."""
    o = _OVERRIDE.get()
    if o is not None and o.rtol is not None:
        return o.rtol * o.factor
    return (b.k * baseline + b.floor) * (1.0 if o is None else o.factor)


def current_override() -> Override | None:
    """The tolerance the caller of the running check set, if any."""
    return _OVERRIDE.get()


def absolute_allowance() -> float:
    """The absolute error per element the caller of the running check allows (atol), in
    the units of the values compared; 0 by default."""
    o = _OVERRIDE.get()
    return 0.0 if o is None else o.atol


# --- a tolerance set by the caller of one check --------------------------------------------


@dataclasses.dataclass(frozen=True)
class Override:
    """A tolerance the caller of one check set (`check_*(rtol=, atol=, tolerance_factor=)`).

    `rtol` replaces the relative tolerance, table or precision budget; `factor` multiplies
    it (the table's, the budget's or `rtol`); `atol` adds an absolute allowance per element
    (as `numpy.allclose`: |hand - oracle| <= atol + rtol x scale). Every result of the check
    carries `describe()` (CheckResult.tolerance_set), shown in every message and report:
    a loosened check is always visible. The power (`detectable_rel_err`) is computed with
    the tolerance in force, so a tolerance too loose to see a 100 % error is inconclusive."""

    rtol: float | None = None
    atol: float = 0.0
    factor: float = 1.0

    def describe(self) -> str:
        parts = [f"rtol={self.rtol:g}"] if self.rtol is not None else []
        parts += [f"atol={self.atol:g}"] if self.atol else []
        parts += [f"tolerance_factor={self.factor:g}"] if self.factor != 1.0 else []
        return "set by the caller: " + ", ".join(parts)


_OVERRIDE: contextvars.ContextVar[Override | None] = contextvars.ContextVar(
    "jax_ref_tolerance_override", default=None
)


def _positive(name: str, x) -> float:
    try:
        v = float(x)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number; got {type(x).__name__} {x!r}") from None
    if not (math.isfinite(v) and v >= 0):
        raise ValueError(f"{name} must be a finite number >= 0; got {x!r}")
    return v


def override_from(rtol=None, atol=None, tolerance_factor=None) -> Override | None:
    """The `Override` a check's `rtol`, `atol` and `tolerance_factor` arguments ask for (None
    when none is given); a ValueError naming the argument that is not a number >= 0 (a
    factor must be > 0: 0 would pass nothing and judge nothing)."""
    if rtol is None and atol is None and tolerance_factor is None:
        return None
    o = Override(
        rtol=None if rtol is None else _positive("rtol", rtol),
        atol=0.0 if atol is None else _positive("atol", atol),
        factor=1.0 if tolerance_factor is None else _positive("tolerance_factor", tolerance_factor),
    )
    if o.factor == 0:
        raise ValueError("tolerance_factor must be > 0; got 0")
    return o


@contextlib.contextmanager
def overridden(o: Override | None):
    """Within: `tolerance`, `budget_tolerance` and `absolute_allowance` answer with `o`."""
    token = _OVERRIDE.set(o)
    try:
        yield o
    finally:
        _OVERRIDE.reset(token)


def rel_error(got, want, scale: float = 0.0) -> tuple[float, float, tuple[int, ...]]:
    """(max_abs_err, norm-wise rel err, index of the largest |got - want|) in float64.

    The error is relative to max(max|want|, max|got|, `scale`): pass the natural scale of
    the computation (jax_ref.scales) where cancellation makes the result smaller than the
    numbers its rounding came from.

    A NaN or inf anywhere in `got` or `want` is an infinite error at its index, NaN against
    NaN included (NaN is never agreement); so is inf against inf: a non-finite gradient
    never passes. (`jax_ref.verdict.compare` sets aside the oracle's non-finite entries
    first: there the oracle cannot judge.)"""
    got = np.asarray(got, dtype=np.float64)
    want = np.asarray(want, dtype=np.float64)
    with np.errstate(invalid="ignore", over="ignore"):  # inf - inf: handled just below
        diff = np.abs(got - want)
    if diff.size and np.isfinite(diff).all():  # then got and want are finite: one pass each
        idx = np.unravel_index(int(np.argmax(diff)), diff.shape)
        max_abs = float(diff[idx])
        scale = max(float(np.max(np.abs(got))), float(np.max(np.abs(want))), float(scale))
        rel = 0.0 if max_abs == 0.0 else (max_abs / scale if scale > 0 else np.inf)
        return max_abs, rel, tuple(int(i) for i in idx)
    odd = ~(np.isfinite(got) & np.isfinite(want))
    diff = np.where(odd, np.inf, diff)
    if diff.size == 0:
        return 0.0, 0.0, ()
    idx = np.unravel_index(int(np.argmax(diff)), diff.shape)
    max_abs = float(diff[idx])
    finite = np.concatenate([np.abs(got[np.isfinite(got)]), np.abs(want[np.isfinite(want)])])
    scale = max(float(finite.max(initial=0.0)), float(scale))
    if max_abs == 0.0:
        rel = 0.0
    elif not np.isfinite(max_abs) or scale == 0.0:
        rel = np.inf
    else:
        rel = max_abs / scale
    return max_abs, rel, tuple(int(i) for i in idx)
