"""Verdicts on code nobody here wrote (the integrity issue): each test names what went
wrong before it, and the wrong verdict it now catches.

Shapes are small and shared: one compilation serves several tests."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jax_ref as jr
from jax_ref.runtime import OwnCodeError
from jax_ref.verdict import failed_check, verdict


def _x(n, seed=0, lo=-1.0, hi=1.0, dtype=np.float64):
    return jnp.asarray(np.random.default_rng(seed).uniform(lo, hi, n), dtype)


def _statuses(results, oracle):
    return [r.status for r in results if r.oracle == oracle]


# --- functions that run only in their own dtype ---------------------------------------------


def _fori_loss(w, xs):
    """A loss whose fori_loop carry is float32: it cannot be traced in float64."""

    def body(i, acc):
        return acc + jnp.sum(jnp.tanh(w * xs[i]))

    return jax.lax.fori_loop(0, xs.shape[0], body, jnp.float32(0.0))


def _fori_grad(w, xs):
    return jnp.sum(xs * (1 - jnp.tanh(w * xs) ** 2), 0)


def test_a_float32_fori_loop_loss_is_judged_in_float32():
    """Before: a raw TypeError from inside the finite-difference oracle (every input cast
    to float64, and no way back). Now: judged in float32, and each result says so."""
    w = _x(6, 1, dtype=np.float32)
    xs = jnp.asarray(np.random.default_rng(2).uniform(0.1, 2, (3, 6)), jnp.float32)
    good = jr.check_gradients(_fori_loss, _fori_grad, w, xs)
    assert verdict(good).passed, [r.describe() for r in good]
    assert all("float32" in r.note and "float64" in r.note for r in good)

    def three_percent_off(w, xs):
        return _fori_grad(w, xs).at[2].multiply(1.03)

    bad = jr.check_gradients(_fori_loss, three_percent_off, w, xs)
    assert _statuses(bad, "autodiff") == ["failed"]
    assert _statuses(bad, "finite_difference") == ["failed"]


@pytest.mark.slow
def test_pallas_flash_attention_against_its_reference():
    """JAX's own Pallas flash attention (interpret mode, float32) against mha_reference:
    before, a raw TypeError; now its own rule passes and a 2 % error in one cotangent
    fails."""
    attention = pytest.importorskip("jax.experimental.pallas.ops.gpu.attention")
    blocks = attention.BlockSizes(
        block_q=16, block_k=16, block_q_dkv=16, block_kv_dkv=16, block_q_dq=16, block_kv_dq=16
    )
    mha = functools.partial(attention.mha, segment_ids=None, interpret=True, block_sizes=blocks)
    ref = functools.partial(attention.mha_reference, segment_ids=None)
    rng = np.random.default_rng(0)
    q, k, v = (jnp.asarray(rng.normal(size=(1, 16, 1, 16)), jnp.float32) for _ in range(3))
    own = jr.check_vjp(mha, q, k, v, reference=ref, contracts=("primal", "structure"))
    assert verdict(own).passed, [r.describe() for r in own]

    def two_percent_off(q, k, v, ct):
        dq, dk, dv = jax.vjp(mha, q, k, v)[1](ct)
        return dq, dk * 1.02, dv

    bad = jr.check_vjp(mha, q, k, v, vjp=two_percent_off, reference=ref, contracts=())
    failed = {r.parameter for r in bad if r.status == "failed"}
    assert failed == {"k"}, [r.describe() for r in bad]


# --- second order ---------------------------------------------------------------------------


@jax.custom_vjp
def sin_x(x):
    return jnp.sin(x) * x


def _sin_x_fwd(x):
    return sin_x(x), x  # as JAX's documentation writes it: fwd calls the decorated function


def _sin_x_bwd(x, g):
    return (g * (jnp.cos(x) * x + jnp.sin(x)),)


sin_x.defvjp(_sin_x_fwd, _sin_x_bwd)


def test_second_order_of_a_documented_custom_vjp_is_judged_not_failed():
    """Before: `jax.jvp` cannot enter a custom_vjp whose fwd calls the decorated function,
    and the check blamed the rule. Now reverse-over-reverse judges it."""
    res = jr.check_vjp(sin_x, _x(5, 3), order=2)
    second = [r for r in res if r.oracle == "second_order"]
    assert second and all(r.status == "passed" for r in second), [r.describe() for r in res]
    assert verdict(res).passed


def _untwiceable(x):
    """A reference that runs and has a first derivative, but no second (a host callback
    with its own JVP, as a wrapped C++ kernel has)."""
    return jnp.sin(x) * x


@jax.custom_jvp
def _host_sin_x(x):
    shape = jax.ShapeDtypeStruct(x.shape, x.dtype)
    return jax.pure_callback(lambda a: np.sin(a) * a, shape, x)


@_host_sin_x.defjvp
def _host_sin_x_jvp(p, t):
    (x,), (tx,) = p, t
    d = jax.pure_callback(
        lambda a: np.cos(a) * a + np.sin(a), jax.ShapeDtypeStruct(x.shape, x.dtype), x
    )
    return _host_sin_x(x), d * tx


def _wrong_second_bwd(x, g):
    # right values, wrong derivative: the cos(x)·x term's own derivative is dropped
    return (g * (jax.lax.stop_gradient(jnp.cos(x) * x) + jnp.sin(x)),)


def test_second_order_has_a_finite_difference_oracle():
    """Before: order=2 had no finite-difference oracle: with a reference that cannot be
    differentiated twice nothing judged it. Now central differences of the rule's VJP
    along the tangent judge it: the right rule passes, one whose derivative is wrong
    (values right) fails."""
    x = _x(5, 3)
    good = jr.check_vjp(sin_x, x, order=2, reference=_host_sin_x, contracts=("second_order",))
    assert verdict(good).passed, [r.describe() for r in good]
    assert any("finite differences" in r.note for r in good if r.oracle == "second_order")

    wrong = jax.custom_vjp(lambda x: jnp.sin(x) * x)
    wrong.defvjp(lambda x: (jnp.sin(x) * x, x), _wrong_second_bwd)
    bad = jr.check_vjp(wrong, x, order=2, reference=_host_sin_x, contracts=("second_order",))
    assert "failed" in _statuses(bad, "second_order"), [r.describe() for r in bad]


def test_check_jvp_takes_order_2():
    """Before: check_jvp had no order= (a TypeError)."""

    @jax.custom_jvp
    def cube(x):
        return x**3

    cube.defjvp(lambda p, t: (p[0] ** 3, 3 * p[0] ** 2 * t[0]))

    @jax.custom_jvp
    def cube_flat(x):
        return x**3

    # right tangent values; their own derivative dropped (a stop_gradient on the factor)
    cube_flat.defjvp(lambda p, t: (p[0] ** 3, jax.lax.stop_gradient(3 * p[0] ** 2) * t[0]))
    x = _x(4, 5)
    assert verdict(jr.check_jvp(cube, x, order=2)).passed
    bad = jr.check_jvp(cube_flat, x, order=2)
    assert "failed" in _statuses(bad, "second_order")
    assert not [r for r in bad if r.oracle != "second_order" and r.status == "failed"]


# --- when the reference is the bug ----------------------------------------------------------


@jax.custom_jvp
def unit(x):
    """x / ‖x‖, written as its author did: the norm held still under stop_gradient, which
    makes autodiff of the primal wrong (the reason for the custom rule)."""
    return x / jax.lax.stop_gradient(jnp.linalg.norm(x))


@unit.defjvp
def _unit_jvp(p, t):
    (x,), (tx,) = p, t
    n = jnp.linalg.norm(x)
    y = x / n
    return y, (tx - y * jnp.dot(y, tx)) / n


def test_check_jvp_sides_with_finite_differences_when_the_reference_is_wrong():
    """Before: check_jvp failed the right rule because autodiff of the primal (the
    historical bug) disagreed. Now the disagreement is a finding about the reference, and
    finite differences judge the rule."""
    res = jr.check_jvp(unit, _x(4, 7))
    ad = [r for r in res if r.oracle == "autodiff"]
    assert ad and all(r.status == "inconclusive" for r in ad), [r.describe() for r in res]
    assert all("disagrees with finite differences" in r.note for r in ad)
    assert verdict(res).passed, [r.describe() for r in res]


def test_check_vjp_says_where_the_reference_disagrees():
    x = _x(4, 7)
    res = jr.check_vjp(unit, x)
    ad = [r for r in res if r.oracle == "autodiff"]
    assert all(r.status == "inconclusive" for r in ad), [r.describe() for r in res]
    assert all("disagrees with finite differences at" in r.note for r in ad)
    assert verdict(res).passed, [r.describe() for r in res]


# --- conventions at singular points ---------------------------------------------------------


@jax.custom_jvp
def safe_sqrt(x):
    return jnp.sqrt(x)


@safe_sqrt.defjvp
def _safe_sqrt_jvp(p, t):
    (x,), (tx,) = p, t
    y = jnp.sqrt(x)
    return y, jnp.where(x > 0, tx / (2 * jnp.where(x > 0, y, 1.0)), 0.0)


@jax.custom_jvp
def sqrt_off(x):
    return jnp.sqrt(x)


@sqrt_off.defjvp
def _sqrt_off_jvp(p, t):
    (x,), (tx,) = p, t
    y = jnp.sqrt(x)
    return y, jnp.where(x > 0, 0.6 * tx / jnp.where(x > 0, y, 1.0), 0.0)


def test_a_safe_convention_at_a_singular_point_is_not_failed():
    """Before: the elements where the primal's derivative is infinite made the reference
    and finite differences (x - h < 0: NaN) give up, and the leaf went unjudged (earlier
    still: failed). Now those elements are set aside, the others are judged."""
    x = jnp.array([0.0, 1.0, 4.0, 2.5])
    for check in (jr.check_jvp, jr.check_vjp):
        res = check(safe_sqrt, x)
        assert verdict(res).passed, [r.describe() for r in res]
        assert any("not finite" in r.note for r in res if r.oracle == "autodiff")
        bad = check(sqrt_off, x)
        assert verdict(bad).failed, [r.describe() for r in bad]


# --- passed means judged --------------------------------------------------------------------


def test_a_loss_not_finite_at_the_point_is_inconclusive_and_says_so():
    """A 7x wrong gradient where the loss is NaN passed before ("rel err 0, hand nan,
    autodiff nan")."""

    def loss(w, y):
        return jnp.mean((w - y) ** 2)

    y = jnp.array([1.0, jnp.nan, 2.0])
    res = jr.check_gradients(loss, lambda w, y: 7 * 2 * (w - y) / 3, jnp.ones(3), y)
    assert not verdict(res).passed and not verdict(res).failed
    assert all("not finite" in r.note and "loss" in r.note for r in res)


def test_a_check_that_cannot_see_a_100_percent_error_is_inconclusive():
    """Before: a float32 result said 'passed' with detectable_rel_err above 1."""
    x = jnp.array([9.0, 10.0, 11.0, 12.0], jnp.float32)  # tanh saturated: 1 - y² ~ 1e-8
    res = jr.check_vjp(jnp.tanh, x, vjp=lambda x, g: (g * (1 - jnp.tanh(x) ** 2),))
    for r in res:
        assert not (r.status == "passed" and not r.detectable_rel_err < 1), r.describe()


# --- whose error ----------------------------------------------------------------------------


def test_a_user_function_that_raises_is_named_with_the_point():
    def loss(w):
        raise RuntimeError("my loss is broken")

    with pytest.raises(OwnCodeError, match=r"loss_fn raised at the given point.*my loss") as e:
        jr.check_gradients(loss, lambda w: w, jnp.ones(3))
    assert isinstance(e.value.__cause__, RuntimeError)

    def grad(w):
        raise KeyError("w1")

    with pytest.raises(OwnCodeError, match="grad_fn raised at the given point"):
        jr.check_gradients(lambda w: jnp.sum(w), grad, jnp.ones(3))

    def reference(x):
        raise ZeroDivisionError("ref")

    with pytest.raises(OwnCodeError, match="reference raised at the given point"):
        jr.check_vjp(safe_sqrt, jnp.ones(3), reference=reference)


def test_a_loss_that_raises_only_away_from_the_point_is_named():
    def loss(w):
        def host(a):
            if not np.all(a == 1.0):
                raise ValueError("only at ones")
            return np.float64(np.sum(a))

        return jax.pure_callback(host, jax.ShapeDtypeStruct((), w.dtype), w)

    with pytest.raises(OwnCodeError, match=r"loss_fn raised .*finite-difference"):
        jr.check_gradients(loss, lambda w: jnp.ones(3), jnp.ones(3), oracles=("finite_difference",))


# --- reports that show what happened --------------------------------------------------------


def _rows():
    base = {"derivation": "d", "function": "f", "case": "c"}
    far = jr.CheckResult(
        parameter="w",
        oracle="autodiff",
        status="failed",
        dtype="float64",
        max_rel_err=1e-1,
        tolerance=1e-10,
        detectable_rel_err=1e-10,
    )
    contract = failed_check("x", "vmap", "batched cotangent of shape (3,), want (3, 2)")
    return [{**base, **far.to_dict()}, {**base, **contract.to_dict()}]


def test_reports_show_every_failure_and_why(tmp_path):
    """Before: the PNG's axis stopped at 1e3 (a 1e9x failure was drawn off the chart), a
    contract failure sat with the passes, and its reason was only in the JSON."""
    from jax_ref.report import assemble_report, gradcheck_markdown, plot_limits

    report = assemble_report(0, ["d"], _rows(), [])
    _, top, band = plot_limits(report["checks"])
    assert top >= 1e9 * 10 and band > top  # the 1e9x failure is on the chart
    md = gradcheck_markdown(report, "gradcheck.png")
    assert "batched cotangent of shape (3,), want (3, 2)" in md
    pytest.importorskip("matplotlib")
    from jax_ref.report import plot_gradcheck

    plot_gradcheck(report, tmp_path / "g.png")
    assert (tmp_path / "g.png").stat().st_size > 1000


def test_a_small_low_precision_failure_names_scales():
    from jax_ref.verdict import assert_verdict, compare

    got, want = np.array([1.0, 1e-3]), np.array([1.0, 1e-3 + 3e-4])
    rs = [compare("w", o, got, want, np.float32, 1e-4) for o in ("autodiff", "finite_difference")]
    with pytest.raises(AssertionError, match=r"pass scales=\{'w'"):
        assert_verdict(rs, "gradient")


def test_nan_against_nan_is_never_agreement_in_the_error_measure():
    """Before: rel_error(NaN, NaN) = 0, and the referee's `close` passed NaN against NaN."""
    from jax_ref.properties import close
    from jax_ref.tolerances import rel_error

    assert rel_error(np.array([1.0, np.nan]), np.array([1.0, np.nan]))[1] == np.inf
    with pytest.raises(AssertionError, match="rel err inf"):
        close("f", np.array([np.nan]), np.array([np.nan]), np.float64)


def test_the_sweep_sets_apart_values_below_their_scale_s_resolution():
    """softmax_jacobian at saturated logits: entries ~1e-21 under probabilities' rounding.
    Powerless there (a pass could not see a 100 % error), it is listed apart in the
    sweep's report, not counted as a check and not a pass."""
    from jax_ref.sweep import below_resolution
    from jax_ref.verdict import compare

    r = compare("J", "referee", np.array([1e-21]), np.array([2e-21]), np.float64, 1e-10, scale=1)
    assert r.status == "inconclusive" and "100 %" in r.note
    row = {"derivation": "d", "function": "f", "case": "c", **r.to_dict()}
    assert below_resolution(row)
    wrong = compare("J", "referee", np.array([1.0]), np.array([2e-21]), np.float64, 1e-10, 1)
    assert not below_resolution({**row, **wrong.to_dict()})


def test_a_bfloat16_only_loss_raises_no_false_alarm():
    """Differenced in its own bfloat16 (the carry cannot be float64), a correct gradient
    is never failed: the steps themselves round there."""

    def loss(w, xs):
        def body(i, acc):
            return acc + jnp.sum(jnp.tanh(w * xs[i])).astype(jnp.bfloat16)

        return jax.lax.fori_loop(0, xs.shape[0], body, jnp.bfloat16(0.0))

    def grad(w, xs):
        return jnp.sum(xs * (1 - jnp.tanh(w * xs) ** 2), 0).astype(jnp.bfloat16)

    w = _x(6, 1, dtype=jnp.bfloat16)
    xs = jnp.asarray(np.random.default_rng(2).uniform(0.1, 2, (3, 6)), jnp.bfloat16)
    res = jr.check_gradients(loss, grad, w, xs)
    assert not verdict(res).failed, [r.describe() for r in res]


def test_finite_differences_allow_a_float32_gradient_its_own_rounding():
    """Found by the README's hypothesis example in CI: a float32 MLP at saturated logits,
    whose correct gradient (~1e-11) is 50 % off its float64 value by rounding alone, was
    FAILED by finite differences (judged against its size, not its rounding). Autodiff
    measures that rounding at the point (its own error at float32); differences now allow
    it, and say they cannot judge."""
    import handgrad as hg
    from jax_ref.derivations.mlp import MLPCase, Params

    f32 = np.float32
    W1 = [
        [-11.718165, 6.8514824, -6.6099086, -18.946993],
        [12.297187, -5.9488034, 0.8038802, 12.514092],
        [43.823135, -8.31994, 9.178485, 15.388125],
    ]
    W2 = [
        [7.5043707, 21.178587, 6.7648244],
        [8.446985, 4.793393, 11.070361],
        [0.13084368, 22.001066, 0.7880078],
        [16.51174, 1.9576821, -9.33079],
    ]
    params = Params(
        np.array(W1, f32),
        np.array([0.8009386, 3.4323807, 5.0830607, 3.0334744], f32),
        np.array(W2, f32),
        np.array([-1.6534065, -0.38866296, -1.0126015], f32),
    )
    case = MLPCase(
        params, np.array([[0.85770595, 0.8257966, -0.8308837]], f32), np.array([2], np.int32), 0.0
    )
    res = jr.check_gradients(jr.mlp_loss, hg.mlp_grads, *case, returns_loss=True)
    assert not verdict(res).failed, [r.describe() for r in res if r.status == "failed"]


def _relu_with(slope_at_0):
    @jax.custom_jvp
    def relu(x):
        return jnp.maximum(x, 0)

    relu.defjvp(
        lambda p, t: (
            jnp.maximum(p[0], 0),
            jnp.where(p[0] > 0, 1.0, jnp.where(p[0] == 0, slope_at_0, 0.0)) * t[0],
        )
    )
    return relu


def test_a_convention_at_a_kink_is_judged_by_its_one_sided_slopes():
    """relu's 0 at 0 against jnp.maximum's 1/2: before, check_jvp left the whole leaf
    unjudged (the tangents move the kinked element too); now the kinked elements are set
    aside where the rule lies between the one-sided slopes, and the others judged. A
    slope of 3 at 0 is no convention: it fails."""
    x = jnp.array([-1.0, 0.0, 2.0, 0.5])
    res = jr.check_jvp(_relu_with(0.0), x)
    assert verdict(res).passed, [r.describe() for r in res]
    assert any("one-sided slopes" in r.note for r in res if r.oracle == "autodiff")
    assert verdict(jr.check_jvp(_relu_with(3.0), x)).failed


def test_a_zero_hand_gradient_where_the_loss_has_slope_fails_on_differences_alone():
    """Before: a hand gradient of exactly 0 (a dropped term, a stop_gradient, a where-trap's
    zero) against a slope of 1.63 was inconclusive under finite differences: the power,
    relative to the hand's own largest entry (0), is none, and a failure was treated as a
    powerless pass. A failure's error exceeds its allowance whatever the power: it fails."""

    def loss(p, x):
        return jnp.sum(p["a"] * jnp.sin(x) ** 2)

    x, p = _x(4, seed=3), {"a": jnp.array(0.7)}
    for tiny in (0.0, 1e-16):
        dropped = lambda p, x, tiny=tiny: {"a": jnp.asarray(tiny)}  # noqa: E731
        results = jr.check_gradients(loss, dropped, p, x, oracles=("finite_difference",))
        assert _statuses(results, "finite_difference") == ["failed"], results
    right = lambda p, x: {"a": jnp.sum(jnp.sin(x) ** 2)}  # noqa: E731
    results = jr.check_gradients(loss, right, p, x, oracles=("finite_difference",))
    assert _statuses(results, "finite_difference") == ["passed"]
