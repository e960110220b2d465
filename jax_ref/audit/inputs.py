"""A function's inputs, found by trial from a table of argument kinds and domains (data,
not one function per case), and the points it is audited at: the ordinary one, and the
points where rules go wrong (zeros, ties, integers and half-integers, negative arguments,
tiny and large magnitudes; for matrices the identity, repeated eigenvalues, near-singular).
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jax_ref.audit.discover import signature_arity
from jax_ref.runtime import enable_x64
from jax_ref.trees import error_text, is_float

__all__ = [
    "DOMAINS", "FLAGS", "SPECIAL_VALUES", "Setup", "find_inputs", "flag_variants", "points",
    "real_view", "usable", "with_flags",
]  # fmt: skip

# (name, low, high): uniform draws, tried in this order until the forward pass is finite
DOMAINS = (
    ("unit", 0.2, 0.8),  # probabilities, arcsin, logit, betainc's x
    ("positive", 1.2, 2.6),  # gamma functions, logs, shape parameters
    ("mixed", -1.8, 1.8),
    ("negative", -2.6, -1.2),
)
# required parameters that take an integer (or a static tuple), by name; the rest get
# float arrays, or float scalars where named in SCALAR_PARAMS
INT_PARAMS = {
    "axis": 0,
    "n": 2,
    "k": 1,
    "N": 3,
    "num": 3,
    "shift": 1,
    "repeats": 2,
    "reps": (2,),
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
    "axes": (0,),
    "dimensions": (0,),
    "permutation": (0,),
    "broadcast_dimensions": (0,),
    "start_indices": (1,),
    "limit_indices": (3,),
    "slice_sizes": (2,),
    "padding_config": ((1, 1, 0),),
    "dimension_numbers": (((0,), (0,)), ((), ())),
    "exponent_bits": 5,
    "mantissa_bits": 10,
    "kth": 1,
    "deg": 2,
    "offset": 0,
    "m": 3,
    "order": 2,
    "__int": 1,  # an integer parameter found by trial
}
SCALAR_PARAMS = ("padding_value", "fill_value")
# the points where rules go wrong, in one vector: zeros, integers, half-integers, negative
# arguments (integer and half-integer), tiny and large magnitudes
SPECIAL_VALUES = (0.0, 1.0, 2.0, 0.5, 1.5, -0.5, -1.0, -1.5, -2.5, 1e-8, 30.0)
MATRIX_WORDS = (
    "linalg", "cholesky", "eig", "svd", "qr", "lu", "solve", "inv", "det", "expm", "sqrtm",
    "schur", "hessenberg", "polar", "tridiagonal", "triangular", "funm", "logm", "cho_",
    "lstsq", "pinv", "matrix_", "norm", "cond", "slogdet", "trace",
)  # fmt: skip


def _mask(x):
    """A where= mask like x: every third element left out (some True, some False)."""
    return jnp.asarray(np.arange(np.size(x)).reshape(np.shape(x)) % 3 != 1)


def _weights(x):
    return jnp.asarray(0.5 + np.arange(np.size(x)).reshape(np.shape(x)) % 3)


# optional arguments that change what a rule must do: (parameter, the values audited
# besides its default); a callable value is made from the first float input (a mask)
FLAGS = {
    "where": (_mask,),
    "b": (_weights,),
    "ddof": (1,),
    "reverse": (True,),
    "descending": (True,),
    "return_sign": (True,),
    "full_matrices": (False,),
    "compute_uv": (False,),
    "hermitian": (True,),
    "symmetrize_input": (False,),
    "approximate": (False,),
    "is_causal": (True,),
    "ord": (1, 2, -1, -2, np.inf, -np.inf, "fro", "nuc", 0, 3),
    "method": ("lower", "higher", "nearest", "midpoint"),
    "mode": ("same", "valid", "r", "complete"),
    "norm": ("ortho", "forward"),
    "initial": (0.5,),
}
MAX_FLAG_VALUES = 4  # per parameter: the audit's time, bounded


def flag_variants(fn) -> list[tuple[str, dict]]:
    """[(label, kwargs)]: each FLAGS parameter fn takes, at each value but its default."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return []
    out = []
    for p, values in FLAGS.items():
        if p not in params or params[p].default is inspect.Parameter.empty:
            continue
        default = params[p].default
        vals = [v for v in values if callable(v) or not _same(v, default)][:MAX_FLAG_VALUES]
        for v in vals:
            label = f"{p}={getattr(v, '__name__', v)}".replace("=_mask", "=mask")
            out.append((label.replace("=_weights", "=weights"), {p: v}))
    return out


