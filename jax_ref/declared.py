"""Checks declared in a user's file (`CHECKS = [GradientCheck(...), RuleCheck(...), ...]`),
as run by `handgrad check FILE.py`: loading the file, running each check, one report.

Both kinds pass on every option their check function takes (`oracles`, `contracts`,
`scales`, `order`, `seed`, `directions`, `max_tries`, `rtol`, `atol`, `tolerance_factor`),
so a declared check is the same check a test would make."""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from jax_ref.gradients import GRADIENT_ORACLES, check_gradients
from jax_ref.record import case_of
from jax_ref.report import assemble_report
from jax_ref.rules import JVP_CONTRACTS, RULE_ORACLES, check_jvp, check_vjp
from jax_ref.trees import error_text
from jax_ref.verdict import CONTRACTS, CheckResult, failed_check

__all__ = ["GradientCheck", "RuleCheck", "load_checks", "run_declared", "run_rule_checks"]


def _lazy(x):
    """A value, or what a callable returns (run only when the check runs)."""
    return x() if callable(x) else x


def _tuple(x) -> tuple:
    return tuple(x) if isinstance(x, (tuple, list)) else (x,)


def _tolerances(c) -> dict:
    return {"rtol": c.rtol, "atol": c.atol, "tolerance_factor": c.tolerance_factor}


def _named(kind: str, name, fields: dict) -> None:
    """A ValueError naming the declared check and the field that is not callable."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"{kind}: name must be a non-empty string; got {name!r}")
    for field, value in fields.items():
        if not callable(value):
            raise ValueError(
                f"{kind} {name!r}: {field} must be a callable; got {type(value).__name__}"
            )


@dataclasses.dataclass(frozen=True)
class RuleCheck:
    """One rule check declared in a user's file (`CHECKS = [RuleCheck(...), ...]`).

    `primals` is a tuple of inputs, or a callable returning one (run only when the check
    runs). `kind` is "vjp" (check_vjp; `rule` is the explicit vjp, if any) or "jvp"
    (check_jvp; `rule` is the explicit jvp). Every other field is passed on as the check
    function's argument of that name (None: its default). `directions` and `scales` are
    check_vjp's only."""

    name: str
    f: Callable[..., Any]
    primals: Any
    kind: str = "vjp"
    rule: Callable[..., Any] | None = None
    reference: Callable[..., Any] | None = None
    order: int = 1
    seed: int = 0
    oracles: Sequence[str] = RULE_ORACLES
    contracts: Sequence[str] | None = None  # default: every contract of the kind
    directions: int = 2
    max_tries: int = 12
    scales: dict[str, float] | None = None
    rtol: float | None = None
    atol: float | None = None
    tolerance_factor: float | None = None

    def __post_init__(self):
        if self.kind not in ("vjp", "jvp"):
            raise ValueError(
                f"RuleCheck {self.name!r}: kind must be 'vjp' or 'jvp'; got {self.kind!r}"
            )
        _named("RuleCheck", self.name, {"f": self.f})
        if self.kind == "jvp" and self.scales is not None:
            raise ValueError(f"RuleCheck {self.name!r}: scales= is check_vjp's only")

    def args(self) -> tuple:
        return _tuple(_lazy(self.primals))

    def run(self) -> list[CheckResult]:
        primals = self.args()
        common = dict(
            reference=self.reference,
            seed=self.seed,
            order=self.order,
            oracles=self.oracles,
            max_tries=self.max_tries,
            **_tolerances(self),
        )
        if self.kind == "vjp":
            return check_vjp(
                self.f,
                *primals,
                vjp=self.rule,
                contracts=CONTRACTS if self.contracts is None else self.contracts,
                directions=self.directions,
                scales=self.scales,
                **common,
            )
        contracts = JVP_CONTRACTS if self.contracts is None else self.contracts
        return check_jvp(self.f, *primals, jvp=self.rule, contracts=contracts, **common)

    def case(self) -> str:
        """The inputs in a few words: shapes and dtypes."""
        return f"{self.kind} {case_of(self.args())}"


