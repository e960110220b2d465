"""The kill matrix: every registered derivation's mutants against its properties.

A mutant (`jax_ref.spec.Mutant`) is the shipped public functions with one shipped piece
swapped for a plausible wrong one (`jax_ref.spec.implementation(d, swaps)`): no copy of
the math. A property kills a mutant when, on some case of the derivation's sweep, it
raises AssertionError or an exception class the mutant's entry names (a shape error from
a transposed product, say). Any other exception is a harness error, never a kill: a bug
in a property must not pass for power. A mutant that no property kills is a hole.
"""

from __future__ import annotations

import dataclasses
import traceback
from collections.abc import Callable, Iterable

import numpy as np

from jax_ref.spec import Derivation, Mutant, implementation

__all__ = ["KillRow", "kill_matrix", "kill_rows", "row_dict"]


@dataclasses.dataclass
class KillRow:
    derivation: str
    mutant: Mutant
    kills: dict[str, str | None]  # property -> the first case that killed it, or None
    errors: dict[str, str]  # property -> a harness error (not a kill)

    @property
    def killed(self) -> bool:
        return any(self.kills.values())


def _run(prop, impl, case, mutant: Mutant) -> tuple[bool, str | None]:
    """(killed, harness error)."""
    try:
        prop(impl, case)
    except AssertionError as e:
        first = str(e).splitlines()[0][:160] if str(e) else ""
        return True, f"AssertionError: {first}"
    except mutant.raises as e:  # an empty tuple catches nothing
        return True, type(e).__name__
    except Exception as e:  # a fault in the property: a harness error, never a kill
        where = traceback.extract_tb(e.__traceback__)[-1]
        raise _HarnessError(f"{type(e).__name__}: {e} ({where.filename}:{where.lineno})") from e
    return False, None


class _HarnessError(Exception):
    pass


def kill_matrix(
    derivations: Iterable[Derivation],
    *,
    seed: int = 0,
    random_cases: int = 0,
    mutants: Iterable[str] | None = None,
    properties: Iterable[str] | None = None,
    stop_at_first: bool = False,
    must_kill_only: bool = False,
    dtypes=(np.float64,),
    on_mutant: Callable[[Derivation, Mutant], None] | None = None,
) -> list[KillRow]:
    """One row per mutant of each derivation: which of its properties kill it, and on
    which case first. `mutants` / `properties` restrict by name; with `stop_at_first` a
    row stops at its first kill (enough to know the mutant is caught); with
    `must_kill_only` each mutant meets only the properties its entry says must kill it.
    Cases are float64 by default: a mistake in the math shows there, where rounding hides
    nothing (a float32 computation inside a float64 call included). `on_mutant` is called
    after each row (a progress display)."""
    rows: list[KillRow] = []
    only = None if mutants is None else set(mutants)
    for d in derivations:
        all_names = (
            list(d.properties)
            if properties is None
            else [p for p in properties if p in d.properties]
        )
        cases = d.cases(seed, dtypes=dtypes, random_cases=random_cases)
        for m in d.mutants:
            if only is not None and m.name not in only:
                continue
            names = [p for p in all_names if not must_kill_only or p in m.must_kill]
            impl = implementation(d, m.swaps)
            row = KillRow(d.name, m, dict.fromkeys(names), {})
            for case, tag in cases:
                for pname in names:
                    if row.kills[pname] is not None or pname in row.errors:
                        continue
                    try:
                        killed, how = _run(d.properties[pname], impl, case, m)
                    except _HarnessError as e:
                        row.errors[pname] = f"{tag}: {e}"
                        continue
                    if killed:
                        row.kills[pname] = f"{tag}: {how}"
                        if stop_at_first:
                            break
                if stop_at_first and row.killed:
                    break
                if all(row.kills[p] is not None or p in row.errors for p in names):
                    break
            rows.append(row)
            if on_mutant is not None:
                on_mutant(d, m)
    return rows


def row_dict(r: KillRow) -> dict:
    """A kill-matrix row as plain data (JSON, or across processes)."""
    killers = {p: tag for p, tag in r.kills.items() if tag}
    return {
        "derivation": r.derivation,
        "name": r.mutant.name,
        "description": r.mutant.description,
        "reveals": r.mutant.reveals,
        "killed": bool(killers),
        "killed_by": sorted(killers),
        "must_kill": list(r.mutant.must_kill),
        "missed": [p for p in r.mutant.must_kill if p not in killers],
        "first_kill": next(iter(killers.values()), None),
        "harness_errors": dict(r.errors),
    }


def kill_rows(name: str, seed: int = 0, progress=None, cache_dir: str | None = None) -> list:
    """`kill_matrix` of one registered derivation as plain dicts: the work of one process
    when `handgrad mutants` spreads derivations over the cores. `progress` (a queue) gets
    one message per mutant."""
    import jax

    from jax_ref.derivations import get
    from jax_ref.runtime import use_compilation_cache

    jax.config.update("jax_enable_x64", True)
    use_compilation_cache(cache_dir)

    def tick(d, m):
        if progress is not None:
            progress.put(f"{d.name}: {m.name}")

    return [row_dict(r) for r in kill_matrix([get(name)], seed=seed, on_mutant=tick)]
