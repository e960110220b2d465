"""Every check call, told to whoever listens (`with listening(records.append): ...`): how
a test session's checks become a report (handgrad_cli.pytest_plugin listens).

`check_*` and `assert_*` run through `run_check`: the caller's tolerance set and stamped on
every result, then a record (a dict) told: `call`, `subject` (the user's function, by
name), `case` (inputs' dtypes and shapes), `tolerance_set`, `asserted`, `raised` (an
AssertionError), `error` (the user's code or input raised: the message, naming which
function), `results` (`to_dict()` each); for `check_*`, `judged` turns True when the
caller reads the verdict (`.status`, `jax_ref.verdict`). No listener, nothing built.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jax_ref.tolerances import overridden, override_from
from jax_ref.trees import error_text
from jax_ref.verdict import CheckResult, assert_verdict, unwatch, watch

__all__ = ["case_of", "listening", "run_check", "subject_of"]

_LISTENERS: list[Callable[[dict], None]] = []


@contextlib.contextmanager
def listening(listener: Callable[[dict], None]):
    """Within: `listener(record)` after every check call (see the module's docstring)."""
    _LISTENERS.append(listener)
    try:
        yield listener
    finally:
        _LISTENERS.remove(listener)
        if not _LISTENERS:
            unwatch()  # nobody left to tell whether results were read


def subject_of(*fns) -> str:
    """The user's functions by name ("my_loss / my_grad"), as a report names them."""
    names = []
    for f in fns:
        name = getattr(f, "__qualname__", None) or getattr(f, "__name__", None)
        if name is None and hasattr(f, "func"):  # functools.partial
            name = f"partial({subject_of(f.func)})"
        names.append(name or type(f).__name__)
    return " / ".join(names)


def case_of(tree) -> str:
    """The inputs in a few words: each array leaf's dtype and shape."""
    parts = []
    for x in jax.tree.leaves(tree):
        try:
            parts.append(f"{jnp.result_type(x).name}{list(np.shape(x))}")
        except TypeError:  # not an array: named by its type
            parts.append(type(x).__name__)
    return " ".join(parts) or "-"


def _emit(record: dict) -> None:
    for listener in list(_LISTENERS):
        listener(record)


def run_check(
    call: str,
    subject: str,
    inputs,
    body: Callable[[], list[CheckResult]],
    *,
    rtol=None,
    atol=None,
    tolerance_factor=None,
    assert_what: str | None = None,
    allow_inconclusive: bool = False,
) -> list[CheckResult]:
    """`body()` under the caller's tolerance, its results stamped with it; with
    `assert_what`, `assert_verdict` on them. Each listener is told (module docstring)."""
    override = override_from(rtol, atol, tolerance_factor)
    record: dict[str, Any] = {
        "call": call,
        "subject": subject,
        "case": case_of(inputs) if _LISTENERS else "",
        "tolerance_set": override.describe() if override else "",
        "asserted": assert_what is not None,
        "allow_inconclusive": bool(allow_inconclusive),
        "raised": False,
        "error": None,
        "results": [],
    }
    try:
        with overridden(override):
            results = body()
    except Exception as e:  # the user's code or input raised: told as theirs, re-raised
        if _LISTENERS:
            _emit({**record, "error": error_text(e)})
        raise
    if override is not None:
        results = [dataclasses.replace(r, tolerance_set=override.describe()) for r in results]
    if _LISTENERS:
        record["results"] = [r.to_dict() for r in results]
    if assert_what is None:
        _emit(record)
        if _LISTENERS:
            watch(results, record)  # record["judged"]: the caller asked for their verdict
        return results
    try:
        assert_verdict(results, assert_what, allow_inconclusive)
    except AssertionError:
        _emit({**record, "raised": True})
        raise
    _emit(record)
    return results
