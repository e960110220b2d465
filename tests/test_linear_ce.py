"""handgrad.linear_cross_entropy: its hand rule checked with check_vjp against the plain
loss differentiated by JAX, in float64, float32 and bfloat16, every option, the edge
shapes and labels; the mistakes it must not make, each shown failing."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jax_ref
from handgrad import linear_ce
from handgrad.linear_ce import linear_cross_entropy

N, H, V = 6, 3, 11  # V prime: no block size divides it


def plain(
    X,
    W,
    b,
    y,
    *,
    ignore_index=-100,
    label_smoothing=0.0,
    z_loss=0.0,
    soft_cap=None,
    reduction="mean",
):
    """The reference: every N×V logit stored, written with jax.nn, differentiated by JAX."""
    z = X @ W + b
    if soft_cap is not None:
        z = soft_cap * jnp.tanh(z / soft_cap)
    lse = jax.nn.logsumexp(z, axis=1)
    valid = y != ignore_index
    target = (1 - label_smoothing) * jax.nn.one_hot(jnp.where(valid, y, 0), V, dtype=z.dtype)
    target = target + label_smoothing / V
    L = -(target * jax.nn.log_softmax(z, axis=1)).sum(1) + z_loss * lse**2
    L = jnp.where(valid, L, 0.0)
    if reduction == "none":
        return L
    total = L.sum()
    return total / jnp.maximum(valid.sum(), 1) if reduction == "mean" else total


def _inputs(dtype=np.float64, seed=0, n=N):
    rng = np.random.default_rng(seed)
    X = jnp.asarray(rng.normal(size=(n, H)), dtype)
    W = jnp.asarray(rng.normal(size=(H, V)), dtype)
    b = jnp.asarray(rng.normal(size=V), dtype)
    y = jnp.asarray(rng.integers(0, V, n))
    return X, W, b, y


OPTIONS = {
    "plain": {},
    "every option": dict(label_smoothing=0.1, z_loss=1e-2, soft_cap=2.0),
    "sum": dict(reduction="sum"),
    "none": dict(reduction="none", soft_cap=3.0),
}
BLOCKS = {"one pass": {}, "streamed, V and N not divided": dict(block_v=4, block_n=4)}


def _pair(y, options, blocks, pieces=None):
    def fused(X, W, b):
        return linear_cross_entropy(X, W, y, b, **options, **blocks, pieces=pieces)

    ref = lambda X, W, b: plain(X, W, b, y, **options)  # noqa: E731
    return fused, ref


SLOW = pytest.mark.slow  # the default profile keeps one of each kind (the edit-test loop)


@pytest.mark.parametrize("blocks", BLOCKS)
@pytest.mark.parametrize(
    "option",
    [pytest.param(k, marks=SLOW) if k in ("plain", "sum") else k for k in OPTIONS],
)
def test_the_rule_in_float64(option, blocks):
    X, W, b, y = _inputs()
    y = y.at[2].set(-100)  # an ignored token
    fused, ref = _pair(y, OPTIONS[option], BLOCKS[blocks])
    jax_ref.assert_vjp(fused, X, W, b, reference=ref, contracts=("primal", "structure", "jit"))


@SLOW  # float32 is swept by handgrad check's linear_ce cases in the default profile too
@pytest.mark.parametrize("dtype", [np.float32, jnp.bfloat16])
def test_the_rule_in_low_precision(dtype):
    X, W, b, y = _inputs(dtype)
    for blocks in BLOCKS.values():
        fused, ref = _pair(y, OPTIONS["every option"], blocks)
        jax_ref.assert_vjp(fused, X, W, b, reference=ref, contracts=("primal", "structure"))


def test_every_label_ignored_gives_zero_loss_and_gradient():
    """Every label ignored: the loss is 0, and so is its gradient (a batch of padding
    only), where torch's mean gives NaN (0/0)."""
    X, W, b, _ = _inputs()
    none = jnp.full(N, -100)
    for blocks in BLOCKS.values():
        assert float(linear_cross_entropy(X, W, none, b, **blocks)) == 0.0
        f = lambda X, W, b, blocks=blocks: linear_cross_entropy(X, W, none, b, **blocks)  # noqa: E731
        grads = jax.grad(f, (0, 1, 2))(X, W, b)
        assert all(float(jnp.abs(g).max()) == 0.0 for g in grads)


