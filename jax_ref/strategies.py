"""Hypothesis strategies for gradient tests: for any pytree, and handgrad's own.

    @settings(deadline=None)  # the first example of each shape compiles
    @given(hs.arrays_like((params, X)))  # from jax_ref import strategies as hs
    def test_my_grads(drawn):
        jax_ref.assert_gradients(my_loss, my_grads, *drawn)

`arrays_like` draws like a pytree (or shape buckets) with the values that break
derivatives (EDGES); dtypes, seeds, sides, shapes; each shipped derivation's strategy is
re-exported from its spec. Needs the `dev` extra (hypothesis)."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import strategies as st

__all__ = [
    "DTYPES",
    "EDGES",
    "arrays_like",
    "bucketed_dims",
    "dtypes",
    "logits_cases",
    "mlp_cases",
    "random_dims",
    "seeds",
    "sides",
]

DTYPES = (np.float32, np.float64)


def dtypes(*, choices=DTYPES) -> st.SearchStrategy:
    return st.sampled_from(choices)


def seeds() -> st.SearchStrategy[int]:
    return st.integers(min_value=0, max_value=2**31 - 1)


def sides(*, min_side: int = 1, max_side: int = 6) -> st.SearchStrategy[int]:
    """A dimension; the edge value 1 is drawn about a quarter of the time."""
    return st.one_of(st.just(min_side), st.integers(min_value=min_side, max_value=max_side))


@st.composite
def random_dims(draw, *, max_side: int = 6) -> tuple[int, int, int, int]:
    """(N, D, H, C), with square H = C or N = C forced a third of the time."""
    N, D, H, C = (draw(sides(max_side=max_side)) for _ in range(4))
    tie = draw(st.sampled_from(("none", "none", "none", "H=C", "N=C", "N=H=C")))
    if tie == "H=C":
        H = C
    elif tie == "N=C":
        N = C
    elif tie == "N=H=C":
        N = H = C
    return N, D, H, C


def bucketed_dims(buckets) -> st.SearchStrategy[tuple[int, ...]]:
    """Shapes from a fixed list: jit compiles once per shape, so a test suite that
    reuses a few shapes (every edge among them) compiles a few times, not per example."""
    return st.sampled_from(buckets)


# --- any pytree ------------------------------------------------------------------------

# What a float leaf's values may be, per leaf and example (the first is what hypothesis
# shrinks to): each pattern is where some hand derivative goes wrong.
EDGES = (
    "normal",  # N(0, scale²): the generic point
    "zeros",  # some entries exactly 0: 1/x, x·|x|, sqrt, a where(x == 0, ...) branch
    "ties",  # entries equal to each other: max, sort, |x - y|, argmax-based rules
    "kinks",  # some entries exactly at a kink point (`kinks`): relu, abs, clip at a bound
    "large",  # magnitudes up to `magnitudes[1]`: exp overflow, 1 - sigmoid cancellation
    "tiny",  # magnitudes down to `magnitudes[0]`: x / |x|, log of a tiny value, underflow
    "mixed",  # each entry from any of the above
    "tie_across",  # entries equal to the same entries of an earlier leaf of the same shape
)


def _template_leaves(template):
    """(treedef, [(shape, dtype name or None for a leaf kept as given, the leaf)])."""
    import jax
    import jax.numpy as jnp

    leaves, treedef = jax.tree.flatten(template)
    out = []
    for x in leaves:
        shape, dt = tuple(np.shape(x)), jnp.result_type(x) if hasattr(x, "dtype") else None
        if dt is None and isinstance(x, float):
            dt = jnp.result_type(float)
        floating = dt is not None and jnp.issubdtype(dt, jnp.floating)
        out.append((shape, jnp.dtype(dt).name if floating else None, x))
    return treedef, out


def _values(rng, pattern, shape, scale, kinks, magnitudes, earlier):
    """One leaf's float64 values under `pattern` (EDGES)."""
    n = int(np.prod(shape, dtype=np.int64))
    x = rng.normal(size=n) * scale
    some = rng.random(n) < 0.5
    if n:
        some[rng.integers(n)] = True  # at least one entry
    if pattern == "mixed":
        picks = rng.integers(len(EDGES) - 2, size=n)  # neither itself nor tie_across
        parts = [_values(rng, p, shape, scale, kinks, magnitudes, earlier) for p in EDGES[:-2]]
        return np.choose(picks, [p.ravel() for p in parts]).reshape(shape)
    if pattern == "zeros":
        x = np.where(some, 0.0, x)
    elif pattern == "ties":
        distinct = rng.normal(size=int(rng.integers(1, 3))) * scale
        x = np.where(some, distinct[rng.integers(len(distinct), size=n)], x)
    elif pattern == "kinks":
        x = np.where(some, np.asarray(kinks, np.float64)[rng.integers(len(kinks), size=n)], x)
    elif pattern in ("large", "tiny"):
        lo, hi = (
            (0.0, math.log10(magnitudes[1]))
            if pattern == "large"
            else (
                math.log10(magnitudes[0]),
                0.0,
            )
        )
        mag = 10.0 ** rng.uniform(lo, hi, size=n)
        x = np.where(some, np.sign(rng.normal(size=n)) * mag * scale, x)
    elif pattern == "tie_across" and earlier is not None:
        x = np.where(some, earlier.ravel(), x)
    return x.reshape(shape)


