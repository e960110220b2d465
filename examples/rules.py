"""Rules checked by `handgrad check examples/rules.py`: the form a file of your own takes.

A checks file defines `CHECKS`, a list of `jax_ref.RuleCheck(name, f, primals, ...)`:

- `f` is the function whose rule is checked: a `jax.custom_vjp` or `jax.custom_jvp`
  function (checked by its own rule), or any function with the rule passed as `rule=`
  (`kind="vjp"`: `rule(*primals, ct) -> one cotangent per input`; `kind="jvp"`:
  `rule(primals, tangents) -> (y, ẏ)`);
- `primals` is a tuple of inputs, or a function returning one;
- `reference=` is what autodiff differentiates (default: a custom function's undecorated
  primal, or `f` when the rule is passed); `order=2` adds second derivatives.

`handgrad check FILE.py` runs every check and writes gradcheck.json/.md/.png to --out;
exit 0 when none fails and every input was judged, 1 otherwise, 2 for a file it cannot use.
"""

import jax
import jax.numpy as jnp
import numpy as np

import handgrad
from jax_ref import RuleCheck

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


def _points(dtype):
    rng = np.random.default_rng(0)
    return lambda *shape: jnp.asarray(rng.normal(size=shape), dtype)


def _cases():
    r64, r32 = _points(np.float64), _points(np.float32)
    return r64, r32


r64, r32 = _cases()

CHECKS = [
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
