"""The derivation ledger: every step of every registered derivation's `CHAINS` evaluated
on random inputs, compared with the previous step and with autodiff, its shape checked
against its shape line, and its behaviour recorded at extreme logits (inputs scaled 1e4).

    entries = run_ledger(seed=0)
    first_wrong(entries)  # None, or the first step that goes wrong
"""

from __future__ import annotations

import dataclasses
import functools
import re
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from handgrad.ledger import Step
from jax_ref.runtime import enable_x64
from jax_ref.spec import Derivation, Ledger
from jax_ref.tolerances import rel_error, tolerance

__all__ = ["LedgerEntry", "first_wrong", "run_ledger"]


@dataclasses.dataclass(frozen=True)
class LedgerEntry:
    derivation: str
    chain: str
    step: str
    equation: str
    shape: str  # the derivation's shape line
    actual_shape: list[list[int]]  # one shape per leaf of the step's value
    shape_ok: bool
    max_abs_err: float  # against autodiff
    rel_err: float
    vs_previous: float | None  # rel err against the previous step (None for the first)
    tolerance: float
    extreme_finite: bool  # finite at logits ~1e4?
    extreme_rel_err: float  # against autodiff at logits ~1e4 (inf when not finite)
    passed: bool

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _shape_of(line: str, dims: dict[str, int]) -> tuple[int, ...]:
    """The result shape of a seed shape line: its first group, letters resolved."""
    first = re.match(r"\(([^)]*)\)", line).group(1)
    return tuple(dims[t.strip()] for t in first.split(",") if t.strip())


def _operands_ok(line: str) -> bool:
    """For a product line '(R) = (A)·(B)', check the operands' letters agree on the inner
    dimension and give the result: the derivation's shape equation itself."""
    groups = re.findall(r"\(([^)]*)\)", line)
    if len(groups) != 3:
        return True
    r, a, b = ([t.strip() for t in g.split(",")] for g in groups)
    return a[-1] == b[0] and [a[0], b[-1]] == r


# --- the ledger -----------------------------------------------------------------------


def _shape_ok(line: str, got, dims: dict[str, int]) -> bool:
    """The value's shape(s) against the step's shape line: one group for an array, a
    product `(R) = (A)·(B)` (the operands' inner letters must agree too), or one group
    per leaf of a tuple."""
    leaves = jax.tree.leaves(got)
    if "=" in line:
        return (
            len(leaves) == 1
            and tuple(leaves[0].shape) == _shape_of(line, dims)
            and _operands_ok(line)
        )
    groups = re.findall(r"\(([^)]*)\)", line)
    want = [tuple(dims[t.strip()] for t in g.split(",") if t.strip()) for g in groups]
    return [tuple(x.shape) for x in leaves] == want


def _tree_error(got, want, scale: float) -> tuple[float, float]:
    """(max abs err, norm-wise rel err) over the leaves of two pytrees, worst leaf."""
    errs = [rel_error(g, w, scale)[:2] for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want))]
    return max(e[0] for e in errs), max(e[1] for e in errs)


def _all_finite(tree) -> bool:
    return all(bool(np.all(np.isfinite(np.asarray(x)))) for x in jax.tree.leaves(tree))


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _evaluate(spec: Ledger, chain: str, steps: tuple[Step, ...], x: dict):
    """Every step of a chain and autodiff's answer for it, in one compilation."""
    return [(step.fn(x), spec.autodiff(chain, step.name, x)) for step in steps]


def _chain_entries(d: Derivation, chain: str, steps, seed: int, inputs) -> list[LedgerEntry]:
    """One chain's steps, each against autodiff (and, in an equality chain, the step
    before), its shape line, and at logits ~1e4."""
    spec = d.ledger
    rng = np.random.default_rng(seed)
    x, xe = spec.inputs(chain, rng, 1.0, **inputs), spec.inputs(chain, rng, 1e4, **inputs)
    letters, tol = spec.letters(x), tolerance(jnp.float64)
    scale, scale_e = spec.scale(chain, x), spec.scale(chain, xe)
    outs = _evaluate(spec, chain, tuple(steps), x)
    outs_e = _evaluate(spec, chain, tuple(steps), xe)
    entries, prev = [], None
    for step, (got, want), (got_e, want_e) in zip(steps, outs, outs_e):
        abs_err, rel = _tree_error(got, want, scale)
        # equality chains compare each form with the one before; other chains' lines
        # are different quantities, each checked against autodiff alone
        vs_prev = None
        if prev is not None and chain in spec.equalities:
            vs_prev = _tree_error(got, prev, scale)[1]
        shape_ok = _shape_ok(step.shape, got, letters)
        entries.append(
            LedgerEntry(
                derivation=d.name,
                chain=chain,
                step=step.name,
                equation=step.equation,
                shape=step.shape,
                actual_shape=[list(leaf.shape) for leaf in jax.tree.leaves(got)],
                shape_ok=shape_ok,
                max_abs_err=abs_err,
                rel_err=rel,
                vs_previous=vs_prev,
                tolerance=tol,
                extreme_finite=_all_finite(got_e),
                extreme_rel_err=_tree_error(got_e, want_e, scale_e)[1],
                passed=bool(shape_ok and rel <= tol and (vs_prev is None or vs_prev <= tol)),
            )
        )
        prev = got
    return entries


def run_ledger(
    seed: int = 0,
    derivations: list[Derivation] | None = None,
    chains: dict[str, list[Step]] | None = None,
    **inputs,
) -> list[LedgerEntry]:
    """Every step of every chain of every derivation, evaluated in float64.

    `chains` replaces the chains of the (single) derivation given, to try a variant;
    `inputs` go to the derivation's input builder (e.g. `dims=(3, 3, 3, 3)`)."""
    from jax_ref.derivations import REGISTRY

    derivations = list(REGISTRY.values()) if derivations is None else list(derivations)
    if chains is not None and len(derivations) != 1:
        raise ValueError("chains replaces one derivation's chains: pass derivations=[d]")
    entries: list[LedgerEntry] = []
    with enable_x64():
        for d in derivations:
            for chain, steps in (chains or d.module.CHAINS).items():
                entries += _chain_entries(d, chain, steps, seed, inputs)
    return entries


def first_wrong(entries: list[LedgerEntry]) -> LedgerEntry | None:
    """The first step, in chain order, that does not hold."""
    return next((e for e in entries if not e.passed), None)
