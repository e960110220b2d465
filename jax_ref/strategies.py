"""Hypothesis strategies for gradient tests: the ones handgrad's own tests use.

    @settings(deadline=None)  # the first example of each shape compiles
    @given(hs.mlp_cases())    # from jax_ref import strategies as hs
    def test_my_grads(case):
        jax_ref.assert_gradients(my_loss, my_grads, *case)

Generic building blocks here (dtypes, seeds, sides, shapes); each derivation's strategy
lives in its spec and is re-exported below. Needs the `dev` extra (hypothesis).
"""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

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


def bucketed_dims(buckets) -> st.SearchStrategy[tuple[int, ...]]:
    """Shapes from a fixed list: jit compiles once per shape, so a test suite that
    reuses a few shapes (every edge among them) compiles a few times, not per example."""
    return st.sampled_from(buckets)


from jax_ref.derivations.mlp import mlp_cases  # noqa: E402  (re-exported)
from jax_ref.derivations.softmax_ce import logits_cases  # noqa: E402
