"""What a derivation's referee spec declares: the types every tool walks.

A derivation is one `handgrad` module (its pieces, public functions and `CHAINS`) and one
spec module in `jax_ref/derivations/` that ends with `DERIVATION = Derivation(...)`. The
sweep (`handgrad check`), the ledger, the mutants, the properties, the reports and the
tests iterate `jax_ref.derivations.REGISTRY`; none of them names a derivation.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from types import ModuleType, SimpleNamespace
from typing import Any

__all__ = ["Derivation", "GradientCheck", "Ledger", "Mutant", "Output", "implementation"]


@dataclasses.dataclass(frozen=True)
class Output:
    """A public function compared with the referee's function of the same name (a
    forward value written independently, or a gradient by `jax.grad` of the referee).

    `args(case)` gives the call's arguments; `scale(case)` the natural error scale of the
    output (a float, or a pytree of floats shaped like the output), jax_ref.tolerances."""

    function: str
    parameter: str | tuple[str, ...]  # the output's name(s) in the derivation, one per leaf
    args: Callable[[Any], tuple]
    scale: Callable[[Any], Any] = lambda case: 0.0
    kwargs: Callable[[Any], dict] = lambda case: {}  # keyword options (static: causal=...)

    def call(self, fn, case):
        return fn(*self.args(case), **self.kwargs(case))


@dataclasses.dataclass(frozen=True)
class GradientCheck:
    """A hand gradient judged by finite differences of the referee's loss as well.

    `function(*args(case))` returns the gradient (or `(loss, gradient)` with
    `returns_loss`), `loss(*args(case))` is the referee's scalar loss; the first argument
    is the one differentiated. `loss_args(case)`, when given, are the loss's arguments
    instead (a VJP `f(dO, Q, K, V)` is the gradient of `⟨dO, O⟩` in `(Q, K, V)`)."""

    function: str
    loss: Callable[..., Any]
    args: Callable[[Any], tuple]
    returns_loss: bool = False
    scale: Callable[[Any], Any] | None = None
    parameter: str | tuple[str, ...] = ""  # the differentiated argument's name(s)
    kwargs: Callable[[Any], dict] = lambda case: {}  # the function's keyword options
    loss_args: Callable[[Any], tuple] | None = None  # the loss's, when not `args`: (params, ...)

    def gradient(self, impl, case):
        out = getattr(impl, self.function)(*self.args(case), **self.kwargs(case))
        return out[1] if self.returns_loss else out

    def loss_arguments(self, case) -> tuple:
        return (self.loss_args or self.args)(case)


@dataclasses.dataclass(frozen=True)
class Mutant:
    """A plausible mistake: the shipped functions with one or more pieces swapped.

    `must_kill` names the properties that exist to catch it (the tests prove each kills
    it); `raises` the exception classes, besides AssertionError, that count as a kill (a
    shape error from a transposed product, say). Any other exception is a harness error."""

    name: str
    description: str
    swaps: dict[str, Callable]
    reveals: str
    must_kill: tuple[str, ...]
    raises: tuple[type[BaseException], ...] = ()


@dataclasses.dataclass(frozen=True)
class Ledger:
    """How the referee runs a derivation's `CHAINS`: the named inputs of a chain at a
    scale (1 and 1e4: extreme logits), autodiff's answer for one step, the glossary's
    letters of the inputs (to check shape lines), and the natural scale of a chain's
    errors (0: relative to the values themselves)."""

    inputs: Callable[..., dict]  # (chain, rng, scale, **kw) -> dict of arrays
    autodiff: Callable[[str, str, dict], Any]  # (chain, step name, inputs) -> value
    letters: Callable[[dict], dict[str, int]]  # inputs -> {"N": 5, "C": 3, ...}
    scale: Callable[[str, dict], float] = lambda chain, x: 0.0
    equalities: tuple[str, ...] = ()  # chains whose steps are all one quantity


@dataclasses.dataclass(frozen=True, eq=False)  # hashed by identity: a static jit argument
class Derivation:
    """One derivation as the referee sees it.

    `cases(seed, dtypes, random_cases)` returns deterministic `(case, tag)` pairs for the
    sweep; `strategy(**kw)` a hypothesis strategy of cases (needs the dev extra);
    `properties` the derivation's own checks, each `(impl, case) -> None` raising
    AssertionError; every derivation also gets the generic `agrees` (every output equals
    the referee's) and `finite_differences` (every gradient against differences of the
    referee's loss), placed first."""

    name: str
    module: ModuleType  # the handgrad module: PIECES, CHAINS, the public functions
    reference: ModuleType  # the spec module: the referee's functions by the same names
    outputs: tuple[Output, ...]
    gradients: tuple[GradientCheck, ...]
    cases: Callable[..., list[tuple[Any, str]]]
    strategy: Callable[..., Any]
    properties: dict[str, Callable[[Any, Any], None]]
    mutants: tuple[Mutant, ...]
    ledger: Ledger
    order: int = 100  # position in reports

    def __post_init__(self):
        from jax_ref import properties as props  # lazy: properties imports this module

        generic = {
            "agrees": props.agrees(self),
            "finite_differences": props.finite_differences(self),
        }
        object.__setattr__(self, "properties", {**generic, **self.properties})

    @property
    def functions(self) -> tuple[str, ...]:
        names = [o.function for o in self.outputs] + [g.function for g in self.gradients]
        return tuple(dict.fromkeys(names))


def implementation(
    derivation: Derivation, swaps: dict[str, Callable] | None = None, module: Any = None
) -> SimpleNamespace:
    """The derivation's public functions as a namespace: handgrad's shipped ones, or with
    `swaps` the same functions built from `PIECES` with those pieces replaced (a mutant),
    or those of another `module` with the same names (a user's implementation)."""
    source = derivation.module if module is None else module
    funcs = {name: getattr(source, name) for name in derivation.functions}
    if swaps:
        pieces = derivation.module.PIECES
        unknown = set(swaps) - set(pieces._fields)
        if unknown:
            raise ValueError(
                f"swaps must name pieces of {derivation.name} "
                f"{list(pieces._fields)}; got {sorted(unknown)}"
            )
        swapped = pieces._replace(**swaps)
        funcs = {n: functools.partial(f, pieces=swapped) for n, f in funcs.items()}
    return SimpleNamespace(**funcs)


def by_name(items: Sequence[Any]) -> dict[str, Any]:
    return {item.name: item for item in items}
