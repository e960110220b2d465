"""Shared bits of the tests: the shape buckets and the implementation under test."""

import numpy as np
from hypothesis import strategies as st

import handgrad
from jax_ref import strategies as hs
from jax_ref.cases import EDGE_DIMS
from jax_ref.properties import impl_of

HAND = impl_of(handgrad)

# Every edge shape (N = 1, C = 1, D = 1, H = 1, H = C, N = C) plus a generic one: the
# suite compiles each (shape, dtype) once instead of once per example.
DIMS = hs.bucketed_dims(EDGE_DIMS)
LOGITS = hs.logits_cases(dims=DIMS)
MLP = hs.mlp_cases(dims=DIMS)
MLP64 = hs.mlp_cases(dims=DIMS, dtypes=st.just(np.float64))
