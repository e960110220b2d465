"""The gradient checks: a hand gradient of any pytree of parameters, leaf by leaf, against
autodiff of the loss and finite differences of the loss alone.

    results = check_gradients(loss_fn, grad_fn, params, *args)
    assert_gradients(loss_fn, grad_fn, params, *args)   # raises on a failed or unjudged leaf
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jax_ref.autodiff import autodiff_results, singular_elements
from jax_ref.finite_difference import finite_difference_results
from jax_ref.record import run_check, subject_of
from jax_ref.runtime import OwnCodeError
from jax_ref.tolerances import budget, default_tolerance
from jax_ref.trees import error_text, leaf_name
from jax_ref.verdict import CheckResult

__all__ = ["GRADIENT_ORACLES", "assert_gradients", "check_gradients", "gradient_results"]

GRADIENT_ORACLES = ("autodiff", "finite_difference")


def _split_grad_output(out, returns_loss: bool):
    if not returns_loss:
        return None, out
    if not (isinstance(out, tuple) and len(out) == 2):
        raise ValueError(
            f"grad_fn must return (loss, grads) when returns_loss=True; got {type(out).__name__}"
        )
    return out


def _check_tree(grads, params) -> None:
    want, got = jax.tree.structure(params), jax.tree.structure(grads)
    if want != got:
        raise ValueError(
            f"grad_fn must return a pytree shaped like params;\n  params: {want}\n  grads:  {got}"
        )
    for (path, p), g in zip(jax.tree.leaves_with_path(params), jax.tree.leaves(grads)):
        _check_dtype("params" + ("." + leaf_name(path) if path else ""), p)
        if np.shape(g) != np.shape(p):
            raise ValueError(
                f"grad_fn's gradient for {leaf_name(path)} must have the parameter's shape "
                f"{np.shape(p)}; got {np.shape(g)}"
            )


def _check_dtype(name: str, p) -> None:
    """A ValueError for a parameter the checks cannot differentiate: never skipped."""
    dt = jnp.result_type(p)
    if jnp.issubdtype(dt, jnp.complexfloating):
        raise ValueError(
            f"{name} is {jnp.dtype(dt).name}: complex parameters are not checked (jax.grad of "
            "a real loss of z = x + iy returns dL/dx - i dL/dy); pass the real and imaginary "
            "parts as two float leaves"
        )
    if not jnp.issubdtype(dt, jnp.floating):
        raise ValueError(
            f"{name} is {jnp.dtype(dt).name}: an integer or boolean parameter has no gradient; "
            "pass it among args instead"
        )


def check_gradients(
    loss_fn: Callable[..., Any],
    grad_fn: Callable[..., Any],
    params: Any,
    *args: Any,
    seed: int = 0,
    oracles: Sequence[str] = GRADIENT_ORACLES,
    returns_loss: bool = False,
    directions: int = 2,
    max_tries: int = 12,
    scales: Any = None,
    loss_scale: float = 0.0,
    rtol: float | None = None,
    atol: float | None = None,
    tolerance_factor: float | None = None,
) -> list[CheckResult]:
    """`grad_fn(params, *args)` against autodiff and finite differences of the scalar
    `loss_fn(params, *args)`: one `CheckResult` per float leaf and oracle.

    With `returns_loss=True`, `grad_fn` returns `(loss, grads)` and the loss is checked
    too (parameter "loss"). `directions` is the number of random directions per round
    (at least 2), `max_tries` the most a leaf may use. `scales` (a pytree like `params`
    of floats) and `loss_scale` give each leaf's natural error scale where cancellation
    makes a gradient smaller than its rounding's scale (jax_ref.tolerances). `rtol`,
    `atol`, `tolerance_factor` set the tolerance (jax_ref.tolerances.Override), stamped
    on each result (`tolerance_set`) and shown in every message and report."""
    options = dict(
        seed=seed,
        oracles=oracles,
        returns_loss=returns_loss,
        directions=directions,
        max_tries=max_tries,
        scales=scales,
        loss_scale=loss_scale,
    )
    return run_check(
        "check_gradients",
        subject_of(loss_fn, grad_fn),
        (params, *args),
        lambda: gradient_results(loss_fn, grad_fn, params, *args, **options),
        rtol=rtol,
        atol=atol,
        tolerance_factor=tolerance_factor,
    )


def gradient_results(
    loss_fn,
    grad_fn,
    params,
    *args,
    seed=0,
    oracles=GRADIENT_ORACLES,
    returns_loss=False,
    directions=2,
    max_tries=12,
    scales=None,
    loss_scale=0.0,
) -> list[CheckResult]:
    """`check_gradients`'s work, under whatever tolerance is in force (no record)."""
    unknown = set(oracles) - set(GRADIENT_ORACLES)
    if unknown or not oracles:
        raise ValueError(
            f"oracles must be a non-empty selection of {GRADIENT_ORACLES}; got {list(oracles)}"
        )
    if not callable(loss_fn) or not callable(grad_fn):
        raise ValueError("loss_fn and grad_fn must be callables (params, *args)")
    value, grads = _split_grad_output(_theirs(grad_fn, "grad_fn", params, *args), returns_loss)
    _check_tree(grads, params)
    _theirs(jax.eval_shape, "loss_fn", loss_fn, params, *args)
    results: list[CheckResult] = []
    still = None
    fd_scales = scales
    if "autodiff" in oracles:
        ad = autodiff_results(
            loss_fn, params, grads, args, scales=scales, value=value, loss_scale=loss_scale
        )
        results += ad
        still = singular_elements(loss_fn, params, args)
        fd_scales = _dtype_rounding(scales, params, grads, ad)
    if "finite_difference" in oracles:
        results += finite_difference_results(
            loss_fn,
            params,
            grads,
            args,
            seed=seed,
            directions=directions,
            max_tries=max_tries,
            scales=fd_scales,
            still=still,
        )
    return results