@SLOW
def test_edge_shapes_and_labels():
    """N = 1, and every label but one ignored, against the plain loss."""
    X, W, b, y = _inputs(n=1)
    fused, ref = _pair(y, {}, dict(block_v=4))
    jax_ref.assert_vjp(fused, X, W, b, reference=ref, contracts=("primal",))
    X, W, b, y = _inputs()
    one = jnp.full(N, -100).at[4].set(3)
    fused, ref = _pair(one, OPTIONS["every option"], dict(block_v=4, block_n=4))
    jax_ref.assert_vjp(fused, X, W, b, reference=ref, contracts=("primal",))


def test_bad_input_is_named_and_nan_under_jit():
    X, W, b, y = _inputs()
    with pytest.raises(ValueError, match=r"y must hold labels in \[0, C\) = \[0, 11\)"):
        linear_cross_entropy(X, W, y.at[0].set(11), b)
    with pytest.raises(ValueError, match="W must be"):
        linear_cross_entropy(X, W.T, y, b)
    with pytest.raises(ValueError, match="reduction"):
        linear_cross_entropy(X, W, y, b, reduction="avg")
    with pytest.raises(ValueError, match="block_v"):
        linear_cross_entropy(X, W, y, b, block_v=0)
    jitted = jax.jit(lambda y: linear_cross_entropy(X, W, y, b, block_v=4))
    assert np.isnan(float(jitted(y.at[0].set(11))))
    g = jax.jit(jax.grad(lambda X, y: linear_cross_entropy(X, W, y, b, block_v=4)))(
        X, y.at[0].set(-7)
    )
    assert np.isnan(np.asarray(g)).any()


# --- mistakes the checks must catch ------------------------------------------------------


def _forgot_cap_derivative(a, s, lse, y, cols, V, eps, alpha, cap, weight):
    return linear_ce_block_grad(a, s, lse, y, cols, V, eps, alpha, None, weight)


def _z_loss_without_2(a, s, lse, y, cols, V, eps, alpha, cap, weight):
    return linear_ce_block_grad(a, s, lse, y, cols, V, eps, alpha / 2, cap, weight)


def _onehot_shifted(a, s, lse, y, cols, V, eps, alpha, cap, weight):
    return linear_ce_block_grad(a, s, lse, y + 1, cols, V, eps, alpha, cap, weight)


def _onehot_in_block_indices(a, s, lse, y, cols, V, eps, alpha, cap, weight):
    """The label compared with the block's own column index (0..B_v-1), not the global
    one: right in the first block only."""
    return linear_ce_block_grad(a, s, lse, y, cols - cols[0], V, eps, alpha, cap, weight)


def _no_rescale(m, l, s, fresh):
    """The running sum not rescaled when the max grows: lse saved before the rescale."""
    s = jnp.where(fresh, s, -jnp.inf)
    m_new = jnp.maximum(m, s.max(axis=1))
    return m_new, l + jnp.exp(s - m_new[:, None]).sum(axis=1)


linear_ce_block_grad = linear_ce.block_grad
STREAMED_ONLY = {"one-hot shifted by one block", "log-sum-exp not rescaled (saved before)"}

MUTANTS = {
    "soft-cap derivative dropped": ("block_grad", _forgot_cap_derivative),
    "z-loss missing its factor 2": ("block_grad", _z_loss_without_2),
    "one-hot shifted by one": ("block_grad", _onehot_shifted),
    "one-hot shifted by one block": ("block_grad", _onehot_in_block_indices),
    "log-sum-exp not rescaled (saved before)": ("online_lse", _no_rescale),
    "forgot 1/N_valid": (
        "token_weights",
        lambda y, V, o, dtype: (y != o.ignore_index).astype(dtype),
    ),
    "ignored rows leak into dW": (
        "token_weights",
        lambda y, V, o, dtype: jnp.ones(y.shape, dtype) / y.shape[0],
    ),
}


@pytest.mark.parametrize(
    "mistake",
    [
        k
        if k in ("soft-cap derivative dropped", "forgot 1/N_valid")
        else pytest.param(k, marks=SLOW)
        for k in MUTANTS
    ],
)
def test_each_mistake_fails_the_rule_check(mistake):
    name, wrong = MUTANTS[mistake]
    pieces = linear_ce.PIECES._replace(**{name: wrong})
    X, W, b, y = _inputs()
    y = y.at[1].set(-100)
    for name_b, blocks in BLOCKS.items():
        if mistake in STREAMED_ONLY and name_b == "one pass":
            continue  # the piece is the streamed path's: one pass never calls it
        fused, ref = _pair(y, OPTIONS["every option"], blocks, pieces)
        results = jax_ref.check_vjp(fused, X, W, b, reference=ref, contracts=())
        assert jax_ref.verdict(results).failed, (mistake, blocks)
