"""What a check found (`CheckResult`) and the one policy that turns results into a verdict.

Every caller asks `verdict(results)`: the assertions, the reports, the command line's exit
codes and the mutants harness. A leaf passes only if some oracle judged it and none failed
it; a contract check passes only if it judged; an empty list is refused.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np

from jax_ref.tolerances import absolute_allowance, current_override, rel_error

__all__ = [
    "CONTRACTS",
    "ORACLES",
    "STATUSES",
    "CheckResult",
    "Verdict",
    "assert_verdict",
    "compare",
    "failed_check",
    "inconclusive_check",
    "judged_by_caller",
    "passed_check",
    "powerless",
    "unwatch",
    "verdict",
    "watch",
]

STATUSES = ("passed", "failed", "inconclusive")
# Oracles judge a leaf's values: `autodiff` (jax.grad of the user's loss or reference),
# `finite_difference` (of the forward pass alone), `referee` (the shipped derivations'
# independent spec). A leaf is judged when any of them judged it.
ORACLES = ("autodiff", "finite_difference", "referee")
# Contract checks judge a rule's behaviour; each is a unit of its own.
CONTRACTS = ("primal", "structure", "jit", "vmap", "composed", "second_order")


@dataclasses.dataclass(frozen=True, kw_only=True)
class CheckResult:
    """One leaf against one oracle (or one contract check).

    Errors are norm-wise relative (jax_ref.tolerances); for finite differences they are
    per direction, relative to the hand directional derivative, and `worst_index` is a
    direction (`index_kind`). `detectable_rel_err` is the smallest error in one element,
    relative to the leaf's largest entry, that this check would have flagged."""

    parameter: str
    oracle: str
    status: str
    note: str = ""
    dtype: str = "-"
    shape: tuple[int, ...] = ()
    max_abs_err: float = math.nan
    max_rel_err: float = math.nan
    tolerance: float = 0.0
    worst_index: tuple[int, ...] = ()
    got: float = math.nan  # the hand value at worst_index
    want: float = math.nan  # the oracle's value there
    detectable_rel_err: float = math.nan
    baseline_err: float | None = None  # precision budgets: the oracle at the result's dtype
    index_kind: str = "element"  # or "direction"
    tolerance_set: str = ""  # a tolerance the caller set (rtol=, atol=, ...): always shown

    def __post_init__(self):
        if self.status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}; got {self.status!r}")

    def __getattribute__(self, name):
        if name == "status" and _WATCHED:  # the caller reads a verdict (see `watch`)
            judged_by_caller((self,))
        return object.__getattribute__(self, name)

    @property
    def passed(self) -> bool:
        return self.status == "passed"

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["shape"], d["worst_index"] = list(self.shape), list(self.worst_index)
        d["passed"] = self.status == "passed"
        return d

    def describe(self) -> str:
        """One line: leaf, oracle, verdict, error against tolerance, worst place, power."""
        head = f"{self.parameter} [{self.oracle}, {self.dtype}{list(self.shape)}]"
        if self.tolerance_set:
            head += f" (tolerance {self.tolerance_set})"
        if self.status == "inconclusive":
            return f"{head} INCONCLUSIVE: {self.note}"
        word = "ok" if self.status == "passed" else "FAILED"
        where = ("direction " if self.index_kind == "direction" else "element ") + (
            str(list(self.worst_index)) if self.worst_index else "(scalar)"
        )
        base = "" if self.baseline_err is None else f", {self.oracle}'s own {self.baseline_err:.3g}"
        return (
            f"{head} {word}: rel err {self.max_rel_err:.3g} vs tolerance "
            f"{self.tolerance:.3g}{base}; worst at {where}: hand {self.got!r}, "
            f"{self.oracle} {self.want!r}; detects >= {self.detectable_rel_err:.2g}"
            + (f" ({self.note})" if self.note else "")
        )


# Results a check call returned, watched while a listener records them (jax_ref.record):
# {id(result): (result, its call's record)}. A test that reads their verdict (`verdict`,
# `.status`, `.passed`, `describe()`) judged them itself; the pytest plugin counts their
# failures as expected when the test then passes.
_WATCHED: dict[int, tuple[CheckResult, dict]] = {}


def watch(results, record: dict) -> None:
    """Mark `record["judged"]` when the caller asks for the verdict of any of `results`."""
    for r in results:
        _WATCHED[id(r)] = (r, record)


def unwatch() -> None:
    _WATCHED.clear()


def judged_by_caller(results) -> None:
    for r in results:
        entry = _WATCHED.get(id(r))
        if entry is not None and entry[0] is r:
            entry[1]["judged"] = True


def passed_check(parameter: str, oracle: str, note: str, **measures) -> CheckResult:
    """A pass with nothing to measure (a contract that holds exactly)."""
    kw = {"max_abs_err": 0.0, "max_rel_err": 0.0, "detectable_rel_err": 0.0, **measures}
    return CheckResult(parameter=parameter, oracle=oracle, status="passed", note=note, **kw)