def _dtype_rounding(scales, params, grads, ad_results):
    """Each low-precision leaf's natural scale for finite differences, raised to cover
    what autodiff itself misses by at that dtype and point (its `baseline_err` against
    the float64 golden value, the precision budget's measure): a float32 gradient of a
    saturated softmax rounds at ~1e-7 of the logits' scale, far above its own ~1e-11
    size, and differences judging it against its size alone would fail a correct one."""
    base = {r.parameter: r.baseline_err for r in ad_results if r.baseline_err is not None}
    if not base:
        return scales
    paths = jax.tree.leaves_with_path(params)
    given = [0.0] * len(paths) if scales is None else [float(s) for s in jax.tree.leaves(scales)]
    out = []
    for (path, p), g, s in zip(paths, jax.tree.leaves(grads), given):
        b, dt = base.get(leaf_name(path)), jnp.result_type(p)
        if b is None or budget(dt) is None:
            out.append(s)
            continue
        size = max(float(np.max(np.abs(np.asarray(g, np.float64)), initial=0.0)), s)
        out.append(max(s, budget(dt).k * b * size / default_tolerance(dt)))
    return jax.tree.unflatten(jax.tree.structure(params), out)


def _theirs(fn, what, *a):
    """fn(*a); an exception is the user's `what`, raised as such (chained)."""
    try:
        return fn(*a)
    except Exception as e:  # the user's function raised at the point: theirs, named
        raise OwnCodeError(f"{what} raised at the given point: {error_text(e)}") from e


def assert_gradients(
    loss_fn,
    grad_fn,
    params,
    *args,
    allow_inconclusive: bool = False,
    rtol: float | None = None,
    atol: float | None = None,
    tolerance_factor: float | None = None,
    **kwargs,
) -> list[CheckResult]:
    """`check_gradients`, raising an AssertionError naming every failed leaf and oracle
    (the worst element or direction and both values), and every leaf that no oracle
    judged (unless `allow_inconclusive`). Returns the results otherwise."""
    return run_check(
        "assert_gradients",
        subject_of(loss_fn, grad_fn),
        (params, *args),
        lambda: gradient_results(loss_fn, grad_fn, params, *args, **kwargs),
        rtol=rtol,
        atol=atol,
        tolerance_factor=tolerance_factor,
        assert_what="gradient",
        allow_inconclusive=allow_inconclusive,
    )
