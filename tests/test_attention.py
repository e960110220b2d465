"""Attention (handgrad/attn.py): the softmax VJP, the textbook backward and the
flash-style blocked one, verified as a rule with check_vjp in float64, float32 and
bfloat16. Its mutants are proven killed in test_mutants.py, its ledger in test_ledger.py."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given

import handgrad as hg
from jax_ref.derivations import REGISTRY
from jax_ref.derivations import attn as ref
from jax_ref.rules import assert_vjp, check_vjp
from jax_ref.spec import implementation

D = REGISTRY["attention"]
IMPL = implementation(D)


@pytest.mark.slow  # ~12 s of compiling: the default profile sees agrees kill in test_mutants
@given(D.strategy())
def test_agrees_with_autodiff(case):
    D.properties["agrees"](IMPL, case)


@pytest.mark.slow
@given(D.strategy())
def test_flash_matches_textbook_and_causal_ignores_the_future(case):
    D.properties["flash_matches_textbook"](IMPL, case)
    D.properties["causal_ignores_the_future"](IMPL, case)
    D.properties["rows_of_ds_sum_to_zero"](IMPL, case)


def _qkv(dtype, N=6, M=6, d=4, dv=3, lead=(2,), scale=1.0, seed=0):
    r = np.random.default_rng(seed)
    s = np.sqrt(scale)
    return tuple(
        jnp.asarray(r.standard_normal(shape) * k, dtype)
        for shape, k in (((*lead, N, d), s), ((*lead, M, d), s), ((*lead, M, dv), 1.0))
    )


def _flash(causal, block):
    def flash(Q, K, V):
        return hg.flash_attention(Q, K, V, causal=causal, block_size=block)

    return flash


def _reference(causal):
    def reference(Q, K, V):
        return ref.attention(Q, K, V, causal=causal)

    return reference


@pytest.mark.parametrize(
    "causal", [pytest.param(False, marks=pytest.mark.slow), True], ids=["full", "causal"]
)
def test_flash_attention_rule_float64(causal):
    """The custom_vjp rule, checked like any rule: autodiff of the textbook reference,
    finite differences, jit, vmap, composed, second order (blocks of 4: a ragged last one)."""
    assert_vjp(
        _flash(causal, 4),
        *_qkv(np.float64, N=6, M=6, d=2, dv=2),
        reference=_reference(causal),
        contracts=("primal", "structure")
        if causal
        else (
            "primal",
            "structure",
            "jit",
            "vmap",
            "composed",
            "second_order",
        ),  # the default profile: the oracles
        order=2,
    )


@pytest.mark.slow
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("dtype", [np.float32, jnp.bfloat16], ids=["float32", "bfloat16"])
def test_flash_attention_rule_low_precision(dtype, causal):
    """Precision budgets: float64 golden value, autodiff of the reference at the dtype as
    baseline; scores |S| ~ 50 in float32 must neither overflow nor lose the budget."""
    scale = 50.0 if dtype == np.float32 else 4.0
    results = check_vjp(
        _flash(causal, 4), *_qkv(dtype, N=9, M=9, scale=scale), reference=_reference(causal)
    )
    bad = [r.describe() for r in results if r.status == "failed"]
    assert not bad, "\n".join(bad)
    assert all(np.isfinite(r.max_rel_err) for r in results if r.oracle == "autodiff")


@pytest.mark.slow
def test_no_overflow_at_large_scores_float32():
    Q, K, V = _qkv(np.float32, N=16, M=16, lead=(), scale=2000.0)
    dO = jnp.ones_like(Q[..., :3])
    O = hg.flash_attention(Q, K, V, causal=True, block_size=4)
    grads = hg.flash_attention_backward(dO, Q, K, V, causal=True, block_size=4)
    assert all(bool(jnp.isfinite(x).all()) for x in (O, *grads))


def test_softmax_jacobian_agrees_with_softmax_backward():
    """The seed's Jacobian contracted with da is softmax_backward (never built there)."""
    r = np.random.default_rng(3)
    z, da = r.standard_normal((4, 5)), r.standard_normal((4, 5))
    J = hg.softmax_jacobian(z)
    a = hg.softmax(z)
    np.testing.assert_allclose(
        np.einsum("ij,ijk->ik", da, J), hg.softmax_backward(da, a), rtol=1e-12, atol=1e-15
    )


@pytest.mark.parametrize(("N", "M", "block"), [(1, 1, 4), (5, 13, 4), (3, 7, 100)])
def test_any_block_size_any_length(N, M, block):
    Q, K, V = _qkv(np.float64, N=N, M=M, lead=())
    np.testing.assert_allclose(
        hg.flash_attention(Q, K, V, block_size=block), hg.attention(Q, K, V), rtol=1e-12
    )


def test_no_n_by_m_array_in_the_compiled_gradient():
    """Compiled temporary memory of the flash gradient stays far below one N×M array."""
    N, d = 2048, 64
    Q = K = V = jax.ShapeDtypeStruct((N, d), jnp.float32)

    def loss(Q, K, V):
        return hg.flash_attention(Q, K, V, block_size=128).sum()

    mem = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(Q, K, V).compile().memory_analysis()
    assert mem.temp_size_in_bytes < N * N * 4 / 4, mem.temp_size_in_bytes


def test_bad_inputs_say_what_was_expected():
    Q, K, V = _qkv(np.float64, N=3, M=4, lead=())
    with pytest.raises(ValueError, match="causal attention needs N = M"):
        hg.attention(Q, K, V, causal=True)
    with pytest.raises(ValueError, match="K must be"):
        hg.attention(Q, K[:, :2], V)
    with pytest.raises(ValueError, match="V must be"):
        hg.flash_attention(Q, K, V[:3])
    with pytest.raises(ValueError, match="block_size must be a positive integer"):
        hg.flash_attention(Q, K, V, block_size=0)
    with pytest.raises(ValueError, match="dtype of Q"):
        hg.attention(Q, K.astype(np.float32), V)
    with pytest.raises(ValueError, match="dO must be"):
        hg.attention_backward(jnp.ones((3, 5)), Q, K, V)
    with pytest.raises(ValueError, match="Q must be finite"):
        hg.attention(Q.at[0, 0].set(jnp.nan), K, V)