def _same(a, b) -> bool:
    try:
        return bool(a == b) and type(a) is type(b)
    except (TypeError, ValueError):  # an array default against a value: not the same
        return False


def with_flags(fn, kwargs):
    """fn with the flag arguments set (a mask made from the first input)."""

    def g(*a):
        kw = {k: (v(a[0]) if callable(v) else v) for k, v in kwargs.items()}
        return fn(*a, **kw)

    return g


@dataclasses.dataclass
class Setup:
    """How to call a function: `g(*floats)` with its integer arguments held, the float
    arguments at the ordinary point, the domain they came from, matrix or vector."""

    g: Callable
    floats: tuple
    domain: tuple
    matrix: bool
    complex_g: Callable | None = None  # g of (real parts..., imaginary parts...)
    scalars: tuple = ()  # which floats are scalars (held at special points)
    shaped: bool = False  # arrays of given shapes (a kernel's blocks): specials in the first
    dtypes: tuple = ("float64", "float32")  # the dtypes it runs in


def _wants_matrix(name) -> bool:
    short = name.rsplit(".", 1)[-1]
    return any(w in name for w in ("linalg.",)) or any(short.startswith(w) for w in MATRIX_WORDS)


def _draw(domain, matrix, seed, scalar=False):
    _, lo, hi = domain
    rng = np.random.default_rng(seed)
    if scalar:
        return rng.uniform(lo, hi)
    if not matrix:
        return rng.uniform(lo, hi, 4)
    m = rng.uniform(lo, hi, (3, 3))
    return m @ m.T / 3 + np.eye(3) * abs(hi)  # symmetric positive definite, well conditioned


def _held(fn, names, n):
    """g(*floats) -> fn with the integer parameters (by name) put back in their places;
    and which floats are scalars (by name)."""
    slots = [INT_PARAMS.get(nm) for nm in names] if names else [None] * n
    slots += [None] * (n - len(slots))
    names = list(names) + [""] * (n - len(names))
    scalars = tuple(nm in SCALAR_PARAMS for nm, s in zip(names, slots) if s is None)

    def g(*floats):
        it = iter(floats)
        return fn(*[next(it) if s is None else s for s in slots])

    return real_view(g), scalars


def real_view(g):
    """g with each complex output as its (real, imaginary) parts: the rules of a complex
    function are judged through them (the parts are linear; their rules are exact)."""

    def split(o):
        return (jnp.real(o), jnp.imag(o)) if jnp.iscomplexobj(o) else o

    return lambda *xs: jax.tree.map(split, g(*xs))


def _complex_view(g, n):
    """g of n complex inputs, as a function of 2n real ones (real parts, imaginary parts)."""
    return lambda *a: g(*[a[i] + 1j * a[n + i] for i in range(n)])


def usable(g, floats) -> str:
    """ "" if g runs at floats with float, finite outputs and a JVP; else why not."""
    try:
        out = g(*floats)
        leaves = jax.tree.leaves(out)
    except Exception as e:  # JAX's function refuses these arguments: try the next ones
        return f"raised {error_text(e)}"
    if not leaves or not all(is_float(o) for o in leaves):
        return "integer or boolean output"
    if not all(np.all(np.isfinite(np.asarray(o))) for o in leaves):
        return "not finite at any trial input"
    try:
        jax.jvp(g, floats, tuple(jnp.ones_like(x) for x in floats))
    except Exception as e:  # no forward rule: a reverse one (a custom_vjp) may still be
        try:
            jax.vjp(g, *floats)
        except Exception:  # no derivative rule at all: the first error says why
            return f"not differentiable (jax.jvp raised {error_text(e)})"
    return ""


def _name_lists(fn, n, names):
    """The argument layouts tried: by name (integer parameters held), then with the
    first one a float array whatever its name (tril(m)), then with the last ones held at
    an integer in turn (a `shift` or an `axis` under another name)."""
    arities = [n] if n > 0 else [1, 2, 3]
    for arity in arities:
        base = list(names) if n > 0 else [f"arg{i}" for i in range(arity)]
        for held in range(0, max(arity - 1, 0) + 1):
            yield arity, base[: arity - held] + ["__int"] * held
            if base and base[0] in INT_PARAMS and arity - held > 0:
                yield arity, ["arg0"] + base[1 : arity - held] + ["__int"] * held


