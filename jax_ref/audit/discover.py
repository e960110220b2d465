"""Every public callable of the audited modules, as a `Candidate` (its dotted name and the
function), or a skip with its reason (a class, a constant, a module, random, ...)."""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import types
from collections.abc import Callable

__all__ = ["DEFAULT_MODULES", "Candidate", "discover"]

DEFAULT_MODULES = (
    "jax.numpy",
    "jax.numpy.linalg",
    "jax.numpy.fft",
    "jax.nn",
    "jax.scipy.special",
    "jax.scipy.stats",
    "jax.scipy.linalg",
    "jax.lax",
    "jax.lax.linalg",
    "jax.experimental.pallas.ops",  # the Pallas ops that run on a CPU (interpret mode)
)

# names whose output does not depend differentiably on a float input, or that need what
# an audit of derivatives cannot give: the reason is the skip's
NOT_DIFFERENTIABLE = {
    "random": "random (needs a key)",
    "key": "random (needs a key)",
    "argmax": "integer-valued",
    "argmin": "integer-valued",
    "argsort": "integer-valued",
    "argwhere": "integer-valued",
    "nonzero": "integer-valued",
    "flatnonzero": "integer-valued",
    "searchsorted": "integer-valued",
    "digitize": "integer-valued",
    "bincount": "integer-valued",
    "count_nonzero": "integer-valued",
    "sign": "piecewise constant: derivative 0 wherever it exists",
    "floor": "piecewise constant: derivative 0 wherever it exists",
    "ceil": "piecewise constant: derivative 0 wherever it exists",
    "round": "piecewise constant: derivative 0 wherever it exists",
    "rint": "piecewise constant: derivative 0 wherever it exists",
    "trunc": "piecewise constant: derivative 0 wherever it exists",
    "fix": "piecewise constant: derivative 0 wherever it exists",
    "heaviside": "piecewise constant: derivative 0 wherever it exists",
    "one_hot": "piecewise constant: derivative 0 wherever it exists",
    "stop_gradient": "its derivative is 0 by design",
    "reduce_precision": "rounds: its derivative is 0 wherever it exists, its rule the identity"
    " by design",
}
PREFIX_SKIPS = {
    "is": "boolean-valued",
    "bitwise_": "integer-valued",
    "logical_": "boolean-valued",
    "array_": "boolean-valued or structural",
    "can_cast": "not a numeric function",
    "iinfo": "not a numeric function",
    "finfo": "not a numeric function",
    "result_type": "not a numeric function",
    "promote_types": "not a numeric function",
    "issubdtype": "not a numeric function",
    "dtype": "not a numeric function",
    "get_printoptions": "not a numeric function",
    "set_printoptions": "not a numeric function",
    "printoptions": "not a numeric function",
    "load": "I/O",
    "save": "I/O",
    "from": "constructs arrays from other objects",
}


@dataclasses.dataclass(frozen=True)
class Candidate:
    """A public callable: its dotted name, the function, or why it is skipped."""

    name: str
    fn: Callable | None
    skip: str = ""


def _members(modname):
    mod = importlib.import_module(modname)
    for attr in sorted(dir(mod)):
        if attr.startswith("_"):
            continue
        try:
            yield attr, getattr(mod, attr)
        except Exception:  # a lazy attribute that fails to load: JAX's, not ours to judge
            continue


def _skip_reason(attr, obj) -> str:
    if isinstance(obj, types.ModuleType):
        return "a module"
    if isinstance(obj, type):
        return "a class or dtype"
    if not callable(obj):
        return "not callable (a constant)"
    if attr in NOT_DIFFERENTIABLE:
        return NOT_DIFFERENTIABLE[attr]
    for prefix, why in PREFIX_SKIPS.items():
        if attr.startswith(prefix):
            return why
    if "random" in getattr(obj, "__module__", "") or "key" in attr:
        return "random (needs a key)"
    return ""


def _stats_modules(modname):
    """jax.scipy.stats's distributions: each a module of logpdf, cdf, ..."""
    mod = importlib.import_module(modname)
    return [
        f"{modname}.{a}"
        for a in sorted(dir(mod))
        if isinstance(getattr(mod, a), types.ModuleType) and not a.startswith("_")
    ]


def discover(modules=DEFAULT_MODULES) -> list[Candidate]:
    """Every public callable of `modules` (dotted names; jax.scipy.stats goes into its
    distributions), each once by its first dotted name: candidates and skips."""
    from jax_ref.audit.pallas import PALLAS_MODULE, pallas_candidates

    out, seen = [], set()
    for modname in modules:
        if modname == PALLAS_MODULE:
            out += [Candidate(n, fn, why) for n, fn, why in pallas_candidates()]
            continue
        names = [modname] + (_stats_modules(modname) if modname == "jax.scipy.stats" else [])
        for m in names:
            for attr, obj in _members(m):
                full = f"{m}.{attr}"
                if isinstance(obj, types.ModuleType):
                    continue  # submodules are audited by their own names
                key = id(obj) if callable(obj) and not isinstance(obj, type) else full
                if key in seen:
                    continue
                seen.add(key)
                if not callable(obj):
                    continue  # constants: not functions, not counted
                why = _skip_reason(attr, obj)
                out.append(Candidate(full, None if why else obj, why))
    return out


def signature_arity(fn) -> tuple[int, list[str]]:
    """(required positional parameters, their names), or (-1, []) when unknown."""
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return -1, []
    req = [
        p.name
        for p in params
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty
    ]
    return len(req), req
