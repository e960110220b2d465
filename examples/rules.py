"""Checks run by `handgrad check examples/rules.py`: the form a file of your own takes.

A checks file defines `CHECKS`, a list of `jax_ref.GradientCheck(name, loss_fn, grad_fn,
params, args=(), ...)` (a hand gradient of a scalar loss, as `check_gradients`) and
`jax_ref.RuleCheck(name, f, primals, ...)` (a rule, as `check_vjp` / `check_jvp`):

- `f` is the function whose rule is checked: a `jax.custom_vjp` or `jax.custom_jvp`
  function (checked by its own rule), or any function with the rule passed as `rule=`
  (`kind="vjp"`: `rule(*primals, ct) -> one cotangent per input`; `kind="jvp"`:
  `rule(primals, tangents) -> (y, ẏ)`);
- `primals` is a tuple of inputs, or a function returning one;
- `reference=` is what autodiff differentiates (default: a custom function's undecorated
  primal, or `f` when the rule is passed); `order=2` adds second derivatives;
- every other option of the check function is a field of the same name (`oracles`,
  `contracts`, `scales`, `seed`, `directions`, `max_tries`; `rtol`, `atol` or
  `tolerance_factor` set a tolerance, and the report shows it beside every result);
- `GradientCheck`'s `params` (a pytree) and `args` may also be functions returning them.

`handgrad check FILE.py` runs every check and writes gradcheck.json/.md/.png to --out;
exit 0 when none fails and every input was judged, 1 otherwise, 2 for a file it cannot use.
"""

import jax
import jax.numpy as jnp
import numpy as np

import handgrad
from jax_ref import GradientCheck, RuleCheck

jax.config.update("jax_enable_x64", True)  # check in float64; float32 below by dtype


@jax.custom_vjp
def tanh(x):
    return jnp.tanh(x)


def _tanh_fwd(x):
    y = jnp.tanh(x)
    return y, y  # the output is the residual: tanh' = 1 - tanh²


def _tanh_bwd(y, g):
    return (g * (1 - y**2),)


tanh.defvjp(_tanh_fwd, _tanh_bwd)


@jax.custom_jvp
def softplus(x):
    return jnp.logaddexp(x, 0.0)


@softplus.defjvp
def _softplus_jvp(primals, tangents):
    (x,), (u,) = primals, tangents
    return softplus(x), u * jax.nn.sigmoid(x)  # softplus' = σ


def linear(x, W, b):
    return x @ W + b  # (N, D)·(D, H) + (H,)


def linear_vjp(x, W, b, g):
    """x̄ = Ḡ·Wᵀ (N, D),  W̄ = xᵀ·Ḡ (D, H),  b̄ = Σ_rows Ḡ (H,)"""
    return g @ W.T, x.T @ g, g.sum(0)


def tanh_loss(p, A, t):  # the README's example: a scalar loss of a pytree of parameters
    return jnp.mean((jnp.tanh(A @ p["w"] + p["b"]) - t) ** 2)


def tanh_loss_grad(p, A, t):
    """r = tanh(A·w + b); d = 2 (r - t)(1 - r²) / N; ∂w = Aᵀ·d, ∂b = Σ d"""
    r = jnp.tanh(A @ p["w"] + p["b"])
    d = 2 * (r - t) * (1 - r**2) / t.size
    return {"w": A.T @ d, "b": d.sum()}


def _points(dtype):
    rng = np.random.default_rng(0)
    return lambda *shape: jnp.asarray(rng.normal(size=shape), dtype)


def _cases():
    r64, r32 = _points(np.float64), _points(np.float32)
    return r64, r32


r64, r32 = _cases()

CHECKS = [
    GradientCheck(
        "tanh regression, hand gradient",
        tanh_loss,
        tanh_loss_grad,
        {"w": r64(3), "b": r64()},
        args=(r64(8, 3), r64(8)),
    ),
    GradientCheck(
        "tanh regression, hand gradient, float32",
        tanh_loss,
        tanh_loss_grad,
        {"w": r32(3), "b": r32()},
        args=(r32(8, 3), r32(8)),
    ),
    RuleCheck("tanh custom_vjp, float64", tanh, (r64(4, 5),), order=2),
    RuleCheck("tanh custom_vjp, float32", tanh, (r32(4, 5),)),
    RuleCheck("softplus custom_jvp", softplus, (r64(6),), kind="jvp"),
    RuleCheck("linear, hand vjp", linear, (r64(3, 4), r64(4, 2), r64(2)), rule=linear_vjp),
    RuleCheck(
        "handgrad.softmax_cross_entropy",
        handgrad.softmax_cross_entropy,
        (r64(5, 3), jnp.array([0, 2, 1, 1, 0])),
    ),
]
