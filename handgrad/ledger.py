"""A derivation's steps, executable: the type every derivation module's `CHAINS` holds.

A chain is a list of `Step`s, each one line of the derivation as it is written on paper.
In an equality chain every step computes the same quantity in a new form; `jax_ref.ledger`
evaluates each, compares it with the previous step and with autodiff, and checks its
shape line. The last step of every chain is the shipped function itself, so the ledger
ends on the code that runs, not on a copy of it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

__all__ = ["Step"]


class Step(NamedTuple):
    """One line of a derivation.

    `shape` is the line's shape in the glossary's letters: one group for an array
    (`"(N, C)"`), a product `"(R) = (A)·(B)"` whose inner letters must agree, or several
    groups `"(D, H), (H,)"` for a tuple of arrays. `fn` takes the chain's named inputs
    (a dict) and returns the line's value."""

    name: str
    equation: str
    shape: str
    fn: Callable[[dict], Any]
