"""Hypothesis strategies for gradient tests: the ones handgrad's own tests use.

    from hypothesis import given
    from jax_ref import strategies as hs

    @given(hs.mlp_cases())
    def test_my_grads(case):
        jax_ref.assert_gradients(my_loss, my_grads, case.params, case.X, case.y, case.reg)

Strategies draw structural knobs (shape, dtype, scale, kinks, reg) and a seed, and build
the arrays with `jax_ref.cases`; they shrink towards small shapes and mild values.
Edge shapes (N = 1, C = 1, D = 1, H = 1, square H = C and N = C) are drawn often, not left
to chance. Needs the `dev` extra (hypothesis).
"""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from jax_ref.cases import EDGE_DIMS, LOGIT_SCALES, LogitsCase, MLPCase, logits_case, mlp_case

__all__ = [
    "DTYPES",
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


def bucketed_dims(buckets=EDGE_DIMS) -> st.SearchStrategy[tuple[int, int, int, int]]:
    """(N, D, H, C) from a fixed list: jit compiles once per shape, so a test suite that
    reuses a few shapes (every edge among them) compiles a few times, not per example."""
    return st.sampled_from(buckets)


@st.composite
def logits_cases(
    draw, *, max_side: int = 8, dims=None, dtypes=dtypes(), scales=LOGIT_SCALES
) -> LogitsCase:
    """(z (N, C), y (N,)), |z| from 1e-6 to 1e4. `dims` (a strategy of (N, D, H, C))
    fixes the shapes; by default N and C are drawn, N = C a third of the time."""
    if dims is not None:
        N, _, _, C = draw(dims)
    else:
        N = draw(sides(max_side=max_side))
        C = draw(st.one_of(st.just(N), sides(max_side=max_side)))
    return logits_case(draw(seeds()), N, C, draw(dtypes), draw(st.sampled_from(scales)))


@st.composite
def mlp_cases(
    draw,
    *,
    max_side: int = 6,
    dims=None,
    dtypes=dtypes(),
    kinks=st.booleans(),
    regs=st.sampled_from((0.0, 0.0, 0.1, 1.0)),
    x_scales=st.sampled_from((1.0, 1.0, 0.1, 10.0)),
    w_scales=st.sampled_from((1.0, 1.0, 0.01, 30.0)),
) -> MLPCase:
    """(params, X, y, reg) for the two-layer MLP; w_scale 30 drives the logits to ~1e3.
    `dims` (a strategy of (N, D, H, C)) fixes the shapes, e.g. `bucketed_dims()`."""
    N, D, H, C = draw(dims if dims is not None else random_dims(max_side=max_side))
    return mlp_case(
        draw(seeds()), N, D, H, C, draw(dtypes),
        x_scale=draw(x_scales), w_scale=draw(w_scales), kinks=draw(kinks), reg=draw(regs),
    )
