"""Checks declared in a user's file (`CHECKS = [RuleCheck(...), ...]`), as run by
`handgrad check FILE.py`: loading the file, running each check, one report."""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import os
import sys
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jax_ref.report import assemble_report
from jax_ref.rules import check_jvp, check_vjp
from jax_ref.trees import error_text
from jax_ref.verdict import CheckResult, failed_check

__all__ = ["RuleCheck", "load_checks", "run_rule_checks"]


@dataclasses.dataclass(frozen=True)
class RuleCheck:
    """One rule check declared in a user's file (`CHECKS = [RuleCheck(...), ...]`).

    `primals` is a tuple of inputs, or a callable returning one (run only when the check
    runs). `kind` is "vjp" (check_vjp; `rule` is the explicit vjp, if any) or "jvp"
    (check_jvp; `rule` is the explicit jvp). `reference`, `order` and `seed` are passed on."""

    name: str
    f: Callable[..., Any]
    primals: Any
    kind: str = "vjp"
    rule: Callable[..., Any] | None = None
    reference: Callable[..., Any] | None = None
    order: int = 1
    seed: int = 0

    def __post_init__(self):
        if self.kind not in ("vjp", "jvp"):
            raise ValueError(
                f"RuleCheck {self.name!r}: kind must be 'vjp' or 'jvp'; got {self.kind!r}"
            )
        if not callable(self.f):
            raise ValueError(
                f"RuleCheck {self.name!r}: f must be a callable; got {type(self.f).__name__}"
            )

    def args(self) -> tuple:
        p = self.primals() if callable(self.primals) else self.primals
        return tuple(p) if isinstance(p, (tuple, list)) else (p,)

    def run(self) -> list[CheckResult]:
        primals = self.args()
        if self.kind == "vjp":
            return check_vjp(
                self.f,
                *primals,
                vjp=self.rule,
                reference=self.reference,
                seed=self.seed,
                order=self.order,
            )
        return check_jvp(self.f, *primals, jvp=self.rule, reference=self.reference, seed=self.seed)

    def case(self) -> str:
        """The inputs in a few words: shapes and dtypes."""
        parts = [
            f"{jnp.result_type(x).name}{list(np.shape(x))}" for x in jax.tree.leaves(self.args())
        ]
        return f"{self.kind} " + " ".join(parts)


def _import(target: str):
    """The module a PATH.py or a dotted name names; ValueError saying what went wrong."""
    if not (target.endswith(".py") or os.sep in target):
        try:
            return importlib.import_module(target)
        except Exception as e:  # the user's module raised on import: theirs to fix
            raise ValueError(f"cannot import module {target!r}: {error_text(e)}") from e
    if not os.path.isfile(target):
        raise ValueError(f"no such file: {target}")
    name = "handgrad_checks_" + os.path.splitext(os.path.basename(target))[0]
    spec = importlib.util.spec_from_file_location(name, target)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as e:  # the user's file raised on import: theirs to fix
        raise ValueError(f"{target} raised while importing: {error_text(e)}") from e
    return module


def load_checks(target: str) -> tuple[str, list[RuleCheck]]:
    """The `CHECKS` a user's file (PATH.py) or module (a.b.c) declares: (its name, checks).
    Raises ValueError saying what is wrong with it (no traceback for the CLI to show)."""
    checks = getattr(_import(target), "CHECKS", None)
    if checks is None:
        raise ValueError(
            f"{target} defines no CHECKS: a list of jax_ref.RuleCheck(name, f, primals, ...)"
        )
    checks = list(checks) if isinstance(checks, (list, tuple)) else None
    if not checks or not all(isinstance(c, RuleCheck) for c in checks):
        raise ValueError(f"{target}: CHECKS must be a non-empty list of jax_ref.RuleCheck")
    names = [c.name for c in checks]
    if len(set(names)) != len(names):
        raise ValueError(f"{target}: two checks share a name; names must be unique")
    stem = os.path.splitext(os.path.basename(target))[0] if target.endswith(".py") else target
    return stem, checks


def run_rule_checks(source: str, checks: list[RuleCheck], on_check=None) -> dict:
    """Every declared check, as one report (jax_ref.report.assemble_report). A check that
    raises (a rule, f or reference that errs at these inputs) is a failed result naming
    the check."""
    rows = []
    for c in checks:
        try:
            results, case = c.run(), c.case()
        except Exception as e:  # the user's code raised: a failure of that check, said so
            why = f"the check {c.name!r} raised {error_text(e)}"
            results, case = [failed_check("rule", "structure", why)], "-"
        rows += [
            {"derivation": source, "function": c.name, "case": case, **r.to_dict()} for r in results
        ]
        if on_check is not None:
            on_check(c)
    seed = min((c.seed for c in checks), default=0)
    return assemble_report(seed, [source], rows, [])