def arrays_like(
    *templates,
    dtypes=None,
    edges: bool = True,
    kinks=(0.0,),
    scale: float = 1.0,
    magnitudes=(1e-30, 1e6),
) -> st.SearchStrategy:
    """Pytrees like `templates[0]`, or like one of several (shape buckets: jit compiles
    once per bucket; shrinks toward the first). A template's leaves (arrays,
    `jax.ShapeDtypeStruct`s, floats) give structure, shapes, dtypes; float leaves are
    drawn, others (labels, masks) kept. `dtypes`: None keeps each leaf's; a sequence
    (float32, float64, bfloat16, ...) draws one per example for all. With `edges`, each
    float leaf follows a pattern of EDGES (zeros, ties within or across leaves, exact
    `kinks`, large/tiny `magnitudes` × `scale` clipped to the dtype), else N(0, scale²).
    Values come from a drawn seed: a failure shrinks to "normal" and seed 0."""
    if not templates:
        raise ValueError("arrays_like needs at least one template pytree")
    lo, hi = magnitudes
    if not (0 < lo < 1 < hi and math.isfinite(hi)):
        raise ValueError(
            f"magnitudes must be (tiny, large) with 0 < tiny < 1 < large; got {magnitudes}"
        )
    if not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"scale must be a finite number > 0; got {scale!r}")
    kinks = tuple(float(k) for k in kinks) or (0.0,)
    parsed = [_template_leaves(t) for t in templates]
    structures = {str(treedef) for treedef, _ in parsed}
    if len(structures) > 1:
        raise ValueError("arrays_like: the templates (shape buckets) must share one tree structure")
    patterns = EDGES if edges else EDGES[:1]
    dtype_choice = st.just(None) if dtypes is None else st.sampled_from(tuple(dtypes))

    @st.composite
    def draw(draw_):
        treedef, leaves = parsed[draw_(st.integers(0, len(parsed) - 1))]
        dt_all = draw_(dtype_choice)
        rng = np.random.default_rng(draw_(seeds()))
        out, seen = [], {}
        for shape, dt, x in leaves:
            if dt is None:
                out.append(x)
                continue
            pattern = draw_(st.sampled_from(patterns))
            values = _values(rng, pattern, shape, scale, kinks, (lo, hi), seen.get(shape))
            seen.setdefault(shape, values)
            out.append(_cast(values, dt if dt_all is None else dt_all))
        import jax

        return jax.tree.unflatten(treedef, out)

    return draw()


def _cast(values, dtype):
    """float64 values in `dtype`, clipped to its finite range (a "large" draw stays finite)."""
    import jax.numpy as jnp

    big = float(jnp.finfo(dtype).max) / 4
    return jnp.asarray(np.clip(values, -big, big), dtype)


from jax_ref.derivations.mlp import mlp_cases  # noqa: E402  (re-exported)
from jax_ref.derivations.softmax_ce import logits_cases  # noqa: E402