@dataclasses.dataclass(frozen=True)
class GradientCheck:
    """One hand gradient declared in a user's file: `check_gradients(loss_fn, grad_fn,
    params, *args, ...)` with every option of it as a field.

    `params` is a pytree of float arrays, or a callable returning one; `args` a tuple of the
    other inputs (or one input), or a callable returning them (run only when the check
    runs)."""

    name: str
    loss_fn: Callable[..., Any]
    grad_fn: Callable[..., Any]
    params: Any
    args: Any = ()
    returns_loss: bool = False
    seed: int = 0
    oracles: Sequence[str] = GRADIENT_ORACLES
    directions: int = 2
    max_tries: int = 12
    scales: Any = None
    loss_scale: float = 0.0
    rtol: float | None = None
    atol: float | None = None
    tolerance_factor: float | None = None

    def __post_init__(self):
        _named("GradientCheck", self.name, {"loss_fn": self.loss_fn, "grad_fn": self.grad_fn})

    def inputs(self) -> tuple:
        return (_lazy(self.params), *_tuple(_lazy(self.args)))

    def run(self) -> list[CheckResult]:
        params, *args = self.inputs()
        return check_gradients(
            self.loss_fn,
            self.grad_fn,
            params,
            *args,
            seed=self.seed,
            oracles=self.oracles,
            returns_loss=self.returns_loss,
            directions=self.directions,
            max_tries=self.max_tries,
            scales=self.scales,
            loss_scale=self.loss_scale,
            **_tolerances(self),
        )

    def case(self) -> str:
        return f"gradient {case_of(self.inputs())}"


DECLARED = (GradientCheck, RuleCheck)


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


def load_checks(target: str) -> tuple[str, list]:
    """The `CHECKS` a user's file (PATH.py) or module (a.b.c) declares: (its name, checks).
    Raises ValueError saying what is wrong with it (no traceback for the CLI to show)."""
    checks = getattr(_import(target), "CHECKS", None)
    what = "jax_ref.GradientCheck(name, loss_fn, grad_fn, params, ...) or RuleCheck(name, f, ...)"
    if checks is None:
        raise ValueError(f"{target} defines no CHECKS: a list of {what}")
    checks = list(checks) if isinstance(checks, (list, tuple)) else None
    if not checks:
        raise ValueError(f"{target}: CHECKS must be a non-empty list of {what}")
    odd = [(i, c) for i, c in enumerate(checks) if not isinstance(c, DECLARED)]
    if odd:
        i, c = odd[0]
        raise ValueError(f"{target}: CHECKS[{i}] is a {type(c).__name__}; expected {what}")
    names = [c.name for c in checks]
    if len(set(names)) != len(names):
        raise ValueError(f"{target}: two checks share a name; names must be unique")
    stem = os.path.splitext(os.path.basename(target))[0] if target.endswith(".py") else target
    return stem, checks


def run_declared(source: str, checks: list, on_check=None) -> dict:
    """Every declared check, as one report (jax_ref.report.assemble_report). A check that
    raises (a rule, f, loss, gradient or reference that errs at these inputs) is a failed
    result naming the check and what raised."""
    rows = []
    for c in checks:
        try:
            results, case = c.run(), c.case()
        except Exception as e:  # the user's code raised: a failure of that check, said so
            why = f"the check {c.name!r} raised {error_text(e)}"
            what = "rule" if isinstance(c, RuleCheck) else "gradient"
            results, case = [failed_check(what, "structure", why)], "-"
        rows += [
            {"derivation": source, "function": c.name, "case": case, **r.to_dict()} for r in results
        ]
        if on_check is not None:
            on_check(c)
    seed = min((c.seed for c in checks), default=0)
    return assemble_report(seed, [source], rows, [])


run_rule_checks = run_declared  # its former name
