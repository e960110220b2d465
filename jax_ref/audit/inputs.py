"""A function's inputs, found by trial from a table of argument kinds and domains (data,
not one function per case), and the points it is audited at: the ordinary one, and the
points where rules go wrong (zeros, ties, integers and half-integers, negative arguments,
tiny and large magnitudes; for matrices the identity, repeated eigenvalues, near-singular).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jax_ref.audit.discover import signature_arity
from jax_ref.runtime import enable_x64
from jax_ref.trees import error_text, is_float

__all__ = ["DOMAINS", "SPECIAL_VALUES", "Setup", "find_inputs", "points"]

# (name, low, high): uniform draws, tried in this order until the forward pass is finite
DOMAINS = (
    ("unit", 0.2, 0.8),  # probabilities, arcsin, logit, betainc's x
    ("positive", 1.2, 2.6),  # gamma functions, logs, shape parameters
    ("mixed", -1.8, 1.8),
    ("negative", -2.6, -1.2),
)
# required parameters that take an integer, by name (the rest get float arrays)
INT_PARAMS = {
    "axis": 0,
    "n": 2,
    "k": 1,
    "N": 3,
    "num": 3,
    "shift": 1,
    "repeats": 2,
    "reps": 2,
    "indices": np.array([0, 2]),
    "dimension": 0,
    "shape": (4,),
    "newshape": (4,),
    "new_sizes": (4,),
    "sizes": (4,),
    "index": 0,
    "source": 0,
    "destination": 0,
    "axis1": 0,
    "axis2": 0,
    "dimensions": (0,),
    "exponent_bits": 5,
    "mantissa_bits": 10,
    "kth": 1,
    "deg": 2,
    "offset": 0,
    "m": 3,
    "order": 2,
    "__int": 1,  # an integer parameter found by trial
}
# the points where rules go wrong, in one vector: zeros, integers, half-integers, negative
# arguments (integer and half-integer), tiny and large magnitudes
SPECIAL_VALUES = (0.0, 1.0, 2.0, 0.5, 1.5, -0.5, -1.0, -1.5, -2.5, 1e-8, 30.0)
MATRIX_WORDS = (
    "linalg", "cholesky", "eig", "svd", "qr", "lu", "solve", "inv", "det", "expm", "sqrtm",
    "schur", "hessenberg", "polar", "tridiagonal", "triangular", "funm", "logm", "cho_",
    "lstsq", "pinv", "matrix_", "norm", "cond", "slogdet", "trace",
)  # fmt: skip


@dataclasses.dataclass
class Setup:
    """How to call a function: `g(*floats)` with its integer arguments held, the float
    arguments at the ordinary point, the domain they came from, matrix or vector."""

    g: Callable
    floats: tuple
    domain: tuple
    matrix: bool


def _wants_matrix(name) -> bool:
    short = name.rsplit(".", 1)[-1]
    return any(w in name for w in ("linalg.",)) or any(short.startswith(w) for w in MATRIX_WORDS)


def _draw(domain, matrix, seed):
    _, lo, hi = domain
    rng = np.random.default_rng(seed)
    if not matrix:
        return rng.uniform(lo, hi, 4)
    m = rng.uniform(lo, hi, (3, 3))
    return m @ m.T / 3 + np.eye(3) * abs(hi)  # symmetric positive definite, well conditioned


def _held(fn, names, n):
    """g(*floats) -> fn with the integer parameters (by name) put back in their places."""
    slots = [INT_PARAMS.get(nm) for nm in names] if names else [None] * n
    slots += [None] * (n - len(slots))

    def g(*floats):
        it = iter(floats)
        return fn(*[next(it) if s is None else s for s in slots])

    return g, sum(s is None for s in slots)


def _usable(g, floats) -> str:
    """ "" if g runs at floats with float, finite outputs and a JVP; else why not."""
    try:
        out = g(*floats)
        leaves = jax.tree.leaves(out)
    except Exception as e:  # JAX's function refuses these arguments: try the next ones
        return f"raised {error_text(e)}"
    if not leaves or not all(is_float(o) and not jnp.iscomplexobj(o) for o in leaves):
        return "integer, boolean or complex output"
    if not all(np.all(np.isfinite(np.asarray(o))) for o in leaves):
        return "not finite at any trial input"
    try:
        jax.jvp(g, floats, tuple(jnp.ones_like(x) for x in floats))
    except Exception as e:  # JAX has no derivative rule for it
        return f"not differentiable (jax.jvp raised {error_text(e)})"
    return ""


def find_inputs(name, fn) -> Setup | str:
    """The first (arity, domain) at which fn runs finite and differentiable, or the reason
    none does (the first trial's). Unnamed integer parameters are found by trial too: the
    last ones held at 1 in turn (a `shift`, an `axis` under another name)."""
    n, names = signature_arity(fn)
    arities = [n] if n > 0 else [1, 2, 3]
    matrix, first = _wants_matrix(name), ""
    with enable_x64():
        for arity in arities:
            base = list(names) if n > 0 else [f"arg{i}" for i in range(arity)]
            for held in range(0, max(arity - 1, 0) + 1):  # the last `held` params as ints
                nm = base[: arity - held] + ["__int"] * held
                g, nf = _held(fn, nm, arity)
                if nf == 0:
                    return first or "takes no float argument"
                for domain in DOMAINS:
                    floats = tuple(jnp.asarray(_draw(domain, matrix, 7 + i)) for i in range(nf))
                    why = _usable(g, floats)
                    if not why:
                        return Setup(g, floats, domain, matrix)
                    first = first or why
    return first or "no trial input"


def points(setup: Setup) -> list[tuple[str, tuple]]:
    """[(kind, floats)]: the ordinary point, then the special ones (kept only where the
    function runs there: its forward pass may be NaN at some elements, not all)."""
    out = [("ordinary", setup.floats)]
    if setup.matrix:
        eye = np.eye(3)
        specials = {
            "identity": eye,
            "repeated eigenvalues": np.diag([2.0, 2.0, 1.0]),
            "near-singular": np.outer([1.0, 2.0, 3.0], [1.0, 2.0, 3.0]) / 14 + 1e-8 * eye,
        }
        for kind, m in specials.items():
            out.append((kind, tuple(jnp.asarray(m) for _ in setup.floats)))
        return out
    sv = jnp.asarray(SPECIAL_VALUES)
    if len(setup.floats) == 1:
        return [*out, ("special values", (sv,))]
    base = tuple(jnp.resize(x, sv.shape) for x in setup.floats)
    out.append(("special values, ties", tuple(sv for _ in setup.floats)))
    out.append(("special values in the first", (sv, *base[1:])))
    out.append(("special values in the last", (*base[:-1], sv)))
    return out
