"""`handgrad check` for the shipped derivations: every registered derivation's public
functions over its deterministic cases, every oracle, then the derivation ledger, as one
report (a dict shaped like gradcheck.json)."""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import jax
import numpy as np

from jax_ref.autodiff import golden_value, judge
from jax_ref.gradients import check_gradients
from jax_ref.ledger import run_ledger
from jax_ref.properties import leaf_names, scales_like
from jax_ref.report import assemble_report
from jax_ref.runtime import use_compilation_cache
from jax_ref.spec import Derivation, implementation
from jax_ref.tolerances import budget
from jax_ref.verdict import CheckResult

__all__ = ["assemble", "check_derivation", "derivation_rows", "module_rows", "run_check"]

ORACLE = "referee"  # the shipped derivations' independent spec


def _row(d: Derivation, function: str, case: str, r: CheckResult) -> dict[str, Any]:
    return {"derivation": d.name, "function": function, "case": case, **r.to_dict()}


# The sweep's programs run once, on small cases: compiled for speed of compiling (LLVM's
# optimisation level 0 takes ~20% off the cold sweep, docs/architecture.md); IEEE results
# are the same at every level (no fast-math), and the verdicts with them.
QUICK_COMPILE = {"xla_backend_optimization_level": 0}


@functools.partial(jax.jit, static_argnums=0, compiler_options=QUICK_COMPILE)
def _both(d: Derivation, case):
    """Every output of `d`, hand and referee, in one compilation per (shape, dtype)."""
    hand = implementation(d)
    return [
        (o.call(getattr(hand, o.function), case), o.call(getattr(d.reference, o.function), case))
        for o in d.outputs
    ]


def _golden(d: Derivation, case):
    """The referee's outputs in float64 at the same point, or (None, why). Through
    `_both`: the float64 sweep has compiled it already when the shapes match."""
    return golden_value(
        lambda c: [jax.tree.leaves(want) for _, want in _both(d, c)], case, what="the referee"
    )


def check_derivation(d: Derivation, case, tag: str) -> list[dict[str, Any]]:
    """Rows for one case: each output against the referee, each gradient against finite
    differences of the referee's loss. A float32 (or 16-bit) output is judged by the
    precision budget: against the referee in float64 at the same point, within k x the
    referee's own error at that dtype plus a floor (jax_ref.tolerances.BUDGETS)."""
    dtype = next(
        np.asarray(x).dtype
        for x in jax.tree.leaves(case)
        if np.issubdtype(np.asarray(x).dtype, np.floating)
    )
    golden, why = _golden(d, case) if budget(dtype) is not None else (None, "")
    rows, values = [], {}
    for i, (o, (got, want)) in enumerate(zip(d.outputs, _both(d, case))):
        values[o.function] = got
        leaves_got, leaves_want = jax.tree.leaves(got), jax.tree.leaves(want)
        scales = scales_like(want, o.scale(case))
        gold = [None] * len(leaves_want) if golden is None else golden[i]
        for name, g, w, s, gd in zip(
            leaf_names(o.parameter, want), leaves_got, leaves_want, scales, gold
        ):
            r = judge(name, g, w, gd, dtype, s, why, oracle=ORACLE)
            rows.append(_row(d, o.function, tag, r))
    hand = implementation(d)
    for g in d.gradients:
        if g.function in values:
            grads = values[g.function][1] if g.returns_loss else values[g.function]
        else:
            grads = g.gradient(hand, case)
        results = check_gradients(
            g.loss,
            lambda *_, grads=grads: grads,
            *g.loss_arguments(case),
            oracles=("finite_difference",),
            scales=None if g.scale is None else g.scale(case),
        )
        for r in results:
            if isinstance(g.parameter, tuple) and r.parameter.isdigit():
                r = dataclasses.replace(r, parameter=g.parameter[int(r.parameter)])
            elif g.parameter and r.parameter == "value":
                r = dataclasses.replace(r, parameter=g.parameter)
            rows.append(_row(d, g.function, tag, r))
    return rows