def failed_check(parameter: str, oracle: str, note: str, **measures) -> CheckResult:
    """A failure that is not a comparison of values (a rule that raised, a wrong shape)."""
    kw = {"max_rel_err": math.inf, **measures}
    return CheckResult(parameter=parameter, oracle=oracle, status="failed", note=note, **kw)


def inconclusive_check(parameter: str, oracle: str, note: str, **measures) -> CheckResult:
    """The oracle could not judge: `note` says why. Its power is none (inf)."""
    kw = {"detectable_rel_err": math.inf, **measures}
    return CheckResult(parameter=parameter, oracle=oracle, status="inconclusive", note=note, **kw)


def compare(name, oracle, got, want, dtype, tol, note="", scale=0.0, partial=False) -> CheckResult:
    """`got` against an oracle's `want` under tolerance `tol`: passed or failed; where the
    oracle's value is not finite, inconclusive (NaN is never agreement), unless the
    elements where it is finite already fail, or (`partial`: a derivative at a point
    where the loss is finite) judge the leaf there."""
    w = np.asarray(want, np.float64)
    odd = ~np.isfinite(w)
    if odd.any():
        return _partly_judged(name, oracle, got, w, odd, dtype, tol, note, scale, partial)
    max_abs, rel, idx = rel_error(got, want, scale)
    g = np.asarray(got, np.float64)
    tol = _with_atol(tol, g, w, scale)
    # detection power relative to the leaf's largest entry: a natural scale above it
    # (errors measured against the scale the rounding lives on) weakens it by that factor
    ok = np.isfinite(w)
    big = float(np.max(np.abs(w if ok.all() else w[ok]), initial=0.0))
    weaken = max(float(scale), big) / big if big > 0 else 1.0
    r = CheckResult(
        parameter=name,
        oracle=oracle,
        status="passed" if rel <= tol else "failed",
        note=note,
        dtype=jnp.dtype(dtype).name,
        shape=tuple(np.shape(want)),
        max_abs_err=max_abs,
        max_rel_err=rel,
        tolerance=tol,
        worst_index=idx,
        got=float(g[idx]) if g.ndim else float(g),
        want=float(w[idx]) if w.ndim else float(w),
        detectable_rel_err=tol * weaken,
    )
    return powerless(r) if r.status == "passed" else r


def _with_atol(tol: float, g, w, scale) -> float:
    """`tol` with the caller's absolute allowance (atol) added in relative terms: the error
    is relative to max(max|got|, max|want|, scale), so |got - want| <= atol + tol x that
    is rel <= tol + atol / that."""
    atol = absolute_allowance()
    if not atol:
        return tol
    ok = np.isfinite(g) & np.isfinite(w) if np.shape(g) == np.shape(w) else np.isfinite(w)
    big = max(
        float(np.max(np.abs(w[ok]), initial=0.0)),
        float(np.max(np.abs(g[ok]), initial=0.0)) if np.shape(g) == np.shape(w) else 0.0,
        float(scale),
    )
    return tol + atol / big if big > 0 else math.inf


def powerless(r: CheckResult) -> CheckResult:
    """A pass that could not have seen a 100 % error in an element (detectable_rel_err
    >= 1) judged nothing: inconclusive, saying so. A failure stands: its error exceeded
    its allowance, whatever the power (a hand gradient of 0 against a real slope)."""
    if r.status != "passed" or not r.detectable_rel_err >= 1:
        return r
    o = current_override()
    if o is not None:
        why = (
            f"this check could not see a 100 % error (it detects >= {r.detectable_rel_err:.3g} "
            f"of the largest entry) under the tolerance {o.describe()}: too loose to judge"
        )
        return dataclasses.replace(
            r, status="inconclusive", note=f"{r.note}; {why}" if r.note else why
        )
    why = (
        f"this check could not see a 100 % error (it detects >= {r.detectable_rel_err:.3g} of "
        "the largest entry): the values are far below the scale their rounding lives on; "
        "if that scale is wrong for this leaf, pass scales= to judge it at its own"
    )
    return dataclasses.replace(r, status="inconclusive", note=f"{r.note}; {why}" if r.note else why)


