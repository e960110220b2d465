"""`jax_ref.strategies.arrays_like`: pytrees drawn like a template (or shape buckets), with
the values that break derivatives; each edge pattern shown by a wrong gradient that only it
catches (the same property with `edges=False` lets it through)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings

import jax_ref
from jax_ref import strategies as hs

SEARCH = settings(max_examples=60, derandomize=True, database=None, deadline=None)


def _draws(strategy, n=80):
    out = []

    @settings(max_examples=n, derandomize=True, database=None, deadline=None)
    @given(strategy)
    def collect(x):
        out.append(x)

    collect()
    return out


def test_structure_shapes_dtypes_and_buckets():
    small = {"W": jnp.zeros((2, 3)), "b": jnp.zeros(3), "y": jnp.array([0, 2])}
    big = {"W": jnp.zeros((5, 3)), "b": jnp.zeros(3), "y": jnp.array([0, 1, 2, 1, 0])}
    draws = _draws(hs.arrays_like(small, big, dtypes=(np.float32, np.float64)))
    for d in draws:
        assert jax.tree.structure(d) == jax.tree.structure(small)
        assert d["W"].shape in ((2, 3), (5, 3)) and d["b"].shape == (3,)
        assert d["W"].dtype == d["b"].dtype and d["y"].dtype == small["y"].dtype
        assert np.all(np.isfinite(np.asarray(d["W"], np.float64)))
        assert d["y"] is small["y"] or d["y"] is big["y"]  # integer leaves kept as given
    assert {d["W"].shape for d in draws} == {(2, 3), (5, 3)}  # both buckets
    assert {d["W"].dtype.name for d in draws} == {"float32", "float64"}
    own = _draws(hs.arrays_like((jax.ShapeDtypeStruct((4,), jnp.bfloat16), 1.0)), n=10)
    assert all(d[0].dtype == jnp.bfloat16 and d[1].shape == () for d in own)


def test_every_edge_is_drawn():
    draws = _draws(hs.arrays_like((jnp.zeros(6), jnp.zeros(6)), kinks=(1.5,)), n=120)
    a = [np.asarray(d[0], np.float64) for d in draws]
    assert any((x == 0).any() for x in a)  # exact zeros
    assert any(len(np.unique(x)) < x.size for x in a)  # ties within a leaf
    assert any((np.asarray(d[0]) == np.asarray(d[1])).any() for d in draws)  # across
    assert any((x == 1.5).any() for x in a)  # exact kinks
    assert any(np.abs(x).max() > 1e3 for x in a)  # large
    assert any(((np.abs(x) < 1e-10) & (x != 0)).any() for x in a)  # tiny
    assert sum(np.all(np.abs(x) < 5) for x in a) > len(a) / 4  # ordinary points too


def test_bad_templates_are_named():
    with pytest.raises(ValueError, match="at least one template"):
        hs.arrays_like()
    with pytest.raises(ValueError, match="share one tree structure"):
        hs.arrays_like({"a": jnp.zeros(2)}, {"b": jnp.zeros(2)})
    with pytest.raises(ValueError, match="magnitudes"):
        hs.arrays_like(jnp.zeros(2), magnitudes=(1e-3, 0.5))


# --- wrong gradients that only an edge reveals ------------------------------------------------


def _survives(loss, grad, strategy) -> bool:
    """Whether the property `assert_gradients(loss, grad, *drawn)` holds over the search."""

    @SEARCH
    @given(strategy)
    def prop(drawn):
        jax_ref.assert_gradients(loss, grad, *drawn, oracles=("autodiff",))

    try:
        prop()
    except AssertionError:
        return False
    return True


def _x_abs_x(p):
    return jnp.sum(p * jnp.abs(p))  # smooth: d/dx x|x| = 2|x|, 0 at 0


def _softplus(p):
    return jnp.sum(jnp.logaddexp(p, 0.0))


def _cube_gap(p, q):
    return jnp.sum(jnp.abs(p - q) ** 3)  # C²: 3 (p - q)|p - q|, 0 at a tie


def _hinge_sq(p):
    return jnp.sum(jax.nn.relu(p - 1.5) ** 2)  # C¹ at the kink 1.5: slope 0 there


MUTANTS = {
    "wrong only at exact zeros": (_x_abs_x, lambda p: jnp.where(p == 0, 1.0, 2 * jnp.abs(p))),
    "overflows at large inputs (e^x / (1 + e^x))": (
        _softplus,
        lambda p: jnp.exp(p) / (1 + jnp.exp(p)),
    ),
    "wrong only where two leaves tie": (
        _cube_gap,
        lambda p, q: jnp.where(p == q, 1.0, 3 * (p - q) * jnp.abs(p - q)),
    ),
    "wrong only exactly on the kink": (
        _hinge_sq,
        lambda p: jnp.where(p >= 1.5, 2 * (p - 1.5) + (p == 1.5), 0.0),
    ),
}


@pytest.mark.parametrize("mistake", MUTANTS)
def test_edges_kill_what_ordinary_points_miss(mistake):
    loss, wrong = MUTANTS[mistake]
    n = 2 if mistake == "wrong only where two leaves tie" else 1
    template = tuple(jnp.zeros(4) for _ in range(n))
    assert not _survives(loss, wrong, hs.arrays_like(template, kinks=(0.0, 1.5)))
    if mistake in ("wrong only at exact zeros", "overflows at large inputs (e^x / (1 + e^x))"):
        assert _survives(loss, wrong, hs.arrays_like(template, edges=False))
