"""The registry: every module in this package that defines `DERIVATION` is a derivation
the tools walk, in `order`. Adding a derivation adds a module here; nothing else in
`jax_ref` changes (see docs/adding-a-derivation.md)."""

from __future__ import annotations

import importlib
import pkgutil

from jax_ref.spec import Derivation

__all__ = ["REGISTRY", "get"]


def _discover() -> dict[str, Derivation]:
    found = []
    for info in pkgutil.iter_modules(__path__):
        module = importlib.import_module(f"{__name__}.{info.name}")
        spec = getattr(module, "DERIVATION", None)
        if isinstance(spec, Derivation):
            found.append(spec)
    found.sort(key=lambda d: (d.order, d.name))
    return {d.name: d for d in found}


REGISTRY: dict[str, Derivation] = _discover()


def get(name: str) -> Derivation:
    """The derivation called `name`, or a ValueError listing the known ones."""
    if name not in REGISTRY:
        raise ValueError(f"derivation must be one of {list(REGISTRY)}; got {name!r}")
    return REGISTRY[name]