def find_inputs(name, fn) -> Setup | str:
    """The first (layout, domain, shape) at which fn runs finite and differentiable, or
    the reason none does (the first trial's): vectors first, then 3x3 matrices (fft2,
    diagonal) unless the name says matrix. Complex inputs are tried where it runs."""
    n, names = signature_arity(fn)
    wants = _wants_matrix(name)
    first = ""
    with enable_x64():
        for matrix in (True,) if wants else (False, True):
            for arity, nm in _name_lists(fn, n, names):
                g, scalars = _held(fn, nm, arity)
                if not scalars:
                    first = first or "takes no float argument"
                    continue
                for domain in DOMAINS:
                    floats = tuple(
                        jnp.asarray(_draw(domain, matrix, 7 + i, sc))
                        for i, sc in enumerate(scalars)
                    )
                    why = usable(g, floats)
                    if not why:
                        return Setup(
                            g, floats, domain, matrix, _complex(g, floats, scalars), scalars
                        )
                    first = first or why
    return first or "no trial input"


def _complex(g, floats, scalars):
    """g of complex inputs (as real and imaginary parts) where it runs finite and
    differentiable at complex points off the real axis, else None."""
    if any(scalars):
        return None
    gc = _complex_view(g, len(floats))
    ims = _imaginary_parts(floats)
    return gc if not usable(gc, floats + ims) else None


def points(setup: Setup) -> list[tuple[str, tuple, Callable]]:
    """[(kind, floats, g)]: the ordinary point, then the special ones (kept only where
    the function runs there: its forward pass may be NaN at some elements, not all),
    then a complex point off the real axis where the function takes complex inputs."""
    g = setup.g
    out = [("ordinary", setup.floats, g)]
    if setup.shaped:
        x = setup.floats[0]
        sv = jnp.resize(jnp.asarray(SPECIAL_VALUES, x.dtype), x.shape)
        return [*out, ("special values in the first", _put(setup.floats, 0, sv), g)]
    if setup.matrix:
        eye = np.eye(3)
        specials = {
            "identity": eye,
            "repeated eigenvalues": np.diag([2.0, 2.0, 1.0]),
            # rank one plus distinct tiny eigenvalues: near-singular, not degenerate
            "near-singular": np.outer([1.0, 2.0, 3.0], [1.0, 2.0, 3.0]) / 14
            + np.diag([1e-8, 2e-8, 3e-8]),
        }
        for kind, m in specials.items():
            xs = tuple(x if sc else jnp.asarray(m) for x, sc in _with_scalars(setup))
            out.append((kind, xs, g))
        return out
    sv = jnp.asarray(SPECIAL_VALUES)
    arrays = [i for i, sc in enumerate(_scalar_flags(setup)) if not sc]
    if len(arrays) == 1:
        xs = tuple(sv if i in arrays else x for i, x in enumerate(setup.floats))
        out.append(("special values", xs, g))
    elif arrays:
        base = tuple(x if sc else jnp.resize(x, sv.shape) for x, sc in _with_scalars(setup))
        first, last = arrays[0], arrays[-1]
        ties = tuple(sv if i in arrays else x for i, x in enumerate(base))
        out.append(("special values, ties", ties, g))
        out.append(("special values in the first", _put(base, first, sv), g))
        out.append(("special values in the last", _put(base, last, sv), g))
    if setup.complex_g is not None:
        ims = _imaginary_parts(setup.floats)
        out.append(("complex", setup.floats + ims, setup.complex_g))
    return out


def _imaginary_parts(floats):
    """Imaginary parts for a complex point off the real axis (where branch cuts lie)."""
    rng = np.random.default_rng(11)
    return tuple(jnp.asarray(rng.uniform(-0.9, 0.9, np.shape(x))) for x in floats)


def _scalar_flags(setup):
    return setup.scalars or (False,) * len(setup.floats)


def _with_scalars(setup):
    return zip(setup.floats, _scalar_flags(setup))


def _put(xs, i, v):
    return tuple(v if k == i else x for k, x in enumerate(xs))