def _partly_judged(name, oracle, got, w, odd, dtype, tol, note, scale, partial) -> CheckResult:
    """The elements where the oracle is finite judged; the others cannot be."""
    g = np.asarray(got, np.float64)
    if np.shape(g) != np.shape(w):  # no element to set aside: judge as given
        g = np.broadcast_to(g, np.shape(w))
    r = compare(name, oracle, np.where(odd, 0.0, g), np.where(odd, 0.0, w), dtype, tol, "", scale)
    where = f"{int(odd.sum())} of {odd.size} elements"
    if r.status == "failed" or (partial and not odd.all()):
        first = [int(i) for i in np.argwhere(odd)[0]] if odd.ndim else []
        why = (
            f"judged where the {oracle}'s value is finite; not finite at {where} (first "
            f"{first}), not judged there (a singular point: the rule's convention there "
            "is its own)"
        )
        return dataclasses.replace(r, note=f"{note}; {why}" if note else why)
    why = f"the {oracle}'s value is not finite at {where}: it cannot judge there"
    return dataclasses.replace(
        r,
        status="inconclusive",
        detectable_rel_err=math.inf,
        note=f"{why}; {note}" if note else why,
    )


@dataclasses.dataclass(frozen=True)
class Verdict:
    """The verdict over a list of results: the failures, and the units (leaves; contract
    checks, each its own) that something judged and that nothing judged."""

    results: tuple
    failed: tuple
    judged: tuple[str, ...]
    unjudged: tuple[str, ...]

    @property
    def passed(self) -> bool:
        return not self.failed and not self.unjudged

    def ok(self, allow_inconclusive: bool = False) -> bool:
        return not self.failed and (allow_inconclusive or not self.unjudged)

    def counts(self) -> dict[str, int]:
        return {s: sum(_get(r, "status") == s for r in self.results) for s in STATUSES}


def _get(r, key):
    return r[key] if isinstance(r, Mapping) else getattr(r, key)


def unit(r) -> str:
    """What a result judges: its leaf (for an oracle) or its leaf's contract check; a
    report's row is prefixed with its derivation, function and case."""
    name = _get(r, "parameter")
    if isinstance(r, Mapping) and "function" in r:
        name = f"{r['derivation']}: {r['function']} {name} ({r['case']})"
    oracle = _get(r, "oracle")
    return name if oracle in ORACLES else f"{name} [{oracle}]"


def verdict(results: Sequence[CheckResult | Mapping]) -> Verdict:
    """The one verdict policy, over results or report rows (dicts of a result's fields).

    Failed: any failed result. Judged: a unit with a result that is not inconclusive.
    Unjudged: a unit whose every result is inconclusive. An empty list is refused:
    nothing judged is never a pass."""
    results = tuple(results)
    if not results:
        raise ValueError("verdict needs at least one result: nothing judged is never a pass")
    if _WATCHED:
        judged_by_caller(results)
    seen: dict[str, bool] = {}
    for r in results:
        u = unit(r)
        seen[u] = seen.get(u, False) or _get(r, "status") != "inconclusive"
    return Verdict(
        results=results,
        failed=tuple(r for r in results if _get(r, "status") == "failed"),
        judged=tuple(u for u, j in seen.items() if j),
        unjudged=tuple(u for u, j in seen.items() if not j),
    )


def assert_verdict(
    results: Sequence[CheckResult], what: str, allow_inconclusive: bool = False
) -> list[CheckResult]:
    """`results` if their verdict passes; else an AssertionError naming every failed
    result and every unit nothing judged (unless `allow_inconclusive`)."""
    v = verdict(results)
    if v.ok(allow_inconclusive):
        return list(results)
    unjudged = [] if allow_inconclusive else list(v.unjudged)
    shown = list(v.failed) + [
        r for r in results if r.status == "inconclusive" and unit(r) in set(unjudged)
    ]
    msg = f"{len(v.failed)} of {len(results)} {what} checks failed"
    if unjudged:
        msg += (
            f"; {len(unjudged)} no oracle could judge ({', '.join(unjudged)}; "
            "allow_inconclusive=True to accept that)"
        )
    lines = "\n".join("  " + r.describe() for r in shown)
    raise AssertionError(f"{msg}:\n{lines}" + _scale_hint(v.failed))


def _scale_hint(failed) -> str:
    """When every oracle fails a low-precision leaf by a small margin (under 10x its
    tolerance), rounding at a scale above the gradient's own is the likelier cause than a
    wrong formula (a VJP whose terms cancel): say so, and how to tell the check."""
    by_leaf: dict[str, list] = {}
    for r in failed:
        if r.oracle in ORACLES:
            by_leaf.setdefault(r.parameter, []).append(r)
    hints = []
    for leaf, rs in by_leaf.items():
        oracles = {r.oracle for r in rs}
        low = all(r.dtype not in ("float64", "-") for r in rs)
        small = all(r.tolerance > 0 and r.max_rel_err <= 10 * r.tolerance for r in rs)
        if low and small and len(oracles) >= 2:
            hints.append(
                f"\n  {leaf}: every oracle fails it by a small margin (under 10x the tolerance) "
                f"in {rs[0].dtype}: if this gradient is far below the scale its rounding lives "
                f"on (terms that cancel), pass scales={{'{leaf}': that scale}} to judge it there"
            )
    return "".join(hints)