def run_check(
    seed: int = 0,
    dtypes=(np.float64, np.float32),
    examples: int = 2,
    derivations: list[Derivation] | None = None,
    on_case=None,
) -> dict:
    """Every registered derivation (or those given) over its sweep: edge shapes,
    `examples` random shapes, each dtype; then the ledger."""
    from jax_ref.derivations import REGISTRY

    derivations = list(REGISTRY.values()) if derivations is None else list(derivations)
    checks: list[dict] = []
    for d in derivations:
        for case, tag in d.cases(seed, dtypes=dtypes, random_cases=examples):
            checks += check_derivation(d, case, tag)
            if on_case is not None:
                on_case(d, tag)
    ledger = [e.to_dict() for e in run_ledger(seed, derivations)]
    return assemble(seed, derivations, checks, ledger)


def derivation_rows(
    name: str,
    seed: int,
    dtypes,
    examples: int,
    cache_dir: str | None = None,
    part: int = 0,
    parts: int = 1,
) -> tuple[list[dict], list[dict]]:
    """One registered derivation's check rows and ledger entries, as plain data: the work
    of one process when `handgrad check` spreads the sweep over the cores. With `parts`,
    only the `part`-th contiguous share of the cases (neighbours share a shape, so a
    float32 case finds its float64 golden compiled), and the ledger with part 0. Each
    derivation's cases and ledger inputs come from its own seeded generators, so the rows,
    parts concatenated in order, are those of a serial `run_check`."""
    jax.config.update("jax_enable_x64", True)
    use_compilation_cache(cache_dir)
    from jax_ref.derivations import get

    d = get(name)
    cases = d.cases(seed, dtypes=dtypes, random_cases=examples)
    lo, hi = part * len(cases) // parts, (part + 1) * len(cases) // parts
    checks: list[dict] = []
    for case, tag in cases[lo:hi]:
        checks += check_derivation(d, case, tag)
    return checks, [e.to_dict() for e in run_ledger(seed, [d])] if part == 0 else []


def module_rows(module: str, seed: int, dtype_names, examples: int, cache_dir, part, parts):
    """`derivation_rows` of the derivation a spec module (jax_ref/derivations/MODULE.py)
    declares, as (its name, check rows, ledger entries), or (None, [], []) for a module
    that declares none: what `handgrad check` submits
    before it has imported the registry itself."""
    import importlib

    spec = getattr(importlib.import_module(f"jax_ref.derivations.{module}"), "DERIVATION", None)
    if spec is None:  # a helper module of the specs, not a derivation
        return None, [], []
    name = spec.name
    dtypes = tuple(np.dtype(n).type for n in dtype_names)
    return (name, *derivation_rows(name, seed, dtypes, examples, cache_dir, part, parts))


def below_resolution(row: dict) -> bool:
    """A referee comparison within its tolerance that could not have seen a 100 % error:
    the referee's values sit wholly below the rounding of the scale they are computed on
    (softmax_jacobian at saturated logits: entries ~1e-21 under probabilities' rounding
    1e-16). No float computation resolves them: the case carries no check of the output."""
    return (
        row["oracle"] == ORACLE
        and row["status"] == "inconclusive"
        and row["max_rel_err"] is not None
        and math.isfinite(row["max_rel_err"])
        and row["max_rel_err"] <= row["tolerance"]
        and not row["detectable_rel_err"] < 1
    )


def assemble(seed: int, derivations, checks: list[dict], ledger: list[dict]) -> dict:
    """The report of `run_check` from its rows (in registry order). Rows below the
    resolution of their output's scale are listed apart (`below_resolution`), not
    counted: at that case the output has nothing a check could see."""
    apart = [c for c in checks if below_resolution(c)]
    kept = [c for c in checks if not below_resolution(c)]
    report = assemble_report(seed, [d.name for d in derivations], kept, ledger)
    report["below_resolution"] = apart
    return report
